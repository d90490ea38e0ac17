"""Truncated moments of a bivariate Gaussian in closed form: the kinked coordinates of the
conditional rule (conditional.conditional) given its smooth ones.

X = mx + sx e0 and Y = my + ty e0 + uy e1 (e0, e1 independent N(0, 1), sx, uy >= 0) are two
kink forms; E[X^p Y^q [X > 0]^i [Y > 0]^j] is a sum of Phi, phi and the orthant probability
P(X > 0, Y > 0) (Owen's formula, Owen's T by Gauss-Legendre), Rosenbaum's truncated moments.
Measured against nested scipy quadrature (tests/test_truncated.py): within 1.3e-15.

The same rules as tpcompiler/helpers.py: scalar float64 functions of `math` only, no closures
and no module globals, so the generated modules copy their sources (`SOURCE_ORDER`).
"""

import math
from collections.abc import Callable


def ncdf(x: float) -> float:
    """Phi(x), accurate in both tails."""
    return 0.5 * math.erfc(-x * 0.7071067811865476)


def npdf(x: float) -> float:
    """phi(x); 0 for |x| = 1e300 (how an infinite truncation point is passed)."""
    return math.exp(-0.5 * x * x) * 0.3989422804014327 if abs(x) < 1e10 else 0.0


def owen_small(h: float, a: float) -> float:
    """Owen's T(h, a) for |a| <= 1: Gauss-Legendre with 20 nodes on [0, a] (the integrand
    exp(-h^2 (1 + x^2) / 2) / (1 + x^2) has its poles at +-i, far from [0, 1]: ~1e-25)."""
    xs = (0.07652652113349734, 0.22778585114164507, 0.37370608871541955, 0.5108670019508271,
          0.636053680726515, 0.7463319064601508, 0.8391169718222188, 0.912234428251326,
          0.9639719272779138, 0.993128599185095)
    ws = (0.15275338713072628, 0.14917298647260424, 0.1420961093183824, 0.1316886384491769,
          0.1181945319615186, 0.1019301198172407, 0.08327674157670471, 0.06267204833410879,
          0.040601429800386446, 0.017614007139150893)
    half = 0.5 * a
    acc = 0.0
    for n in range(10):
        for sgn in (-1.0, 1.0):
            t = half + half * sgn * xs[n]
            u = 1.0 + t * t
            acc += ws[n] * math.exp(-0.5 * h * h * u) / u
    return acc * half * 0.15915494309189535


def owen_hc(h: float, c: float) -> float:
    """Owen's T(h, c / h) given c (a = c / h may be infinite at h = 0): directly for |a| <= 1,
    else by T(h, a) = (Phi(h) + Phi(c)) / 2 - Phi(h) Phi(c) - T(c, 1 / a) - [h, c of opposite
    signs] / 2."""
    if abs(c) <= abs(h):
        return owen_small(h, c / h)
    ph = ncdf(h)
    pc = ncdf(c)
    half = 0.5 if (h < 0.0) != (c < 0.0) else 0.0
    return 0.5 * (ph + pc) - ph * pc - owen_small(c, h / c) - half


def bvn_cdf(a: float, b: float, r: float, ca: float, cb: float) -> float:
    """P(U < a, V < b) for standard normals of correlation |r| < 1, given ca = (b - r a) / s and
    cb = (a - r b) / s, s = sqrt(1 - r^2) (the caller has them without cancellation): Owen's
    formula Phi(a) / 2 + Phi(b) / 2 - T(a, ca / a) - T(b, cb / b) - beta."""
    if a == 0.0 and b == 0.0:
        return 0.25 + math.asin(r) * 0.15915494309189535
    beta = 0.5 if (a * b < 0.0) or (a * b == 0.0 and a + b < 0.0) else 0.0
    return 0.5 * (ncdf(a) + ncdf(b)) - owen_hc(a, ca) - owen_hc(b, cb) - beta


def tn_moment(lo: float, hi: float, n: float) -> float:
    """E[e^n [lo < e < hi]], e ~ N(0, 1), n = 0, 1, 2 (+-1e300 for an open end)."""
    if hi <= lo:
        return 0.0
    if lo > 0.0:
        m0 = ncdf(-lo) - ncdf(-hi)  # both in the upper tail: no cancellation
    else:
        m0 = ncdf(hi) - ncdf(lo)
    if n == 0.0:
        return m0
    plo = npdf(lo)
    phi = npdf(hi)
    if n == 1.0:
        return plo - phi
    return m0 + (lo * plo if plo > 0.0 else 0.0) - (hi * phi if phi > 0.0 else 0.0)


