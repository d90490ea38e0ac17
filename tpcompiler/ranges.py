"""Value ranges and sizes of H-var expressions, for two static checks.

- `interval(e)`, `bounded_above(e)`: the range of an expression over every value of its G-vars.
  The NTK theorem of Tensor Programs II (Cor. 7.3; IIb for the training dynamics) assumes
  nonlinearities with polynomially bounded derivatives; `exp(v)` meets that exactly when v is
  bounded above (exp(-g ** 2), exp(tanh(g))), and `ntk_caveats` names every exp that does not.
- `log_scale(e)`: log10 of how large e is when its G-vars are O(1), the quantity whose square
  (times a variance) the kernel program forms. check.py keeps it <= MAX_LOG_SCALE.

Both are sufficient tests, not exact ones: an expression they cannot bound is reported (a
warning too many), never passed silently.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from . import functions as F
from . import ir
from .errors import Span

INF = math.inf
Interval = tuple[float, float]

# functions whose values lie in a fixed interval whatever their argument
_BOUNDED: dict[type, Interval] = {
    sp.tanh: (-1.0, 1.0), F.Erf: (-1.0, 1.0), F.Sign: (-1.0, 1.0), sp.sin: (-1.0, 1.0),
    sp.cos: (-1.0, 1.0), F.Sigmoid: (0.0, 1.0), F.Step: (0.0, 1.0), F.Gauss: (0.0, 1.0),
    # Phi(z) + z phi(z) has its extremes at z = -+sqrt(2): -0.0683 and 1.0683
    F.DGelu: (-0.0684, 1.0684),
}
GELU_MIN = -0.1701  # min of z Phi(z), at z ~ -0.752


def _float(e: sp.Expr) -> float:
    try:
        return float(e)
    except OverflowError:  # a huge exact rational
        return INF if e > 0 else -INF


def _mul(a: Interval, b: Interval) -> Interval:
    # 0 * inf is 0 here: a factor that is exactly 0 kills an unbounded one
    c = [0.0 if x == 0 or y == 0 else x * y for x in a for y in b]
    return min(c), max(c)


def _pow(x: float, k: int) -> float:
    try:
        return math.pow(x, k)
    except OverflowError:
        return INF if x > 0 or k % 2 == 0 else -INF


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return INF


def _softplus(x: float) -> float:
    return x if x > 40 else math.log1p(_exp(x))


def interval(e: sp.Expr) -> Interval:
    """(lo, hi) with lo <= e <= hi for every real value of e's symbols (lo may be -inf, hi inf)."""
    if e.is_number:
        v = _float(e)
        return (v, v) if not math.isnan(v) else (-INF, INF)
    if e.is_Symbol:
        return -INF, INF
    if e.is_Add:
        parts = [interval(a) for a in e.args]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    if e.is_Mul:
        out = (1.0, 1.0)
        for a in e.args:
            out = _mul(out, interval(a))
        return out
    if e.is_Pow:
        base, k = e.args
        if not k.is_Integer:
            return -INF, INF
        k = int(k)
        lo, hi = interval(base)
        if k < 0:  # 1 / base ** |k|, bounded where base stays away from 0 (softsign's 1 + |z|)
            if lo <= 0 <= hi:
                return -INF, INF
            lo, hi, k = 1.0 / hi, 1.0 / lo, -k
        if k % 2:
            return _pow(lo, k), _pow(hi, k)
        small = 0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))
        return _pow(small, k), _pow(max(abs(lo), abs(hi)), k)
    f = type(e)
    if f in _BOUNDED:
        return _BOUNDED[f]
    lo, hi = interval(e.args[0]) if e.args else (-INF, INF)
    if f is sp.exp:
        return _exp(lo), _exp(hi)
    if f is F.Relu:
        return max(lo, 0.0), max(hi, 0.0)
    if f is F.AbsF:
        return (0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi))), max(abs(lo), abs(hi))
    if f is F.Gelu:  # z Phi(z) <= max(z, 0)
        return GELU_MIN, max(hi, 0.0)
    if f is F.Softplus:
        return _softplus(lo), _softplus(hi)
    if f is F.ABRelu:
        a, b = (_float(x) for x in e.args[1:])
        neg = _mul((a, a), (min(lo, 0.0), min(hi, 0.0)))
        pos = _mul((b, b), (max(lo, 0.0), max(hi, 0.0)))
        return neg[0] + pos[0], neg[1] + pos[1]
    return -INF, INF


def _generators(e: sp.Expr) -> list[sp.Expr]:
    """The symbols and function applications of e (not looking inside the latter)."""
    out: list[sp.Expr] = []
    stack = [e]
    while stack:
        x = stack.pop()
        if x.is_Symbol or isinstance(x, sp.Function):
            if x not in out:
                out.append(x)
        elif not x.is_number:
            stack.extend(x.args)
    return out


