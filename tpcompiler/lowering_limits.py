"""Lowering of the NETSOR-transpose calculator's constructs (a mixin of lowering._Lowerer):
`vector z` (a data-free N(0, I) vector), `report NAME = mean(expr)`, `dense(h, transpose(W))`
and the widths of `ratio=` (a weight's rows / columns, a vector's width as a multiple of n).
Their limits are passes/limits.py's; the kernel passes never see them (`Program.netsor_t`).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from . import ir
from . import syntax as S
from .check import show
from .errors import TPError, did_you_mean


@dataclass(frozen=True)
class Limit:
    """The name of a `report`: a scalar limit, not a value of the program."""

    name: str


class LimitCalls:
    @staticmethod
    def joint_width(vs, span) -> sp.Expr:
        """The common width of vectors combined elementwise (TPError if they differ)."""
        widths = {v.width for v in vs}
        if len(widths) > 1:
            shown = " and ".join(f"{w} n" for w in sorted(widths, key=float))
            raise TPError(f"these vectors have different widths ({shown}): elementwise "
                          "operations need one width", span,
                          "a weight with ratio=R maps width w to R w; transpose() maps back")
        return widths.pop() if widths else sp.S.One

    def _check_netsor_t(self) -> None:
        """Transposes, data-free vectors and widths other than n are the NETSOR-transpose
        calculator's (passes/limits.py): not with the constructs of the kernel passes that
        assume one width and no transposes."""
        special = [g for g in self.gvars if g.transposed or g.op is ir.Op.VECTOR
                   or g.width != 1]
        if not special:
            return
        other = next((g for g in self.gvars if g.spatial is not None
                      or g.op is ir.Op.BATCHNORM), None)
        if other is not None:
            raise TPError("transpose(), `vector` and ratio= cannot be combined with conv, "
                          "pooling, layernorm, attend or batchnorm yet", other.span,
                          "the NETSOR-transpose calculator handles dense layers, elementwise "
                          "functions and their products")

    def _ratio(self, kw: S.Kwarg) -> sp.Expr:
        v = self.scalar(kw.value, "a number for ratio=")
        if not (v.is_Rational and v > 0):
            raise TPError(f"ratio= must be a positive rational number, got {show(v)}",
                          kw.value.span, "a width ratio such as 1/2 or 2")
        if v > 1000 or v < sp.Rational(1, 1000):
            raise TPError(f"ratio= is {show(v)}; tpcompiler takes ratios between 1/1000 and "
                          "1000", kw.value.span)
        return v

    def stmt_VectorDecl(self, s: S.VectorDecl) -> None:
        from .lowering import Vec

        self._check_unique_kwargs(s.kwargs)
        width = sp.S.One
        for kw in s.kwargs:
            if kw.name != "ratio":
                raise TPError(f"unknown vector parameter '{kw.name}'", kw.span,
                              did_you_mean(kw.name, ("ratio",)) or "a vector takes ratio= "
                              "(its width as a multiple of n; default 1)")
            width = self._ratio(kw)
        g = ir.GVar(f"g{len(self.gvars)}", ir.Op.VECTOR, f"V{self.nvectors}", None, s.span,
                    width=width)
        self._bind(s.name, Vec(g.symbol, (), width), s.span, "a vector")
        self.nvectors += 1
        self.gvars.append(g)
        self._tick(s.span)

    def stmt_ReportDecl(self, s: S.ReportDecl) -> None:
        from .lowering import InVec, Seq, Vec, describe

        e = s.value
        if not (isinstance(e, S.Call) and e.func == "mean"):
            raise TPError("a report is the mean of a vector over its coordinates", e.span,
                          f"write  report {s.name} = mean(h ** 2)")
        if len(e.args) != 1 or e.kwargs:
            raise TPError("mean() takes one vector argument", e.span,
                          f"write  report {s.name} = mean(h ** 2)")
        v = self.expr(e.args[0])
        if not isinstance(v, Vec):
            raise TPError(f"mean() needs a vector, got {describe(v)}", e.args[0].span,
                          "inputs enter the network through dense(x)"
                          if isinstance(v, (InVec, Seq)) else None)
        if v.grid:
            raise TPError("mean() of a vector with positions is not supported", e.args[0].span)
        self._bind(s.name, Limit(s.name), s.span, "a report")
        self.reports.append(ir.Report(s.name, v.expr, v.width, s.span))

    def _check_transposable(self, name: str, arg, span) -> None:
        from .lowering import InVec

        info = self.named[name]
        if isinstance(arg, InVec):
            raise TPError(f"transpose({name}) of an input is not supported", span,
                          "transpose() applies to weights between vectors of the network")
        if info["bias"] != 0:
            raise TPError(f"weight '{name}' has a bias, which transpose({name}) cannot add "
                          "(it has the width of the weight's output)", span,
                          f"declare '{name}' without bias= and add a bias of its own")
        if info["matrix"] is not None and info["kind"] is not ir.Kind.HIDDEN:
            first = info["first_use"]
            raise TPError(f"weight '{name}' reads an input (line {first.line}); its transpose "
                          "would have the input's finite dimension", span,
                          "transpose() applies to weights between vectors of the network")

    def _named_widths(self, name: str, width_in: sp.Expr, transposed: bool, span) -> sp.Expr:
        """The output width of a use of a named weight; its columns' width is fixed by the
        first use (the input's width, or the transposed input's over ratio)."""
        info = self.named[name]
        ratio = info["ratio"]
        cols = width_in / ratio if transposed else width_in
        if info["cols"] is None:
            info["cols"], info["cols_at"] = cols, span
        elif info["cols"] != cols:
            want = info["cols"] * ratio if transposed else info["cols"]
            what = f"transpose({name})" if transposed else name
            raise TPError(f"{what} needs a vector of width {want} n here, got {width_in} n",
                          span, f"'{name}' maps width {info['cols']} n to "
                          f"{info['cols'] * ratio} n (fixed at line {info['cols_at'].line})")
        return cols if transposed else cols * ratio

