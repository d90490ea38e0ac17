"""Printing a KernelProgram as Python source for Numba: a strict sympy printer and the runtime
table (the scalar code of every IR function and helper), written once for all generated code.
"""

from __future__ import annotations

import inspect
import re

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from .. import functions as F
from .. import helpers

#: scalar code of the IR's functions, (name, source); numba compiles them with the module
RUNTIME: tuple[tuple[str, str], ...] = (
    ("_relu", "def _relu(x):\n    return x if x > 0.0 else 0.0\n"),
    ("_step", "def _step(x):\n    return 1.0 if x > 0.0 else 0.0\n"),
    ("_sign", "def _sign(x):\n    return 1.0 if x > 0.0 else (-1.0 if x < 0.0 else 0.0)\n"),
    ("_abrelu", "def _abrelu(x, a, b):\n    return b * x if x > 0.0 else a * x\n"),
    ("_sigmoid", "def _sigmoid(x):\n    return 0.5 * (1.0 + math.tanh(0.5 * x))\n"),
    ("_gelu", "def _gelu(x):\n    return 0.5 * x * (1.0 + math.erf(x * 0.7071067811865476))\n"),
    ("_dgelu", "def _dgelu(x):\n    return 0.5 * (1.0 + math.erf(x * 0.7071067811865476)) + "
               "x * math.exp(-0.5 * x * x) * 0.3989422804014327\n"),
    ("_softplus", "def _softplus(x):\n    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))\n"),
    ("_gauss", "def _gauss(x):\n    return math.exp(-x * x)\n"),
)

_FUNC_NAMES = {F.Relu: "_relu", F.Step: "_step", F.Sign: "_sign", F.AbsF: "abs",
               F.ABRelu: "_abrelu", F.Sigmoid: "_sigmoid", F.Gelu: "_gelu", F.DGelu: "_dgelu",
               F.Softplus: "_softplus", F.Gauss: "_gauss", F.Erf: "math.erf"}


class KernelPrinter(PythonCodePrinter):
    """sympy's Python printer with our functions; anything unknown is an error, not a guess."""

    def __init__(self, settings=None):
        super().__init__({"strict": True, "fully_qualified_modules": True, **(settings or {})})

    def _print_Function(self, expr):
        name = _FUNC_NAMES.get(type(expr))
        if name is None:
            name = type(expr).__name__
            if name not in helpers.HELPERS and not name.startswith(("quad", "ser", "_pw_")):
                return super()._print_Function(expr)
        return f"{name}({', '.join(self._print(a) for a in expr.args)})"

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
    """(name, source) of tpcompiler.helpers in dependency order."""
    return [(n, inspect.getsource(helpers.HELPERS[n])) for n in helpers.HELPER_SOURCE_ORDER]


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
