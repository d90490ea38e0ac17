"""NNGP and NTK of a spatial program (conv, avgpool, gap, layernorm): a SpatialProgram.

Every kernel-program symbol of a spatial vector is an array over positions: a pair's value
c[p, q] between position p of the first point and q of the second; a per-point value d[p] at
position p (the position-diagonal). Elementwise code is the scalar Master-theorem code of
passes/kernels.py read per position pair; four linear maps move between grids:
    conv   Cov(W*h_a, W*h_b)[p, q] = s^2/K sum_o E[h_a h_b'][p + o - low, q + o - low]
    pool   block means on both axes (gap: the mean over all positions)
    flat   the mean of the position-diagonal (a readout of a spatial vector: Flatten)
(neural-tangents' Conv with 'ntk' parametrization, AvgPool, GlobalAvgPool, Flatten). A
pooled value at one point needs that point's off-diagonal pairs, E[h(x)_p h(x)_q]: the
per-point stage evaluates those pair statements at (x, x), their position-diagonal replaced by
the per-point values (exact where the two positions coincide).

layernorm(e) = (e - mu) / sqrt(v + eps), mu = E[e] and v = E[e^2] - mu^2 per point and
position (NETSOR+: the averages over the width converge to these). Its covariances follow from
e's; the derivative of mu and v is O(1/n) per coordinate and drops out of the NTK.

attend(q, k, v) = A v per point, A = softmax over positions of the logits q_p . k_j / n,
which converge to the per-point moment L(x) = E[q_p(x) k_j(x)] (a pair statement evaluated at
(x, x), as a pooled variance reads it): A(x) = softmax(L(x)) is a per-point P x P array
(attw1), and a covariance with an attended vector is the values' one mixed by it on that
side: A(x) M A(x')^T (att2; att1 its position-diagonal at one point).

The NTK is the forward tangent kernel (Builder.tangent): T(conv) = Cov + s^2 conv(sum_i
E[d_i h d_i h'] T(g_i)), pooled by pool, divided by the layernorm's scales, mixed by the
attention weights (the logits' own tangent is O(1/n): docs/theory.md). It needs T = 0
between distinct vectors, which fails for a weight used twice or a normalised vector combined
with its own argument: the NTK of those programs is refused with the reason.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field

import sympy as sp

from .. import ir
from ..errors import TPError
from ..kernel_program import KernelProgram, Label, PointValue, twin
from .kernels import Builder, at_side, refusals, unsided


class SpatialOp(sp.Function):
    """A linear map between grids, as a kernel-program call: `op` is conv2 / pool2 / flat2
    (a pair's array) or conv1 / pool1 / flat1 / mean1 (a point's), `specs` its ir.Stencil or
    ir.Pool per side (the grid of each axis). Attention: attw1 (a point's softmax weights,
    P x P flattened, from its logits), att2 / att1 (a moment mixed by the weights of the
    sides whose spec is an ir.Attend, None for a side left as it is: args [weights of side
    1], the moment, [its per-point diagonal (att1)], [weights of side 2]), attm1 (a mean)."""

    op: str = ""
    specs: tuple = ()


@functools.cache
def spatial_op(op: str, specs: tuple) -> type[SpatialOp]:
    tag = "_".join(str(abs(hash(s)) % 10**8) for s in specs)
    return type(f"{op}_{tag}", (SpatialOp,), {"op": op, "specs": specs})


@dataclass(frozen=True)
class SpatialProgram:
    """The statements of both blocks in one dependency order: ("diag", d_i, expr) runs per
    point, ("cross", c_i, expr) per pair; `pointwise` names the cross statements the per-point
    stage also runs at (x, x) (what a pooled per-point value reads), `exact` maps such a
    statement to its per-point value (its position-diagonal). `grids[name]` is the grid of a
    per-point symbol or the pair of grids of a pair's symbol."""

    kernel: KernelProgram  # the statements by block (integrands, labels, outputs, refusals)
    order: tuple[tuple[str, sp.Symbol, sp.Expr], ...]
    pointwise: frozenset
    exact: dict
    grids: dict
    inputs: tuple[ir.Input, ...] = field(default=())

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.kernel.kinds

    @property
    def refused(self) -> dict:
        return self.kernel.refused

    @property
    def integrands(self) -> tuple:
        return self.kernel.integrands

    def text(self) -> str:
        lines = []
        for block, s, e in self.order:
            where = " (also per point)" if s.name in self.pointwise else ""
            g = self.grids.get(s.name)
            shape = f"  # on {g}" if g else ""
            lines.append(f"{block:5} {s} = {_show(e)}{where}{shape}")
        for kind, (d, c) in self.kernel.outputs.items():
            lines.append(f"{kind}: per point {d}, per pair {c}")
        return "\n".join(lines) + "\n"


