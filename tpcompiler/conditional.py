"""The conditional rule for kinks off the origin in three or more coordinates: the smooth
coordinates S by the tensor rule, the kinked ones K in closed form given them.

relu(h - 1/2) tanh(h + g), h and g of two matrices, is a 4-D integral per pair of points with
kinks off the origin on (h, h') only, and no addition formula separates tanh(h + g). Given S,
K is Gaussian with a mean linear in S and a fixed covariance, and each term of the integrand is
(a function of S) x (relu, step and powers of at most two affine forms of K), whose conditional
expectation is a truncated moment of a bivariate Gaussian (tpcompiler/truncated.py). Here: the
compile-time decomposition (`conditional`) and the tensor grid over S; the backends evaluate it
(backends/numpy.py `_conditional`, backends/quadsource.py `conditional_source`).
"""

from __future__ import annotations

import functools

import numpy as np
import sympy as sp

from . import functions as F
from .quadrature import KINKED, frozen, grid, linear_row

#: the rule's tensor order per axis over the smooth coordinates (a kinked pair given them is
#: a closed form, truncated.kink_moment), and raised for the accuracy probe
CONDITIONAL_ORDER = {1: 96, 2: 48, 3: 10, 4: 7}
BOOSTED_CONDITIONAL = {1: 160, 2: 64, 3: 14, 4: 9}


#: nodes of the conditional rule's tensor grid whose weight is below this fraction of the
#: largest are dropped: at most ~1e-17 of the integral where the integrand grows no faster
#: than a polynomial, and about half of a 2-D grid (48 per half-axis: 4888 of 9216 nodes)
PRUNE = 1e-17


#: a kink form whose conditional standard deviation given the smooth coordinates is at most
#: this fraction of its mean's loading beta on them makes the closed form a transition of
#: the smooth coordinates of that relative width, which the tensor rule does not resolve (a
#: zero or tiny input row: h is then h + g itself, width 0; nearly collinear points: Y given
#: X, the residual of one form on the other). The rule then rotates the smooth whitened
#: coordinates so that the narrowest form's normal is an axis, takes the half-range rule at
#: CUT_ACROSS across it and the split rule along it, cut at every narrow form's crossing and
#: around it (quadrature.SPLIT_RAMP times the width): ~40k nodes instead of 4888, for the
#: pairs that need it. relu(h - 1/2) tanh(h + g) with a zero row against a row 1e-1, 1e-2,
#: 1e-4 and 1e-8 times a normal one: the tensor rule was 1e-6 (width 0.29) / 3e-4 / 3e-4 /
#: 1 % off; cut, within 1e-14 of the nested reference. Normal rows (width ~0.7) keep the
#: tensor rule, exact there
NARROW = 0.4
CUT_ACROSS = 48
#: a residual of two kink forms (Y given X) whose loading on the smooth coordinates is below
#: this fraction of theirs is rounding (the forms coincide: identical points), not a line to
#: cut at; as one, at width 0, it displaced a real cut (3e-5 off on a zero row's NTK)
RESIDUAL_FLOOR = 1e-12


def conditional_order(dim: int, boost: bool = False) -> int:
    """Half-range order per axis of the conditional rule's tensor block of `dim` axes."""
    return (BOOSTED_CONDITIONAL if boost else CONDITIONAL_ORDER)[dim]


