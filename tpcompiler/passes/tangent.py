"""The kernels' derivatives in the program's params: forward mode over the kernel program.

`tangent(kp, n)` returns the kernel program with, besides its kinds, the outputs
grad_kind(kind, m) = dK/dtheta_m for m < n. Every assignment s = e gains, per param, an
assignment of its directional derivative: sympy's chain rule over the program's symbols, with
the rules below where sympy has none. A per-point value's derivative is a per-point value
too, so a pair reads the second point's derivative as its twin, as it reads the value.

Rules beyond sympy's:
- the closed forms' helpers: their partial derivatives in (q1, q2, k), written in
  helpers.py (*_d, relu_relu_dq) where a zero variance or parallel inputs need care, else
  here as formulas (Price's theorem: d/dk E[f(u) g(v)] = E[f'(u) g'(v)]);
- a quadrature E[f(z)], z ~ N(0, C): dE = sum_{i >= j} E[d_i d_j f] dC_ij, the diagonal
  terms halved (Price's theorem), each E[d_i d_j f] a new integrand with its own rule
  (quadrature.plan). A second derivative that meets a kink or a jump (a Dirac delta) is
  refused: the weak derivative of the NTK drops exactly that delta.
Anything else (the truncated series of shifted kinks, ...) is a TPError that names it: a
derivative we cannot vouch for is not computed.

It reads the program before CSE (passes/__init__.py): the arc-cosine helpers are then nested
calls, relu_relu_rt(rootdet(q1, q2, k), angle(q1, q2, rootdet(..), k), k), so their
derivative is taken in (q1, q2, k), where it is finite, not through r and theta.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import sympy as sp

from .. import quadrature
from ..errors import TPError
from ..functions import KINKED, Sign, Step
from ..ir import ParamSymbol
from ..kernel_program import (
    Integrand,
    KernelProgram,
    PointValue,
    QuadCall,
    is_first_point,
    quad_call,
    twin,
    untwin,
)
from .closedform import helper

HALF = sp.Rational(1, 2)


def grad_kind(kind: str, m: int) -> str:
    """The output name of dK/dtheta_m of kind `kind` (a Python name: generated code uses it)."""
    return f"d{m}_{kind}"


class NoRule(Exception):
    """What has no derivative rule (the message names it): tangent() turns it into a
    TPError; diagnose.py says what it needed it for."""


def _name(e: sp.Expr) -> str:
    return type(e).__name__


class Tangent:
    """Forward mode over kp: n tangents, the m-th seeded on the param theta_m (params=True) or
    on what the caller puts in `tan` (params=False: the params are constants)."""

    def __init__(self, kp: KernelProgram, n: int, params: bool = True):
        self.kp, self.n, self.params = kp, n, params
        self.tan: dict = {}  # (symbol, m) -> its derivative's symbol (absent: 0)
        self.memo: dict = {}
        self.itgs = {q.name: q for q in kp.integrands}
        self.new: dict = {}  # (integrand, i, j) -> Integrand of E[d_i d_j f] (or None: 0)
        self.top = 1 + max([s.index for s, _ in kp.assignments() if isinstance(s, PointValue)]
                           + [g.symbol.index for g in kp.diag_gram
                              if isinstance(g.symbol, PointValue)], default=-1)

    # --- expressions -----------------------------------------------------------------

    def d(self, e: sp.Expr, m: int) -> sp.Expr:
        key = (e, m)
        if key not in self.memo:
            self.memo[key] = self._d(e, m)
        return self.memo[key]

    def _d(self, e: sp.Expr, m: int) -> sp.Expr:
        if isinstance(e, ParamSymbol):
            return sp.S.One if self.params and e.index == m else sp.S.Zero
        if e.is_Symbol:
            if isinstance(e, PointValue) and e.point == 2:
                t = self.tan.get((untwin(e), m))
                return sp.S.Zero if t is None else t if t.is_Number else twin(t)
            return self.tan.get((e, m), sp.S.Zero)
        if not e.free_symbols:
            return sp.S.Zero
        if e.is_Add:
            return sp.Add(*[self.d(a, m) for a in e.args])
        if e.is_Mul:
            out = []
            for i, a in enumerate(e.args):
                da = self.d(a, m)
                if da != 0:
                    out.append(sp.Mul(*e.args[:i], da, *e.args[i + 1:]))
            return sp.Add(*out)
        if e.is_Pow:
            base, x = e.args
            if x.free_symbols:
                raise NoRule("a power with a variable exponent")
            db = self.d(base, m)
            return sp.S.Zero if db == 0 else x * base ** (x - 1) * db
        if isinstance(e, QuadCall):
            return self._quad(e, m)
        rule = RULES.get(_name(e))
        if rule is not None:
            return rule(self, e, m)
        if _name(e) in REFUSED or not isinstance(e, sp.Function):
            raise NoRule(_name(e))
        return self._chain(e, m)

    def _chain(self, e: sp.Expr, m: int) -> sp.Expr:
        """sympy's derivative of a function it knows (exp, erf, the IR's functions with their
        weak derivatives at kinks)."""
        out = []
        for i, a in enumerate(e.args):
            da = self.d(a, m)
            if da == 0:
                continue
            part = e.fdiff(i + 1)
            if part.has(sp.Derivative, sp.Subs, sp.DiracDelta):
                raise NoRule(_name(e))
            out.append(part * da)
        return sp.Add(*out)

    def ds(self, args, m: int) -> list[sp.Expr]:
        return [self.d(a, m) for a in args]

    # --- quadratures (Price's theorem) ---------------------------------------------

    def _quad(self, e: QuadCall, m: int) -> sp.Expr:
        itg = self.itgs[e.integrand]
        out, n = [], 0
        for i in range(itg.dim):
            for j in range(i + 1):
                da = self.d(e.args[n], m)
                n += 1
                if da == 0:
                    continue
                second = self._second(itg, e.args, i, j)
                if second is not None:
                    out.append((HALF if i == j else 1) * second * da)
        return sp.Add(*out)

    def _second(self, itg: Integrand, args, i: int, j: int):
        """The call E[d_i d_j f] on the same covariance (None when d_i d_j f is 0)."""
        key = (itg.name, i, j)
        if key not in self.new:
            zi, zj = sp.Symbol(f"z{i}", real=True), sp.Symbol(f"z{j}", real=True)
            for f in itg.expr.atoms(*KINKED):
                # a jump differentiated once, or a kink twice (hits counts z_i twice when
                # i == j), is a Dirac delta
                hits = (zi in f.args[0].free_symbols) + (zj in f.args[0].free_symbols)
                if hits and (isinstance(f, (Step, Sign)) or hits >= 2):
                    raise NoRule(f"the integral {itg.name} ({type(f).__name__} of a "
                                   f"coordinate differentiated twice: a Dirac delta)")
            expr = sp.diff(itg.expr, zi, zj)
            if expr.has(sp.Derivative, sp.Subs, sp.DiracDelta):
                raise NoRule(f"the integral {itg.name}")
            if expr == 0:
                self.new[key] = None
            else:
                k = itg.dim
                tri = iter(args)
                low = [[next(tri) for _ in range(r + 1)] for r in range(k)]
                cov = [[low[max(a, b)][min(a, b)] for b in range(k)] for a in range(k)]
                pivot, kinked, forms, breaks = quadrature.plan(expr, cov)
                self.new[key] = Integrand(f"{itg.name}d{i}{j}", k, expr, pivot, kinked,
                                          forms, breaks, (), itg.per_point)
        made = self.new[key]
        return None if made is None else quad_call(made.name, made.dim)(*args)

    # --- the program ---------------------------------------------------------------

    def block(self, assigns, prefix: str) -> tuple:
        out = []
        for s, e in assigns:
            out.append((s, e))
            for m in range(self.n):
                de = self.d(e, m)
                if de == 0:
                    continue
                if is_first_point(s):
                    t = PointValue(self.top)
                    self.top += 1
                else:
                    t = sp.Symbol(f"{prefix}{m}_{s.name}", real=True)
                self.tan[(s, m)] = t
                out.append((t, de))
        return tuple(out)


@functools.cache
def _gelu_partials() -> dict[str, tuple[tuple[sp.Symbol, ...], tuple[sp.Expr, ...]]]:
    """sympy's partial derivatives of gelu's closed forms (helpers.gelu_gelu, dgelu_dgelu) in
    (q1, q2, k), from their formulas with A = atan2(k, sqrt(D)): A's derivatives are rational,
    so atan2 survives only in d gelu_gelu / dk, which is dgelu_dgelu (Price)."""
    q1, q2, k = sp.symbols("q1 q2 k", real=True)
    p = (1 + q1) * (1 + q2)
    d = 1 + q1 + q2 + q1 * q2 - k ** 2  # >= 1 + q1 + q2 for a covariance
    a = sp.atan2(k, sp.sqrt(d))
    gg = k / 4 + (k * a + (k ** 2 + q1 * q2 * d) / (p * sp.sqrt(d))) / (2 * sp.pi)
    dd = sp.Rational(1, 4) + (a + k / sp.sqrt(d) * (1 / d + (1 - q1 * q2) / p + 1)) / (2 * sp.pi)
    out = {"gelu_gelu": (sp.diff(gg, q1), sp.diff(gg, q2), None),
           "dgelu_dgelu": tuple(sp.diff(dd, v) for v in (q1, q2, k))}
    for parts in out.values():
        assert not any(e is not None and e.has(sp.atan2) for e in parts)
    return {name: ((q1, q2, k), parts) for name, parts in out.items()}


def _helper_rules() -> dict[str, Callable]:
    """name -> rule(tangent, call, m) for the closed forms' helpers."""

    def arc(q_args):
        q1, q2, k = q_args
        return q1, q2, k, helper("rootdet", q1, q2, k)

    def angle_args(t):
        if _name(t) != "angle":
            raise NoRule("step_step of an angle not taken from its covariance")
        q1, q2, r, k = t.args
        return q1, q2, k, r

    def relu_relu(T, q1, q2, k, r, t_or_step, m):
        dq1, dq2, dk = T.ds((q1, q2, k), m)
        out = t_or_step * dk
        if dq1 != 0 or dq2 != 0:
            out += helper("relu_relu_dq", q1, q2, r, dq1, dq2)
        return out

    def step_step(T, q1, q2, k, r, m):
        dq1, dq2, dk = T.ds((q1, q2, k), m)
        if dq1 == dq2 == dk == 0:
            return sp.S.Zero
        return helper("step_step_d", q1, q2, r, k, dq1, dq2, dk)

    def rt(T, e, m):
        r, t, k = e.args
        if _name(r) != "rootdet" or _name(t) != "angle" or r.args[2] != k:
            raise NoRule("relu_relu_rt of pieces not taken from its covariance")
        q1, q2, _ = r.args
        return relu_relu(T, q1, q2, k, r, helper("step_step_q", q1, q2, t), m)

    def gauss_gauss(T, e, m):
        q1, q2, k = e.args
        dq1, dq2, dk = T.ds(e.args, m)
        return -e ** 3 * ((1 + 2 * q2) * dq1 + (1 + 2 * q1) * dq2 - 4 * k * dk)

    def erf_erf(T, e, m):
        q1, q2, k = e.args
        dq1, dq2, dk = T.ds(e.args, m)
        return (4 / sp.pi) * helper("gauss_gauss", *e.args) * (
            dk - k * (dq1 / (1 + 2 * q1) + dq2 / (1 + 2 * q2)))

    def erf_lin(T, e, m):
        q1, _, k = e.args
        dq1, _, dk = T.ds(e.args, m)
        a = 1 + 2 * q1
        return 2 / sp.sqrt(sp.pi) * (dk * a ** -HALF - k * dq1 * a ** sp.Rational(-3, 2))

    def gelu_pair(T, e, m):
        names, parts = _gelu_partials()[_name(e)]
        at = dict(zip(names, e.args))
        out = []
        for arg, part in zip(e.args, parts):
            darg = T.d(arg, m)
            if darg == 0:
                continue
            # the k-part of gelu_gelu is dgelu_dgelu (Price's theorem), a helper call
            out.append((helper("dgelu_dgelu", *e.args) if part is None else part.xreplace(at))
                       * darg)
        return sp.Add(*out)

    def gelu_mean(T, e, m):
        (q,) = e.args
        return (2 + q) / (2 * (1 + q) ** sp.Rational(3, 2) * sp.sqrt(2 * sp.pi)) * T.d(q, m)

    def guarded(name, picks):
        """A helper *_d of helpers.py taking the call's arguments and then their derivatives."""
        def rule(T, e, m):
            args = [e.args[i] for i in picks]
            ds = T.ds(args, m)
            return sp.S.Zero if all(x == 0 for x in ds) else helper(name, *e.args, *ds)
        return rule

    return {
        "relu_relu_rt": rt,
        "relu_relu": lambda T, e, m: relu_relu(T, *arc(e.args), helper("step_step", *e.args),
                                               m),
        "step_step_q": lambda T, e, m: step_step(T, *angle_args(e.args[2]), m),
        "step_step_t": lambda T, e, m: step_step(T, *angle_args(e.args[0]), m),
        "step_step": lambda T, e, m: step_step(T, *arc(e.args), m),
        "step_mean": lambda T, e, m: sp.S.Zero,
        "relu_mean": guarded("relu_mean_d", (0,)),
        "relu_step": guarded("relu_step_d", (0, 1, 2)),
        "lin_step": guarded("lin_step_d", (0, 1)),
        "gauss_gauss": gauss_gauss,
        "erf_erf": erf_erf,
        "erf_lin": erf_lin,
        "gelu_lin": lambda T, e, m: T.d(e.args[2], m) / 2,
        "gelu_mean": gelu_mean,
        "gelu_gelu": gelu_pair,
        "dgelu_dgelu": gelu_pair,
        "expm1h": lambda T, e, m: sp.exp(e.args[0]) * T.d(e.args[0], m),
    }


