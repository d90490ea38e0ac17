"""Mehler (Hermite) series for the two-point expectations of smooth separable integrands: the
fast path of the CPU backend for E[f(u) g(v)] per pair of points.

For (u, v) ~ N(0, [[a, c], [c, b]]) and rho = c / sqrt(a b), Mehler's formula gives
    E[f(u) g(v)] = sum_k alpha_k beta_k rho^k,
    alpha_k = E[f(sqrt(a) z) h_k(z)],  beta_k = E[g(sqrt(b) z) h_k(z)],  z ~ N(0, 1),
with h_k = He_k / sqrt(k!) the orthonormal Hermite polynomials. The coefficients depend on one
point each (its variance), so they are computed once per point (O(N)); a pair costs a
polynomial in rho instead of a 2-D quadrature (~4000 evaluations of f g): O(N^2 K) multiply-adds,
no transcendental function per pair.

Truncation: Parseval bounds the tail, |sum_{k>=K} alpha_k beta_k rho^k| <=
|rho|^K T_alpha(K) T_beta(K) with T(K) = sqrt(sum_{k>=K} alpha_k^2). Per point the backend
stores alpha_0..alpha_{K_MAX-1}, T at the CHECKPOINTS and the scale S = T(0) = sqrt(E[f^2]);
per pair it takes the first checkpoint K with |rho|^K T_alpha(K) T_beta(K) <= TOL S_alpha S_beta
(Cauchy-Schwarz: |E[f g]| <= S_alpha S_beta). If none qualifies (variance too large for K_MAX
terms at this |rho|: the coefficients of tanh(s z) decay like exp(-(pi / 2s) sqrt(2k)), so
slowly for large s), the pair falls back to the 2-D quadrature rule. T(K_MAX) is estimated by the
coefficients K_MAX..K_EXT-1 (for root-exponential decay the rest is ~1% of it).

Coefficients are computed by the half-range rule (quadrature.rule) with 2 NODE_ORDER nodes and
the three-term recurrence h_{k+1} = (z h_k - sqrt(k) h_{k-1}) / sqrt(k+1): measured against the
same at 800 nodes, alpha_0..alpha_255 of tanh(s z) agree to 3e-16 at variances 0.5..6.

Integrands qualify when they are 2-D, free of kinks (a kinked factor has alpha_k ~ k^(-3/4):
the series would never pass the test) and separable, sum_t c_t f_t(z0) g_t(z1); the call's
variances must each belong to one point (`plan`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy as sp

from .ir import ParamSymbol
from .kernel_program import KernelProgram, PointValue, QuadCall, untwin
from .quadrature import KINKED, rule

K_MAX = 192
K_EXT = 256
CHECKPOINTS = (8, 16, 32, 64, 128, 192)
NODE_ORDER = 96
#: half-range nodes per half-axis and terms per axis of the NumPy reference's boosted series
#: (the accuracy probe's reference for the double series)
BOOST_NODE_ORDER = 128
TOL = 1e-15
#: |rho| >= 1 - UNIT counts as |rho| = 1 (the 1-D rule): identical points reach the per-pair
#: code with rho a few ulps off 1 after a deep recursion (c and d of one point rounded apart);
#: the error of the snap is |dE/drho| UNIT, ~1e-15 of the scale
UNIT = 8 * 2.220446049250313e-16
#: columns per coefficient vector in the per-point table: S, T at the checkpoints,
#: alpha_0..alpha_{K_MAX-1}
HEAD = len(CHECKPOINTS) + 1
WIDTH = HEAD + K_MAX
#: a two-vector table ("2"): K2 x K2 coefficients c_mn = E[f(sqrt(a) z, sqrt(b) t) h_m(z)
#: h_n(t)], K2_EXT per axis computed (those past K2 estimate the tails), its header S, then the
#: tails T_a(M) = sqrt(sum_{m >= M, n} c_mn^2) and T_b(N) at CHECKPOINTS2
K2 = 96
K2_EXT = 112
CHECKPOINTS2 = (8, 16, 32, 64, 96)
HEAD2 = 1 + 2 * len(CHECKPOINTS2)
WIDTH2 = HEAD2 + K2 * K2

Z0, Z1 = sp.Symbol("z0", real=True), sp.Symbol("z1", real=True)


@dataclass(frozen=True)
class Factor:
    """One per-point coefficient block: fn(sqrt(var) z) in the Hermite basis.

    kind "1": fn(z0), a vector of WIDTH columns; "1m": fn(z0, z1) with z1 (variance var2) of a
    vector the other point does not read, integrated out first, then a vector as "1"; "2":
    fn(z0, z1) of two independent vectors both points read, a K2 x K2 table of WIDTH2
    columns."""

    fn: sp.Expr  # in z0 (and z1)
    var: sp.Expr  # the point's variance of z0, in its per-point symbols d*
    column: int  # first column in the per-point table
    var2: sp.Expr | None = None  # of z1
    kind: str = "1"

    @property
    def width(self) -> int:
        return WIDTH2 if self.kind == "2" else WIDTH


@dataclass(frozen=True)
class Term:
    """coef * E[f(u) g(v)]; a factor None is the constant 1 (then E = E[f(u)] = alpha_0)."""

    coef: float
    a: int | None  # index into SeriesPlan.factors, first point
    b: int | None  # second point


@dataclass(frozen=True)
class SeriesCall:
    name: str  # of the generated function
    call: sp.Expr  # the quad2_<integrand>(c00, c10, c11) call it replaces
    integrand: sp.Expr  # its integrand, in z0, z1
    terms: tuple[Term, ...]
    #: per vector both points read, the call's argument positions of (its variance at the first
    #: point, the covariance, its variance at the second); () for a 2-D call: (0, 1, 2)
    rhos: tuple[tuple[int, int, int], ...] = ()
    #: the coordinates of each point, the shared vectors' first (series._vectors); () for 2-D
    order: tuple[tuple[int, ...], ...] = ()
    #: a 2-D call whose z0 is the second point's coordinate (terms' a is then z1's factor)
    swapped: bool = False


@dataclass(frozen=True)
class SeriesPlan:
    factors: tuple[Factor, ...]
    calls: tuple[SeriesCall, ...]

    @property
    def functions(self) -> tuple[tuple[sp.Expr, str], ...]:
        """The distinct (factor function, kind), in order (one coefficient routine each)."""
        return tuple(dict.fromkeys((f.fn, f.kind) for f in self.factors))

    @property
    def width(self) -> int:
        """Columns of the per-point table the factors fill."""
        return sum(f.width for f in self.factors)


def separable(expr: sp.Expr) -> list[tuple[float, sp.Expr, sp.Expr]] | None:
    """expr(z0, z1) as sum_t c_t f_t(z0) g_t(z1) (f_t in z0, g_t in z1 renamed z0, 1 for a
    constant factor), or None if some term couples z0 and z1 or has a kink."""
    if expr.atoms(*KINKED):
        return None
    out = []
    for term in sp.Add.make_args(sp.expand_mul(expr, deep=False)):
        parts = {"c": [], "a": [], "b": []}
        for f in sp.Mul.make_args(term):
            free = f.free_symbols
            if not free:
                parts["c"].append(f)
            elif free == {Z0}:
                parts["a"].append(f)
            elif free == {Z1}:
                parts["b"].append(f.xreplace({Z1: Z0}))
            else:
                return None
        coef = sp.Mul(*parts["c"])
        if not coef.is_number:
            return None
        out.append((float(coef), sp.Mul(*parts["a"]), sp.Mul(*parts["b"])))
    return out


def _grouped(parts: list) -> list:
    """Fewer terms with the same sum: the coefficients are linear in the factor, so the terms
    sharing a second factor g merge into (sum_t c_t f_t) x g (or those sharing f, whichever
    leaves fewer series); constant factors stay apart (a term with one is a mean, no series)."""
    def merge(parts, key):
        groups: dict = {}
        for c, fa, fb in parts:
            k = (fa, fb)[key]
            if k == 1:
                groups[(c, fa, fb)] = [(c, fa, fb)]  # keep as it is
                continue
            groups.setdefault(k, []).append((c, fa, fb))
        out = []
        for k, ts in groups.items():
            if len(ts) == 1:
                out.append(ts[0])
                continue
            other = sp.Add(*[c * (fa, fb)[1 - key] for c, fa, fb in ts])
            out.append((1.0, other, k) if key == 1 else (1.0, k, other))
        return out

    by_b, by_a = merge(parts, 1), merge(parts, 0)
    series_count = [sum(1 for _, fa, fb in p if fa != 1 and fb != 1) for p in (by_b, by_a)]
    return by_b if series_count[0] <= series_count[1] else by_a


def _resolve(kp: KernelProgram) -> dict:
    """Cross-block symbol -> its expression in d*, e* and Gram symbols."""
    env: dict = {}
    for s, e in kp.cross:
        env[s] = e.xreplace(env)
    return env


def _one_point(e: sp.Expr, point: int) -> bool:
    """Does e read per-point values of that point (1: d_i, 2: e_i) only?"""
    # a param (ir.ParamSymbol) is a number of the call, the same for both points
    return all(isinstance(s, PointValue) and s.point == point for s in e.free_symbols
               if not isinstance(s, ParamSymbol))


def _untwin(e: sp.Expr) -> sp.Expr:
    """The second point's expression as the same expression of its own d* symbols."""
    return e.xreplace({s: untwin(s) for s in e.free_symbols if isinstance(s, PointValue)})


