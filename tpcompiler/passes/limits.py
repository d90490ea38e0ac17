"""The NETSOR-transpose Master theorem as a calculator: the limits of a program's reports.

Every G-var's Z is a Gaussian part Zhat plus a correction Zdot (Tensor Programs IIb/III):

  Z^{W x}   = Zhat^{W x}   + var         sum_{W^T y} Z^y  E[dZ^x / dZhat^{W^T y}]
  Z^{W^T y} = Zhat^{W^T y} + var * ratio sum_{W x}   Z^x  E[dZ^y / dZhat^{W x}]

(W is rows x columns with entries of variance var / columns, ratio = rows / columns: applying W
sums over its columns, W^T over its rows). The Zhats form one Gaussian family per matrix and
direction (W and W^T are two), per bias and per `vector`; families are independent, and within
one Cov(Zhat^{W x}, Zhat^{W x'}) = var E[Z^x Z^x'] (var * ratio E[Z^y Z^y'] for W^T). Every Z is
then an explicit function of the Zhats (a sympy expression in hat symbols), so every limit,
E[phi(Z)], is an expectation over jointly Gaussian variables: passes/expect.py takes it
(Isserlis for polynomials, exactly; closed forms; quadrature), the caller's `integrate` the
integrals it requests. The derivatives are taken by Stein's lemma, E[df/dZhat_j] = sum_k
(Sigma_F^+)_{jk} E[Zhat_k f] over the family F of Zhat_j: exact for step and sign, whose
derivative as functions (0) would drop their Dirac mass.

A program without transposes is a NETSOR program: every Zdot is 0 and the Zs are Gaussian.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy as sp

from .. import ir
from ..errors import TPError
from .expect import Expectation, Quadrature

#: the widest Gaussian integral of a report (beyond expect.MAX_QUAD_DIM, by Monte Carlo)
MAX_LIMIT_DIM = 12


@dataclass(frozen=True)
class Correction:
    """One term of a G-var's Zdot: coefficient * Z(source), source an H-var."""

    partner: str  # the G-var of the other direction whose Zhat the derivative is taken by
    coefficient: sp.Expr
    source: sp.Expr  # the H-var (in G-var symbols) multiplied


@dataclass(frozen=True)
class GStep:
    """How a G-var's Z was derived: Zhat (its family) plus the corrections."""

    gvar: str
    family: str
    variance: sp.Expr  # Var(Zhat)
    corrections: tuple[Correction, ...]


@dataclass(frozen=True)
class Derivation:
    """Everything a report's limit was derived from (rendered by latex.limits_latex)."""

    steps: tuple[GStep, ...]
    z: dict  # G-var name -> Z as an expression in the hat symbols
    values: dict  # report name -> sympy number (exact, or a Float)
    exact: dict  # report name -> bool


def hat(g: ir.GVar) -> sp.Symbol:
    """The symbol of Zhat of a G-var (zhat3 for g3)."""
    return sp.Symbol("zhat" + g.name[1:], real=True)


def family(g: ir.GVar) -> str:
    """The Gaussian family of a G-var's Zhat: its matrix and direction, bias or vector."""
    return g.param + ("^T" if g.transposed else "")


