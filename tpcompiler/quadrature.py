"""Quadrature rules for E[f(z)], z ~ N(0, C), shared by the backends, and the compile-time
choice between them (`plan`). Every backend follows the plan: backends/numpy.py on arrays,
backends/numba.py and backends/cuda.py through the same scalar source
(backends/quadsource.py).

Rules (z = L w, L the PSD Cholesky factor of C in an order chosen by `plan`, w ~ N(0, I)):

* tensor: every coordinate of w is split at 0 and integrated by the half-range rule
  E[g(w)] = sum_i W_i (g(r_i) + g(-r_i)), (r_i, W_i) the Gauss rule of the weight
  phi(r) = exp(-r^2/2)/sqrt(2 pi) on [0, inf) (half-range Hermite, `half_rule`), on a tensor grid.
  It is used for smooth integrands too, in place of the former full-line Gauss-Hermite rule
  (GH): at the same number of nodes it is orders of magnitude more accurate on what reaches
  quadrature (tanh, sigmoid, softplus: complex poles near the origin, where half-range nodes
  cluster; GH converges only root-exponentially there), and it is exact-split at w_i = 0, so a
  kink of a coordinate that `plan` puts first (z_p = L_pp w_0) costs nothing.
* polar: a pair s of coordinates with kinks on several lines {a . s = 0} (relu(u) relu(v),
  Step(u) Step(v) tanh(u)^2 ...), first in the factorisation: s = L_ss w_s,
  w_s = rho (cos t, sin t),
      E = (1/2pi) int_0^2pi int_0^inf rho exp(-rho^2/2) E[f | w_s] d rho dt;
  the lines are the rays t = atan2(b_0, -b_1) (and + pi), b = L_ss^T a; [0, 2pi) is split at
  the sorted rays (computed per call: they depend on the covariance) into arcs, each
  integrated by Gauss-Legendre in t, and rho by the Gauss rule of rho exp(-rho^2/2) on
  [0, inf) (`rayleigh_rule`): f is smooth on each wedge, so both converge fast.  The other
  coordinates follow in the factorisation: given w_s they are Gaussian with a mean linear in
  w_s, and the tensor rule in their w multiplies the polar one (a conditional product rule; for
  coordinates independent of s, structural zeros in C, it is the plain product).  Arcs of
  wedges on which the integrand vanishes identically (Step(u) Step(v) ...: three of four) are
  skipped (`vanishing_arcs`, `arc_keep`).
* 3 or more correlated kinked coordinates (and a second kinked pair): the tensor rule
  (fallback; kinks off the axes converge slowly). A kink not on a hyperplane through the origin
  (relu(z0 + 1), relu(z1 + relu(z0))) makes the whole integral a tensor rule in natural order.
Pivots of rounding-noise size are snapped to 0 in the factorisation (`SNAP`): identical points
give coinciding rays, not sqrt(1e-16)-size noise.

The half-range and Rayleigh rules come from their moments by Golub-Welsch (Hankel Cholesky in
mpmath at 30 + 2n digits, float64 nodes refined by Newton's method at 40 digits): ~0.2 s for the
largest. The orders the package uses (`STORED_ORDERS`) are shipped precomputed in
gauss_rules.npz (written by `python -m tpcompiler.quadrature`, checked against a fresh
computation by tests/test_quadrature.py), so no import or call pays for mpmath; any other
order is computed on first use and cached for the process.

Orders, chosen by the measurements below (`DEFAULT_ORDER` is n half-range nodes per axis, each
used at +-r_i: 2n points per axis):
  tensor alone          1-D 96, 2-D 32, 3-D 12, 4-D 7: 192, 4096, 13824, 38416 points (the
                        former GH: 64, 2304, 8000, 20736). 1-D integrals are per point (O(N)),
                        so their order is set for full accuracy: tanh(s z)^2 and
                        tanh(s z + 1)^2 within 4e-16 of mpmath up to variance 10 (order 32:
                        6e-10 / 3e-8 there). Identical points through a 2-D rule (rank-1
                        covariance: the 1-D rule at order 32) then differ from the diagonal by
                        that order's error, and smooth separable 2-D integrals per pair take
                        the Mehler series of series.py instead, in the Numba backend.
  polar alone           20 Legendre nodes per arc x 20 radial nodes (two lines: 4 arcs, 1600
                        points)
  polar x tensor        20 x 24 per arc (two lines: 1920 points) times the tensor block at
                        `PRODUCT_ORDER` 1-D 16, 2-D 8 (32, 256 points): 492k points in 4-D.
                        At the former 10 x 12 the polar part set the error of
                        relu(u) tanh(u + w) (u, w of two matrices, variance 2; nearly
                        collinear, duplicate, antipodal and zero rows): 1.7e-8 of the scale
                        against the rule at 40 x 40 x 16, and an NNGP indefinite to -1.4e-8 of
                        its largest eigenvalue; at 20 x 24: 4.1e-9, PSD to rounding (-4e-17), at
                        twice the time a pair (2.7 -> 5.5 ms, Numba).

Measured absolute errors (the former GH rule at the former orders in brackets).
tests/test_quadrature.py checks most cases at looser tolerances (its own, stated per case there,
up to ~25x these) against mpmath (1-D), scipy in polar coordinates (2-D), Monte Carlo (4-D
product rule) and, in 3-D and 4-D, the rules at doubled orders (self-consistency); the 2-D
sigmoid*softplus case and the program case are measured only. Smooth set: tanh^2,
tanh(z+1), sigmoid^2, softplus^2, sin*tanh, tanh^4-2tanh^2; "variance" is the coordinates'.
  1-D, variance <= 1: <= 3e-15 [GH-64: 1e-7]; 3: <= 1.4e-11 [2e-4]; 10: <= 1.5e-8 [1e-2].
      A shifted tanh(z + 3)^2 (poles far from 0) is the hard case: 3e-12 / 5e-8 / 2e-5 at
      variance 1 / 3 / 10 [4e-11 / 2e-6 / 1e-3]. Kinked (tanh(relu), Step*tanh^2,
      sin*tanh(relu)) like smooth: <= 2e-13 at variance 3, 3e-10 at 10 [9e-6, 2e-3].
  2-D tensor (tanh*tanh, shifted tanh^2 products, sigmoid*softplus, tanh(u+v)^2, and one kink
      coordinate: tanh(v + relu(u)) tanh(v)): correlation 0.5-0.6 at unit scale <= 3e-12
      [2e-8]; correlation 0.999 <= 3e-10 [4e-3]; variances 5/4, correlation -0.67 <= 1e-10
      [2e-4]; variance 10, correlation 0.9 <= 2e-8 [4e-3].
  2-D polar (tanh(relu(u)) tanh(relu(v)), Step(u)Step(v)tanh(u)^2 tanh(v)^2,
      erf(relu(u)) erf(relu(v))): unit scale <= 3e-12 [1e-3]; correlation 0.999 <= 2e-10
      [7e-5]; variances 5/4 <= 4e-13 [3e-3]; variance 10, correlation 0.9 <= 3e-7 [6e-3].
      Identical points (rank 1) against the 1-D rule: 1e-12 / 2e-10 / 6e-9 at variance
      0.5 / 2 / 6.
  3-D tensor (tanh z0 tanh z1 tanh(z2 + 1/2); variances 0.6-1.4 x scale, correlations rho):
      scale 1, rho 0.5: 6e-11 [1e-7]; rho 0.9: 5e-9 [7e-6]; scale 3: 1.4e-9 [2e-5];
      scale 10: 3e-7 [8e-4].
  4-D tensor (tanh(z0+z2) tanh(z1+z3); sigmoid(z0+z2) sigmoid(z1+z3) tanh z2 tanh z3):
      scale 1, rho 0.5: <= 3e-7 [2e-6]; rho 0.9: <= 9e-5 [5e-3]; scale 3: <= 2e-5 [2e-4];
      scale 10: <= 3e-4 [2e-3]. The half-range rule is not monotone in n: at n = 7,
      tanh(z + 1/2)^2 (variance 1.2) alone is off by 7e-5 (n = 6: 3e-5, n = 8: 7e-7).
  3-D polar x 1-D (tanh(relu(z0) + z2) tanh(relu(z1) + z2), z2 independent): scale 1 <= 3e-9
      [1e-3]; scale 3: 2e-7 [6e-3]; scale 10: 2e-5 [3e-2].
  4-D polar x 2-D (tanh(relu(z0) + z2) tanh(relu(z1) + z3) and the NTK's
      Step Step (tanh^2 tanh^2 - tanh^2 - tanh^2), z2, z3 independent of or correlated with
      z0, z1): scale 1 <= 1.3e-6 [2e-2]; scale 3 <= 3e-5 [2e-2]; scale 10 <= 4e-4 [3e-2];
      the program tanh(relu(g) + dense(relu(g))) at the points of tests/test_kernels.py:
      <= 5e-7 [4e-3].
Every error grows with the variance: tanh's poles (+-i pi/2) come closer to the origin in
standardised coordinates, and no polynomial rule resolves tanh(s z) well for large s.
"""

