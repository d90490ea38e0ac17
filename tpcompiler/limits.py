"""The limits of a program's reports, as numbers: passes/limits.py derives them, the integrals
it requests are computed here (the kernels' quadrature rules, Monte Carlo beyond their
dimension), and their accuracy is measured the kernels' way (the raised-order rules against the
plain ones).

A limit whose expectations are all closed forms (polynomials by Isserlis, sin/cos/exp by the
characteristic function) is exact: a sympy number. Otherwise it is a float, and a TPWarning
says when it cannot be vouched for to `tol` (relative to the report's size, sqrt(E[expr^2])).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.core.function import AppliedUndef

from . import ir
from .backends import numpy as numpy_backend
from .errors import TPError, warn
from .functions import KINKED, Step
from .passes import kernels as kernel_pass
from .passes import limits as limit_pass
from .passes.closedform import EXACT
from .passes.expect import MAX_QUAD_DIM, Quadrature, zsym
from .quadrature import cholesky_psd, linear_row

#: Monte Carlo beyond MAX_QUAD_DIM dimensions: samples (antithetic pairs) and a fixed seed
MC_SAMPLES = 1 << 20
MC_SEED = 20260612


@dataclass(frozen=True)
class LimitValue:
    name: str
    value: sp.Expr  # exact (a sympy expression without floats) or an sp.Float
    exact: bool
    error: float  # the estimated absolute error (0 when exact)
    scale: float  # sqrt(E[expr^2]): the size the error is measured against
    how: str  # "exact" | "quadrature" | "Monte Carlo"

    @property
    def number(self) -> float:
        return float(self.value)


@dataclass(frozen=True)
class Limits:
    values: tuple[LimitValue, ...]
    derivation: limit_pass.Derivation

    def as_dict(self) -> dict:
        """name -> the exact sympy number, or a float."""
        return {v.name: (v.value if v.exact else float(v.value)) for v in self.values}


class _Integrals:
    """integrate/settle callbacks of the calculator: the kernels' rules at plain or raised
    orders; the Monte Carlo standard errors they incur."""

    def __init__(self, boost: bool):
        self.boost = boost
        self.mc: list[tuple[int, float]] = []  # (dimension, standard error)
        #: integrals with a kink along a curve, which no rule follows: (dimension, the distance
        #: of the rule's value from Monte Carlo's plus 3 standard errors)
        self.curved: list[tuple[int, float]] = []
        self.count = 0

    def integrate(self, q: Quadrature) -> sp.Expr:
        k = len(q.cov)
        c = np.array([[float(x) for x in row] for row in q.cov], dtype=np.float64)
        if k > MAX_QUAD_DIM:
            return sp.Float(self._monte_carlo(q.integrand, c), 17)
        expr = unnest_kinks(q.integrand)
        zs = [zsym(i) for i in range(k)]
        curved = any(linear_row(f.args[0], zs, constant=True) is None
                     for f in expr.atoms(*KINKED))
        self.count += 1
        itg = kernel_pass.integrand(f"L{self.count}", Quadrature(sp.expand(expr), q.cov),
                                    per_point=True)
        token = numpy_backend.BOOST.set(self.boost)
        try:
            value = float(numpy_backend.expectation(itg, c[None])[0])
        finally:
            numpy_backend.BOOST.reset(token)
        if curved and self.boost:
            mc, se = self._sample(expr, c)
            self.curved.append((k, abs(value - mc) + 3 * se))
        return sp.Float(value, 17)

    def _monte_carlo(self, integrand: sp.Expr, c: np.ndarray) -> float:
        mean, se = self._sample(integrand, c)
        self.mc.append((c.shape[0], se))
        return mean

    @staticmethod
    def _sample(integrand: sp.Expr, c: np.ndarray) -> tuple[float, float]:
        """E[f(z)], z ~ N(0, c), by antithetic Monte Carlo (a fixed seed): (mean, its
        standard error)."""
        k = c.shape[0]
        rng = np.random.default_rng(MC_SEED)
        w = rng.standard_normal((MC_SAMPLES // 2, k))
        z = np.concatenate([w, -w]) @ cholesky_psd(c[None])[0].T
        env = {f"z{i}": z[:, i] for i in range(k)}
        f = np.broadcast_to(numpy_backend.evaluate_expr(integrand, env), (z.shape[0],))
        pairs = 0.5 * (f[: len(w)] + f[len(w):])  # antithetic: the pairs are independent
        return float(pairs.mean()), float(pairs.std(ddof=1) / math.sqrt(len(pairs)))

    def settle(self, e: sp.Expr) -> sp.Expr:
        """Closed forms' helpers written out exactly where their arguments are exact
        (closedform.EXACT), the others evaluated numerically."""
        if not e.atoms(AppliedUndef):  # closedform.helper's calls
            return e

        def exact(call):
            rule = EXACT.get(type(call).__name__)
            args = call.args
            if rule is None or any(a.free_symbols or a.has(sp.Float, AppliedUndef)
                                   for a in args):
                return call
            out = rule(*args)
            return call if out is None else out

        e = e.replace(lambda x: isinstance(x, AppliedUndef), exact)
        if not e.atoms(AppliedUndef):
            return e
        return sp.Float(float(numpy_backend.evaluate_expr(e, {})), 17)


def compute(prog: ir.Program, tol: float, values: dict | None = None) -> Limits:
    """The reports' limits of a program (params bound to `values` over their defaults)."""
    prog = prog.bind(values)
    if prog.readout is not None and not prog.reports:
        raise TPError("this program has a readout and no reports: its kernels are net.kernels()",
                      hint="add e.g.  report m = mean(h ** 2)  for a limit")
    plain, raised = _Integrals(False), _Integrals(True)
    deriv, calc = limit_pass.derive(prog, plain.integrate, plain.settle)
    checked = deriv
    if not all(deriv.exact.values()):
        checked, _ = limit_pass.derive(prog, raised.integrate, raised.settle)
    out = []
    for rep in prog.reports:
        v = deriv.values[rep.name]
        # the report's size, what its error is measured against (its odd moments are 0)
        scale = math.sqrt(abs(float(calc.expect(calc.Z(rep.expr ** 2)))))
        if deriv.exact[rep.name]:
            out.append(LimitValue(rep.name, v, True, 0.0, scale, "exact"))
            continue
        best = checked.values[rep.name]
        err = abs(float(best) - float(v))
        how = "Monte Carlo" if raised.mc else "quadrature"
        if raised.mc:
            err += 3 * max(se for _, se in raised.mc) * max(scale, 1.0)
        if raised.curved:  # checked against Monte Carlo: at least that far off, possibly
            err += max(b for _, b in raised.curved) * max(scale, 1.0)
        out.append(LimitValue(rep.name, best, False, err, scale, how))
    _tell(out, tol, raised.mc, raised.curved)
    return Limits(tuple(out), checked)