def _vectors(itg, call: sp.Expr, env: dict, factors: dict) -> SeriesCall | None:
    """A 3-D or 4-D call whose coordinates are G-vars (Integrand.layout) of at most two vectors
    per point, one or two of them read by both points, with an integrand separable between the
    points: the product of one Mehler series per shared vector (the vectors are independent,
    so the cross-covariance is diagonal in the whitened coordinates), with per-point
    coefficients of the point's function of its own coordinates."""
    layout = itg.layout
    k = itg.dim
    side = {p: [i for i, (s, _) in enumerate(layout) if s == p] for p in (1, 2)}
    params = {p: [layout[i][1] for i in side[p]] for p in (1, 2)}
    if any(len(v) > 2 or len(set(params[p])) != len(v) for p, v in side.items()):
        return None
    shared = sorted(set(params[1]) & set(params[2]))
    if not shared:
        return None
    pos = {}
    n = 0
    for i in range(k):
        for j in range(i + 1):
            pos[i, j] = n
            n += 1
    cov = {key: call.args[p].xreplace(env) for key, p in pos.items()}

    def c(i, j):
        return cov[max(i, j), min(i, j)]

    for i in range(k):
        for j in range(i):
            if layout[i][1] != layout[j][1] and c(i, j) != 0:
                return None  # not block diagonal by vector
    order = {}
    for p in (1, 2):
        first = [i for i in side[p] if layout[i][1] in shared]
        first.sort(key=lambda i: shared.index(layout[i][1]))
        order[p] = first + [i for i in side[p] if layout[i][1] not in shared]
        for i in order[p]:
            if not _one_point(c(i, i), 1 if p == 1 else 2):
                return None
    local = {p: {sp.Symbol(f"z{i}", real=True): (Z0, Z1)[m] for m, i in enumerate(order[p])}
             for p in (1, 2)}
    parts = []
    for term in sp.Add.make_args(sp.expand_mul(itg.expr, deep=False)):
        sides = {"c": [], 1: [], 2: []}
        for f in sp.Mul.make_args(term):
            free = f.free_symbols
            where = [p for p in (1, 2) if free and free <= set(local[p])]
            if not free:
                sides["c"].append(f)
            elif where:
                sides[where[0]].append(f.xreplace(local[where[0]]))
            else:
                return None
        coef = sp.Mul(*sides["c"])
        if not coef.is_number:
            return None
        parts.append((float(coef), sp.Mul(*sides[1]), sp.Mul(*sides[2])))
    kind = "2" if len(shared) == 2 else ("1m" if max(len(v) for v in side.values()) == 2
                                         else "1")
    terms = []
    for coef, fa, fb in _grouped(parts):
        idx = []
        for p, fn in ((1, fa), (2, fb)):
            if fn == 1:
                idx.append(None)
                continue
            o = order[p]
            var = c(o[0], o[0])
            var2 = c(o[1], o[1]) if len(o) == 2 else None
            if p == 2:
                var, var2 = _untwin(var), None if var2 is None else _untwin(var2)
            fkind = kind if len(o) == 2 or kind == "1" else "1"
            idx.append(factors.setdefault((fn, var, var2, fkind), len(factors)))
        terms.append(Term(coef, *idx))
    rhos = tuple((pos[order[1][m], order[1][m]], pos[max(order[1][m], order[2][m]),
                                                      min(order[1][m], order[2][m])],
                  pos[order[2][m], order[2][m]]) for m in range(len(shared)))
    return SeriesCall("", call, itg.expr, tuple(terms), rhos, (tuple(order[1]), tuple(order[2])))


