"""The rules every program obeys, apart from building it: the language's limits (sizes, number
ranges, exponents), reserved names, and the checks of constants and of vector sizes that keep
every kernel within float64. lowering.py calls them while it builds the IR; each failure is a
TPError at the offending node.
"""

from __future__ import annotations

import math
from fractions import Fraction

import sympy as sp

from .errors import Span, TPError
from .functions import BUILTINS
from .ranges import bounded_above, interval, log_scale

MAX_GVARS = 5000  # unrolled program size cap (G-vars): larger programs are almost surely a typo
MAX_STEPS = 200_000  # statements executed while unrolling
MAX_SEQ = 10_000
KINDS = ("input", "hidden", "readout", "bias")
KEYWORDS = ("network", "parametrization", "const", "param", "input", "weight", "vector",
            "report", "act", "repeat", "for", "in")
MAX_POWER = 16  # vector ** p: moments grow like (2p-1)!!; beyond this they are meaningless
MAX_EXPONENT = 400  # |e| in a literal 1.5e<e>: 10**e is computed exactly, so it must stay small
MAX_BITS = 4096  # numerator/denominator size of an exact constant (1e-1000 needs 3322 bits)
MAX_NUMBER = 10**300  # a constant (exact, in constant expressions) must be a float64 with room
NUMBER_HINT = ("numbers must lie between about 1e-400 and 1e300 in magnitude, or be 0 (and "
               "those that enter the network, at most 1e100)")
# The largest constant that may enter the network (a variance, a slope, a coefficient, an added
# constant) and the largest size of a vector expression (its coefficients multiplied together,
# ranges.log_scale). The kernel program multiplies a variance by two such sizes into one number
# (Cov = var * E[h h'], D = var * E[h' h'']): 1e100 ** 3 = 1e300 stays below float64's 1.8e308
# with a factor 1e8 to spare for Gaussian moments and closed-form constants. 1e150, each
# number merely squared, is not enough: var=1e150 on a coefficient of 1e150 gives 1e450.
MAX_CONSTANT = 10**100  # exact: compared with exact rationals
MAX_LOG_SCALE = 100
# |a|, |b|, |c| of a custom parametrization: n ** e must stay finite for the widths of finite
# networks (tpc coordcheck, simulate): n <= 1e7 gives n ** 20 <= 1e140
MAX_ABC_EXPONENT = 20
RANGE_HINT = ("the kernels multiply a variance by the squares of the network's constants, "
              "so each must be at most 1e100 in magnitude for float64 (whose largest number "
              "is 1.8e308); rescale it")


def fraction(text: str, span) -> Fraction:
    """A numeric literal as an exact rational, or a TPError for one out of range."""
    mantissa, _, exponent = text.lower().partition("e")
    exponent = exponent.lstrip("+-").lstrip("0")
    if len(mantissa) > MAX_EXPONENT or len(exponent) > 3 or int(exponent or 0) > MAX_EXPONENT:
        # Fraction("1e-99999999") would build 10**99999999 exactly and never finish
        raise TPError(f"the number {text[:20]}{'...' if len(text) > 20 else ''} is out of range",
                      span, NUMBER_HINT)
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise TPError(f"malformed number {text!r}", span) from None


def show(value: sp.Expr) -> str:
    """An exact number as a user reads it: itself when short, else rounded (1.23e+45)."""
    text = str(value)
    if len(text) <= 20:
        return text
    try:
        f = float(value)
        if math.isfinite(f):
            return f"{f:.3g}"
    except (TypeError, ValueError, OverflowError):
        pass
    mag = math.log10(abs(int(value.p))) - math.log10(int(value.q))
    return f"{'-' if value < 0 else ''}1e{mag:+.0f}"


def check_finite(value: sp.Expr, span: Span | None) -> sp.Expr:
    """A constant expression's value, or a TPError if it is not a finite, moderate real."""
    bad = value.has(sp.zoo, sp.oo, -sp.oo, sp.nan) or not value.is_real
    if not bad:
        try:
            f = float(value)
            bad = not math.isfinite(f) or abs(f) > 1e300
        except (TypeError, ValueError, OverflowError):
            bad = True
    if bad:
        raise TPError("this constant expression is not a finite real number", span,
                      "check for a division by zero, an overflow or a root of a negative number")
    if value.is_Rational and max(abs(int(value.p)), int(value.q)).bit_length() > MAX_BITS:
        # exact rationals double in size with every product: stop before they become huge
        raise TPError(f"this constant needs more than {MAX_BITS} bits to be kept exact", span,
                      "constants must be moderate numbers (roughly 1e-1000 .. 1e300)")
    return value


def check_name(name: str, span, what: str) -> None:
    """A name the program defines: neither a keyword nor a built-in function."""
    if name in KEYWORDS:  # the contextual lexer lets `input for` through; `for = ..` can't be
        raise TPError(f"'{name}' is a keyword and cannot be used as a name", span,
                      "choose another name")
    if name in BUILTINS or name in ("dense", "readout", "mean", "transpose"):
        raise TPError(f"'{name}' is a built-in function and cannot be redefined as {what}",
                      span, "choose another name")


def in_range(v: sp.Expr, span, what: str) -> sp.Expr:
    """A constant that enters the network (var=, bias=, slope=, ...): |v| <= MAX_CONSTANT."""
    if abs(v) > MAX_CONSTANT:
        raise TPError(f"{what} is {show(v)}, more than the largest constant a network may "
                      f"use (1e100)", span, RANGE_HINT)
    return v


def check_scale(expr: sp.Expr, span: Span | None, memo: dict) -> None:
    """TPError when a vector expression is too large for float64 kernels (MAX_LOG_SCALE)."""
    own, worst = log_scale(expr, memo)
    if worst <= MAX_LOG_SCALE:
        return
    # the smallest sub-expression over the limit says what made it so large
    culprit = expr
    while True:
        bigger = [a for a in culprit.args if log_scale(a, memo)[1] > MAX_LOG_SCALE]
        if not bigger:
            break
        culprit = bigger[0]
    size = log_scale(culprit, memo)[0]
    hint = RANGE_HINT
    if culprit.is_number:
        what = f"the constant {show(culprit)}"
    elif isinstance(culprit, sp.exp):
        if bounded_above(culprit.args[0]):
            top = interval(culprit.args[0])[1]
            what = f"exp() of an argument up to {top:.3g} reaches about 1e{size:.0f}"
            hint = "lower the constant added to exp's argument"
        else:
            what = (f"exp() of an argument that is not bounded above reaches about "
                    f"1e{size:.0f} where the vectors in its argument are of size 1")
            hint = ("the kernel of exp(c * g) grows like e^(2 c^2 q): scale its argument down "
                    "(exp(-c * g ** 2) and other arguments bounded above have no such limit)")
    else:
        what = f"its coefficients multiply to about 1e{size:.0f}"
    raise TPError(f"this expression is too large for float64 kernels: {what}, more than "
                  f"1e100", span, hint)