def _show(e: sp.Expr) -> str:
    if isinstance(e, SpatialOp):
        return f"{e.op}[{', '.join(map(str, e.specs))}]({', '.join(map(str, e.args))})"
    return sp.sstr(e)


class SpatialBuilder(Builder):
    def __init__(self, prog: ir.Program):
        super().__init__(prog)
        self.order: list[tuple[str, sp.Symbol, sp.Expr]] = []
        self.grids: dict[str, object] = {}
        self.exact: dict[str, sp.Symbol] = {}
        self.reads_pairs: set[str] = set()  # cross symbols a per-point statement reads
        self._group = _param_groups(prog)
        self.ntk_refusal: str | None = None

    # --- bookkeeping -----------------------------------------------------------------------

    def _new(self, block, expr, label):
        n = len(self.diag) + len(self.cross)
        s = super()._new(block, expr, label)
        if len(self.diag) + len(self.cross) > n:
            self.order.append((block, s, expr))
        return s

    def gram(self, ra, rb, same_point):
        table = self.diag_gram if same_point else self.cross_gram
        n = len(table)
        s = super().gram(ra, rb, same_point)
        if len(table) > n:
            self.order.append(("diag" if same_point else "cross", s, None))
        return s

    def param(self, s: sp.Symbol) -> str:
        # a derived vector is correlated with what it is made of: one class for all of them
        return self._group(unsided(s)[0])

    def grid(self, name: str) -> tuple[int, ...]:
        g = self.p.gvar(name)
        return g.grid

    # --- covariances -------------------------------------------------------------------------

    def _cov_rule(self, a, b, sa, sb):
        ga, gb = self.p.gvar(a), self.p.gvar(b)
        if ga.op in ir.DERIVED or gb.op in ir.DERIVED:
            return self._derived_cov(ga, gb, sa, sb)
        if ga.param != gb.param or ga.op is not ir.Op.CONV:
            return super()._cov_rule(a, b, sa, sb)
        var = self.p.param_var(ga.param)
        block = "diag" if sa == sb else "cross"
        if isinstance(ga.arg, ir.InputRef):
            inner = self.gram(ga.arg, gb.arg, sa == sb)
            if sa != sb:
                self.exact.setdefault(inner.name, self.gram(ga.arg, gb.arg, True))
        else:
            inner = self._moment(ga.arg, gb.arg, block)
        return var * self._linear("conv", (ga.spatial, gb.spatial), inner, block)

    def _moment(self, ha: sp.Expr, hb: sp.Expr, block: str) -> sp.Expr:
        """E[h_a h_b] at one point (diag) or E[h_a h_b'] across the pair, as a symbol; a pair's
        moment is paired with the per-point one (its position-diagonal at (x, x))."""
        if block == "diag":
            return self._new("diag", self.E(at_side(ha, 1) * at_side(hb, 1)), Label("moment"))
        d = self._moment(ha, hb, "diag") if self._same_grid(ha, hb) else None
        c = self._new("cross", self.E(at_side(ha, 1) * at_side(hb, 2)),
                      Label("moment", same_point=False))
        if d is not None and c.is_Symbol:
            self.exact.setdefault(c.name, d)
        return c

    def _same_grid(self, ha, hb) -> bool:
        return _grid_of(self.p, ha) == _grid_of(self.p, hb)

    def _linear(self, op: str, specs: tuple, inner: sp.Expr, block: str) -> sp.Expr:
        """conv / pool / flat of a moment array, as its own statement."""
        if inner == 0:
            return sp.S.Zero
        if block == "diag" and op != "flat":
            if specs[0] != specs[1]:
                raise TPError("one weight applied with two different filters or paddings at "
                              "one point is not supported", hint="use separate weights")
            if op == "pool":
                # the pooled variance reads the point's off-diagonal pairs: the pair moment
                # evaluated at (x, x)
                pairs = self._pair_twin(inner)
                self.reads_pairs.add(pairs.name)
                call = spatial_op("pool1", specs)(pairs, inner)
            else:
                call = spatial_op(op + "1", specs[:1])(inner)
        else:
            call = spatial_op(op + ("1" if block == "diag" else "2"), specs)(inner)
        sym = self._new(block, call, Label(op, same_point=block == "diag"))
        return sym

    def _pair_twin(self, d: sp.Symbol) -> sp.Symbol:
        """The pair symbol whose per-point diagonal is d."""
        for c, dd in self.exact.items():
            if dd == d:
                return sp.Symbol(c, real=True)
        raise AssertionError(f"no pair statement for {d}")

    def _derived_cov(self, ga: ir.GVar, gb: ir.GVar, sa: int, sb: int) -> sp.Expr:
        block = "diag" if sa == sb else "cross"
        if ga.op is ir.Op.NORM or gb.op is ir.Op.NORM:
            if gb.op is ir.Op.NORM and ga.op is not ir.Op.NORM:
                ga, gb, sa, sb = gb, ga, sb, sa
            ea = ga.arg
            eb = gb.arg if gb.op is ir.Op.NORM else gb.symbol
            mom = self._expect_product(ea, sa, eb, sb)
            mu_a = self._mean(ea, sa)
            mu_b = self._mean(eb, sb)
            scale = self._norm_scale(ga, sa)
            if gb.op is ir.Op.NORM:
                scale = scale * self._norm_scale(gb, sb)
            return (mom - mu_a * mu_b) / scale
        if ga.op is ir.Op.ATTEND or gb.op is ir.Op.ATTEND:
            return self._attended_cov(ga, gb, sa, sb)
        if ga.op is ir.Op.POOL and gb.op is ir.Op.POOL:
            mom = self._expect_product(ga.arg, sa, gb.arg, sb)
            if mom == 0:
                return sp.S.Zero
            sym = self._new(block, mom, Label("moment", same_point=block == "diag"))
            if block == "diag" and sym.is_Symbol:
                self._moment_pair(ga.arg, gb.arg, sym)
            return self._linear("pool", (ga.spatial, gb.spatial), sym, block)
        # a pooled vector and an unpooled one: zero unless they share their making
        other = gb if ga.op is ir.Op.POOL else ga
        pooled = ga if ga.op is ir.Op.POOL else gb
        mom = self._expect_product(pooled.arg, 1, other.symbol, 2)
        if mom != 0:
            raise TPError("a pooled vector combined with a vector correlated with it at another "
                          "grid is not supported", other.span, "pool both")
        return sp.S.Zero

    # --- attention ---------------------------------------------------------------------------

    def _attended_cov(self, ga: ir.GVar, gb: ir.GVar, sa: int, sb: int) -> sp.Expr:
        """Cov(a, b) with a or b attended: the moment of what they mix (the values; the
        vector itself on a side without attention), mixed by each attended side's weights."""
        block = "diag" if sa == sb else "cross"
        left = ga if ga.op is ir.Op.ATTEND else None
        right = gb if gb.op is ir.Op.ATTEND else None
        ea = ga.arg if left else ga.symbol
        eb = gb.arg if right else gb.symbol
        mom = self._expect_product(ea, sa, eb, sb)
        if mom == 0:
            return sp.S.Zero
        sym = self._new(block, mom, Label("moment", same_point=block == "diag"))
        if block == "diag" and sym.is_Symbol:
            self._moment_pair(ea, eb, sym)
        return self._mix(left, right, sym, block)

    def _mix(self, left: ir.GVar | None, right: ir.GVar | None, inner: sp.Expr,
             block: str) -> sp.Expr:
        """A(x) M A(x')^T on the attended sides of a moment array M (a pair's, or at one
        point its position-diagonal from the pair statement read at (x, x))."""
        if inner == 0 or inner.is_Number:
            return inner  # the weights' rows sum to 1: a constant is left as it is
        args: list[sp.Expr] = []
        if left is not None:
            args.append(self._weights(left))
        if block == "diag":
            pairs = self._pair_twin(inner)
            self.reads_pairs.add(pairs.name)
            args += [pairs, inner]
        else:
            args.append(inner)
        if right is not None:
            w = self._weights(right)
            args.append(w if block == "diag" or w.is_Number else twin(w))
        specs = (left.spatial if left else None, right.spatial if right else None)
        call = spatial_op("att1" if block == "diag" else "att2", specs)(*args)
        return self._new(block, call, Label("attend", same_point=block == "diag"))

    def _weights(self, g: ir.GVar) -> sp.Expr:
        """The attention weights at one point, softmax over j of L[p, j] = E[q_p k_j] (the
        logits' limit), as a per-point array of P x P values (a number: uniform)."""
        key = ("A", g.name)
        if key not in self.memo:
            spec = g.spatial
            logits = self._moment(spec.query, spec.key, "cross")
            if logits.is_Number:
                # constant logits (independent queries and keys: 0): uniform weights, which
                # the maps take from the number itself
                self.memo[key] = logits
            else:
                self.reads_pairs.add(logits.name)  # read at (x, x) by the per-point stage
                self.memo[key] = self._new("diag", spatial_op("attw1", (spec,))(logits),
                                           Label("weights", g.name))
        return self.memo[key]

    def _mean_attend(self, g: ir.GVar, side: int) -> sp.Expr:
        m = self._mean(g.arg, 1)
        if m == 0 or m.is_Number:
            return m
        if not m.is_Symbol:
            m = self._new("diag", m, Label("mean"))
        sym = self._new("diag", spatial_op("attm1", (g.spatial,))(self._weights(g), m),
                        Label("mean"))
        return sym if side == 1 else _twin_of(sym)

    def _moment_pair(self, ha, hb, d: sp.Symbol) -> None:
        c = self._new("cross", self.E(at_side(ha, 1) * at_side(hb, 2)),
                      Label("moment", same_point=False))
        if c.is_Symbol:
            self.exact.setdefault(c.name, d)

    def _expect_product(self, ea, sa, eb, sb) -> sp.Expr:
        return self.E(at_side(ea, sa) * at_side(eb, sb))

    def _mean(self, e: sp.Expr, side: int) -> sp.Expr:
        """E[e] at one point: linear in non-Gaussian derived vectors (lowering checks), whose
        means are not 0."""
        total, rest = sp.S.Zero, sp.S.Zero
        for term in sp.Add.make_args(e):
            coeff, sym = term.as_coeff_Mul()
            g = self.p.gvar(sym.name) if sym.is_Symbol else None
            if g is not None and g.op is ir.Op.POOL and not g.spatial.gaussian:
                total += coeff * self._mean_pool(g, side)
            elif g is not None and g.op is ir.Op.ATTEND and not g.spatial.gaussian:
                total += coeff * self._mean_attend(g, side)
            else:
                rest += term
        if rest != 0:
            m = self.E(at_side(rest, 1))
            if m != 0 and not m.is_Number:
                m = self._new("diag", m, Label("mean"))
            total += m if side == 1 or m.is_Number else _twin_of(m)
        return total

    def _mean_pool(self, g: ir.GVar, side: int) -> sp.Expr:
        m = self._mean(g.arg, 1)
        if m == 0:
            return sp.S.Zero
        if not m.is_Symbol:
            m = self._new("diag", m, Label("mean"))
        spec = g.spatial
        sym = self._new("diag", spatial_op("mean1", (spec,))(m), Label("mean"))
        return sym if side == 1 else _twin_of(sym)

    def _norm_scale(self, g: ir.GVar, side: int) -> sp.Expr:
        """sqrt(v + eps) of a layernorm at one point."""
        e = g.arg
        v = self._expect_product(e, 1, e, 1) - self._mean(e, 1) ** 2 + g.spatial.eps
        s = self._new("diag", sp.sqrt(v), Label("scale"))
        return s if side == 1 or s.is_Number else _twin_of(s)

    # --- the forward tangent kernel ------------------------------------------------------

    def tangent(self, a: str, block: str) -> sp.Expr:
        key = ("T", block, a)
        if key in self.memo:
            return self.memo[key]
        g = self.p.gvar(a)
        if g.op is ir.Op.NORM:
            sa, sb = (1, 1) if block == "diag" else (1, 2)
            total = self._chain(g.arg, block) / (self._norm_scale(g, sa) *
                                                 self._norm_scale(g, sb))
        elif g.op is ir.Op.POOL:
            inner = self._chain(g.arg, block)
            if inner != 0 and not inner.is_Symbol:
                inner = self._new(block, inner, Label("tcov", a, a, block == "diag"))
            if block == "diag" and inner != 0:
                self._chain_pair(g.arg, inner)
            total = self._linear("pool", (g.spatial, g.spatial), inner, block)
        elif g.op is ir.Op.ATTEND:
            # T(A v) = A T(v) A'^T: the logits' tangent vanishes in the limit (theory.md)
            inner = self._chain(g.arg, block)
            if inner != 0 and not inner.is_Symbol and not inner.is_Number:
                inner = self._new(block, inner, Label("tcov", a, a, block == "diag"))
            if block == "diag" and inner.is_Symbol:
                self._chain_pair(g.arg, inner)
            total = self._mix(g, g, inner, block)
        elif g.op is ir.Op.CONV:
            total = self.cov_diag(a, a) if block == "diag" else self.cov_cross(a, a)
            var = self.p.param_var(g.param)
            if var != 0 and not isinstance(g.arg, ir.InputRef):
                inner = self._chain(g.arg, block)
                if inner != 0 and not inner.is_Symbol:
                    inner = self._new(block, inner, Label("tcov", a, a, block == "diag"))
                if inner != 0 and block == "cross" and inner.is_Symbol:
                    self.exact.setdefault(inner.name, self.tangent_inner(g))
                total += var * self._linear("conv", (g.spatial, g.spatial), inner, block)
        else:
            return super().tangent(a, block)
        self.memo[key] = self._new(block, total, Label("tcov", a, a, block == "diag"))
        if block == "cross" and self.memo[key].is_Symbol:
            self.exact.setdefault(self.memo[key].name, self.tangent(a, "diag"))
        return self.memo[key]

    def tangent_inner(self, g: ir.GVar) -> sp.Expr:
        inner = self._chain(g.arg, "diag")
        if inner != 0 and not inner.is_Symbol:
            inner = self._new("diag", inner, Label("tcov", g.name, g.name, True))
        return inner

    def _chain_pair(self, h: sp.Expr, d: sp.Expr) -> None:
        c = self._chain(h, "cross")
        if c != 0 and not c.is_Symbol:
            c = self._new("cross", c, Label("tcov", same_point=False))
        if c != 0 and c.is_Symbol:
            self.exact.setdefault(c.name, d)

    # --- outputs ---------------------------------------------------------------------------

    def outputs(self, refused: dict) -> dict:
        r = self.p.readout
        var = self.p.param_var(r.matrix)
        bias = self.p.param_var(r.bias) if r.bias else sp.S.Zero
        out = {}
        for block in ("diag", "cross"):
            if r.grid:
                flat = (ir.Pool((), r.grid, (), False),) * 2
                mom = self._moment(r.arg, r.arg, block)
                nngp = var * self._linear("flat", flat, mom, block) + bias
            elif isinstance(r.arg, ir.InputRef):
                nngp = var * self.gram(r.arg, r.arg, block == "diag") + bias
            else:
                nngp = var * self._moment(r.arg, r.arg, block) + bias
            nngp = self._new(block, nngp, Label("nngp"))
            out.setdefault("nngp", []).append(nngp)
            if "ntk" in refused or self.ntk_refusal:
                continue
            total = nngp
            if var != 0 and not isinstance(r.arg, ir.InputRef):
                chain = self._chain(r.arg, block)
                if r.grid and chain != 0:
                    if not chain.is_Symbol:
                        chain = self._new(block, chain, Label("tcov", same_point=block == "diag"))
                    chain = self._linear("flat", flat, chain, block)
                total += var * chain
            out.setdefault("ntk", []).append(self._new(block, total, Label("ntk")))
        return {k: tuple(v) for k, v in out.items() if k not in refused}


