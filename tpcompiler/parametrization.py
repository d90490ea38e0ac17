"""The one interpreter of abc-parametrizations: the presets' exponent tables, the role of every
trainable tensor, its exponents (a, b, c) under a preset or a custom block, and the scales a
finite network of width n samples and multiplies it with. The lowering (preset names), the abc
analysis (passes/abc.py), the simulator and the coordinate check all read it.

A tensor with exponents (a, b) is
    W = n^-a * k * w,   w ~ N(0, n^-2b),   learning rate eta * n^-c
with k the declared constant: sqrt(var/d) for an input matrix (d the data dimension, also for a
readout of an input), sqrt(var) for hidden and readout matrices, sqrt(bias) for biases. Under
`sp` the constant goes into the init instead (w ~ N(0, k^2 n^-2b), multiplier n^-a): the
neural-tangents "standard" / PyTorch convention. FINITE tensors (the readout's bias, a readout
of an input) have a = b = c = 0.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from fractions import Fraction

from . import ir
from .errors import TPError

OPTIMIZERS = ("sgd", "adam")
#: the presets a .tp file can name (`parametrization NAME`), besides `custom { ... }`
PRESETS = ("ntk", "sp", "mup", "mf")


class Role(enum.Enum):
    INPUT = "input"
    HIDDEN = "hidden"
    READOUT = "readout"
    FINITE = "finite"


def _abc(a: str, b: str, c: str) -> tuple[Fraction, Fraction, Fraction]:
    return Fraction(a), Fraction(b), Fraction(c)


# Preset -> optimizer -> entry (weight kind or "bias") -> (a, b, c). For each preset a and b (the
# network) are the same for both optimizers; only the learning-rate exponents c differ.
#   sp   TP4 Sec. 3 ("SP": a = 0, b_1 = 0, b_l = 1/2, c = 0) = TP IVb Example 2.2.2.
#   ntk  TP4 Table 1 (NTP: a_1 = 0, a_l = 1/2 (l >= 2), b = 0, c = 0); Adam: TP IVb Def. 2.4.1
#        (c = d = 1/2 | 1 | 1/2; d is redundant for Adam, Remark 2.2.6).
#   mup  TP4 Def. 5.1 (c = 0, b = 1/2, a = -1/2 | 0 | 1/2); Adam: TP IVb Def. 2.5.1
#        ((0,0,0) | (0,1/2,1) | (1,0,0), d dropped) moved by the Adam symmetry (a+t, b-t, c-t),
#        t = -1/2, onto the same a, b: c = 1/2 | 1 | 1/2. Equals TP5 Table 9 (and Table 3 with
#        the multipliers moved into the learning rates).
#   mf   TP4 Table 1 MFP (one hidden layer: a = 0 | 1, b = 0, c = -1). For hidden layers the
#        TP4 table has no entry; this package uses muP moved by t = 1/2 on every layer (the
#        b = 0 gauge), which is TP4's MFP when L = 1: a = 0 | 1/2 | 1, b = 0, c = -1 (SGD).
# Biases behave like input weights (TP4 Sec. 3, TP5 Table 3 "input weights & all biases").
TABLE: dict[str, dict[str, dict[str, tuple[Fraction, Fraction, Fraction]]]] = {
    "sp": {
        "sgd": {"input": _abc("0", "0", "0"), "hidden": _abc("0", "1/2", "0"),
                "readout": _abc("0", "1/2", "0"), "bias": _abc("0", "0", "0")},
        "adam": {"input": _abc("0", "0", "0"), "hidden": _abc("0", "1/2", "0"),
                 "readout": _abc("0", "1/2", "0"), "bias": _abc("0", "0", "0")},
    },
    "ntk": {
        "sgd": {"input": _abc("0", "0", "0"), "hidden": _abc("1/2", "0", "0"),
                "readout": _abc("1/2", "0", "0"), "bias": _abc("0", "0", "0")},
        "adam": {"input": _abc("0", "0", "1/2"), "hidden": _abc("1/2", "0", "1"),
                 "readout": _abc("1/2", "0", "1/2"), "bias": _abc("0", "0", "1/2")},
    },
    "mup": {
        "sgd": {"input": _abc("-1/2", "1/2", "0"), "hidden": _abc("0", "1/2", "0"),
                "readout": _abc("1/2", "1/2", "0"), "bias": _abc("-1/2", "1/2", "0")},
        "adam": {"input": _abc("-1/2", "1/2", "1/2"), "hidden": _abc("0", "1/2", "1"),
                 "readout": _abc("1/2", "1/2", "1/2"), "bias": _abc("-1/2", "1/2", "1/2")},
    },
    "mf": {
        "sgd": {"input": _abc("0", "0", "-1"), "hidden": _abc("1/2", "0", "-1"),
                "readout": _abc("1", "0", "-1"), "bias": _abc("0", "0", "-1")},
        "adam": {"input": _abc("0", "0", "0"), "hidden": _abc("1/2", "0", "1/2"),
                 "readout": _abc("1", "0", "0"), "bias": _abc("0", "0", "0")},
    },
}
ZERO = Fraction(0)


def matrix_role(m: ir.Matrix) -> Role:
    if m.kind is ir.Kind.INPUT:
        return Role.INPUT
    if m.kind is ir.Kind.HIDDEN:
        return Role.HIDDEN
    return Role.FINITE if m.fan_in else Role.READOUT  # a readout of an input: finite -> finite


def bias_role(program: ir.Program, b: ir.Bias) -> Role:
    return Role.FINITE if b.name == program.readout.bias else Role.INPUT


def exponents(par: ir.Parametrization, role: Role, entry: str, label: str, optimizer: str,
              span=None) -> tuple[Fraction, Fraction, Fraction, str]:
    """(a, b, c, where they come from) of one tensor: its role, its table entry (a weight kind
    or "bias"), its label (a named weight's own entry in a custom block)."""
    if role is Role.FINITE:
        return ZERO, ZERO, ZERO, "finite: fixed 0"
    if par.preset != "custom":
        if par.preset not in TABLE:
            raise TPError(f"unknown parametrization '{par.preset}'")
        a, b, c = TABLE[par.preset][optimizer][entry]
        return a, b, c, f"preset {par.preset}"
    entries = {e.target: e for e in par.entries}
    # a named weight's own entry applies to its matrix; its bias takes the `bias` entry
    if entry != "bias" and label in entries:
        e = entries[label]
        return e.a, e.b, e.c, f"custom {label}"
    if entry not in entries:
        raise TPError(f"the custom parametrization has no entry for '{entry}' (needed by "
                      f"{label})", span,
                      f"add e.g.  {entry}: a=0, b=0, c=0  to the parametrization block")
    e = entries[entry]
    return e.a, e.b, e.c, f"custom {entry}"


def tensor_exponents(program: ir.Program, optimizer: str = "sgd"
                     ) -> dict[str, tuple[Fraction, Fraction, Fraction]]:
    """(a, b, c) of every matrix and bias of the program, by IR name."""
    par = program.parametrization
    out = {}
    for m in program.matrices:
        out[m.name] = exponents(par, matrix_role(m), m.kind.value, m.label, optimizer,
                                m.span)[:3]
    for b in program.biases:
        out[b.name] = exponents(par, bias_role(program, b), "bias", b.label, optimizer,
                                b.span)[:3]
    return out


@dataclass(frozen=True)
class Scale:
    """How one trainable tensor is sampled and used: entries ~ N(0, std^2), forward mult * T."""

    std: float
    mult: float
    shape: tuple[int, ...]
    fan_in: int | None  # None for a bias


def scales(program: ir.Program, width: int, dims: dict[str, int],
           optimizer: str = "sgd") -> dict[str, Scale]:
    """Per Matrix/Bias name: Scale(std, mult, shape, fan_in) at width n (module doc); dims maps
    input name -> data dimension d. The constant and the width's power are one square root,
    sqrt(var / (fan * n^2x)): NTK's sqrt(var / n) is the same float as the textbook formula."""
    n = float(width)
    in_std = program.parametrization.preset == "sp"
    exps = tensor_exponents(program, optimizer)

    def scale(name, var, const, shape, fan_in):
        a, b, _ = exps[name]
        if in_std:
            std, mult = math.sqrt(float(var) / (const * n ** float(2 * b))), n ** -float(a)
        else:
            std, mult = n ** -float(b), math.sqrt(float(var) / (const * n ** float(2 * a)))
        return Scale(std, mult, shape, fan_in)

    out: dict[str, Scale] = {}
    for m in program.matrices:
        fan = dims[m.fan_in] if m.fan_in is not None else width
        shape: tuple[int, ...] = (fan,) if m.kind is ir.Kind.READOUT else (width, fan)
        out[m.name] = scale(m.name, m.var, fan if m.fan_in is not None else 1, shape, fan)
    for b in program.biases:
        shape = () if b.name == program.readout.bias else (width,)
        out[b.name] = scale(b.name, b.var, 1, shape, None)
    return out