class Calculator:
    """Derives the Zs of a bound program (no params, no inputs) and takes expectations.

    integrate(Quadrature) -> sympy number: the value of an integral passes/expect.py requests
    (its covariance has numbers only); the caller picks the rule and tracks its accuracy.
    settle(expr) -> sympy number: the value of a closed form's numeric helpers (passes/
    closedform.py), exact expressions left as they are."""

    def __init__(self, prog: ir.Program, integrate: Callable[[Quadrature], sp.Expr],
                 settle: Callable[[sp.Expr], sp.Expr]):
        self.p = prog
        self.settle = settle
        self.hats = {g.name: hat(g) for g in prog.gvars}
        self.gvar_of = {s: prog.gvar(n) for n, s in self.hats.items()}
        self.z: dict[str, sp.Expr] = {}
        self.zsub: dict[sp.Symbol, sp.Expr] = {}  # G-var symbol -> its Z (what Z() replaces)
        self.steps: list[GStep] = []
        self.memo: dict = {}
        self.E = Expectation(self._cov, self._family, integrate, self._where,
                             max_dim=MAX_LIMIT_DIM)
        for i, g in enumerate(prog.gvars):
            self._derive(g, prog.gvars[:i])

    # --- the Master theorem --------------------------------------------------------------

    def Z(self, h: sp.Expr) -> sp.Expr:  # noqa: N802 - the theorem's name
        """An H-var (in G-var symbols) as a function of the Zhats."""
        return h.xreplace(self.zsub)

    def expect(self, f: sp.Expr) -> sp.Expr:
        """E[f] for f in hat symbols, settled to a number."""
        if not f.free_symbols:
            return f
        key = ("E", f)
        if key not in self.memo:
            self.memo[key] = self.settle(self.E(f))
        return self.memo[key]

    def _derive(self, g: ir.GVar, earlier: tuple[ir.GVar, ...]) -> None:
        if g.op is ir.Op.INPUT:
            raise TPError("limits are computed for programs without data: this one reads the "
                          f"input '{g.arg.input}'", g.span,
                          "declare the program's sources with `vector z` (a fresh N(0, I) "
                          "vector) instead of `input`")
        if g.op not in (ir.Op.MATMUL, ir.Op.BIAS, ir.Op.VECTOR):
            raise TPError(f"limits of programs with {g.op.value} are not supported", g.span)
        corrections: list[Correction] = []
        if g.op is ir.Op.MATMUL:
            partners = [p for p in earlier if p.op is ir.Op.MATMUL and p.param == g.param
                        and p.transposed != g.transposed]
            if partners:
                grad = self.gradient(self.Z(g.arg), [self.hats[p.name] for p in partners])
                for p in partners:
                    c = self._scale(g) * grad[self.hats[p.name]]
                    if c != 0:
                        corrections.append(Correction(p.name, c, p.arg))
        dot = sum((c.coefficient * self.Z(c.source) for c in corrections), sp.S.Zero)
        self.z[g.name] = self.zsub[g.symbol] = self.hats[g.name] + dot
        self.steps.append(GStep(g.name, family(g), self._cov(self.hats[g.name],
                                                             self.hats[g.name]),
                                tuple(corrections)))

    def gradient(self, f: sp.Expr, wrt: list[sp.Symbol]) -> dict:
        """E[df/dZhat_j] for each j of `wrt` (one family), by Stein's lemma over the hats of
        that family f depends on: E[Zhat_k f] = sum_l Cov(k, l) E[df/dZhat_l]."""
        out = {j: sp.S.Zero for j in wrt}
        fam = self._family(wrt[0])
        deps = sorted((s for s in f.free_symbols if s in self.gvar_of
                       and self._family(s) == fam), key=lambda s: int(s.name[4:]))
        if not any(j in deps for j in wrt):
            return out
        cov = sp.Matrix([[self._cov(a, b) for b in deps] for a in deps])
        b = sp.Matrix([self.expect(a * f) for a in deps])
        exact = all(e.is_number and not e.has(sp.Float) for e in [*cov, *b])
        if exact and sp.simplify(cov.det()) != 0:
            sol = cov.LUsolve(b).applyfunc(sp.simplify)
        else:
            c = np.array(cov.evalf(), dtype=float)
            # the least-norm solution: Zhats that coincide (one vector multiplied twice)
            # share the derivative, whose sum along them is what the corrections read
            sol = sp.Matrix(np.linalg.pinv(c, rcond=1e-12, hermitian=True)
                            @ np.array(b.evalf(), dtype=float))
            sol = sol.applyfunc(sp.Float)
        for j, v in zip(deps, sol):
            if j in out:
                out[j] = v
        return out

    def limit(self, rep: ir.Report) -> sp.Expr:
        return self.expect(self.Z(rep.expr))

    # --- the callbacks of the expectation engine -----------------------------------------

    def _family(self, s: sp.Symbol) -> str:
        return family(self.gvar_of[s])

    def _where(self, s: sp.Symbol) -> str:
        g = self.gvar_of[s]
        loc = f" (line {g.span.line})" if g.span is not None else ""
        return f"{g.name}{loc}"

    def _scale(self, g: ir.GVar) -> sp.Expr:
        """var for W (a sum over its columns), var * ratio for W^T (over its rows)."""
        m = self.p.matrix(g.param)
        return m.var * (m.ratio if g.transposed else 1)

    def _cov(self, a: sp.Symbol, b: sp.Symbol) -> sp.Expr:
        ga, gb = self.gvar_of[a], self.gvar_of[b]
        if family(ga) != family(gb):
            return sp.S.Zero
        if ga.op is ir.Op.VECTOR:
            return sp.S.One
        if ga.op is ir.Op.BIAS:
            return self.p.bias(ga.param).var
        key = ("cov",) + tuple(sorted((ga.name, gb.name)))
        if key not in self.memo:
            self.memo[key] = self._scale(ga) * self.expect(self.Z(ga.arg) * self.Z(gb.arg))
        return self.memo[key]


def derive(prog: ir.Program, integrate: Callable[[Quadrature], sp.Expr],
           settle: Callable[[sp.Expr], sp.Expr]) -> tuple[Derivation, Calculator]:
    """The limits of a bound program's reports (ir.Program.bind first), and the calculator
    (for further expectations of the same program)."""
    if not prog.reports:
        raise TPError("this program reports no limits",
                      hint="add e.g.  report m = mean(h ** 2)  (after h is computed)")
    calc = Calculator(prog, integrate, settle)
    values, exact = {}, {}
    for rep in prog.reports:
        v = calc.limit(rep)
        exact[rep.name] = not v.has(sp.Float)
        values[rep.name] = sp.simplify(v) if exact[rep.name] else v
    return Derivation(tuple(calc.steps), dict(calc.z), values, exact), calc