def _twin_of(e: sp.Expr) -> sp.Expr:
    from ..kernel_program import twin

    return e.xreplace({s: twin(s) for s in e.free_symbols if isinstance(s, PointValue)})


def _grid_of(prog: ir.Program, h) -> tuple[int, ...]:
    if isinstance(h, ir.InputRef):
        i = prog.input(h.input)
        return i.grid or ((i.length,) if h.index is None and i.length else ())
    grids = {prog.gvar(s.name).grid for s in h.free_symbols} - {()}
    return grids.pop() if grids else ()


def _param_groups(prog: ir.Program):
    """A G-var's correlation class for the expectation engine (which factors an expectation
    over classes): its parameter's; a derived vector joins the class of each vector that it
    meets in an expression when the two share a parameter they are made of (an expectation of
    its argument with such a vector then stays within the class). Joining every parameter a
    derived vector is made of would be correct too, but then u * erf(g) with independent u, g
    before a gap is integrated as one 4-d Gaussian."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    @functools.cache
    def leaves(name: str) -> frozenset:
        g = prog.gvar(name)
        if g.op not in ir.DERIVED:
            return frozenset({g.param})
        return frozenset().union(*[leaves(s.name) for s in g.arg.free_symbols])

    def own(name: str) -> str:
        g = prog.gvar(name)
        return f"derived:{name}" if g.op in ir.DERIVED else g.param

    exprs = [g.arg for g in prog.gvars if g.op is not ir.Op.BIAS
             and not isinstance(g.arg, ir.InputRef)]
    # an attention's logits are expectations of its queries with its keys
    exprs += [g.spatial.query * g.spatial.key for g in prog.gvars if g.op is ir.Op.ATTEND]
    if not isinstance(prog.readout.arg, ir.InputRef):
        exprs.append(prog.readout.arg)
    meets: dict[str, set[str]] = {}
    for e in exprs:
        names = [x.name for x in e.free_symbols]
        for n in names:
            meets.setdefault(n, set()).update(names)
    for g in prog.gvars:
        if g.op in ir.DERIVED:
            for other in meets.get(g.name, set()) - {g.name}:
                if leaves(g.name) & leaves(other):
                    parent[find(own(g.name))] = find(own(other))

    def group(name: str) -> str:
        return find(own(name))

    return group


def _carriers(prog: ir.Program) -> set[str]:
    """The G-vars whose parameters' gradients reach the output in the limit: all that the
    readout reads, through every argument except an attention's queries and keys (its
    logits' tangent is O(1/n): a weight used there and elsewhere adds no cross terms)."""
    r = prog.readout
    stack = [] if isinstance(r.arg, ir.InputRef) else list(ir.gvars_of(r.arg))
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        g = prog.gvar(name)
        if g.op is not ir.Op.BIAS and not isinstance(g.arg, ir.InputRef):
            stack.extend(ir.gvars_of(g.arg))
    return seen


