"""An independent reference for Gaussian expectations and one-hidden-layer kernels.

Nested adaptive quadrature (scipy.integrate.quad, requested tolerance 1e-13 relative) in
whitened coordinates, each level split where a kink line crosses it and truncated at +-12
standard deviations (mass 4e-33): no code of tpcompiler's. Used by tests/test_exact.py and
benchmarks/exactness.py.

one_layer(act, X, var, bias) (sin(2 g): the closed form E[sin 2u sin 2v] =
(exp(-2 Var(u - v)) - exp(-2 Var(u + v))) / 2, written out here): NNGP = E[phi(u) phi(v)]
and NTK = NNGP + E[phi'(u) phi'(v)]
Cov(u, v) (neural-tangents' 'ntk' convention, readout variance 1) of
`g = dense(x, var, bias); y = readout(phi(g))`, (u, v) ~ N(0, [[q1, k], [k, q2]]),
Cov = var <x, x'>/d + bias.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
from scipy import integrate

#: name -> (.tp expression of g, phi, phi', kinks of phi)
ACTS = {
    "hardtanh": ("relu(g + 1) - relu(g - 1) - 1", lambda z: min(max(z, -1.0), 1.0),
                 lambda z: 1.0 if -1.0 < z < 1.0 else 0.0, (-1.0, 1.0)),
    "relu6": ("relu(g) - relu(g - 6)", lambda z: min(max(z, 0.0), 6.0),
              lambda z: 1.0 if 0.0 < z < 6.0 else 0.0, (0.0, 6.0)),
    "leaky_shift": ("leaky_relu(g - 1, slope=0.1)", lambda z: z - 1 if z > 1 else 0.1 * (z - 1),
                    lambda z: 1.0 if z > 1 else 0.1, (1.0,)),
    "step_shift": ("step(g + 0.5)", lambda z: 1.0 if z + 0.5 > 0 else 0.0, lambda z: 0.0,
                   (-0.5,)),
    "tanh_relu": ("tanh(g + 0.5) * relu(g - 0.3)",
                  lambda z: math.tanh(z + 0.5) * max(z - 0.3, 0.0),
                  lambda z: ((1 - math.tanh(z + 0.5) ** 2) * (z - 0.3) + math.tanh(z + 0.5))
                  if z > 0.3 else 0.0, (0.3,)),
    "sin2": ("sin(2 * g)", lambda z: math.sin(2 * z), lambda z: 2 * math.cos(2 * z), ()),
    # a kink of a kinked argument: leaky_relu(z) = -1/2 at z = -5 (solved by hand)
    "relu_leaky": ("relu(leaky_relu(g, slope=0.1) + 0.5)",
                   lambda z: max((z if z > 0 else 0.1 * z) + 0.5, 0.0),
                   lambda z: (1.0 if z > 0 else 0.1) if (z if z > 0 else 0.1 * z) > -0.5
                   else 0.0, (-5.0, 0.0)),
}

#: kinks at the zeros of a smooth argument, listed by hand up to |z| ~ 125: the reference
#: holds for standard deviations up to ~10 (tests/test_exact.py keeps its data there)
CURVED = {
    "abrelu_cos": ("abrelu(cos(g), a=-0.5, b=1.5)",
                   lambda z: (1.5 if math.cos(z) > 0 else -0.5) * math.cos(z),
                   lambda z: -(1.5 if math.cos(z) > 0 else -0.5) * math.sin(z),
                   tuple(math.pi / 2 + k * math.pi for k in range(-40, 40))),
    "abs_sin": ("abs(sin(0.5 * g))", lambda z: abs(math.sin(0.5 * z)),
                lambda z: 0.5 * math.copysign(1.0, math.sin(0.5 * z)) * math.cos(0.5 * z),
                tuple(2 * k * math.pi for k in range(-40, 40))),
}


def gauss2(f, c: np.ndarray, kinks) -> float:
    """E[f(u, v)], (u, v) ~ N(0, c), by nested adaptive quadrature in whitened coordinates,
    each level split where a kink line crosses it."""
    # scipy warns when rounding stops it short of the requested 1e-13 relative (values that
    # cancel to ~1e-16 of their terms); its result is then still ~1e-14, far inside the 1e-10
    # the tests hold the compiler to
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        return _gauss2(f, c, kinks)


def _gauss2(f, c: np.ndarray, kinks) -> float:
    a, b, d = c[0, 0], c[1, 0], c[1, 1]
    l00 = math.sqrt(a) if a > 0 else 0.0
    l10 = b / l00 if l00 > 0 else 0.0
    # l11^2 = det / a with the determinant in exact rational arithmetic: d - l10^2 in floats
    # leaves ~1e-16 d of rounding, an l11 ~ 1e-8 sqrt(d) for two identical points, which scipy
    # then integrates as a pair of width 1e-8 (7e-11 off on P(|u| < 1)); exactly, identical
    # points get l11 = 0 and points 1e-8 apart keep theirs (it moves a kinked NTK by 1e-10)
    det = Fraction(float(a)) * Fraction(float(d)) - Fraction(float(b)) ** 2
    l11 = math.sqrt(max(float(det / Fraction(float(a))), 0.0)) if a > 0 else math.sqrt(max(d, 0))
    phi = lambda t: math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
    # relative, not absolute: kernels of tiny inputs are ~1e-16 and still owed full accuracy
    # QUADPACK needs more subintervals than break points (many kinks: the zeros of cos)
    opts = dict(epsabs=1e-30, epsrel=1e-13, limit=max(200, 8 * len(kinks) + 50))

    def cuts(pts):
        # once each, and points closer than 1e-12 as one: QUADPACK's qagp given pieces of width
        # ~1e-15 (u's kink and v's of two nearly identical points) reports roundoff and is
        # 6e-9 off (measured against mpmath); merged, 1e-18
        out: list[float] = []
        for p in sorted(float(p) for p in pts if -12 < p < 12):
            if not out or p - out[-1] > 1e-12:
                out.append(p)
        return out

    def inner(s):
        u = l00 * s
        if l11 == 0.0:
            return f(u, l10 * s)
        pts = cuts([(kv - l10 * s) / l11 for kv in kinks])
        return integrate.quad(lambda t: f(u, l10 * s + l11 * t) * phi(t), -12, 12,
                              points=pts or None, **opts)[0]

    if l00 == 0.0:  # u is a point mass at 0
        if l11 == 0.0:
            return f(0.0, 0.0)
        return integrate.quad(lambda t: f(0.0, l11 * t) * phi(t), -12, 12,
                              points=cuts([kv / l11 for kv in kinks]) or None, **opts)[0]
    outer = [ku / l00 for ku in kinks]
    if l10 != 0.0:
        # where v's kink crosses t = 0 (for l11 = 0, v = l10 s has its kinks there: antipodal
        # points' differ from u's); for l11 << |l10| (nearly collinear points) the inner
        # integral jumps there within a width w = l11 / |l10|: cut around it at multiples of w
        w = l11 / abs(l10)
        outer += [kv / l10 + m * w for kv in kinks for m in (-8, -3, -1, 0, 1, 3, 8)]
    return integrate.quad(lambda s: inner(s) * phi(s), -12, 12,
                          points=cuts(outer) or None, **opts)[0]


def _chol2(c: np.ndarray) -> np.ndarray:
    """A 2 x 2 Cholesky factor that accepts singular covariances (identical or antipodal
    points), with the determinant in exact rational arithmetic as in _gauss2."""
    a, b, d = float(c[0, 0]), float(c[1, 0]), float(c[1, 1])
    if a == 0.0:  # a zero row: the first coordinate is a point mass
        return np.array([[0.0, 0.0], [0.0, math.sqrt(d)]])
    l00 = math.sqrt(a)
    det = Fraction(a) * Fraction(d) - Fraction(b) ** 2
    return np.array([[l00, 0.0], [b / l00, math.sqrt(max(float(det / Fraction(a)), 0.0))]])


def gauss4(f, g, cov_a, cov_b, nodes: int = 10, width: float = 1.25) -> float:
    """E[f(a, b) g(a', b')] with (a, a') ~ N(0, cov_a) and (b, b') ~ N(0, cov_b) independent,
    for smooth f and g (vectorised over NumPy arrays): whitened coordinates (a = l11 n1,
    a' = l21 n1 + l22 n2, likewise b from n3, n4), each on [-8.75, 8.75] (outside: mass 2e-18
    per axis) by composite Gauss-Legendre, panels of `width` with `nodes` nodes. An integrand
    analytic within a strip about the real axis per whitened coordinate converges
    geometrically per panel; callers estimate this rule's error by a second resolution (at
    unit variances, 10 nodes on panels of 1.25 and 12 on panels of 1 agree to 1e-15)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    edges = np.arange(-8.75, 8.75 - 1e-12, width)
    half = 0.5 * width
    z = (edges[:, None] + half + half * x[None, :]).ravel()
    wz = np.tile(half * w, len(edges)) * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    la, lb = _chol2(np.asarray(cov_a, float)), _chol2(np.asarray(cov_b, float))
    a, b = la[0, 0] * z, lb[0, 0] * z
    total = 0.0
    for p, n1 in enumerate(z):
        a2 = la[1, 0] * n1 + la[1, 1] * z  # over n2
        b2 = lb[1, 0] * z[:, None] + lb[1, 1] * z[None, :]  # (n3, n4)
        inner = g(a2[None, :, None], b2[:, None, :])  # (n3, n2, n4)
        inner = np.einsum("knm,n,m->k", inner, wz, wz)
        total += wz[p] * float(np.sum(wz * f(a[p], b) * inner))
    return total


