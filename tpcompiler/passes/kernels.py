"""NNGP and NTK of a program by the Master theorem, as a KernelProgram.

Forward (NETSOR, TP1): for G-vars a, b of the same matrix W (variance s^2/fan_in)
    Cov(Z^a, Z^b) = s^2 E[Z^{h_a} Z^{h_b}]        a = W h_a, b = W h_b
inputs: s^2 <x_a, x_b>/d; one bias vector: s_b^2 for every pair; different params: 0.
Backward (NETSOR-transpose under gradient independence, TP2), with dg = sqrt(n) df/dg:
    D(a, b) = sum over MatMuls c = W h_c using a, c' = W h_c' using b:
                 s_W^2 E[d h_c/d a . d h_c'/d b] D(c, c')
              + s_v^2 E[d h_out/d a . d h_out/d b]                      (the readout v)
NTK in neural-tangents' 'ntk' convention (sigma as a multiplier):
    Theta = NNGP + sum over G-var pairs (a, b) of one matrix or bias of D(a, b) Cov(a, b).
"""

from __future__ import annotations

import sys

import sympy as sp

from .. import conditional, ir, quadrature
from ..errors import TPError
from ..kernel_program import (
    GramEntry,
    Integrand,
    KernelProgram,
    Label,
    PointValue,
    is_first_point,
    quad_call,
    twin,
)
from .abc import kernel_refusals
from .expect import Expectation, Quadrature


class Sided(sp.Symbol):
    """A G-var at one point of a pair, its identity held as fields: `gvar` (the IR's name) and
    `side` (1 or 2). Printed as g_side."""

    __slots__ = ("gvar", "side")

    def __new__(cls, gvar: str, side: int):
        obj = sp.Symbol.__xnew__(cls, f"{gvar}_{side}", real=True)
        obj.gvar, obj.side = gvar, side
        return obj

    def __getnewargs_ex__(self):
        return (self.gvar, self.side), {}


def sided(name: str, side: int) -> Sided:
    return Sided(name, side)


def unsided(s: Sided) -> tuple[str, int]:
    return s.gvar, s.side


def at_side(h: sp.Expr, side: int) -> sp.Expr:
    return h.xreplace({s: sided(s.name, side) for s in h.free_symbols})


def integrand(name: str, q: Quadrature, layout: tuple = (), per_point: bool = False
              ) -> Integrand:
    """The Integrand of a quadrature request with its rule: it depends on the integrand's
    kinks and on which covariances are structural zeros (G-vars of different matrices/biases),
    decided at compile time."""
    pivot, kinked, forms, breaks = quadrature.plan(q.integrand, q.cov)
    given = None
    if not (kinked or breaks) and len(q.cov) > quadrature.MAX_SPLIT_DIM and \
            conditional.applies(q.integrand):
        # kinks off the origin (or oblique) that the rules above do not split, or smooth
        # coordinates that enter only as powers: the pivot by the tensor rule, the kinked
        # (or polynomial) coordinates in closed form given it
        given = conditional.conditional(q.integrand, len(q.cov))
    cond = () if given is None else given[1:]
    if given is not None:
        pivot = given[0]
    return Integrand(name, len(q.cov), q.integrand, pivot, kinked, forms, breaks, layout,
                     per_point, *cond)