RULES = _helper_rules()
#: helpers whose derivative is not written: a program that calls them is refused
REFUSED = ("rootdet", "angle", "atan_unit", "atan2_pos", "th", "snapped_det")


def _live(kp: KernelProgram) -> KernelProgram:
    """kp without the assignments no output reads (directly or through others): the kinds not
    asked for and their derivatives."""
    need = set()
    for d, c in kp.outputs.values():
        need |= d.free_symbols | c.free_symbols

    def keep(assigns):
        out = []
        for s, e in reversed(assigns):
            if s in need:
                out.append((s, e))
                need.update(e.free_symbols)
        return tuple(reversed(out))

    cross = keep(kp.cross)
    need |= {untwin(s) for s in need if isinstance(s, PointValue)}  # e_i read by a pair: d_i
    diag = keep(kp.diag)
    used = {type(f).integrand for _, e in diag + cross for f in e.atoms(QuadCall)}
    used |= {type(f).integrand for d, c in kp.outputs.values() for f in (d + c).atoms(QuadCall)}
    return dataclasses.replace(kp, diag=diag, cross=cross,
                               integrands=tuple(q for q in kp.integrands if q.name in used))


def tangent(kp: KernelProgram, n: int, kinds=None) -> KernelProgram:
    """kp (straight-line, before CSE) with the outputs grad_kind(kind, m) = dK/dtheta_m of
    each kind (of `kinds`, default all), m < n; only what those outputs need is kept. TPError
    when a derivative has no rule (see the module docstring)."""
    if kp.loops:
        kp = kp.unrolled()
    if kinds is not None:
        kp = _live(dataclasses.replace(kp, outputs={k: v for k, v in kp.outputs.items()
                                                    if k in kinds}))
    T = Tangent(kp, n)
    try:
        diag = T.block(kp.diag, "dt")
        cross = T.block(kp.cross, "du")
        outputs = dict(kp.outputs)
        for kind, (dexpr, cexpr) in kp.outputs.items():
            for m in range(n):
                outputs[grad_kind(kind, m)] = (T.d(dexpr, m), T.d(cexpr, m))
    except NoRule as why:
        raise TPError(f"the kernels' derivatives in the params are not available for this "
                      f"program: {why} has no derivative rule",
                      hint="derivatives cover the closed forms of relu, step, erf, the "
                           "Gaussian, sums and products, and integrals of smooth functions; "
                           "`tpc kernel-program` shows what this program computes") from None
    made = tuple(q for q in T.new.values() if q is not None)
    return _live(dataclasses.replace(kp, diag=diag, cross=cross, outputs=outputs,
                                     integrands=kp.integrands + made))