def one_layer(act: str, X: np.ndarray, var: float, bias: float, nudge: float = 0.0) -> dict:
    """nudge: every cross-covariance multiplied by 1 + nudge (the conditioning probe of
    tests/test_exact.py: how much a rounding of the Gram entries moves the kernel)."""
    _, f, df, kinks = ACTS[act] if act in ACTS else CURVED[act]
    n = len(X)
    cov = var * (X @ X.T) / X.shape[1] + bias
    cov = cov * (1.0 + nudge) - np.diag(np.diag(cov)) * nudge
    out = {"nngp": np.zeros((n, n)), "ntk": np.zeros((n, n))}
    for i in range(n):
        for j in range(n):
            c = np.array([[cov[i, i], cov[i, j]], [cov[i, j], cov[j, j]]])
            if act == "sin2":
                # closed form: scipy cannot integrate sin(2u) at standard deviations of 1e8;
                # Var(u -+ v) from the rows themselves, not as a difference of large terms
                dm = var * np.sum((X[i] - X[j]) ** 2) / X.shape[1]
                dp = var * np.sum((X[i] + X[j]) ** 2) / X.shape[1] + 4 * bias
                em, ep = math.exp(-2 * dm), math.exp(-2 * dp)
                nngp, dd = 0.5 * (em - ep), 2 * (em + ep)
            else:
                nngp = gauss2(lambda u, v: f(u) * f(v), c, kinks)
                dd = gauss2(lambda u, v: df(u) * df(v), c, kinks)
            out["nngp"][i, j] = nngp
            out["ntk"][i, j] = nngp + dd * cov[i, j]
    return out