def _tell(values: list[LimitValue], tol: float, mc: list, curved: list) -> None:
    missed = [v for v in values if not v.exact and v.error > tol * max(v.scale, 1e-300)]
    why = (f"; {len(curved)} integral(s) have a kink along a curve (a kinked function of a "
           "nonlinear argument), which the rules do not follow: their errors are bounded by "
           "Monte Carlo") if curved else ""
    if mc:
        dims = sorted({k for k, _ in mc})
        warn(f"Monte Carlo for {len(mc)} integral(s) of dimension {', '.join(map(str, dims))} "
             f"(beyond the quadrature's {MAX_QUAD_DIM}); their standard errors up to "
             f"{max(se for _, se in mc):.1e}: "
             + ", ".join(f"{v.name} = {float(v.value):.6g} +- {v.error:.1e}"
                         for v in values if not v.exact))
    elif missed:
        warn("the quadrature of " + ", ".join(
            f"{v.name} ({float(v.value):.10g}, estimated error {v.error:.1e} against its size "
            f"{v.scale:.3g})" for v in missed) + f" misses tol={tol:g}" + why)


def unnest_kinks(expr: sp.Expr) -> sp.Expr:
    """expr with every kinked function inside another kinked function's argument written by
    cases on its own kink: F(a + relu(L)) = step(L) F(a + L) + step(-L) F(a) (the functions'
    `branches`; exact off the null set L = 0). The kinks are then affine where the inner
    arguments are, which the quadrature rules split at; nested ones they cannot follow."""
    for outer in sorted(expr.atoms(*KINKED), key=sp.count_ops):
        inner = [g for g in outer.args[0].atoms(*KINKED) if g != outer]
        if not inner:
            continue
        g = min(inner, key=sp.count_ops)
        neg, pos = g.branches
        arg, rest = g.args[0], g.args[1:]
        split = (Step(arg) * expr.xreplace({g: pos(arg, *rest)})
                 + Step(-arg) * expr.xreplace({g: neg(arg, *rest)}))
        return unnest_kinks(split)
    return expr