class Builder:
    def __init__(self, prog: ir.Program):
        self.p = prog
        self.position = {g.name: i for i, g in enumerate(prog.gvars)}  # SSA order
        self.diag_gram: dict[tuple, GramEntry] = {}
        self.cross_gram: dict[tuple, GramEntry] = {}
        self.diag: list[tuple[sp.Symbol, sp.Expr]] = []
        self.cross: list[tuple[sp.Symbol, sp.Expr]] = []
        self.memo: dict[tuple, sp.Expr] = {}
        self.values: dict[tuple, sp.Symbol] = {}
        self.integrands: dict[sp.Expr, Integrand] = {}
        self.labels: dict[str, str] = {}
        self.ndiag = 0
        self.ncross = 0
        self.users: dict[str, list[ir.GVar]] = {g.name: [] for g in prog.gvars}
        for g in prog.gvars:
            if g.op is ir.Op.MATMUL:
                for s in g.arg.free_symbols:
                    self.users[s.name].append(g)
        self.E = Expectation(self.cov, self.param, self.quad, self.where,
                             lambda s: unsided(s)[1])

    # --- symbols -----------------------------------------------------------------------

    def _new(self, block: str, expr: sp.Expr, label: Label) -> sp.Expr:
        if expr.is_Number or expr.is_Symbol:
            return expr
        # value numbering: an expression already assigned in this block reuses its symbol
        # (e.g. D(g0, g0) == D(g1, g1) for a layer's bias and weight)
        known = self.values.get((block, expr))
        if known is not None:
            self.labels[known.name] += (label,)
            return known
        if block == "diag":
            s = PointValue(self.ndiag)
            self.ndiag += 1
            self.diag.append((s, expr))
        else:
            s = sp.Symbol(f"c{self.ncross}", real=True)
            self.ncross += 1
            self.cross.append((s, expr))
        self.labels[s.name] = (label,)
        self.values[(block, expr)] = s
        return s

    def param(self, s: sp.Symbol) -> str:
        return self.p.gvar(unsided(s)[0]).param

    def where(self, s: sp.Symbol) -> str:
        g = self.p.gvar(unsided(s)[0])
        loc = f" (line {g.span.line})" if g.span is not None else ""
        return f"{g.name}{loc}"

    def quad(self, q: Quadrature) -> sp.Expr:
        # which point and which vector each coordinate is (the Mehler series reads it); the
        # diag block's coordinates are all of the first point: no layout, no series
        layout = () if q.coords is None else tuple(
            (side, self.p.gvar(name).param) for name, side in map(unsided, q.coords))
        if layout and len({side for side, _ in layout}) < 2:
            layout = ()
        per_point = all(is_first_point(s) for row in q.cov for e in row
                        for s in e.free_symbols if not isinstance(s, ir.ParamSymbol))
        itg = integrand(f"Q{len(self.integrands)}", q, layout, per_point)
        key = (itg.dim, itg.expr, itg.pivot, itg.kinked, itg.kink_forms, itg.breaks,
               itg.layout, itg.per_point, itg.given, itg.given_forms, itg.given_terms,
               itg.pivot_breaks)
        itg = self.integrands.setdefault(key, itg)
        args = [q.cov[i][j] for i in range(len(q.cov)) for j in range(i + 1)]
        return quad_call(itg.name, itg.dim)(*args)

    # --- covariances -------------------------------------------------------------------

    def cov(self, a: sp.Symbol, b: sp.Symbol) -> sp.Expr:
        (na, sa), (nb, sb) = unsided(a), unsided(b)
        if sa == sb:
            v = self.cov_diag(na, nb)
            if sa != 2:
                return v
            return v.xreplace({s: twin(s) for s in v.free_symbols if is_first_point(s)})
        return self.cov_cross(na, nb) if sa == 1 else self.cov_cross(nb, na)

    def _order(self, a: str, b: str) -> tuple[str, str]:
        return (a, b) if self.position[a] <= self.position[b] else (b, a)

    def cov_diag(self, a: str, b: str) -> sp.Expr:
        a, b = self._order(a, b)
        key = ("S", "diag", a, b)
        if key not in self.memo:
            self.memo[key] = self._new("diag", self._cov_rule(a, b, 1, 1), Label("cov", a, b))
        return self.memo[key]

    def cov_cross(self, a: str, b: str) -> sp.Expr:
        key = ("S", "cross", a, b)
        if key not in self.memo:
            self.memo[key] = self._new("cross", self._cov_rule(a, b, 1, 2),
                                       Label("cov", a, b, same_point=False))
        return self.memo[key]

    def _cov_rule(self, a: str, b: str, sa: int, sb: int) -> sp.Expr:
        ga, gb = self.p.gvar(a), self.p.gvar(b)
        if ga.param != gb.param:
            return sp.S.Zero
        var = self.p.param_var(ga.param)
        if ga.op is ir.Op.BIAS:
            return var
        if ga.op is ir.Op.INPUT:
            return var * self.gram(ga.arg, gb.arg, sa == sb)
        return var * self.E(at_side(ga.arg, sa) * at_side(gb.arg, sb))

    def gram(self, ra: ir.InputRef, rb: ir.InputRef, same_point: bool) -> sp.Symbol:
        if same_point:
            key = tuple(sorted((ra, rb), key=str))
            table, prefix = self.diag_gram, "d"
        else:
            key = (ra, rb)
            table, prefix = self.cross_gram, "c"
        entry = table.get(key)
        if entry is None:
            if prefix == "d":
                sym = PointValue(self.ndiag)
                self.ndiag += 1
            else:
                sym = sp.Symbol(f"c{self.ncross}", real=True)
                self.ncross += 1
            entry = table[key] = GramEntry(sym, key[0], key[1])
            self.labels[sym.name] = (Label("gram", str(key[0]), str(key[1]), same_point),)
        return entry.symbol

    # --- the backward program ----------------------------------------------------------

    def dcov(self, a: str, b: str, block: str) -> sp.Expr:
        """D(a, b) = E[Z^{da} Z^{db}] at one point (diag) or across the two (cross)."""
        sa, sb = (1, 1) if block == "diag" else (1, 2)
        if block == "diag":
            a, b = self._order(a, b)
        key = ("D", block, a, b)
        if key in self.memo:
            return self.memo[key]
        ga, gb = self.p.gvar(a), self.p.gvar(b)
        total = sp.S.Zero
        r = self.p.readout
        if not isinstance(r.arg, ir.InputRef):
            da, db = sp.diff(r.arg, ga.symbol), sp.diff(r.arg, gb.symbol)
            if da != 0 and db != 0:
                total += self.p.param_var(r.matrix) * self.E(at_side(da, sa) * at_side(db, sb))
        for c in self.users[a]:
            da = sp.diff(c.arg, ga.symbol)
            for c2 in self.users[b]:
                if c2.param != c.param:
                    continue
                db = sp.diff(c2.arg, gb.symbol)
                var = self.p.param_var(c.param)
                if var == 0 or da == 0 or db == 0:
                    continue
                dd = self.dcov(c.name, c2.name, block)
                if dd == 0:
                    continue
                total += var * dd * self.E(at_side(da, sa) * at_side(db, sb))
        self.memo[key] = self._new(block, total, Label("dcov", a, b, block == "diag"))
        return self.memo[key]

    # --- the forward tangent kernel (rolled programs, passes/loops.py) -----------------

    def tangent(self, a: str, block: str) -> sp.Expr:
        """T(a) = lim <da/dtheta, da'/dtheta>/n summed over every parameter theta, in a program
        whose every matrix and bias makes one G-var (so T(a, b) = 0 for a != b):
            T(A x) = Cov,  T(b) = Cov = s_b^2,
            T(W h) = Cov + s_W^2 sum_i E[d_i h d_i h'] T(g_i)   (h a function of the g_i).
        The NTK is then NNGP + s_v^2 sum_i E[d_i h_out d_i h_out'] T(g_i): the chain rule
        forward, as neural-tangents' Dense layers propagate it, equal to the backward sum of
        `ntk` (D times Cov) in exact arithmetic."""
        key = ("T", block, a)
        if key in self.memo:
            return self.memo[key]
        g = self.p.gvar(a)
        total = self.cov_diag(a, a) if block == "diag" else self.cov_cross(a, a)
        if g.op is ir.Op.MATMUL:
            var = self.p.param_var(g.param)
            if var != 0:
                total += var * self._chain(g.arg, block)
        self.memo[key] = self._new(block, total, Label("tcov", a, a, block == "diag"))
        return self.memo[key]

    def _chain(self, h: sp.Expr, block: str) -> sp.Expr:
        """sum_i E[d_i h d_i h'] T(g_i) over the G-vars g_i that h reads."""
        sa, sb = (1, 1) if block == "diag" else (1, 2)
        total = sp.S.Zero
        for name in ir.gvars_of(h):
            dh = sp.diff(h, ir.gsym(name))
            if dh == 0:
                continue
            t = self.tangent(name, block)
            if t == 0:
                continue
            total += t * self.E(at_side(dh, sa) * at_side(dh, sb))
        return total

    def ntk_forward(self, block: str, nngp: sp.Expr) -> sp.Expr:
        r = self.p.readout
        total = nngp
        var = self.p.param_var(r.matrix)
        if not isinstance(r.arg, ir.InputRef) and var != 0:
            total += var * self._chain(r.arg, block)
        return self._new(block, total, Label("ntk"))

    # --- outputs -----------------------------------------------------------------------

    def program(self, outputs: dict, refused: dict, loops: tuple = ()) -> KernelProgram:
        """The kernel program of what was derived (the blocks in creation order)."""
        return KernelProgram(
            inputs=self.p.inputs,
            diag_gram=tuple(self.diag_gram.values()),
            diag=tuple(self.diag),
            cross_gram=tuple(self.cross_gram.values()),
            cross=tuple(self.cross),
            outputs=outputs,
            integrands=tuple(self.integrands.values()),
            labels=self.labels,
            refused=refused,
            loops=loops,
        )

    def nngp(self, block: str) -> sp.Expr:
        r = self.p.readout
        sa, sb = (1, 1) if block == "diag" else (1, 2)
        var = self.p.param_var(r.matrix)
        if isinstance(r.arg, ir.InputRef):
            inner = self.gram(r.arg, r.arg, block == "diag")
        else:
            inner = self.E(at_side(r.arg, sa) * at_side(r.arg, sb))
        bias = self.p.param_var(r.bias) if r.bias else sp.S.Zero
        return self._new(block, var * inner + bias, Label("nngp"))

    def ntk(self, block: str, nngp: sp.Expr) -> sp.Expr:
        by_param: dict[str, list[ir.GVar]] = {}
        for g in self.p.gvars:
            by_param.setdefault(g.param, []).append(g)
        total = nngp
        for param, gs in by_param.items():
            if self.p.param_var(param) == 0:
                continue
            for ga in gs:
                for gb in gs:
                    if block == "diag" and self.position[gb.name] < self.position[ga.name]:
                        continue
                    mult = 2 if block == "diag" and ga.name != gb.name else 1
                    d = self.dcov(ga.name, gb.name, block)
                    if d == 0:
                        continue
                    c = self.cov_diag(ga.name, gb.name) if block == "diag" else \
                        self.cov_cross(ga.name, gb.name)
                    total += mult * d * c
        return self._new(block, total, Label("ntk"))


