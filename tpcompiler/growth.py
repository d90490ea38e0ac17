"""Width exponents of H-var expressions: how big a vector's coordinates are (mean |h| ~ n^size),
how much they move (mean |h_1 - h_0| ~ n^change) and how big a derivative is, given the
exponents of the G-vars they are built from. The coordinate check's first-step predictions
(coordcheck.first_step) follow a step of SGD or Adam through the program with these.

The rules, per node of the sympy expression (`NONE` for "no such term", e.g. the change of a
constant):
- sums take the largest term; products ADD their factors' exponents (a gate u * v of two
  growing branches grows like both together), an integer power k multiplies by k;
- the bounded functions cap: tanh, erf, sin and sigmoid (|f| <= 1, Lipschitz) have size and
  change min(., 0): tanh of a coordinate growing like n^1 is still O(1), and moves O(1) at
  most; step and sign move only where a coordinate crosses 0: a fraction n^(change - size) of
  them (at most all);
- the derivative of a saturating function (tanh, erf, sigmoid) of a growing argument vanishes
  (NONE); of step and sign it is 0 away from the kink (NONE); otherwise O(1);
- every other function (relu, abs, gelu, softplus, exp at O(1) arguments, ...) is taken as
  Lipschitz: the size and change of its argument.
"""

from __future__ import annotations

from fractions import Fraction

import sympy as sp

from . import functions as F

NONE = Fraction(-10**6)  # the exponent of a term that is not there
ZERO = Fraction(0)
#: |f| <= 1, f(u) ~ u at small u: size and change min(argument's, 0)
SMALL_BOUNDED = (sp.tanh, sp.erf, F.Erf, sp.sin)
#: |f| <= 1 and O(1) at 0 (sigmoid(0) = 1/2, cos(0) = 1, exp(-0^2) = 1)
BOUNDED = (F.Sigmoid, sp.cos, F.Gauss)
#: jumps at 0: the change is the fraction of coordinates that cross
JUMPS = (F.Step, F.Sign)
#: derivative -> 0 where the argument grows (saturation)
SATURATING = (sp.tanh, sp.erf, F.Erf, F.Sigmoid, F.Gauss)


def size(e: sp.Expr, sz: dict) -> Fraction:
    """Exponent of mean |e| given the G-vars' (name -> exponent)."""
    if e.is_Symbol:
        return sz[e.name]
    if e.is_Number:
        return NONE if e == 0 else ZERO
    if e.is_Add:
        return max(size(t, sz) for t in e.args)
    if e.is_Mul:
        return sum((size(f, sz) for f in e.args), ZERO)
    if e.is_Pow and e.exp.is_Integer:
        return int(e.exp) * size(e.base, sz)
    inner = max((size(a, sz) for a in e.args if a.free_symbols), default=ZERO)
    if isinstance(e, SMALL_BOUNDED):
        return min(inner, ZERO)
    if isinstance(e, BOUNDED + JUMPS):
        return ZERO
    if isinstance(e, (F.Softplus, sp.exp)):
        return max(inner, ZERO)
    return inner


def change(e: sp.Expr, x0: dict, x1: dict, ch: dict) -> Fraction:
    """Exponent of mean |e_1 - e_0| given the G-vars' sizes before (x0) and after (x1) and
    their changes (ch)."""
    if e.is_Symbol:
        return ch[e.name]
    if e.is_Number:
        return NONE
    if e.is_Add:
        return max(change(t, x0, x1, ch) for t in e.args)
    if e.is_Mul:  # d(uv) = du v1 + u0 dv: one factor moves, the others at their largest
        fs = e.args
        big = [max(size(f, x0), size(f, x1)) for f in fs]
        return max(change(f, x0, x1, ch) + sum(big[:i] + big[i + 1:], ZERO)
                   for i, f in enumerate(fs))
    if e.is_Pow and e.exp.is_Integer:
        k = int(e.exp)
        return change(e.base, x0, x1, ch) + (k - 1) * max(size(e.base, x0), size(e.base, x1))
    arg = e.args[0]
    inner = change(arg, x0, x1, ch)
    if isinstance(e, SMALL_BOUNDED + BOUNDED):
        return min(inner, ZERO)
    if isinstance(e, JUMPS):
        return min(inner - size(arg, x0), ZERO) if inner > NONE else NONE
    return max([inner] + [change(a, x0, x1, ch) for a in e.args[1:] if a.free_symbols])


def dsize(e: sp.Expr, g: sp.Symbol, x0: dict) -> Fraction:
    """Exponent of |d e / d g| at the sizes x0 (NONE when e does not depend on g)."""
    if g not in e.free_symbols:
        return NONE
    if e == g:
        return ZERO
    if e.is_Add:
        return max(dsize(t, g, x0) for t in e.args)
    if e.is_Mul:
        fs = e.args
        sizes = [size(f, x0) for f in fs]
        return max(dsize(f, g, x0) + sum(sizes[:i] + sizes[i + 1:], ZERO)
                   for i, f in enumerate(fs))
    if e.is_Pow and e.exp.is_Integer:
        return dsize(e.base, g, x0) + (int(e.exp) - 1) * size(e.base, x0)
    arg = e.args[0]
    if isinstance(e, JUMPS):
        return NONE
    if isinstance(e, SATURATING) and size(arg, x0) > 0:
        return NONE
    return dsize(arg, g, x0)