def plan(kp: KernelProgram, first_column: int) -> SeriesPlan:
    """The cross block's quad2 calls that the series can evaluate (and the 3-D and 4-D calls
    of `_vectors`), and the per-point factors they need (columns from first_column on)."""
    env = _resolve(kp)
    integrands = {q.name: q for q in kp.integrands if q.dim == 2 and not q.kinked}
    vectors = {q.name: q for q in kp.integrands
               if q.dim in (3, 4) and q.layout and not q.expr.atoms(*KINKED)}
    factors: dict[tuple, int] = {}
    calls: dict = {}
    exprs = [e for _, e in kp.cross] + [c for _, c in kp.outputs.values()]
    for e in exprs:
        for call in e.atoms(QuadCall):
            name = call.integrand
            if name in vectors and call not in calls:
                got = _vectors(vectors[name], call, env, factors)
                if got is not None:
                    calls[call] = SeriesCall(f"ser{len(calls)}", call, got.integrand, got.terms,
                                             got.rhos, got.order)
                continue
            if name not in integrands or call in calls:
                continue
            expr = integrands[name].expr
            c00, _, c11 = (a.xreplace(env) for a in call.args)
            swapped = bool(_one_point(c00, 2) and _one_point(c11, 1) and c00.free_symbols)
            if swapped:
                # the second point's coordinate first: the same series with the roles of the
                # coordinates exchanged (the call and its fallbacks keep their order)
                expr = expr.xreplace({Z0: Z1, Z1: Z0})
                c00, c11 = c11, c00
            parts = separable(expr)
            if parts is None or not _one_point(c00, 1) or not _one_point(c11, 2):
                continue
            var_b = _untwin(c11)
            terms = []
            for coef, fa, fb in _grouped(parts):
                idx = []
                for fn, var in ((fa, c00), (fb, var_b)):
                    if fn == 1:
                        idx.append(None)
                        continue
                    idx.append(factors.setdefault((fn, var, None, "1"), len(factors)))
                terms.append(Term(coef, *idx))
            calls[call] = SeriesCall(f"ser{len(calls)}", call, integrands[name].expr,
                                     tuple(terms), swapped=swapped)
    facs = []
    column = first_column
    for fn, var, var2, kind in factors:
        facs.append(Factor(fn, var, column, var2, kind))
        column += facs[-1].width
    return SeriesPlan(tuple(facs), tuple(calls.values()))


