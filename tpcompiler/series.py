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

from .kernel_program import KernelProgram
from .quadrature import KINKED, rule

K_MAX = 192
K_EXT = 256
CHECKPOINTS = (8, 16, 32, 64, 128, 192)
NODE_ORDER = 96
TOL = 1e-15
#: |rho| >= 1 - UNIT counts as |rho| = 1 (the 1-D rule): identical points reach the per-pair
#: code with rho a few ulps off 1 after a deep recursion (c and d of one point rounded apart);
#: the error of the snap is |dE/drho| UNIT, ~1e-15 of the scale
UNIT = 8 * 2.220446049250313e-16
#: columns per coefficient vector in the per-point table: S, T at the checkpoints,
#: alpha_0..alpha_{K_MAX-1}
HEAD = len(CHECKPOINTS) + 1
WIDTH = HEAD + K_MAX

Z0, Z1 = sp.Symbol("z0", real=True), sp.Symbol("z1", real=True)


@dataclass(frozen=True)
class Factor:
    """One per-point coefficient vector: fn(sqrt(var) z) in the Hermite basis."""

    fn: sp.Expr  # in z0
    var: sp.Expr  # the point's variance, in its per-point symbols d*
    column: int  # first column in the per-point table


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


@dataclass(frozen=True)
class SeriesPlan:
    factors: tuple[Factor, ...]
    calls: tuple[SeriesCall, ...]

    @property
    def functions(self) -> tuple[sp.Expr, ...]:
        """The distinct factor functions, in order (one coefficient routine each)."""
        return tuple(dict.fromkeys(f.fn for f in self.factors))


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


def _one_point(e: sp.Expr, prefix: str) -> bool:
    return all(s.name.startswith(prefix) for s in e.free_symbols)


def plan(kp: KernelProgram, first_column: int) -> SeriesPlan:
    """The cross block's quad2 calls that the series can evaluate, and the per-point factors
    they need (columns from first_column on)."""
    env = _resolve(kp)
    integrands = {f"quad2_{q.name}": q for q in kp.integrands if q.dim == 2 and not q.kinked}
    factors: dict[tuple, int] = {}
    calls: dict = {}
    exprs = [e for _, e in kp.cross] + [c for _, c in kp.outputs.values()]
    for e in exprs:
        for call in e.atoms(sp.Function):
            name = type(call).__name__
            if name not in integrands or call in calls:
                continue
            parts = separable(integrands[name].expr)
            c00, _, c11 = (a.xreplace(env) for a in call.args)
            if parts is None or not _one_point(c00, "d") or not _one_point(c11, "e"):
                continue
            # the second point's variance as the same expression of its own d* (untwin)
            var_b = c11.xreplace({s: sp.Symbol("d" + s.name[1:], real=True)
                                  for s in c11.free_symbols})
            terms = []
            for coef, fa, fb in _grouped(parts):
                idx = []
                for fn, var in ((fa, c00), (fb, var_b)):
                    if fn == 1:
                        idx.append(None)
                        continue
                    idx.append(factors.setdefault((fn, var), len(factors)))
                terms.append(Term(coef, *idx))
            calls[call] = SeriesCall(f"ser{len(calls)}", call, integrands[name].expr,
                                     tuple(terms))
    facs = tuple(Factor(fn, var, first_column + WIDTH * n)
                 for n, (fn, var) in enumerate(factors))
    return SeriesPlan(facs, tuple(calls.values()))


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


def hdot(A, i, oa, B, j, ob, rho):
    """sum_k alpha_k beta_k rho^k (blocks at A[i, oa:], B[j, ob:]) over the first checkpoint's K
    terms whose tail bound is below 1e-15 of the scale; nan when even 192 terms are not
    enough."""
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
    elif p128 * p64 * A[i, oa + 6] * B[j, ob + 6] <= lim:
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


def correlation(c00, c10, c11):
    """c10 / sqrt(c00 c11), 0 at a zero variance (the factor is then a constant)."""
    if c00 > 0.0 and c11 > 0.0:
        return c10 / math.sqrt(c00 * c11)
    return 0.0


#: sources the backend copies, in dependency order
SOURCES = (hermite_project, hdot, correlation)


# --- the same arithmetic over arrays, for the NumPy reference evaluator

def _hermite_matrix() -> np.ndarray:
    """h_k(node) for k < K_EXT: (K_EXT, nodes)."""
    h = np.empty((K_EXT, SER_X.size))
    h[0] = 1.0
    h[1] = SER_X
    for k in range(2, K_EXT):
        h[k] = (SER_X * h[k - 1] - SER_P[k] * h[k - 2]) * SER_Q[k]
    return h


_H = _hermite_matrix()


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