def refusals(prog: ir.Program) -> dict[str, str]:
    """kind -> why that kernel is not the limit of this program (absent: it is).

    Only the parametrization refuses a kernel (passes/abc.py). A nonlinearity outside a
    theorem's hypotheses (exp of an argument not bounded above, whose NTK neural-tangents
    computes too) is not a refusal: its NTK recursion is well defined, so it is computed and
    CompiledNetwork warns on the first NTK call (ranges.ntk_caveats says which exp and why)."""
    return {k: v for k, v in kernel_refusals(prog).items() if v is not None}


def derive(prog: ir.Program, roll=None) -> KernelProgram:
    """The kernel program of `prog`. roll(builder), when given (passes/loops.py), derives the
    rolled loops first and returns them; the NTK is then the forward tangent kernel's
    (`ntk_forward`), else the backward sum (`ntk`)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        b = Builder(prog)
        refused = refusals(prog)
        loops = tuple(roll(b)) if roll is not None else ()
        outputs = {}
        if len(refused) < 2:
            nd, nc = b.nngp("diag"), b.nngp("cross")  # the NTK sums on top of the NNGP
            if "nngp" not in refused:
                outputs["nngp"] = (nd, nc)
            if "ntk" not in refused:
                ntk = b.ntk if roll is None else b.ntk_forward
                outputs["ntk"] = (ntk("diag", nd), ntk("cross", nc))
    except RecursionError:
        raise TPError("the program is too deep to derive its kernels",
                      hint="reduce the loop counts") from None
    finally:
        sys.setrecursionlimit(limit)
    return b.program(outputs, refused, loops)


def build_kernel_program(prog: ir.Program) -> KernelProgram:
    """Derive the NNGP (and, where the theorem covers it, NTK) recursions of a program."""
    return derive(prog)