# --- the numeric part: plain functions of arrays and scalars, written so that the numba backend
# compiles their sources unchanged (constants inline, module arrays SER_*)

_x, _w = rule(NODE_ORDER)
SER_X = np.ascontiguousarray(_x)
SER_W = np.ascontiguousarray(_w)
SER_P = np.array([math.sqrt(max(k - 1, 0)) for k in range(K_EXT)])  # sqrt(k - 1)
SER_Q = np.array([1.0 / math.sqrt(max(k, 1)) for k in range(K_EXT)])  # 1 / sqrt(k)


def hermite_project(fw, D, i, off):
    """D[i, off:off + WIDTH] = S, T at the checkpoints 8..192, alpha_0..alpha_191 (the header
    first: a pair that needs few terms reads one or two cache lines per point), from
    fw = (weight * f(sqrt(var) node)) at the series nodes. The nodes are symmetric (+-r) and
    h_k(-r) = (-1)^k h_k(r): the recurrence runs on the positive half only, against the even
    part of fw for even k and the odd part for odd k (half the work)."""
    n = fw.shape[0] // 2
    ev = np.empty(n)
    od = np.empty(n)
    h0 = np.ones(n)
    h1 = np.empty(n)
    for m in range(n):
        ev[m] = fw[n + m] + fw[n - 1 - m]
        od[m] = fw[n + m] - fw[n - 1 - m]
        h1[m] = SER_X[n + m]
    a0 = 0.0
    a1 = 0.0
    for m in range(n):
        a0 += ev[m]
        a1 += od[m] * h1[m]
    D[i, off + 7] = a0
    D[i, off + 8] = a1
    tail = 0.0
    for k in range(2, 256):
        p = SER_P[k]
        q = SER_Q[k]
        acc = 0.0
        if k % 2 == 0:
            for m in range(n):
                h = (SER_X[n + m] * h1[m] - p * h0[m]) * q
                h0[m] = h1[m]
                h1[m] = h
                acc += ev[m] * h
        else:
            for m in range(n):
                h = (SER_X[n + m] * h1[m] - p * h0[m]) * q
                h0[m] = h1[m]
                h1[m] = h
                acc += od[m] * h
        if k < 192:
            D[i, off + 7 + k] = acc
        else:
            tail += acc * acc
    # tails from the top: T(192) ~ the coefficients 192..255, then down through the checkpoints
    D[i, off + 6] = math.sqrt(tail)
    k = 192
    for c, low in ((5, 128), (4, 64), (3, 32), (2, 16), (1, 8), (0, 0)):
        while k > low:
            k -= 1
            tail += D[i, off + 7 + k] * D[i, off + 7 + k]
        D[i, off + c] = math.sqrt(tail)