def tanh_product_layer(X: np.ndarray, var: float, bias: float) -> dict:
    """`h = dense(x, var, bias); h = tanh(h) * tanh(dense(h, var)); y = readout(h)` (the
    first reproducer of issue 13), derived by hand: h ~ N(0, S1), S1 = var <x, x'>/d + bias,
    and v = dense(h) ~ N(0, var S1) independent of h, so with A = E[tanh h tanh h'],
    Ad = E[tanh' h tanh' h'] over S1 and B, Bd the same over var S1:
    NNGP = A B; NTK = A B (readout) + var S1 A Bd (v's weights: input kernel S1, gradient
    A Bd) + S1 (Ad B + var A Bd) (h's weights and bias: the gradient through tanh(h) and,
    by W2's transpose, through v)."""
    t = math.tanh

    def dt(z: float) -> float:
        return 1.0 - math.tanh(z) ** 2

    n = len(X)
    s1 = var * (X @ X.T) / X.shape[1] + bias
    nngp, ntk = np.zeros((n, n)), np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            c = np.array([[s1[i, i], s1[i, j]], [s1[i, j], s1[j, j]]])
            a = gauss2(lambda u, v: t(u) * t(v), c, ())
            ad = gauss2(lambda u, v: dt(u) * dt(v), c, ())
            b = gauss2(lambda u, v: t(u) * t(v), var * c, ())
            bd = gauss2(lambda u, v: dt(u) * dt(v), var * c, ())
            nngp[i, j] = nngp[j, i] = a * b
            ntk[i, j] = ntk[j, i] = (a * b + var * s1[i, j] * a * bd
                                     + s1[i, j] * (ad * b + var * a * bd))
    return {"nngp": nngp, "ntk": ntk}