def _quadratic_bounded_above(e: sp.Expr) -> bool:
    """A polynomial of degree <= 2 in its symbols and function applications (taken as free
    reals, so the test is sufficient): x'Ax + b'x + c is bounded above iff A is negative
    semidefinite and b lies in A's range."""
    gens = _generators(e)
    try:
        poly = sp.Poly(e, *gens)
    except sp.PolynomialError:
        return False
    if poly.total_degree() > 2:
        return False
    n = len(gens)
    a = np.zeros((n, n))
    b = np.zeros(n)
    for monom, coeff in poly.terms():
        c = _float(coeff)
        idx = [i for i, p in enumerate(monom) for _ in range(p)]
        if len(idx) == 1:
            b[idx[0]] += c
        elif len(idx) == 2:
            i, j = idx
            a[i, j] += c / 2
            a[j, i] += c / 2
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return False
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0), 1e-300)
    eig, vec = np.linalg.eigh(a)
    if eig.max(initial=-1.0) > 1e-12 * scale:
        return False
    # b must have no component along A's null space, else the form rises linearly along it
    null = vec[:, np.abs(eig) <= 1e-12 * scale]
    return bool(np.all(np.abs(null.T @ b) <= 1e-12 * scale))


def bounded_above(e: sp.Expr) -> bool:
    """Whether e is bounded above over every value of its G-vars (sufficient test)."""
    if interval(e)[1] < INF or _quadratic_bounded_above(e):
        return True
    # drop the terms of functions that are bounded above (tanh(g), -relu(g)): they add at most
    # a constant; polynomial terms stay, their signs matter to the quadratic form
    terms = e.args if e.is_Add else (e,)
    rest = [t for t in terms if not (t.atoms(sp.Function) and interval(t)[1] < INF)]
    return len(rest) < len(terms) and _quadratic_bounded_above(sp.Add(*rest))


def log_scale(e: sp.Expr, memo: dict | None = None) -> tuple[float, float]:
    """(log10 of e's size when its G-vars are O(1), the largest such value over e's
    sub-expressions). A coefficient counts its magnitude, a product the sum of its factors',
    a power k times its base's; a bounded function 0; exp(v) the size of e^v: v's upper bound
    when it has one, else e^|v|. Upper estimates: cancellations are not seen."""
    memo = {} if memo is None else memo
    got = memo.get(e)
    if got is not None:
        return got
    if e.is_number:
        v = abs(_float(e))
        if v == INF and e.is_Rational:  # a huge exact number: its size from its digits
            p, q = abs(int(e.p)), int(e.q)
            own = math.log10(p) - math.log10(q)
        else:
            own = math.log10(v) if v > 0 else -INF
        out = (own, own)
    elif e.is_Symbol:
        out = (0.0, 0.0)
    else:
        kids = [log_scale(a, memo) for a in e.args]
        worst = max(k[1] for k in kids)
        f = type(e)
        if e.is_Add:
            own = max(k[0] for k in kids)
        elif e.is_Mul:
            own = sum(k[0] for k in kids)
        elif e.is_Pow:
            k = e.args[1]
            if k.is_number and k >= 0:
                own = float(k) * kids[0][0]
            else:
                own = INF
                if k.is_Integer:  # 1 / base ** |k|: at most 1 / min|base| ** |k|
                    lo, hi = interval(e.args[0])
                    if not lo <= 0 <= hi:
                        own = float(k) * math.log10(min(abs(lo), abs(hi)))
        elif f in _BOUNDED:
            own = 0.0
        elif f is sp.exp:
            hi = interval(e.args[0])[1]
            if hi < INF:
                own = hi / math.log(10)
            else:
                size = kids[0][0]
                own = INF if size > 300 else 10.0 ** size / math.log(10)
        elif f is F.ABRelu:
            own = kids[0][0] + max(kids[1][0], kids[2][0])
        elif f is F.Softplus:
            own = max(kids[0][0], math.log10(math.log(2)))
        else:  # relu, abs, gelu: the size of the argument
            own = kids[0][0] if len(kids) == 1 else max(k[0] for k in kids)
        out = (own, max(worst, own))
    memo[e] = out
    return out


def _exp_nodes(e: sp.Expr) -> list[sp.Expr]:
    return sorted(e.atoms(sp.exp), key=sp.default_sort_key)


def ntk_caveats(prog: ir.Program) -> tuple[tuple[Span | None, str], ...]:
    """(where, what) for every exp() of the program whose argument is not bounded above:
    exp and its derivative are then not polynomially bounded, outside the NTK theorem."""
    uses: list[tuple[sp.Expr, Span | None]] = [
        (g.arg, g.span) for g in prog.gvars if g.op is ir.Op.MATMUL]
    if not isinstance(prog.readout.arg, ir.InputRef):
        uses.append((prog.readout.arg, prog.readout.span))
    seen: set[sp.Expr] = set()
    out = []
    for expr, span in uses:
        for node in _exp_nodes(expr):
            if node in seen or bounded_above(node.args[0]):
                continue
            seen.add(node)
            names = ir.gvars_of(node)
            legend = "; ".join(_describe(prog.gvar(n)) for n in names)
            out.append((span, f"{sp.sstr(node)}{f' ({legend})' if legend else ''}"))
    return tuple(out)


def _describe(g: ir.GVar) -> str:
    what = {ir.Op.BIAS: "a bias"}.get(g.op, "dense()")
    at = f" at line {g.span.line}" if g.span is not None else ""
    return f"{g.name} is {what}{at}"