def hdot(A, i, oa, B, j, ob, rho, full=False):
    """sum_k alpha_k beta_k rho^k (blocks at A[i, oa:], B[j, ob:]) over the first checkpoint's K
    terms whose tail bound is below 1e-15 of the scale; when even 192 terms are not enough, nan
    (or, with full, the 192 terms: a truncated Mehler series is a positive semi-definite
    kernel, which the quadrature that the nan calls for is not exactly)."""
    r = min(abs(rho), 1.0)
    p8 = r * r
    p8 = p8 * p8
    p8 = p8 * p8
    p16 = p8 * p8
    p32 = p16 * p16
    p64 = p32 * p32
    p128 = p64 * p64
    lim = 1e-15 * A[i, oa] * B[j, ob]
    if p8 * A[i, oa + 1] * B[j, ob + 1] <= lim:
        n = 8
    elif p16 * A[i, oa + 2] * B[j, ob + 2] <= lim:
        n = 16
    elif p32 * A[i, oa + 3] * B[j, ob + 3] <= lim:
        n = 32
    elif p64 * A[i, oa + 4] * B[j, ob + 4] <= lim:
        n = 64
    elif p128 * A[i, oa + 5] * B[j, ob + 5] <= lim:
        n = 128
    elif p128 * p64 * A[i, oa + 6] * B[j, ob + 6] <= lim or full:
        n = 192
    else:
        return math.nan
    x = max(-1.0, min(1.0, rho))
    x2 = x * x
    x4 = x2 * x2
    # Horner in x^4 on four interleaved chains: a quarter of the dependent multiply-adds
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    for k in range(oa + 7 + n - 4, oa + 6, -4):
        m = k - oa + ob
        s0 = s0 * x4 + A[i, k] * B[j, m]
        s1 = s1 * x4 + A[i, k + 1] * B[j, m + 1]
        s2 = s2 * x4 + A[i, k + 2] * B[j, m + 2]
        s3 = s3 * x4 + A[i, k + 3] * B[j, m + 3]
    return (s0 + x * s1) + x2 * (s2 + x * s3)


