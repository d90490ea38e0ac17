"""Lowering of `batchnorm(h, eps=E)` (a mixin of lowering._Lowerer): a BATCHNORM G-var whose
argument is Gaussian, and the rule for its uses.

Its limit couples the points of a batch through the B-dimensional law of one coordinate
(batchnorm.py), so a normalised vector enters the rest of the program only through a function
of itself alone, f(batchnorm(h)), read by dense() or readout(): the next layer's covariance
is then the batch moment E[f(z) f(z)^T], and nothing asks for a joint law of the normalised
vector with another one (passes/batch.py cuts the program there).
"""

from __future__ import annotations

import sympy as sp

from . import ir
from . import syntax as S
from .errors import TPError

BATCH_HINT = "a batch-normalised vector feeds the next layer as in dense(relu(batchnorm(h)))"


class BatchCalls:
    BATCH_CALLS = ("batchnorm",)

    def _gvar_of(self, sym: sp.Symbol) -> ir.GVar | None:
        name = sym.name
        if not name.startswith("g") or not name[1:].isdigit() or int(name[1:]) >= len(self.gvars):
            return None
        return self.gvars[int(name[1:])]

    def _normalised(self, expr: sp.Expr) -> list[sp.Symbol]:
        return sorted((s for s in expr.free_symbols
                       if (g := self._gvar_of(s)) is not None and g.op is ir.Op.BATCHNORM),
                      key=lambda s: s.name)

    def call_batchnorm(self, e: S.Call):
        from .lowering import Vec

        v = self._spatial_arg(e, ("eps",))
        if v.grid:
            raise TPError("batchnorm() of a vector with positions is not supported",
                          e.args[0].span, "batchnorm normalises plain vectors (an MLP's "
                          "layers) over the batch; layernorm works per position")
        eps = sp.S.Zero
        for kw in e.kwargs:
            eps = self.variance(kw, params=False)
        terms = [t.as_coeff_Mul()[1] for t in sp.Add.make_args(v.expr)]
        gauss = [t for t in terms if t != 1]
        ok = all(t.is_Symbol and (g := self._gvar_of(t)) is not None and
                 g.op in (ir.Op.INPUT, ir.Op.MATMUL, ir.Op.BIAS) for t in gauss)
        if not ok:
            raise TPError("batchnorm() needs a Gaussian vector: a dense() output or a sum of "
                          "them (plus constants)", e.args[0].span,
                          "normalise before the nonlinearity: dense(relu(batchnorm(h))) "
                          "(Ioffe & Szegedy's and Yang et al.'s placement)")
        if all(self._gvar_of(t).op is ir.Op.BIAS for t in gauss):
            raise TPError("batchnorm() of a constant vector: its batch variance is 0",
                          e.args[0].span, "normalise a dense() output")
        g = ir.GVar(f"g{len(self.gvars)}", ir.Op.BATCHNORM, "", v.expr, e.span,
                    batch_eps=eps)
        self.gvars.append(g)
        self._tick(e.span)
        return Vec(g.symbol)

    def _check_batch_use(self, expr: sp.Expr, span) -> None:
        """f(batchnorm(h)) alone: no other vector in the same expression."""
        found = self._normalised(expr)
        if not found:
            return
        others = [s for s in expr.free_symbols if s not in found]
        if len(found) > 1 or others:
            raise TPError("a batch-normalised vector is combined with another vector here; "
                          "its limit is known only through a function of itself alone", span,
                          BATCH_HINT)