def ntk_refusal(prog: ir.Program) -> str | None:
    """Why the forward tangent kernel does not apply (None: it does)."""
    users: dict[str, int] = {}
    carriers = _carriers(prog)
    for g in prog.gvars:
        if g.op not in ir.DERIVED and g.name in carriers:
            users[g.param] = users.get(g.param, 0) + 1
    shared = [p for p, k in users.items() if k > 1]
    if shared:
        m = prog.matrix(shared[0]) if shared[0].startswith("A") else prog.bias(shared[0])
        return (f"the NTK of a spatial program with a weight used twice ('{m.label}') is not "
                "derived yet (its tangent kernel has cross terms between the uses)")

    def leaves(name: str) -> set[str]:
        g = prog.gvar(name)
        if g.op not in ir.DERIVED:
            return {name}
        out: set[str] = set()
        for s in g.arg.free_symbols:
            out |= leaves(s.name)
        return out

    exprs = [g.arg for g in prog.gvars if g.op is not ir.Op.BIAS and g.name in carriers
             and not isinstance(g.arg, ir.InputRef)]
    if not isinstance(prog.readout.arg, ir.InputRef):
        exprs.append(prog.readout.arg)
    for e in exprs:
        seen: set[str] = set()
        for s in e.free_symbols:
            mine = leaves(s.name)
            if seen & mine:
                return ("the NTK of a layernorm, pooled or attended vector combined with a "
                        "vector it is made of is not derived yet (their tangent kernels are "
                        "correlated)")
            seen |= mine
    return None


