"""Printing a KernelProgram as Python source for Numba: a strict sympy printer and the runtime
table (the scalar code of every IR function and helper), written once for all generated code.
"""

from __future__ import annotations

import inspect
import re

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from .. import functions as F
from .. import helpers, truncated
from ..kernel_program import QuadCall, twin

#: scalar code of the IR's functions, (name, source) from the registry (functions.py); numba
#: compiles them with the module
RUNTIME: tuple[tuple[str, str], ...] = tuple((c.runtime_name(), c.scalar) for c in F.PRIMITIVES
                                             if c.scalar is not None)

_FUNC_NAMES = {c: c.runtime_name() for c in F.PRIMITIVES}


class KernelPrinter(PythonCodePrinter):
    """sympy's Python printer with our functions; anything unknown is an error, not a guess."""

    def __init__(self, settings=None):
        super().__init__({"strict": True, "fully_qualified_modules": True, **(settings or {})})

    def _print_Function(self, expr):
        name = _FUNC_NAMES.get(type(expr))
        if name is None:
            name = type(expr).__name__
            # a helper, an integrand's rule, or what a backend generates next to them (its
            # series functions ser<n> and piecewise bodies _pw_<name>); else sympy's (strict)
            known = name in helpers.HELPERS or name in truncated.TRUNCATED or \
                isinstance(expr, QuadCall)
            if not known and not name.startswith(("ser", "_pw_")):
                return super()._print_Function(expr)
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

    def _print_ParamSymbol(self, expr):
        return f"THETA[{expr.index}]"  # the caller's values of the program's params

    def _print_Rational(self, expr):
        return f"{float(expr)!r}"

    def _print_Float(self, expr):
        return f"{float(expr)!r}"

    def _print_Integer(self, expr):
        return f"{float(expr)!r}"

    def _print_Pow(self, expr, rational=False):
        base, p = expr.args
        if p.is_Integer and 2 <= int(p) <= 4:
            b = self.parenthesize(base, 1000)  # repeated multiplication is exact and fast
            return "(" + " * ".join([b] * int(p)) + ")"
        if p == sp.S.Half:
            return f"math.sqrt({self._print(base)})"
        if p == -sp.S.Half:
            return f"(1.0 / math.sqrt({self._print(base)}))"
        if p.is_Integer:
            return f"{self.parenthesize(base, 1000)} ** {int(p)}"
        return super()._print_Pow(expr, rational)


def helper_sources() -> list[tuple[str, str]]:
    """(name, source) of tpcompiler.helpers and tpcompiler.truncated in dependency order."""
    return ([(n, inspect.getsource(helpers.HELPERS[n])) for n in helpers.HELPER_SOURCE_ORDER]
            + [(n, inspect.getsource(truncated.TRUNCATED[n])) for n in truncated.SOURCE_ORDER])


def runtime_lines(body: list[str], decorator: str) -> list[str]:
    """The runtime functions and helpers that the generated body calls, directly or through
    each other, in dependency order, each under `decorator`: a module compiles and loads only
    what it uses (each cached function costs its own load on a warm start)."""
    table = list(RUNTIME) + helper_sources()
    text = "\n".join(body)
    used: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, src in table:
            if name not in used and re.search(rf"\b{name}\(", text):
                used.add(name)
                text += "\n" + src
                grew = True
    out: list[str] = []
    for name, src in table:
        if name in used:
            out += [decorator, src]
    return out


def emit_block(assigns, printer: KernelPrinter, indent: str) -> list[str]:
    """One line per assignment (the kernel program already holds shared subexpressions once)."""
    return [f"{indent}{sym} = {printer.doprint(e)}" for sym, e in assigns]


def per_point_body(kp, kinds, needed, outs, printer: KernelPrinter, indent: str) -> list[str]:
    """The per-point driver's body at point i, shared by the Numba and CUDA renderers: the
    Gram entries G<n>[i], the diag block and the diagonal outputs, and the per-point values
    the pair block reads stored in D[i, :] (`needed`, in order)."""
    lines = [f"{indent}{g.symbol} = G{n}[i]" for n, g in enumerate(kp.diag_gram)]
    lines += emit_block(list(kp.diag) + [(o, kp.outputs[k][0]) for o, k in zip(outs, kinds)],
                        printer, indent)
    lines += [f"{indent}D[i, {n}] = {s}" for n, s in enumerate(needed)]
    return lines


def first_point_loads(kp, needed, indent: str) -> list[str]:
    """The pair driver's loads of the first point's per-point values (D1[i, :]) that the pair
    block reads, shared by the Numba and CUDA renderers (Numba hoists them out of the column
    loop)."""
    used = kp.cross_reads()
    return [f"{indent}{s} = D1[i, {n}]" for n, s in enumerate(needed) if s.name in used]


def pair_body(kp, needed, outs, kinds, printer: KernelPrinter, indent: str, gram_at: str,
              out_at: str, calls: dict | None = None) -> list[str]:
    """The pair driver's body at pair (i, j), shared by the Numba and CUDA renderers: the
    second point's per-point values (D2T[:, j]), the cross Gram entries C<n>[gram_at], the
    cross block and the outputs K<n>[out_at]. calls: quadrature calls to replace (the series)."""
    used = kp.cross_reads()
    lines = [f"{indent}{twin(s)} = D2T[{n}, j]" for n, s in enumerate(needed)
             if twin(s).name in used]
    lines += [f"{indent}{g.symbol} = C{n}[{gram_at}]" for n, g in enumerate(kp.cross_gram)]
    calls = calls or {}
    lines += emit_block([(s, e.xreplace(calls)) for s, e in kp.cross]
                        + [(o, kp.outputs[k][1].xreplace(calls)) for o, k in zip(outs, kinds)],
                        printer, indent)
    lines += [f"{indent}K{n}[{out_at}] = {o}" for n, o in enumerate(outs)]
    return lines