def tanh_two_vectors(X: np.ndarray, var: float, nodes: int = 10) -> dict:
    """`u = dense(x, var); w = dense(x, var); y = readout(tanh(u) * tanh(u + w))`: 4-D
    integrals per pair by gauss4 (u and w independent, each N(0, S), S = var <x, x'>/d):
    NNGP = E[f f'], f = tanh(u) tanh(u + w); NTK = NNGP + S (E[f_u f_u'] + E[f_w f_w']),
    f_u, f_w the partial derivatives. Pairs with the same covariance are computed once."""
    t = np.tanh

    def dt(z):
        return 1.0 - np.tanh(z) ** 2

    fns = (lambda a, b: t(a) * t(a + b),
           lambda a, b: dt(a) * t(a + b) + t(a) * dt(a + b),
           lambda a, b: t(a) * dt(a + b))
    n = len(X)
    s = var * (X @ X.T) / X.shape[1]
    nngp, ntk = np.zeros((n, n)), np.zeros((n, n))
    seen: dict = {}
    for i in range(n):
        for j in range(i, n):
            key = (s[i, i], s[i, j], s[j, j])
            if key not in seen:
                c = np.array([[key[0], key[1]], [key[1], key[2]]])
                seen[key] = [gauss4(f, f, c, c, nodes) for f in fns]
            e, eu, ew = seen[key]
            nngp[i, j] = nngp[j, i] = e
            ntk[i, j] = ntk[j, i] = e + s[i, j] * (eu + ew)
    return {"nngp": nngp, "ntk": ntk}