def hermite_project2(fw, D, i, off):
    """D[i, off:off + WIDTH2] = the two-vector table ("2", K2 above) from fw[m, l] = (w_m w_l
    f(sqrt(a) x_m, sqrt(b) x_l)) at the series nodes: the rows are projected first (P = H fw),
    then the columns (C = P H^T), with h_k from the three-term recurrence. The nodes are
    symmetric and h_k(-x) = (-1)^k h_k(x): each projection runs on the positive half against
    the even or odd fold of its input (half the work)."""
    n2 = fw.shape[0]
    n = n2 // 2
    H = np.empty((K2_EXT, n))  # h_k at the positive nodes
    for m in range(n):
        H[0, m] = 1.0
        H[1, m] = SER_X[n + m]
    for k in range(2, K2_EXT):
        for m in range(n):
            H[k, m] = (SER_X[n + m] * H[k - 1, m] - SER_P[k] * H[k - 2, m]) * SER_Q[k]
    ev = np.empty((n, n2))
    od = np.empty((n, n2))
    for m in range(n):
        for col in range(n2):
            ev[m, col] = fw[n + m, col] + fw[n - 1 - m, col]
            od[m, col] = fw[n + m, col] - fw[n - 1 - m, col]
    P = np.zeros((K2_EXT, n2))
    for k in range(K2_EXT):
        src = ev if k % 2 == 0 else od
        for m in range(n):
            h = H[k, m]
            for col in range(n2):
                P[k, col] += h * src[m, col]
    pe = np.empty((K2_EXT, n))
    po = np.empty((K2_EXT, n))
    for k in range(K2_EXT):
        for q in range(n):
            pe[k, q] = P[k, n + q] + P[k, n - 1 - q]
            po[k, q] = P[k, n + q] - P[k, n - 1 - q]
    row = np.zeros(K2_EXT)
    colsum = np.zeros(K2_EXT)
    for k in range(K2_EXT):
        for q in range(K2_EXT):
            src = pe if q % 2 == 0 else po
            c = 0.0
            for m in range(n):
                c += src[k, m] * H[q, m]
            c2 = c * c
            row[k] += c2
            colsum[q] += c2
            if k < K2 and q < K2:
                D[i, off + HEAD2 + k * K2 + q] = c
    ta = 0.0
    tb = 0.0
    top = K2_EXT
    for c in range(len(CHECKPOINTS2) - 1, -1, -1):
        low = CHECKPOINTS2[c]
        while top > low:
            top -= 1
            ta += row[top]
            tb += colsum[top]
        D[i, off + 1 + c] = math.sqrt(ta)
        D[i, off + 1 + len(CHECKPOINTS2) + c] = math.sqrt(tb)
    while top > 0:
        top -= 1
        ta += row[top]
    D[i, off] = math.sqrt(ta)


def _cut2(r, A, i, ta, B, j, tb, lim):
    """The first checkpoint M of one axis whose tail bound |r|^M T(M) T'(M) is below lim
    (the last one if none is)."""
    for c in range(len(CHECKPOINTS2)):
        m = CHECKPOINTS2[c]
        if r ** m * A[i, ta + c] * B[j, tb + c] <= lim:
            return m
    return K2


