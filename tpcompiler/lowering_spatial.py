"""Lowering of the spatial constructs: conv, avgpool, gap, layernorm and attend (a mixin of
lowering._Lowerer, which holds the rest of the language).

A spatial vector is one vector of width n per position of a grid ((T,) for a sequence, (H, W)
for an image); elementwise expressions act per position. conv(h) makes a G-var (one matrix per
filter offset, shared by every position: Op.CONV); avgpool, gap, layernorm and attend make
derived vectors (Op.POOL, Op.NORM, Op.ATTEND) whose covariances passes/spatial.py derives from
their arguments'.
"""

from __future__ import annotations

import sympy as sp

from . import ir
from . import syntax as S
from .errors import TPError, did_you_mean

PADDINGS = ("same", "valid", "circular")
#: attend()'s logit scalings: only q.k/n has a deterministic limit (docs/theory.md, Attention)
SCALES = ("linear", "sqrt")
MAX_HEADS = 4096
SQRT_SCALE = ("attend() with the 1/sqrt(n) scaling (q.k/sqrt(n)) has no deterministic "
              "infinite-width limit: its logits stay random (a Gaussian process over position "
              "pairs) and the kernel is an integral over them, which tpcompiler does not "
              "implement")
SQRT_HINT = ("attend() scales the logits by 1/n (scale=linear, the default), as Tensor Programs "
             "and neural-tangents' linear_scaling=True do; see docs/theory.md, 'Attention'")


def joint_grid(vecs, span) -> tuple[int, ...]:
    """The grid of an elementwise combination: the spatial operands' common grid (a plain
    vector is the same at every position)."""
    grids = {v.grid for v in vecs if v.grid}
    if len(grids) > 1:
        a, b = sorted(grids)
        raise TPError(f"vectors on different grids ({_show(a)} and {_show(b)}) cannot be "
                      "combined position by position", span,
                      "pool (avgpool) or convolve (padding=same) so that the grids agree")
    return grids.pop() if grids else ()


def _show(grid: tuple[int, ...]) -> str:
    return " x ".join(map(str, grid)) if grid else "no positions"