def _smooth_pair(fns, cov: np.ndarray, nodes: int = 8, width: float = 1.75):
    """(u, v) -> [[E[f_m(u + g) f_n(v + g')] for n] for m], (g, g') ~ N(0, cov), for smooth f
    (vectorised): gauss4's composite Gauss-Legendre in whitened coordinates, coarser (8 nodes
    on panels of 1.75: within 8e-12 of 10 on panels of 1.25 for tanh at unit variance; 3x
    faster, and the nested integral calls it thousands of times)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    edges = np.arange(-8.75, 8.75 - 1e-12, width)
    half = 0.5 * width
    t = (edges[:, None] + half + half * x[None, :]).ravel()
    wt = np.tile(half * w, len(edges)) * np.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    low = _chol2(np.asarray(cov, float))
    g1 = low[0, 0] * t  # (T,)
    g2 = low[1, 0] * t[:, None] + low[1, 1] * t[None, :]  # (T, T)

    if low[0, 0] == 0.0:  # a zero row: g is a point mass at 0, one axis is left
        g2 = low[1, 1] * t

        def at(u: float, v: float) -> np.ndarray:
            a = np.array([f(u) for f in fns])  # (F,)
            b = np.array([f(v + g2) for f in fns])  # (F, T)
            return np.einsum("m,nj,j->mn", a, b, wt)

        return at

    def at(u: float, v: float) -> np.ndarray:
        a = np.array([f(u + g1) for f in fns])  # (F, T)
        b = np.array([f(v + g2) for f in fns])  # (F, T, T)
        return np.einsum("mi,nij,i,j->mn", a, b, wt, wt)

    return at


def kinked_two_vectors(X: np.ndarray, vh: float, bh: float, vg: float, c: float,
                       fine: bool = False, pairs=None, slope: float = 0.0,
                       smooth: str = "tanh") -> dict:
    """NNGP and NTK of `h = dense(x, var=vh, bias=bh); g = dense(x, var=vg);
    y = readout(relu(h - c) * tanh(h + g))`: phi(h, g) = relu(h - c) tanh(h + g) with
    d phi / dh = step(h - c) tanh(h + g) + relu(h - c) sech^2(h + g) and d phi / dg =
    relu(h - c) sech^2(h + g); NTK = NNGP + Cov_h E[phi_h phi_h'] + Cov_g E[phi_g phi_g'].
    slope: leaky_relu(h - c, slope) for relu (its derivative slope below c); smooth: "tanh"
    or "sigmoid" for the smooth factor.
    Each expectation is nested: over (h, h') by gauss2 (split at the kink), given them over
    (g, g') by _smooth_pair (smooth in g): 8 nodes on panels of 1.75, within 8e-12 at unit
    variances but 6e-9 off at variance 4.8; fine: 12 nodes on panels of 1.0 (within 3e-15 of
    the compiler there, 6x slower). `pairs`: only these (i, j) (the rest NaN)."""
    relu = lambda z: z - c if z > c else slope * (z - c)  # noqa: E731
    step = lambda z: 1.0 if z - c > 0 else slope  # noqa: E731
    if smooth == "tanh":
        fns = [np.tanh, lambda z: 1.0 / np.cosh(z) ** 2]
    else:
        sig = lambda z: 0.5 * (1.0 + np.tanh(0.5 * z))  # noqa: E731
        fns = [sig, lambda z: sig(z) * (1.0 - sig(z))]

    def value(ch: np.ndarray, cg: np.ndarray) -> tuple[float, float]:
        s = _smooth_pair(fns, cg, *((12, 1.0) if fine else ()))
        nngp = gauss2(lambda u, v: relu(u) * relu(v) * s(u, v)[0, 0], ch, (c,))

        def dh(u, v):
            m = s(u, v)
            a, b = (step(u), relu(u)), (step(v), relu(v))
            return sum(a[p] * b[q] * m[p, q] for p in range(2) for q in range(2))

        eh = gauss2(dh, ch, (c,))
        eg = gauss2(lambda u, v: relu(u) * relu(v) * s(u, v)[1, 1], ch, (c,))
        return nngp, nngp + ch[0, 1] * eh + cg[0, 1] * eg

    return _two_matrices(X, vh, bh, vg, value, pairs)


def _two_matrices(X: np.ndarray, vh: float, bh: float, vg: float, value, pairs) -> dict:
    """NNGP and NTK matrices of a network of h = dense(x, var=vh, bias=bh) and
    g = dense(x, var=vg): value(pair covariance of h, of g) -> (nngp, ntk) per pair of
    points, for the `pairs` (i, j) wanted (all if None; the rest NaN)."""
    d = X.shape[1]
    ch = vh * (X @ X.T) / d + bh
    cg = vg * (X @ X.T) / d
    n = len(X)
    out = {"nngp": np.full((n, n), np.nan), "ntk": np.full((n, n), np.nan)}
    for i in range(n):
        for j in range(i, n):
            if pairs is not None and (i, j) not in pairs and (j, i) not in pairs:
                continue
            pair = lambda m: np.array([[m[i, i], m[i, j]], [m[i, j], m[j, j]]])  # noqa: E731
            nngp, ntk = value(pair(ch), pair(cg))
            out["nngp"][i, j] = out["nngp"][j, i] = nngp
            out["ntk"][i, j] = out["ntk"][j, i] = ntk
    return out


def _upper_orthant(cov: np.ndarray):
    """(a, b) -> P(g > a, g' > b), (g, g') ~ N(0, cov), possibly singular: in whitened
    coordinates g = l00 s, g' = l10 s + l11 t, the integral over s > a / l00 of phi(s)
    Phi_c((b - l10 s) / l11) (scipy.special.ndtr), by Gauss-Legendre (20 nodes) on panels of
    0.5 out to 12, cut where the integrand turns within l11 / |l10| (nearly collinear points)
    and around it. At l11 = 0 and l00 = 0, ndtr's closed forms."""
    from scipy.special import ndtr

    low = _chol2(np.asarray(cov, float))
    l00, l10, l11 = low[0, 0], low[1, 0], low[1, 1]
    x, w = np.polynomial.legendre.leggauss(20)

    def at(a: float, b: float) -> float:
        if l00 == 0.0:
            return float(0.0 > a) * (float(ndtr(-b / l11)) if l11 > 0 else float(0.0 > b))
        lo = a / l00
        if l11 == 0.0:
            if l10 == 0.0:
                return float(ndtr(-lo)) * float(0.0 > b)
            cut = b / l10  # g' > b is s > cut (l10 > 0) or s < cut
            if l10 > 0:
                return float(ndtr(-max(lo, cut)))
            return max(float(ndtr(cut) - ndtr(lo)), 0.0) if cut > lo else 0.0
        if lo >= 12.0:
            return 0.0
        pts = {max(lo, -12.0), 12.0}
        pts.update(float(p) for p in np.arange(-12.0, 12.0, 0.5) if p > lo)
        if l10 != 0.0:
            mid, width = b / l10, l11 / abs(l10)
            pts.update(mid + m * width for m in (-20, -8, -3, -1, 0, 1, 3, 8, 20)
                       if lo < mid + m * width < 12.0)
        edges = np.array(sorted(pts))
        half = 0.5 * np.diff(edges)
        s = (0.5 * (edges[1:] + edges[:-1]))[:, None] + half[:, None] * x
        f = np.exp(-0.5 * s * s) / math.sqrt(2 * math.pi) * ndtr(-(b - l10 * s) / l11)
        return float(np.sum(half[:, None] * w * f))

    return at


def kinked_every_coordinate(X: np.ndarray, vh: float, bh: float, vg: float, a: float,
                            c: float, pairs=None) -> dict:
    """NNGP and NTK of `h = dense(x, var=vh, bias=bh); g = dense(x, var=vg);
    y = readout(relu(h - a) * step(h + g - c))`: every coordinate of the 4-D integral is
    kinked. phi_h = step(h - a) step(h + g - c) and phi_g = 0 (the jump's weak derivative is
    0, as for step alone); NTK = NNGP + Cov_h E[phi_h phi_h']. Nested: over (h, h') by gauss2
    split at a, given them the orthant probability of (g, g') (_upper_orthant). `pairs`:
    only these (i, j) (the rest NaN; hard pairs take the reference ~10 s each)."""
    def value(ch: np.ndarray, cg: np.ndarray) -> tuple[float, float]:
        tail = _upper_orthant(cg)
        # where g or g' is a point mass (a zero row), the orthant probability jumps at h = c,
        # and where its standard deviation s is small (a 1e-8 row) it turns there within s:
        # cut at c and around it
        cuts = (a, c) + tuple(c + m * math.sqrt(s) for s in (cg[0, 0], cg[1, 1])
                              if 0.0 < s < 1e-2 for m in (-20, -8, -3, -1, 1, 3, 8, 20))
        nngp = gauss2(lambda u, v: max(u - a, 0.0) * max(v - a, 0.0) * tail(c - u, c - v),
                      ch, cuts)
        eh = gauss2(lambda u, v: float(u > a) * float(v > a) * tail(c - u, c - v), ch, cuts)
        return nngp, nngp + ch[0, 1] * eh

    return _two_matrices(X, vh, bh, vg, value, pairs)