from __future__ import annotations

import functools
import math
from importlib import resources

import numpy as np
import sympy as sp

from . import functions as F

DEFAULT_ORDER = {1: 96, 2: 32, 3: 12, 4: 7}
#: (Gauss-Legendre nodes per arc, radial nodes) of the polar wedge rule, by the dimension of
#: the tensor block multiplying it (lower in products: their cost is the product of the two)
POLAR_ORDER = {0: (20, 20), 1: (20, 24), 2: (20, 24)}
#: half-range order per axis of the tensor block multiplying a polar block, by its dimension
PRODUCT_ORDER = {1: 16, 2: 8}

# --- one-dimensional rules -------------------------------------------------------------------


#: the orders shipped in gauss_rules.npz: every order named in this module and series.py
#: (tests/test_quadrature.py checks that), plus the series' boosted reference (128)
STORED_ORDERS = {"half": (7, 8, 9, 12, 14, 16, 20, 28, 32, 48, 64, 96, 128, 160),
                 "rayleigh": (12, 18, 20, 24, 36, 40)}
RULES_FILE = "gauss_rules.npz"


@functools.cache
def _stored() -> dict[str, np.ndarray]:
    try:
        with resources.files(__package__).joinpath(RULES_FILE).open("rb") as f:
            with np.load(f) as z:
                return {k: z[k] for k in z.files}
    except FileNotFoundError:  # a checkout before the file was written: compute instead
        return {}