class SpatialCalls:
    SPATIAL_CALLS = ("conv", "avgpool", "gap", "layernorm", "attend")

    # --- what a value is -------------------------------------------------------------------

    def grid_of(self, v) -> tuple[int, ...]:
        from .lowering import InVec, Seq, Vec

        if isinstance(v, Vec):
            return v.grid
        if isinstance(v, InVec) and v.ref.index is None:
            return self._input(v.ref.input).grid
        if isinstance(v, Seq):
            return (v.input.length,)
        return ()

    def _input(self, name: str) -> ir.Input:
        return next(i for i in self.inputs if i.name == name)

    def _derived(self, sym: sp.Symbol) -> ir.GVar | None:
        g = self.gvars[int(sym.name[1:])]
        return g if g.op in ir.DERIVED else None

    def gaussian(self, expr: sp.Expr) -> bool:
        """Whether the vector is a linear combination (plus a constant) of Gaussian vectors."""
        for term in sp.Add.make_args(expr):
            coeff, rest = term.as_coeff_Mul()
            if rest == 1:
                continue
            if not rest.is_Symbol:
                return False
            g = self._derived(rest)
            if g is not None and not g.spatial.gaussian:
                return False
        return True

    def check_derived_use(self, expr: sp.Expr, span) -> None:
        """A pooled or normalised vector that is not Gaussian (avgpool(relu(h))) may only be
        scaled and summed: its covariances are second moments, exact in bilinear expectations
        only. A nonlinearity of it is an integral over its window's Gaussians, not done."""
        bad = [s for s in expr.free_symbols
               if (g := self._derived(s)) is not None and not g.spatial.gaussian]
        if not bad:
            return
        linear = all(term.as_coeff_Mul()[1].is_Symbol for term in sp.Add.make_args(expr))
        if not linear:
            what = str(self.gvars[int(bad[0].name[1:])].spatial).split()[0].split("[")[0]
            raise TPError(f"the {what} of a non-Gaussian vector (e.g. of relu(h)) can only be "
                          "scaled, summed, pooled or fed to conv/dense/readout here", span,
                          f"apply the nonlinearity after a conv or dense, or {what} the "
                          "Gaussian pre-activation instead")

    # --- keyword arguments ---------------------------------------------------------------

    def _padding(self, kw: S.Kwarg) -> str:
        v = kw.value
        if isinstance(v, S.Name) and v.id in PADDINGS and v.id not in self.env:
            return v.id
        raise TPError("padding= is one of same, valid, circular", v.span,
                      did_you_mean(getattr(v, "id", ""), PADDINGS) or "e.g. padding=valid")

    def _size(self, kw: S.Kwarg, grid: tuple[int, ...], what: str) -> tuple[int, ...]:
        k = self.integer(kw.value, f"the {what} size", lo=1)
        return (k,) * len(grid)

    # --- conv ----------------------------------------------------------------------------

    def call_conv(self, e: S.Call, dense: bool = False, arg=None):
        """conv(v, ...), or (dense) dense(v, ...) of a spatial vector `arg` that dense() has
        already lowered: lowering its argument again would add its vectors twice."""
        from .lowering import InVec, Seq, Vec

        name = "dense" if dense else "conv"
        if not 1 <= len(e.args) <= 2:
            raise TPError(f"{name}() takes 1 or 2 positional arguments (vector[, weight]), got "
                          f"{len(e.args)}", e.span)
        if arg is None:
            arg = self.expr(e.args[0])
        if not isinstance(arg, (Vec, InVec, Seq)):
            raise TPError(f"{name}() needs a vector or an input, got {self._what(arg)}",
                          e.args[0].span)
        grid = self.grid_of(arg)
        if isinstance(arg, InVec) and arg.ref.index is not None:
            grid = ()
        if not grid:
            raise TPError(f"conv() needs a spatial vector (an image `input img[H, W]`, a "
                          f"sequence `input s[T]` or what a conv made), got "
                          f"{self._what(arg)} without positions", e.args[0].span,
                          "use dense() for a plain vector")
        size, padding, var, bias = (1,) * len(grid), "same", sp.S.One, sp.S.Zero
        allowed = ("var", "bias") if dense else ("size", "padding", "var", "bias")
        named = len(e.args) == 2
        for kw in e.kwargs:
            if kw.name not in allowed:
                raise TPError(f"{name}() has no parameter '{kw.name}'", kw.span,
                              did_you_mean(kw.name, allowed) or
                              f"{name}() takes {', '.join(a + '=' for a in allowed)}")
            if named and kw.name in ("var", "bias"):
                raise TPError("var= and bias= of a named weight are set in its declaration",
                              kw.span, "write them in `weight W(...)`")
            if kw.name == "size":
                size = self._size(kw, grid, "filter")
            elif kw.name == "padding":
                padding = self._padding(kw)
            elif kw.name == "var":
                var = self.variance(kw)
            else:
                bias = self.variance(kw)
        if padding == "valid":
            out = tuple(g - k + 1 for g, k in zip(grid, size))
            if min(out) < 1:
                raise TPError(f"a {'x'.join(map(str, size))} filter is larger than the "
                              f"{_show(grid)} grid with padding=valid", e.span,
                              "use a smaller size= or padding=same")
        else:
            out = grid
        stencil = ir.Stencil(size, padding, grid, out)
        is_input = not isinstance(arg, Vec)
        kind = ir.Kind.INPUT if is_input else ir.Kind.HIDDEN
        ref = None
        if is_input:
            ref = ir.InputRef(arg.input.name if isinstance(arg, Seq) else arg.ref.input, None)
        fan_in = ref.input if ref is not None else None
        if named:
            w = e.args[1]
            wv = self._lookup(w.id, w.span) if isinstance(w, S.Name) else None
            if wv is None or type(wv).__name__ != "Weight":
                raise TPError(f"the second argument of {name}() must be a weight name", w.span,
                              "declare it with `weight W(var=...)`")
            info = self.named[w.id]
            if info.get("size", size) != size:
                raise TPError(f"weight '{w.id}' is a {'x'.join(map(str, info['size']))} filter "
                              f"but is used here as {'x'.join(map(str, size))}", e.span,
                              "a shared filter has one size")
            info["size"] = size
            matrix, bias_g = self._named_use(w.id, kind, fan_in, e.span)
        else:
            label = self._label(name, e.span)
            matrix = self._new_matrix(label, var, kind, False, fan_in, e.span).name
            bias_g = None
            if bias != 0:
                b = self._new_bias(label, bias, False, e.span)
                bias_g = self._new_gvar(ir.Op.BIAS, b.name, None, e.span)
        g = self._spatial_gvar(ir.Op.CONV, matrix, ref if is_input else arg.expr, e.span, out,
                               stencil)
        return Vec(g + bias_g if bias_g is not None else g, out)

    def _spatial_gvar(self, op, param, arg, span, grid, spatial) -> sp.Symbol:
        g = ir.GVar(f"g{len(self.gvars)}", op, param, arg, span, grid, spatial)
        self.gvars.append(g)
        self._tick(span)
        return g.symbol

    # --- pooling and layernorm -------------------------------------------------------------

    def _spatial_arg(self, e: S.Call, allowed: tuple[str, ...]):
        from .lowering import InVec, Vec

        if len(e.args) != 1:
            raise TPError(f"{e.func}() takes 1 positional argument, got {len(e.args)}", e.span)
        for kw in e.kwargs:
            if kw.name not in allowed:
                raise TPError(f"{e.func}() has no parameter '{kw.name}'", kw.span,
                              did_you_mean(kw.name, allowed) or
                              (f"{e.func}() takes {', '.join(a + '=' for a in allowed)}"
                               if allowed else f"{e.func}() takes no keyword arguments"))
        v = self.expr(e.args[0])
        if not isinstance(v, Vec):
            hint = "apply conv() first" if isinstance(v, InVec) else None
            raise TPError(f"{e.func}() needs a vector, got {self._what(v)}", e.args[0].span,
                          hint)
        return v

    def call_avgpool(self, e: S.Call):
        from .lowering import Vec

        v = self._spatial_arg(e, ("size",))
        if not v.grid:
            raise TPError("avgpool() needs a spatial vector; this one has no positions",
                          e.args[0].span, "pool the output of a conv")
        kws = [kw for kw in e.kwargs if kw.name == "size"]
        if not kws:
            raise TPError("avgpool() needs the keyword argument size=", e.span)
        size = self._size(kws[0], v.grid, "pooling")
        if any(g % k for g, k in zip(v.grid, size)):
            raise TPError(f"a {'x'.join(map(str, size))} pooling does not divide the "
                          f"{_show(v.grid)} grid", kws[0].value.span,
                          "choose a size that divides every side (pooling has stride = size)")
        out = tuple(g // k for g, k in zip(v.grid, size))
        pool = ir.Pool(size, v.grid, out, self.gaussian(v.expr) and self._centred(v.expr))
        return Vec(self._spatial_gvar(ir.Op.POOL, "", v.expr, e.span, out, pool), out)

    def call_gap(self, e: S.Call):
        from .lowering import Vec

        v = self._spatial_arg(e, ())
        if not v.grid:
            raise TPError("gap() needs a spatial vector; this one has no positions",
                          e.args[0].span, "gap averages a conv's output over its positions")
        pool = ir.Pool((), v.grid, (), self.gaussian(v.expr) and self._centred(v.expr))
        return Vec(self._spatial_gvar(ir.Op.POOL, "", v.expr, e.span, (), pool), ())

    def call_layernorm(self, e: S.Call):
        from .lowering import Vec

        v = self._spatial_arg(e, ("eps",))
        eps = sp.S.Zero
        for kw in e.kwargs:
            eps = self.variance(kw, params=False)
        norm = ir.Norm(eps, self.gaussian(v.expr))
        return Vec(self._spatial_gvar(ir.Op.NORM, "", v.expr, e.span, v.grid, norm), v.grid)

    # --- attention -------------------------------------------------------------------------

    def call_attend(self, e: S.Call):
        """attend(q, k, v, heads=H, scale=linear): softmax over positions of q_p . k_j / n,
        mixing the values v_j; q, k and v spatial vectors on one grid."""
        from .lowering import Vec

        if len(e.args) != 3:
            raise TPError(f"attend() takes 3 positional arguments (queries, keys, values), got "
                          f"{len(e.args)}", e.span,
                          "e.g. q = dense(h, var=1.0) then attend(q, q, dense(h)): tied "
                          "queries and keys")
        heads = 1
        for kw in e.kwargs:
            if kw.name == "heads":
                heads = self.integer(kw.value, "the number of heads", lo=1, hi=MAX_HEADS)
            elif kw.name == "scale":
                self._attention_scale(kw)
            else:
                raise TPError(f"attend() has no parameter '{kw.name}'", kw.span,
                              did_you_mean(kw.name, ("heads", "scale")) or
                              "attend() takes heads= and scale=")
        vecs = []
        for role, arg in zip(("queries", "keys", "values"), e.args):
            v = self.expr(arg)
            if not isinstance(v, Vec):
                raise TPError(f"attend() needs vectors; its {role} are {self._what(v)}",
                              arg.span, "apply conv(s, size=1) first (a dense layer per "
                              "position): h = conv(s, size=1); q = dense(h); "
                              "attend(q, q, dense(h))")
            if not v.grid:
                raise TPError(f"attend() mixes positions; its {role} are a vector without "
                              "positions", arg.span, "attend over a sequence or an image: "
                              "`input s[T]`, then h = conv(s, size=1)")
            if vecs and v.grid != vecs[0].grid:
                raise TPError(f"attend()'s {role} have {_show(v.grid)} positions, its queries "
                              f"{_show(vecs[0].grid)}", arg.span,
                              "queries, keys and values need the same positions")
            vecs.append(v)
        q, k, v = vecs
        spec = ir.Attend(q.expr, k.expr, v.grid, heads,
                         self.gaussian(v.expr) and self._centred(v.expr))
        return Vec(self._spatial_gvar(ir.Op.ATTEND, "", v.expr, e.span, v.grid, spec), v.grid)

    def _attention_scale(self, kw: S.Kwarg) -> None:
        v = kw.value
        if isinstance(v, S.Name) and v.id == "linear" and v.id not in self.env:
            return
        if _mentions(v, "sqrt"):
            raise TPError(SQRT_SCALE, v.span, SQRT_HINT)
        raise TPError("attend() takes scale=linear only: logits q.k/n (the default)", v.span,
                      did_you_mean(getattr(v, "id", ""), SCALES) or
                      "to scale the logits, scale the queries: dense(h, var=c) multiplies "
                      "them by c")

    @staticmethod
    def _centred(expr: sp.Expr) -> bool:
        """No constant term: the Gaussian vectors have mean 0, and so has their sum."""
        return all(t.as_coeff_Mul()[1] != 1 for t in sp.Add.make_args(expr))

    @staticmethod
    def _what(v) -> str:
        from .lowering import describe

        return describe(v)


def _mentions(e, name: str) -> bool:
    """Whether the expression's text names `name` (a name or a function called so)."""
    if isinstance(e, S.Name):
        return e.id == name
    if isinstance(e, S.Call):
        return e.func == name or any(_mentions(a, name) for a in e.args)
    if isinstance(e, S.BinOp):
        return _mentions(e.left, name) or _mentions(e.right, name)
    if isinstance(e, S.Neg):
        return _mentions(e.operand, name)
    return False