def hdot2(A, i, oa, B, j, ob, ra, rb):
    """sum_{m, n} a_mn b_mn ra^m rb^n over the two-vector tables at A[i, oa:], B[j, ob:], cut
    per axis where the tail bound is below 5e-16 of the scale (at most K2 x K2 terms: the
    truncated double series is a positive semi-definite kernel however far it is cut)."""
    ra = max(-1.0, min(1.0, ra))
    rb = max(-1.0, min(1.0, rb))
    lim = 0.5 * TOL * A[i, oa] * B[j, ob]
    nc = len(CHECKPOINTS2)
    M = _cut2(abs(ra), A, i, oa + 1, B, j, ob + 1, lim)
    N = _cut2(abs(rb), A, i, oa + 1 + nc, B, j, ob + 1 + nc, lim)
    N = (N + 3) // 4 * 4  # whole groups of four (the checkpoints are multiples of 8)
    pw = np.empty(N)
    p = 1.0
    for q in range(N):
        pw[q] = p
        p *= rb
    total = 0.0
    for m in range(M - 1, -1, -1):
        a0 = oa + HEAD2 + m * K2
        b0 = ob + HEAD2 + m * K2
        # four independent chains: the sum is bound by the adds' latency otherwise
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        for q in range(0, N, 4):
            s0 += A[i, a0 + q] * B[j, b0 + q] * pw[q]
            s1 += A[i, a0 + q + 1] * B[j, b0 + q + 1] * pw[q + 1]
            s2 += A[i, a0 + q + 2] * B[j, b0 + q + 2] * pw[q + 2]
            s3 += A[i, a0 + q + 3] * B[j, b0 + q + 3] * pw[q + 3]
        total = total * ra + ((s0 + s1) + (s2 + s3))
    return total


def correlation(c00, c10, c11):
    """c10 / sqrt(c00 c11), 0 at a zero variance (the factor is then a constant)."""
    if c00 > 0.0 and c11 > 0.0:
        return c10 / math.sqrt(c00 * c11)
    return 0.0


#: sources the backend copies, in dependency order
SOURCES = (hermite_project, hermite_project2, hdot, _cut2, hdot2, correlation)


# --- the same arithmetic over arrays, for the NumPy reference evaluator

def hermite_matrix(x: np.ndarray, k: int) -> np.ndarray:
    """h_j(x) for j < k: (k, nodes), by the recurrence the series uses."""
    h = np.empty((k, x.size))
    h[0] = 1.0
    if k > 1:
        h[1] = x
    for j in range(2, k):
        h[j] = (x * h[j - 1] - SER_P[j] * h[j - 2]) * SER_Q[j]
    return h


_H = hermite_matrix(SER_X, K_EXT)


def coefficient_table(fw: np.ndarray) -> np.ndarray:
    """Rows as hermite_project writes them, for fw of shape (points, nodes)."""
    alpha = fw @ _H.T
    sq = alpha * alpha
    out = np.empty((fw.shape[0], WIDTH))
    out[:, HEAD:] = alpha[:, :K_MAX]
    tail = sq[:, K_MAX:].sum(axis=1)
    out[:, HEAD - 1] = np.sqrt(tail)
    top = K_MAX
    for c, low in zip(range(HEAD - 2, -1, -1), CHECKPOINTS[-2::-1] + (0,)):
        tail = tail + sq[:, low:top].sum(axis=1)
        out[:, c] = np.sqrt(tail)
        top = low
    return out


def hdot_array(a: np.ndarray, b: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """hdot elementwise: rows a[m], b[m] and rho[m]; nan where 192 terms are not enough."""
    r = np.minimum(np.abs(rho), 1.0)
    lim = TOL * a[:, 0] * b[:, 0]
    terms = np.zeros(rho.shape, dtype=np.int64)
    for c, k in enumerate(CHECKPOINTS):
        ok = (terms == 0) & (r ** k * a[:, c + 1] * b[:, c + 1] <= lim)
        terms[ok] = k
    x = np.clip(rho, -1.0, 1.0)
    out = np.full(rho.shape, np.nan)
    for k in CHECKPOINTS:
        sel = terms == k
        if sel.any():
            prod = a[sel, HEAD:HEAD + k] * b[sel, HEAD:HEAD + k]
            out[sel] = np.polynomial.polynomial.polyval(x[sel], prod.T, tensor=False)
    return out