def lin_moment(lo: float, hi: float, a0: float, a1: float, p: float, b0: float, b1: float,
               q: float, extra: float) -> float:
    """E[(a0 + a1 e)^p ((b0 + b1 e)^q + extra [q = 2]) [lo < e < hi]], e ~ N(0, 1), p + q <=
    2: a polynomial of degree <= 2 in e against the truncated moments."""
    c0 = 1.0
    c1 = 0.0
    c2 = 0.0
    for _ in range(int(p)):
        c2 = c2 * a0 + c1 * a1
        c1 = c1 * a0 + c0 * a1
        c0 = c0 * a0
    d0 = c0
    d1 = c1
    d2 = c2
    for _ in range(int(q)):
        d2 = d2 * b0 + d1 * b1
        d1 = d1 * b0 + d0 * b1
        d0 = d0 * b0
    if q == 2.0:
        d0 += extra * c0
        d1 += extra * c1
        d2 += extra * c2
    out = d0 * tn_moment(lo, hi, 0.0)
    if d1 != 0.0:
        out += d1 * tn_moment(lo, hi, 1.0)
    if d2 != 0.0:
        out += d2 * tn_moment(lo, hi, 2.0)
    return out


def kink_low(mx: float, sx: float, my: float, ty: float, uy: float) -> float:
    """P(X > 0, Y > 0) for X = mx + sx e0, Y = my + ty e0 + uy e1 where sx, uy > 0 (else 0,
    unused): the one costly part of kink_moment, computed once per node for all the moments
    of a pair of forms (generated code shares the call)."""
    if sx == 0.0 or uy == 0.0:
        return 0.0
    a = mx / sx
    sy = math.sqrt(ty * ty + uy * uy)
    r = ty / sy
    ca = (my - ty * a) / uy
    return bvn_cdf(a, my / sy, r, ca, (a * uy - ty * ca) / sy)


def kink_moment(mx: float, sx: float, my: float, ty: float, uy: float, p: float, q: float,
                i: float, j: float, low: float) -> float:
    """E[X^p Y^q [X > 0]^i [Y > 0]^j] for X = mx + sx e0, Y = my + ty e0 + uy e1 (sx, uy >= 0;
    p + q <= 2, and p, q <= 1 where both are truncated), with [0 > 0] = 0: a form of zero
    variance is a point mass (step(0) = 0). low: kink_low of the same forms where both are
    truncated (else unused)."""
    big = 1e300
    if sx == 0.0:  # X is the constant mx
        if i == 1.0 and not mx > 0.0:
            return 0.0
        sy = math.sqrt(ty * ty + uy * uy)
        fx = mx ** int(p)
        if sy == 0.0:
            if j == 1.0 and not my > 0.0:
                return 0.0
            return fx * my ** int(q)
        lo = -my / sy if j == 1.0 else -big
        return fx * lin_moment(lo, big, my, sy, q, 1.0, 0.0, 0.0, 0.0)
    a = mx / sx
    lo = -a if i == 1.0 else -big
    hi = big
    if j == 0.0 or uy == 0.0:
        if j == 1.0:  # Y = my + ty e0: [Y > 0] cuts the same axis
            if ty > 0.0:
                lo = max(lo, -my / ty)
            elif ty < 0.0:
                hi = -my / ty
            elif not my > 0.0:
                return 0.0
        return lin_moment(lo, hi, mx, sx, p, my, ty, q, uy * uy)
    sy = math.sqrt(ty * ty + uy * uy)
    if i == 0.0:  # truncated in Y only: condition on Y instead
        r = ty / sy
        return lin_moment(-my / sy, big, my, sy, q, mx, sx * r, p, sx * sx * (uy / sy) ** 2)
    b = my / sy
    r = ty / sy
    s = uy / sy
    # ca = (b - r a) / s and cb = (a - r b) / s, s = sqrt(1 - r^2), without cancellation: cb
    # as (a sy - r my) / uy loses all its digits when Y is nearly -X (both terms ~1)
    ca = (my - ty * a) / uy
    cb = (a * uy - ty * ca) / sy
    pa = npdf(a)
    pb = npdf(b)
    fa = ncdf(ca)
    fb = ncdf(cb)
    e0 = pa * fa + r * pb * fb
    e1 = pb * fb + r * pa * fa
    if p == 0.0 and q == 0.0:
        return low
    if q == 0.0:
        return sx * (a * low + e0)
    if p == 0.0:
        return sy * (b * low + e1)
    e01 = r * low - r * a * pa * fa - r * b * pb * fb + s * pa * npdf(ca)
    return sx * sy * (a * b * low + a * e1 + b * e0 + e01)


SOURCE_ORDER: tuple[str, ...] = (
    "ncdf",
    "npdf",
    "owen_small",
    "owen_hc",
    "bvn_cdf",
    "tn_moment",
    "lin_moment",
    "kink_low",
    "kink_moment",
)

TRUNCATED: dict[str, Callable[..., float]] = {
    "ncdf": ncdf,
    "npdf": npdf,
    "owen_small": owen_small,
    "owen_hc": owen_hc,
    "bvn_cdf": bvn_cdf,
    "tn_moment": tn_moment,
    "lin_moment": lin_moment,
    "kink_low": kink_low,
    "kink_moment": kink_moment,
}