def derive(prog: ir.Program) -> SpatialProgram:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        b = SpatialBuilder(prog)
        refused = refusals(prog)
        why = ntk_refusal(prog)
        if why is not None and "ntk" not in refused:
            refused["ntk"] = why
        outputs = b.outputs(refused) if len(refused) < 2 else {}
    except RecursionError:
        raise TPError("the program is too deep to derive its kernels",
                      hint="reduce the loop counts") from None
    finally:
        sys.setrecursionlimit(limit)
    kp = b.program(outputs, refused)
    pointwise = _closure(b.order, b.reads_pairs, b.exact)
    return SpatialProgram(kp, tuple(b.order), frozenset(pointwise), dict(b.exact),
                          _grids(prog, b), prog.inputs)


def _closure(order, roots: set[str], exact: dict) -> set[str]:
    """The pair statements the per-point stage runs: the roots and what they read."""
    need = set(roots)
    for block, s, e in reversed(order):
        if block != "cross" or s.name not in need or e is None:
            continue
        for x in e.free_symbols:
            if not isinstance(x, PointValue):
                need.add(x.name)
    # a statement run per point has its per-point diagonal replaced: that value must exist
    return need


def _grids(prog: ir.Program, b: SpatialBuilder) -> dict:
    out = {}
    for entry in [*b.diag_gram.values(), *b.cross_gram.values()]:
        out[entry.symbol.name] = (_grid_of(prog, entry.a), _grid_of(prog, entry.b))
    return out