@functools.cache
def conditional_grid(dim: int, boost: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (M, dim) and weights (M,) of the conditional rule's tensor block, pruned
    (`PRUNE`)."""
    x, w = grid(dim, conditional_order(dim, boost))
    keep = w > PRUNE * w.max()
    return frozen(np.ascontiguousarray(x[keep]), np.ascontiguousarray(w[keep]))


def applies(expr: sp.Expr) -> bool:
    """Is the conditional rule worth trying for a 3-D/4-D integrand the split and polar rules
    do not take: kinks off the origin, or no kinks at all (coordinates that enter only as
    powers, z0 z1 sigmoid(z2) sigmoid(z3), are then given in closed form)?"""
    return off_origin(expr) or not expr.atoms(*KINKED)


def off_origin(expr: sp.Expr) -> bool:
    """Has expr a kink that is not on a hyperplane through the origin (relu(z0 - 1/2))?"""
    for f in expr.atoms(*KINKED):
        arg = f.args[0]
        zs = sorted(arg.free_symbols, key=lambda z: z.name)
        if linear_row(arg, zs) is None:
            return True
    return False


@functools.lru_cache(maxsize=256)
def conditional(expr: sp.Expr, k: int) -> tuple | None:
    """The conditional rule for E[expr(z0..z{k-1})] where the kinks are off the origin in
    more than quadrature.MAX_SPLIT_DIM coordinates (relu(u - 1/2) tanh(u + w) per pair of
    points: 4-D, its kinks on u and u' only): integrate the pivot coordinates S by the tensor
    rule and, given them, the kinked ones K in closed form. Given S, K is Gaussian (its mean
    linear in S, its covariance fixed), and each term of expr is (a function of S) x (a
    product of relu, step and powers of at most two affine forms of K and S), whose
    expectation is a truncated moment of a bivariate Gaussian (truncated.kink_moment). abs,
    sign and abrelu are sums of relu and step.

    K is every coordinate of a kink argument where that leaves S smooth and of one or two
    coordinates (the pivot's rule is cut in at most two). Where it leaves three (relu(z1 + 2)
    z0 sigmoid(z2) sigmoid(z3): K = (z0, z1), z0 entering as a power), or no pivot
    (relu(h) step(h + g - 1), h and g of two matrices, in the coordinates h and
    s = h + g: every coordinate is kinked), K is the choice with the fewest kinks of S alone
    (S of one or two coordinates), here K = (h, h') given S = (s, s'): the kinks of S alone
    (step(s - 1)) stay in the pivot's integrand, and the pivot's rule is cut at them
    (`pivot_breaks`; backends/numpy.py `_cut_nodes`).

    (smooth, given, forms, terms, pivot_breaks) or None where expr has no such shape: smooth
    and given are coordinates, forms rows (r_0, .., r_{k-1}, c) over z ({r . z + c}), terms
    (function of S, f, p, i, g, q, j): E[X_f^p [X_f > 0]^i X_g^q [X_g > 0]^j | S], -1 for no
    form; pivot_breaks rows (r, c) of the kinks of S alone."""
    zs = [sp.Symbol(f"z{i}", real=True) for i in range(k)]
    atoms = expr.atoms(*KINKED)
    if not atoms:
        return _powers_given(expr, zs)
    kinked = sorted({i for f in atoms for i, z in enumerate(zs) if z in f.args[0].free_symbols})
    first = _decompose(expr, zs, frozenset(kinked))
    if first is not None and len(first[0]) <= 2:
        return first
    found = []
    for mask in range(1, 2 ** k - 1):
        given = frozenset(i for i in range(k) if mask >> i & 1)
        if k - len(given) > 2:
            continue  # the pivot rule is cut in one or two coordinates
        got = _decompose(expr, zs, given)
        if got is not None:
            found.append(((len(got[4]), -len(given), sorted(given)), got))
    return min(found, key=lambda t: t[0])[1] if found else None


def _powers_given(expr: sp.Expr, zs: list) -> tuple | None:
    """A smooth integrand whose coordinates K enter only as powers (z0 z1 sigmoid(z2)
    sigmoid(z3): (h - c) h' sigmoid(h + g) sigmoid(h' + g'), from leaky_relu(a) = slope a +
    (1 - slope) relu(a)): the largest such K that leaves a pivot of one or two coordinates, given
    them in closed form (a 2-D rule instead of the 4-D tensor rule at 7 nodes a half-axis);
    None where there is none."""
    k = len(zs)
    inside = set().union(*(f.free_symbols for f in expr.atoms(sp.Function)))
    free = [i for i in range(k) if zs[i] not in inside]  # not inside any function
    if len(free) < k - 2:
        return None  # most 3-D/4-D smooth integrands: no expansion tried
    best = None
    for mask in range(1, 2 ** len(free)):
        given = frozenset(free[i] for i in range(len(free)) if mask >> i & 1)
        if k - len(given) > 2 or (best is not None and len(given) <= len(best[1])):
            continue  # (K = every coordinate leaves no pivot: _decompose says None)
        best = _decompose(expr, zs, given) or best
    return best


def _decompose(expr: sp.Expr, zs: list, given_set: frozenset) -> tuple | None:
    """conditional()'s decomposition with K = given_set, or None where it does not apply."""
    k = len(zs)
    given = sorted(given_set)
    smooth = [i for i in range(k) if i not in given_set]
    if not smooth or not given:
        return None
    kz = {zs[i] for i in given}
    forms: list[sp.Expr] = []
    units: dict[sp.Symbol, tuple[int, int]] = {}  # placeholder -> (form, 1 relu | 0 step)
    cuts: set[tuple[float, ...]] = set()

    def unit(arg: sp.Expr, relu: bool) -> sp.Symbol:
        arg = sp.expand(arg)
        if arg not in forms:
            forms.append(arg)
        n = forms.index(arg)
        sym = sp.Symbol(f"_{'r' if relu else 's'}{n}", real=True)
        units[sym] = (n, int(relu))
        return sym

    sub = {}
    for f in expr.atoms(*KINKED):
        a = f.args[0]
        row = linear_row(a, zs, constant=True)
        if row is None:
            return None
        if not a.free_symbols & kz:
            # a kink of the pivot alone: evaluated at the pivot's nodes, which are cut there
            if any(c != 0 for c in row):
                cuts.add(_float_row(a, zs))
            continue
        if isinstance(f, F.Relu):
            sub[f] = unit(a, True)
        elif isinstance(f, F.Step):
            sub[f] = unit(a, False)
        elif isinstance(f, F.AbsF):
            sub[f] = unit(a, True) + unit(-a, True)
        elif isinstance(f, F.Sign):
            sub[f] = unit(a, False) - unit(-a, False)
        elif isinstance(f, F.ABRelu):
            sub[f] = f.args[2] * unit(a, True) - f.args[1] * unit(-a, True)
        else:
            return None
    if any(f.args[0].atoms(*KINKED) for f in sub):
        return None  # a kink inside a kink argument
    flat = sp.expand(expr.xreplace(sub))
    grouped: dict[tuple, sp.Expr] = {}
    for term in sp.Add.make_args(flat):
        rest, powers = sp.S.One, {}  # form -> [power, truncated]
        for factor in sp.Mul.make_args(term):
            base, e = factor.as_base_exp()
            if base in units and e.is_Integer and e > 0:
                n, relu = units[base]
                entry = powers.setdefault(n, [0, 0])
                entry[0] += int(e) if relu else 0
                entry[1] = 1
            elif base in kz and e.is_Integer and e > 0:
                base = sp.expand(base)
                if base not in forms:
                    forms.append(base)
                entry = powers.setdefault(forms.index(base), [0, 0])
                entry[0] += int(e)
            elif factor.free_symbols & (kz | set(units)):
                return None
            else:
                rest *= factor
        if len(powers) > 2 or sum(v[0] for v in powers.values()) > 2:
            return None
        if len(powers) == 2 and all(v[1] for v in powers.values()) and \
                any(v[0] > 1 for v in powers.values()):
            return None
        slots = sorted(powers.items()) + [(-1, [0, 0])] * (2 - len(powers))
        key = tuple(x for n, (pw, tr) in slots for x in (n, pw, tr))
        grouped[key] = grouped.get(key, sp.S.Zero) + rest
    rows = tuple(_float_row(form, zs) for form in forms)
    terms = tuple((e,) + key for key, e in sorted(grouped.items()) if e != 0)
    return tuple(smooth), tuple(given), rows, terms, tuple(sorted(cuts))


def _float_row(form: sp.Expr, zs: list) -> tuple[float, ...]:
    """An affine form as floats (r_0, .., r_{k-1}, c), {r . z + c}; no -0.0."""
    row = linear_row(form, zs, constant=True)
    const = sp.expand(form - sum(c * z for c, z in zip(row, zs)))
    return tuple(float(c) + 0.0 for c in row) + (float(const) + 0.0,)