def _rule_of(kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    got = _stored().get(f"{kind}_{n}")
    if got is not None:
        return frozen(np.ascontiguousarray(got[0]), np.ascontiguousarray(got[1]))
    return compute_rule(kind, n)


def compute_rule(kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The half-range ("half") or Rayleigh ("rayleigh") Gauss rule of order n, from its moments
    in mpmath (what gauss_rules.npz stores)."""
    return _gauss_from_moments(_half_moment if kind == "half" else _rayleigh_moment, n)


def write_rules(path: str) -> None:
    """Write every rule of STORED_ORDERS to `path` (an .npz file)."""
    arrays = {f"{kind}_{n}": np.stack(compute_rule(kind, n))
              for kind, orders in STORED_ORDERS.items() for n in orders}
    np.savez_compressed(path, **arrays)


def _half_moment(j: int):
    """int_0^inf r^j phi(r) dr = 2^(j/2) Gamma((j+1)/2) / (2 sqrt(pi))."""
    import mpmath as mp

    return mp.power(2, mp.mpf(j) / 2) * mp.gamma(mp.mpf(j + 1) / 2) / (2 * mp.sqrt(mp.pi))


def _rayleigh_moment(j: int):
    """int_0^inf rho^j rho exp(-rho^2/2) d rho = 2^(j/2) Gamma(j/2 + 1)."""
    import mpmath as mp

    return mp.power(2, mp.mpf(j) / 2) * mp.gamma(mp.mpf(j) / 2 + 1)


def _gauss_from_moments(moment, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss rule with n nodes for the weight with the given moments (Golub-Welsch): the
    three-term recurrence from the Cholesky factor of the Hankel matrix of moments (in high
    precision: it loses about one digit per node), its Jacobi matrix's eigenvalues in float64 as
    starting points, Newton on the orthonormal polynomial and Christoffel weights at 40 digits."""
    import mpmath as mp  # only here: the shipped rules need no mpmath at import

    with mp.workdps(30 + 2 * n):
        m = [moment(j) for j in range(2 * n + 1)]
        hankel = mp.matrix(n + 1, n + 1)
        for i in range(n + 1):
            for j in range(n + 1):
                hankel[i, j] = m[i + j]
        r = mp.cholesky(hankel).T  # upper: hankel = r^T r
        alpha = [r[j, j + 1] / r[j, j] - (r[j - 1, j] / r[j - 1, j - 1] if j else 0)
                 for j in range(n)]
        beta = [r[j + 1, j + 1] / r[j, j] for j in range(n - 1)]
        m0 = m[0]
    jac = (np.diag([float(a) for a in alpha]) + np.diag([float(b) for b in beta], 1)
           + np.diag([float(b) for b in beta], -1))
    xs, ws = [], []
    with mp.workdps(40):
        alpha = [mp.mpf(a) for a in alpha]
        beta = [mp.mpf(b) for b in beta] + [mp.mpf(1)]
        norm = 1 / mp.sqrt(m0)
        for x0 in np.linalg.eigvalsh(jac):
            x = mp.mpf(float(x0))
            for _ in range(4):
                p_prev, p, dp_prev, dp = mp.mpf(0), norm, mp.mpf(0), mp.mpf(0)
                total = p * p
                for k in range(n):
                    b_prev = beta[k - 1] if k else mp.mpf(0)
                    p_next = ((x - alpha[k]) * p - b_prev * p_prev) / beta[k]
                    dp_next = (p + (x - alpha[k]) * dp - b_prev * dp_prev) / beta[k]
                    p_prev, p, dp_prev, dp = p, p_next, dp, dp_next
                    if k < n - 1:
                        total += p * p
                x -= p / dp
            xs.append(float(x))
            ws.append(float(1 / total))
    return frozen(np.array(xs), np.array(ws))


@functools.cache
def half_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss rule for phi(r) on [0, inf): n nodes r_i > 0, weights summing to 1/2."""
    return _rule_of("half", n)


@functools.cache
def rayleigh_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss rule for rho exp(-rho^2/2) on [0, inf): n nodes, weights summing to 1."""
    return _rule_of("rayleigh", n)


@functools.cache
def legendre_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre on [-1, 1]."""
    return frozen(*np.polynomial.legendre.leggauss(n))


@functools.cache
def rule(order: int) -> tuple[np.ndarray, np.ndarray]:
    """The split rule on the line for N(0, 1): nodes -r_n..-r_1, r_1..r_n, weights summing to
    one (2 * order points)."""
    r, w = half_rule(order)
    return frozen(np.concatenate([-r[::-1], r]), np.concatenate([w[::-1], w]))


def grid(dim: int, order: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tensor grid of `rule(order)` (default DEFAULT_ORDER[dim]) for N(0, I_dim): nodes
    ((2 order)**dim, dim) and weights, weights below 1e-300 dropped since they cannot change a
    float64 sum."""
    if dim == 0:
        return np.zeros((1, 0)), np.ones(1)
    return _grid(dim, order or DEFAULT_ORDER[dim])


@functools.cache
def _grid(dim: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = rule(order)
    mesh = np.stack(np.meshgrid(*([x] * dim), indexing="ij"), axis=-1).reshape(-1, dim)
    wts = np.ones(1)
    for _ in range(dim):
        wts = np.multiply.outer(wts, w).reshape(-1)
    keep = wts > 1e-300
    return frozen(np.ascontiguousarray(mesh[keep]), np.ascontiguousarray(wts[keep]))


def frozen(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Read-only arrays (they are cached and shared)."""
    for a in arrays:
        a.flags.writeable = False
    return arrays


#: raised orders of every rule for the accuracy probe (tpcompiler/accuracy.py): the difference
#: between a rule and its raised twin estimates the rule's error (both converge
#: geometrically on what reaches them, so the raised one's error is much smaller)
BOOSTED = {"tensor": {1: 160, 2: 64, 3: 20, 4: 12}, "product": {1: 28, 2: 14},
           "polar": {0: (40, 40), 1: (30, 36), 2: (30, 36)}, "split": (14, 10)}


#: the tensor rule of an integral over one point's coordinates (Integrand.per_point): N of them
#: against N^2 / 2 pairs, so more nodes per axis cost nothing measurable (a per-point 2-D
#: integral comes with 4-D ones per pair). At 2-D the default 32 is 1e-8 off at variance 6 for
#: tanh^4; for the NTK diagonal of tanh(u) tanh(u + w) at variance 11.7 (steep tanh(u + w)
#: along an oblique line), 64 is 1.1e-5 off and 128 is 3.2e-9 (against composite
#: Gauss-Legendre, 20 nodes on panels of 0.25; the same N = 200 kernel time)
PER_POINT_ORDER = {1: 96, 2: 128, 3: 16, 4: 9}


def tensor_order(dim: int, polar: bool, boost: bool = False, per_point: bool = False) -> int:
    """Half-range order per axis of a tensor block of `dim` coordinates."""
    if boost:
        return BOOSTED["product" if polar else "tensor"][dim]
    if per_point and not polar:
        return PER_POINT_ORDER[dim]
    return PRODUCT_ORDER[dim] if polar else DEFAULT_ORDER[dim]


def polar_order(tensor_dim: int, boost: bool = False) -> tuple[int, int]:
    """(Legendre nodes per arc, radial nodes) of a polar block next to a tensor block."""
    return BOOSTED["polar"][tensor_dim] if boost else POLAR_ORDER[tensor_dim]


#: a pivot c_jj - sum_m l_jm^2 at most SNAP * c_jj is rounding noise: taken as 0 (the rule of
#: helpers.snapped_det): identical points give exactly coinciding kink rays, and the kernel
#: does not pick up the sqrt(noise) that a kink turns a pivot of 1e-16 into
SNAP = 8.0 * 2.220446049250313e-16


def cholesky_psd(c: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a PSD matrix (..., k, k), zero columns where it is singular
    (pivots of rounding-noise size snapped to 0)."""
    k = c.shape[-1]
    low = np.zeros_like(c)
    for j in range(k):
        s = c[..., j, j]
        for m in range(j):
            s = s - low[..., j, m] * low[..., j, m]
        ljj = np.where(s > SNAP * c[..., j, j], np.sqrt(np.maximum(s, 0.0)), 0.0)
        low[..., j, j] = ljj
        safe = np.where(ljj > 0, ljj, 1.0)
        for i in range(j + 1, k):
            t = c[..., i, j]
            for m in range(j):
                t = t - low[..., i, m] * low[..., j, m]
            low[..., i, j] = np.where(ljj > 0, t / safe, 0.0)
    return low


# --- the polar wedge rule (NumPy; backends/numba.py generates the same arithmetic) -----------


def ray_angles(low: np.ndarray, forms: np.ndarray) -> np.ndarray:
    """Sorted angles in [0, 2 pi) of the rays {b . w = 0}, b = L^T a, for every kink form a
    (rows of `forms`, shape (m, 2)) and every factor L in low (..., 2, 2): shape (..., 2m).
    A degenerate b = 0 (the form has variance 0) gives a harmless extra breakpoint."""
    out = []
    for a0, a1 in forms:
        b0 = a0 * low[..., 0, 0] + a1 * low[..., 1, 0]
        b1 = a1 * low[..., 1, 1]  # L is lower triangular
        t = np.arctan2(b0, -b1)
        t = np.where(t < 0.0, t + 2.0 * math.pi, t)
        out += [t, np.where(t < math.pi, t + math.pi, t - math.pi)]
    return np.sort(np.stack(out, axis=-1), axis=-1)


def polar_nodes(low: np.ndarray, forms: np.ndarray, order: tuple[int, int]):
    """Whitened nodes w (..., M, 2) and weights (..., M) of the polar wedge rule for the pair
    s = L w (L: low (..., 2, 2)), split at the rays of the lines `forms`."""
    nleg, nrad = order
    ang = ray_angles(low, forms)  # (..., A)
    hi = np.concatenate([ang[..., 1:], ang[..., :1] + 2.0 * math.pi], axis=-1)
    half = 0.5 * (hi - ang)
    mid = 0.5 * (hi + ang)
    xl, wl = legendre_rule(nleg)
    r, wr = rayleigh_rule(nrad)
    t = mid[..., None] + half[..., None] * xl  # (..., A, L)
    wt = half[..., None] * wl / (2.0 * math.pi)
    w0 = np.cos(t)[..., None] * r  # (..., A, L, R)
    w1 = np.sin(t)[..., None] * r
    wts = wt[..., None] * wr
    shape = wts.shape[:-3] + (-1,)
    return np.stack([w0.reshape(shape), w1.reshape(shape)], axis=-1), wts.reshape(shape)


def arc_keep(low: np.ndarray, forms: np.ndarray, vanishing) -> np.ndarray:
    """(..., A) booleans: False for the arcs of polar_nodes on which the integrand vanishes
    (their sign code, taken at the arc's midpoint, is in `vanishing`; an arc with a form exactly
    0 there is kept)."""
    ang = ray_angles(low, forms)
    hi = np.concatenate([ang[..., 1:], ang[..., :1] + 2.0 * math.pi], axis=-1)
    mid = 0.5 * (hi + ang)
    c, s = np.cos(mid), np.sin(mid)
    x0 = low[..., 0, 0, None] * c
    x1 = low[..., 1, 0, None] * c + low[..., 1, 1, None] * s
    code = np.zeros(ang.shape, dtype=np.int64)
    exact = np.zeros(ang.shape, dtype=bool)
    for i, (a0, a1) in enumerate(forms):
        v = a0 * x0 + a1 * x1
        code += (v > 0.0).astype(np.int64) << i
        exact |= v == 0.0
    return exact | ~np.isin(code, list(vanishing))


def _branch(f, sign: int) -> sp.Expr:
    """A kink function on the side of 0 where its argument has this sign."""
    return type(f).branches[sign > 0](*f.args)


@functools.cache
def vanishing_arcs(expr: sp.Expr, kinked: tuple, forms: tuple) -> tuple[int, ...]:
    """Sign codes (bit i set: the form of line i is positive) of the wedges of the polar pair on
    which expr is identically 0 (Step(u) Step(v) ... on three wedges of four): their arcs are
    skipped. Found by replacing every kink function of the pair by its branch there."""
    if not kinked or len(forms) > 6:
        return ()
    pair = [sp.Symbol(f"z{i}", real=True) for i in kinked]
    branches = []  # (atom, line index, sign of its argument's scale)
    for f in expr.atoms(*KINKED):
        row = linear_row(f.args[0], pair)
        if row is None or all(c == 0 for c in row):
            continue
        d = _direction(row)
        if d not in forms:
            return ()
        lead = next(c for c in row if c != 0)
        branches.append((f, forms.index(d), 1 if lead > 0 else -1))
    if not branches:
        return ()
    out = []
    for code in range(2 ** len(forms)):
        sub = {f: _branch(f, scale * (1 if code >> i & 1 else -1)) for f, i, scale in branches}
        if expr.xreplace(sub) == 0:
            out.append(code)
    return tuple(out)


# --- the split rule: kinks and jumps off the origin (NumPy; backends/numba.py generates it) --

#: edges of the fixed panels of the split rule, in a whitened coordinate: narrow where the
#: Gaussian weight has its mass, wider in the tails, truncated at +-12 (P(|w| > 12) = 4e-33)
SPLIT_EDGES = (-12.0, -8.5, -6.5, -5.0, -4.0, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0,
               0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5, 8.5, 12.0)
#: Gauss-Legendre nodes per panel piece: the outer (first) axis, and the inner one of a 2-D
#: integral. Measured against mpmath (panels as above, split at the kinks): at 12 nodes
#: tanh(sqrt(10) w)^2 and tanh(sqrt(10) w + 3)^2 within 5e-16, piecewise polynomials and steps
#: at 2e-16; at 8 nodes 7e-11 and 2e-16. The outer axis uses the 1-D rule, so that identical
#: points (a rank-1 covariance) give the diagonal's value.
SPLIT_ORDER = (12, 8)
#: the split rule integrates at most this many coordinates (its cost is a product per axis)
MAX_SPLIT_DIM = 2
#: an oblique kink line that is steep in the outer coordinate (inner scale w < 1) makes the
#: inner integral a step-like function of the outer coordinate of width w around where the line
#: crosses the outer axis: the outer axis is split there at these multiples of w
SPLIT_RAMP = (-8.0, -3.0, -1.0, 0.0, 1.0, 3.0, 8.0)


def split_axis(breaks: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (Gaussian weight included), shape (R, M), of the split rule on one
    whitened axis for R rows of breaks (R, m): the fixed panels cut at the breaks inside them,
    Gauss-Legendre with `order` nodes on every piece (pieces of zero width, where a break is
    outside or repeated, get weight 0)."""
    x, w = legendre_rule(order)
    breaks = np.atleast_2d(np.asarray(breaks, dtype=np.float64))
    lim = SPLIT_EDGES[-1]
    cut = np.clip(np.nan_to_num(breaks, nan=lim, posinf=lim, neginf=-lim), -lim, lim)
    edges = np.broadcast_to(np.array(SPLIT_EDGES), (cut.shape[0], len(SPLIT_EDGES)))
    pts = np.sort(np.concatenate([edges, cut], axis=1), axis=1)
    half = 0.5 * (pts[:, 1:] - pts[:, :-1])
    mid = 0.5 * (pts[:, 1:] + pts[:, :-1])
    t = mid[:, :, None] + half[:, :, None] * x
    wt = half[:, :, None] * w * np.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    return t.reshape(len(t), -1), wt.reshape(len(t), -1)


def split_betas(low: np.ndarray, breaks) -> list[tuple[np.ndarray, float]]:
    """Each kink r . z + c = 0 of `breaks` in whitened coordinates, z = L n: (beta, c) with
    beta = L^T r."""
    k = low.shape[-1]
    return [(np.asarray(low).T @ np.asarray(b[:k], dtype=np.float64), float(b[k]))
            for b in breaks]


def outer_breaks(beta: np.ndarray, c: float, ramp: bool = True) -> list[float]:
    """Breaks of the first whitened axis for one kink (see SPLIT_RAMP; soft breaks, which
    are no kinks, get none around an oblique line)."""
    if beta[0] == 0.0:
        return []
    at = -c / beta[0]
    if len(beta) == 1 or beta[1] == 0.0:
        return [at]
    if not ramp:
        return []
    w = abs(beta[1] / beta[0])
    return [at + m * w for m in SPLIT_RAMP] if w < 1.0 else []


def split_nodes(low: np.ndarray, breaks, boost: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Whitened nodes (M, k) and weights (M,) of the split rule for one covariance factor L
    (k = 1 or 2): the outer axis cut at the kinks that depend on it alone (and around steep
    oblique ones), the inner axis per outer node at the kinks' exact crossing."""
    k = low.shape[-1]
    orders = BOOSTED["split"] if boost else SPLIT_ORDER
    betas = split_betas(low, breaks)
    outer = [t for (beta, c), row in zip(betas, breaks)
             for t in outer_breaks(beta, c, not is_soft(row, k))]
    x0, w0 = split_axis(np.array([outer]).reshape(1, -1), orders[0])
    x0, w0 = x0[0], w0[0]
    if k == 1:
        return x0[:, None], w0
    cols = [-(c + beta[0] * x0) / beta[1] for beta, c in betas if beta[1] != 0.0]
    inner = np.stack(cols, axis=1) if cols else np.zeros((len(x0), 0))
    x1, w1 = split_axis(inner, orders[1])  # (M0, M1)
    nodes = np.stack([np.broadcast_to(x0[:, None], x1.shape), x1], axis=-1)
    return nodes.reshape(-1, 2), (w0[:, None] * w1).reshape(-1)


#: soft breaks of the careful split rule, in the coordinates z themselves (not whitened):
#: where smooth nonlinearities turn (tanh, sigmoid, softplus: poles at distance ~pi/2 from the
#: real axis), which at a large variance is a narrow band of whitened coordinates that the
#: fixed panels alone do not resolve. With them the split rule at SPLIT_ORDER is within 1e-14
#: of scipy's dblquad on tanh(u)^2 tanh(v)^2 for variances 4 to 40 and correlations up to
#: 0.999 (the half-range tensor rule at 32: up to 1e-6)
SOFT_BREAKS = (0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 4.0, -4.0)


def is_soft(row, k: int) -> bool:
    """A soft break is a row (r, c, 1.0) (one longer than a kink's (r, c)): the split rule cuts
    there too, but puts no ramp of outer breaks around it (it is no jump)."""
    return len(row) == k + 2


def careful_rows(expr: sp.Expr, k: int) -> tuple[tuple[float, ...], ...]:
    """Breaks of the careful split rule for expr in k coordinates: its affine kinks and the
    soft breaks of every coordinate (a kink at a soft break's place keeps its ramp)."""
    soft = {tuple(1.0 if j == i else 0.0 for j in range(k)) + (-b + 0.0, 1.0)
            for i in range(k) for b in SOFT_BREAKS}
    return tuple(sorted(set(kink_rows(expr, k)) | soft))


def kink_rows(expr: sp.Expr, k: int) -> tuple[tuple[float, ...], ...]:
    """Every kink of expr (a KINKED function of an affine argument) as a row (r, c) of floats:
    {r . z + c = 0}; non-affine kink arguments are left out."""
    zs = [sp.Symbol(f"z{i}", real=True) for i in range(k)]
    rows = set()
    for f in expr.atoms(*KINKED):
        found = kink_breaks(f.args[0], zs)
        rows.update(r for r in found or () if any(c != 0 for c in r[:k]))
    return tuple(sorted(rows))


#: the zeros of one non-affine kink argument that become breaks: those with |z| <= KINK_REACH,
#: at most MAX_KINK_ZEROS of them (nearest 0). A kink at |z| = 40 carries Gaussian weight
#: ~1e-15 up to a variance of ~24 (8 standard deviations): cos(g) is cut wherever it matters up
#: to there (20 standard deviations' worth of zeros on each side at variance 1); beyond, and
#: for faster oscillations (cos(30 g)), kinks are left uncut and the accuracy probe measures
#: what that costs. Only breaks inside a panel cost nodes (backends/quadsource.py).
KINK_REACH = 40.0
MAX_KINK_ZEROS = 48


def kink_breaks(arg: sp.Expr, zs: list) -> list[tuple[float, ...]] | None:
    """Where the kink argument `arg` vanishes, as rows (r, c) of floats, {r . z + c = 0}: one
    row for an affine argument; for an argument of a single coordinate z_i that is not affine
    (relu(leaky_relu(z) + 1/2), step(cos(z))), one row z_i = x per real zero x, found
    symbolically (`real_zeros`); None where neither applies (the integral then takes the
    natural tensor rule, and the accuracy probe measures it)."""
    row = linear_row(arg, zs, constant=True)
    if row is not None:
        const = sp.expand(arg - sum(c * z for c, z in zip(row, zs)))
        return [tuple(float(c) for c in row) + (float(const),)]
    used = [i for i, z in enumerate(zs) if z in arg.free_symbols]
    if len(used) != 1 or arg.free_symbols - set(zs):
        return None
    i = used[0]
    zeros = real_zeros(arg, zs[i])
    if zeros is None:
        return None
    unit = tuple(1.0 if j == i else 0.0 for j in range(len(zs)))
    return [unit + (-x + 0.0,) for x in zeros]


@functools.lru_cache(maxsize=256)
def real_zeros(arg: sp.Expr, z: sp.Symbol) -> tuple[float, ...] | None:
    """The real zeros of arg(z) (at most MAX_KINK_ZEROS, those nearest 0), or None where sympy
    cannot list them. A piecewise-linear composition (relu(z/10 + 9 relu(z)/10 + 1/2), a
    leaky_relu inside a relu) is solved piece by piece (`pieces`), keeping the roots that lie on
    their piece; a smooth argument by sympy's solveset over the reals (finite sets, and the
    periodic families of sin and cos, enumerated outwards from 0)."""
    split = pieces(arg) if arg.atoms(*KINKED) else None
    if arg.atoms(*KINKED) and split is None:
        return None
    forms = [arg] if split is None else list(split[1].values())
    found: set[float] = set()
    for form in forms:
        roots = _solve_real(form, z)
        if roots is None:
            return None
        for x in roots:
            if split is None or _vanishes(arg, z, x):
                found.add(x + 0.0)
    near = sorted((x for x in found if abs(x) <= KINK_REACH), key=abs)
    return tuple(sorted(near[:MAX_KINK_ZEROS]))


def _vanishes(arg: sp.Expr, z: sp.Symbol, x: float) -> bool:
    """arg(x) == 0 to rounding (a root of one piece of a piecewise form that lies on it)."""
    scale = 1.0 + abs(x)
    try:
        value = complex(arg.xreplace({z: sp.Float(x, 30)}).evalf(30))
    except (TypeError, ValueError):
        return False
    return abs(value) <= 1e-12 * scale


def _periodic_zeros(part: sp.ImageSet) -> list | None:
    """The members of {lam(n) : n integer} with |lam(n)| <= KINK_REACH, for lam affine in n
    (the zero sets of sin and cos of affine arguments)."""
    n = part.lamda.variables[0]
    expr = part.lamda.expr
    step = sp.diff(expr, n)
    if step.free_symbols or sp.diff(step, n) != 0 or step == 0:
        return None
    first, step = float(expr.subs(n, 0)), abs(float(step))
    reach = int(KINK_REACH / step) + 2
    if reach > 100 * MAX_KINK_ZEROS:
        reach = 100 * MAX_KINK_ZEROS  # a fast oscillation: the nearest ones suffice to cap
    base = round(-first / step)
    return [expr.subs(n, base + m) for m in range(-reach, reach + 1)]


def _solve_real(form: sp.Expr, z: sp.Symbol) -> list[float] | None:
    """Real zeros of a form free of kinks: a constant has none (a zero constant piece: every
    point is a root, and no break is needed inside it); finite sets and unions of periodic
    ImageSets from solveset; None otherwise."""
    if z not in form.free_symbols:
        return []
    try:
        sol = sp.solveset(form, z, sp.S.Reals)
    except (NotImplementedError, ValueError, TypeError):
        return None
    parts = sol.args if isinstance(sol, sp.Union) else (sol,)
    out: list[float] = []
    for part in parts:
        if isinstance(part, sp.FiniteSet):
            vals = list(part)
        elif isinstance(part, sp.ImageSet) and part.base_sets == (sp.S.Integers,):
            vals = _periodic_zeros(part)
            if vals is None:
                return None
        else:
            return None
        for v in vals:
            v = sp.N(v, 30)
            if not v.is_real:
                return None
            out.append(float(v))
    return out


# --- the compile-time choice -----------------------------------------------------------------


#: functions with a kink or jump at 0 of their first argument
KINKED = F.KINKED


def linear_row(arg: sp.Expr, zs: list, constant: bool = False) -> list | None:
    """Coefficients of arg as a homogeneous linear form in zs (an affine one if `constant`), or
    None."""
    if arg.free_symbols - set(zs):
        return None
    row = [sp.diff(arg, z) for z in zs]
    if any(c.free_symbols for c in row):
        return None
    rest = sp.expand(arg - sum(c * z for c, z in zip(row, zs)))
    if rest.free_symbols if constant else rest != 0:
        return None
    return row


def _direction(row: list) -> tuple[float, ...]:
    """Direction of a nonzero row (a kink line): scaled so that its first nonzero entry is 1."""
    lead = next(c for c in row if c != 0)
    return tuple(0.0 if c == 0 else round(float(c / lead), 14) + 0.0 for c in row)


def plan(expr: sp.Expr, cov) -> tuple[tuple[int, ...], tuple[int, ...], tuple[tuple, ...],
                                      tuple[tuple, ...]]:
    """The rule for E[expr(z0..z{k-1})], z ~ N(0, cov) (cov: k x k sympy entries, a sympy zero
    meaning uncorrelated): (pivot, kinked, kink_forms).

    K, the coordinates in kink arguments, is split into groups linked by a structurally nonzero
    covariance or by one kink form. The factorisation z = L w takes K first, so that each
    kinked group depends only on its own whitened coordinates: a group of one coordinate has its
    kinks at w_i = 0 (the tensor rule is exact-split there), the first group of two coordinates
    gets the polar rule, anything larger the tensor rule (fallback: oblique kinks). The other
    coordinates follow: given the kinked ones they are Gaussian with a mean linear in them, so
    the product rule needs no independence. Kinks not on hyperplanes through the origin
    (relu(z0 + 1), relu(z1 + relu(z0))) make the whole integral a plain tensor rule.

    kinked: () or the polar pair (s0, s1); kink_forms: its breakpoint lines as rows (a0, a1) of
    floats over (s0, s1), each line once (kink lines, and the lines where an affine argument of a
    smooth function of the pair vanishes); pivot: the other coordinates, in the order of the
    factorisation after the pair.

    breaks: () or, for the split rule (kinks off the origin, relu(z0 + 1), in at most
    MAX_SPLIT_DIM coordinates), every kink as a row (r_0, ..., r_{k-1}, c) of floats:
    {r . z + c = 0}; the rule then integrates in natural order."""
    k = len(cov)
    zs = [sp.Symbol(f"z{i}", real=True) for i in range(k)]
    natural = (tuple(range(k)), (), (), ())
    rows = []
    breaks = set()
    curved = False  # a kink argument that is not affine: its zeros are breaks off the origin
    for f in expr.atoms(*KINKED):
        found = kink_breaks(f.args[0], zs)
        if found is None:
            return natural  # a kink that is not on a hyperplane (the accuracy probe measures)
        row = linear_row(f.args[0], zs, constant=True)
        curved |= row is None
        if row is not None and any(c != 0 for c in row):
            rows.append(row)
        breaks.update(b for b in found if any(c != 0 for c in b[:k]))
    if curved or any(b[-1] != 0.0 for b in breaks):
        if k <= MAX_SPLIT_DIM:
            return tuple(range(k)), (), (), tuple(sorted(breaks))
        return natural
    if not rows:
        return natural
    kset = sorted({i for r in rows for i, c in enumerate(r) if c != 0})
    parent = {i: i for i in kset}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in kset:
        for j in kset:
            if j < i and cov[i][j] != 0:
                parent[find(i)] = find(j)
    for r in rows:
        nz = [i for i, c in enumerate(r) if c != 0]
        for i in nz[1:]:
            parent[find(i)] = find(nz[0])
    groups: dict[int, list[int]] = {}
    for i in kset:
        groups.setdefault(find(i), []).append(i)
    groups_sorted = sorted(groups.values())
    pair = next((g for g in groups_sorted if len(g) == 2), None)
    singles = [g[0] for g in groups_sorted if len(g) == 1]
    others = [i for g in groups_sorted if len(g) > 1 and g is not pair for i in g]
    rest = [i for i in range(k) if i not in kset]
    if pair is None:
        return tuple(singles + others + rest), (), (), ()
    lines = {tuple(d[i] for i in pair) for d in map(_direction, rows)
             if any(d[i] != 0 for i in pair)}
    # also split where a smooth function's affine argument has its linear part in the pair:
    # tanh(u + c) turns sharp along that ray at large radius, and Gauss-Legendre in the angle
    # resolves that far better at an arc's end than inside (|u - 2v| tanh(u + 1/2): 2e-7 ->
    # 6e-13)
    for f in expr.atoms(sp.Function):
        if isinstance(f, KINKED) or not f.args:
            continue
        row = linear_row(f.args[0], zs, constant=True)
        if row is not None and any(row[i] != 0 for i in pair) and \
                all(row[i] == 0 for i in range(k) if i not in pair):
            d = _direction(row)
            lines.add(tuple(d[i] for i in pair))
    if len(lines) == 1:  # arcs of pi are too long for the angular rule: add the axes
        lines = {_direction(list(d)) for d in lines | {(1.0, 0.0), (0.0, 1.0)}}
    return tuple(singles + others + rest), tuple(pair), tuple(sorted(lines)), ()


# --- per-piece forms of a kinked integrand ----------------------------------------------------

#: at most this many distinct kink arguments get per-piece forms (2^K branches of code)
MAX_PIECE_KINKS = 5


@functools.lru_cache(maxsize=256)
def pieces(expr: sp.Expr) -> tuple[tuple[sp.Expr, ...], dict] | None:
    """The integrand on each side of its kinks, simplified: (the kink arguments a_1..a_K,
    {(a_1 > 0, ..., a_K > 0): expr with relu, step, abs, abrelu of a_i replaced by their
    value on that side}), or None (no such kink, or more than MAX_PIECE_KINKS).

    Exact, 0 included (relu(0) = step(0) = abs(0) = 0 on the side a <= 0), and what the split
    rule evaluates between its cuts: on -1 < u < 1, relu(u + 1) - relu(u - 1) - 1 is u, not
    (u + 1) - 1, whose rounding is 1e-16 absolute, ~1e-8 relative at u ~ 1e-8 (what a sum of
    kinked terms that cancels costs at tiny inputs)."""
    kinks = sorted({f.args[0] for f in expr.atoms(F.Relu, F.Step, F.AbsF, F.ABRelu)},
                   key=sp.default_sort_key)
    if not kinks or len(kinks) > MAX_PIECE_KINKS:
        return None
    out = {}
    for pattern in np.ndindex(*(2,) * len(kinks)):
        on = dict(zip(kinks, (bool(p) for p in pattern)))

        def side(e: sp.Expr) -> sp.Expr:
            if isinstance(e, (F.Relu, F.Step, F.AbsF, F.ABRelu)) and e.args[0] in on:
                a = side(e.args[0])
                pos = on[e.args[0]]
                if isinstance(e, F.Relu):
                    return a if pos else sp.S.Zero
                if isinstance(e, F.Step):
                    return sp.S.One if pos else sp.S.Zero
                if isinstance(e, F.AbsF):
                    return a if pos else -a
                return (e.args[2] if pos else e.args[1]) * a
            if not e.args:
                return e
            return e.func(*[side(x) for x in e.args])

        out[tuple(bool(p) for p in pattern)] = sp.expand(side(expr))
    return tuple(kinks), out


if __name__ == "__main__":  # regenerate the shipped rules: python -m tpcompiler.quadrature
    import os

    write_rules(os.path.join(os.path.dirname(__file__), RULES_FILE))
