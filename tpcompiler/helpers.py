"""Scalar closed-form Gaussian expectations used by the kernel backends.

Convention: (u, v) ~ N(0, [[q1, k], [k, q2]]) with q1, q2 >= 0; step(x) = [x > 0],
relu(x) = max(x, 0), gelu(x) = x Phi(x) (exact), erf the standard error function.

Every function maps float64 scalars to a float64 and uses only ``math``, with no closures and
no module globals in the bodies: the numba backend copies these sources verbatim (via
``inspect.getsource``, in ``HELPER_SOURCE_ORDER``) into a generated module and decorates them
with ``@njit``, while the Python backends call them directly.  Constants are therefore written
inline rather than as module-level names, which a copied body could not see.

Where a formula contains the determinant q1 q2 - k^2 it goes through ``snapped_det``: inputs
with |k| a rounding error above sqrt(q1 q2) then never produce NaN, and exactly (anti)parallel
inputs produce exact results.
"""

import math
from collections.abc import Callable


def snapped_det(q1: float, q2: float, k: float) -> float:
    """s = q1 q2 - k^2, set to 0 when s <= 8 eps q1 q2 (so never negative)."""
    p = q1 * q2
    s = p - k * k
    # The rounding noise of s is a few eps * q1 q2, so below 8 eps it carries no information;
    # snapping it makes k == q1 == q2 give theta = 0 and k == -q1 == -q2 give theta = pi
    # exactly, and a |k| that rounding pushed past sqrt(q1 q2) cannot reach sqrt(negative).
    return 0.0 if s <= 8.0 * 2.220446049250313e-16 * p else s


def th(q1: float, q2: float, k: float) -> float:
    """theta = atan2(sqrt(q1 q2 - k^2), k) in [0, pi], i.e. cos(theta) = k / sqrt(q1 q2)."""
    if q1 <= 0.0 or q2 <= 0.0:
        # neural-tangents' convention: a zero-norm input is orthogonal to everything
        return 0.5 * math.pi
    # atan2 rather than acos: acos loses half the digits near |cos| = 1
    return atan2_pos(math.sqrt(snapped_det(q1, q2, k)), k)


def relu_relu(q1: float, q2: float, k: float) -> float:
    """E[relu(u) relu(v)] = (sqrt(q1 q2 - k^2) + (pi - theta) k) / (2 pi)  (arc-cosine J1)."""
    if q1 <= 0.0 or q2 <= 0.0:
        return 0.0
    r = math.sqrt(snapped_det(q1, q2, k))
    theta = math.atan2(r, k)  # == th(q1, q2, k); r is needed as well, so not recomputed
    # products with the rounded 1 / (2 pi) and 1 / pi, not divisions (a division costs several
    # times a product in the per-pair loops), within an ulp of the quotients; (pi - theta) / pi
    # is still exactly 1 at theta = 0 (pi times the rounded 1 / pi is 1.0 to the last bit) and
    # exactly 0 at theta = pi, so parallel inputs give k / 2 and antipodal ones 0 to the last bit
    return r * 0.15915494309189535 + 0.5 * k * ((math.pi - theta) * 0.3183098861837907)


def step_step(q1: float, q2: float, k: float) -> float:
    """E[step(u) step(v)] = (pi - theta) / (2 pi); 0 when a variance is 0 (step(0) = 0)."""
    if q1 <= 0.0 or q2 <= 0.0:
        return 0.0
    return 0.5 * ((math.pi - th(q1, q2, k)) * 0.3183098861837907)  # see relu_relu


def relu_step(q1: float, q2: float, k: float) -> float:
    """E[relu(u) step(v)] = sqrt(q1) (1 + cos theta) / (2 sqrt(2 pi))."""
    # Stein on u 1{u>0} 1{v>0}: each indicator contributes phi(0) * P(other > 0 | this = 0)
    # = 1 / (2 sqrt(2 pi)), the v one weighted by the correlation cos theta.
    if q1 <= 0.0 or q2 <= 0.0:
        return 0.0  # relu(0) = step(0) = 0 on a point mass
    c = min(1.0, max(-1.0, k / math.sqrt(q1 * q2)))
    return math.sqrt(q1) * (1.0 + c) / (2.0 * math.sqrt(2.0 * math.pi))


def lin_step(q2: float, k: float) -> float:
    """E[u step(v)] = k / sqrt(2 pi q2)  (Stein: k E[delta(v)])."""
    if q2 <= 0.0:
        return 0.0
    return k / math.sqrt(2.0 * math.pi * q2)


def relu_mean(q: float) -> float:
    """E[relu(u)], u ~ N(0, q), = sqrt(q / (2 pi))."""
    return math.sqrt(max(q, 0.0) / (2.0 * math.pi))


def erf_erf(q1: float, q2: float, k: float) -> float:
    """E[erf(u) erf(v)] = (2/pi) asin(2k / sqrt((1 + 2 q1)(1 + 2 q2)))  (Williams 1997)."""
    # Evaluated as (2/pi) atan2(2k, sqrt(det(I + 2 Sigma))), the same angle: it needs no clamp
    # and, with the determinant expanded around snapped_det, stays accurate near |rho| = 1.
    det = 1.0 + 2.0 * (q1 + q2) + 4.0 * snapped_det(q1, q2, k)
    # atan2(y, x) for x > 0 as sign(y) atan2_pos(|y|, x): no libm call, so loops vectorise
    a = atan2_pos(abs(2.0 * k), math.sqrt(max(det, 2.2250738585072014e-308)))
    return (2.0 / math.pi) * (a if k >= 0.0 else -a)


def gauss_gauss(q1: float, q2: float, k: float) -> float:
    """E[exp(-u^2) exp(-v^2)] = 1 / sqrt((1 + 2 q1)(1 + 2 q2) - 4 k^2) (also erf's NTK)."""
    # det(I + 2 Sigma) written as 1 + 2(q1 + q2) + 4 det(Sigma) is >= 1 for any valid
    # covariance without cancellation (the product form loses everything to rounding at a
    # point with itself once q ~ 1e8: (1 + 2q)^2 - 4q^2 = 1 + 4q); the max only shields invalid
    # (negative) variances.
    det = 1.0 + 2.0 * (q1 + q2) + 4.0 * snapped_det(q1, q2, k)
    return 1.0 / math.sqrt(max(det, 2.2250738585072014e-308))


def gelu_gelu(q1: float, q2: float, k: float) -> float:
    """E[gelu(u) gelu(v)] = k/4 + (k A + (k^2 + q1 q2 D) / (P sqrt(D))) / (2 pi)."""
    # P = (1 + q1)(1 + q2), D = P - k^2 = 1 + q1 + q2 + det(Sigma) >= 1, A = atan2(k, sqrt(D))
    p = (1.0 + q1) * (1.0 + q2)
    d = max(1.0 + q1 + q2 + snapped_det(q1, q2, k), 2.2250738585072014e-308)
    sd = math.sqrt(d)
    a = atan2_pos(abs(k), sd)  # atan2(k, sd), sd > 0, without libm (as in erf_erf)
    a = a if k >= 0.0 else -a
    return 0.25 * k + (k * a + (k * k + q1 * q2 * d) / (p * sd)) / (2.0 * math.pi)


def dgelu_dgelu(q1: float, q2: float, k: float) -> float:
    """E[gelu'(u) gelu'(v)] = 1/4 + A/(2 pi) + k/(2 pi sqrt(D)) (1/D + (1 - q1 q2)/P + 1)."""
    # P, D, A as in gelu_gelu
    p = (1.0 + q1) * (1.0 + q2)
    d = max(1.0 + q1 + q2 + snapped_det(q1, q2, k), 2.2250738585072014e-308)
    sd = math.sqrt(d)
    a = atan2_pos(abs(k), sd)
    a = a if k >= 0.0 else -a
    return 0.25 + (a + k / sd * (1.0 / d + (1.0 - q1 * q2) / p + 1.0)) / (2.0 * math.pi)


def gelu_mean(q: float) -> float:
    """E[gelu(u)], u ~ N(0, q), = q / sqrt(2 pi (1 + q))  (Stein: q E[phi(u)])."""
    return q / math.sqrt(2.0 * math.pi * (1.0 + q))


def gelu_lin(q1: float, q2: float, k: float) -> float:
    """E[gelu(u) v] = k E[gelu'(u)] = k / 2."""
    # E[Phi(u)] = 1/2 and E[u phi(u)] = 0 by symmetry, for every q1
    return 0.5 * k


def erf_lin(q1: float, q2: float, k: float) -> float:
    """E[erf(u) v] = k E[erf'(u)] = k (2 / sqrt(pi)) / sqrt(1 + 2 q1)."""
    return k * (2.0 / math.sqrt(math.pi)) / math.sqrt(1.0 + 2.0 * q1)


# Dependency order for the backend that copies the sources: every helper appears after the
# helpers it calls.
def atan_unit(lo: float, hi: float) -> float:
    """atan(lo / hi) for 0 <= lo <= hi, hi > 0, branch-free (Cephes' rational form, ~1 ulp)."""
    # one range reduction at tan(3 pi / 16) ~ 0.66: atan(x) = pi/4 + atan((x - 1) / (x + 1)),
    # with x = lo / hi taken as (lo - hi) / (lo + hi): one division instead of two, and the
    # numerator exact (Sterbenz: lo >= hi / 2 there); the conditional expressions compile to
    # selects, so a loop over pairs can vectorise
    big = lo > 0.66 * hi
    y = (lo - hi if big else lo) / (lo + hi if big else hi)
    z = y * y
    num = (((-8.750608600031904122785e-01 * z - 1.615753718733365076637e01) * z
            - 7.500855792314704667340e01) * z - 1.228866684490136173410e02) * z \
        - 6.485021904942025371773e01
    den = ((((z + 2.485846490142306297962e01) * z + 1.650270098316988542046e02) * z
            + 4.328810604912902668951e02) * z + 4.853903996359136964868e02) * z \
        + 1.945506571482613964425e02
    r = y + y * z * num / den
    return (r + 3.061616997868383e-17) + 0.7853981633974483 if big else r


def atan2_pos(r: float, k: float) -> float:
    """atan2(r, k) for r >= 0 without a libm call: within 4.5e-16, exact at 0 and pi."""
    ak = abs(k)
    hi = max(r, ak)
    lo = min(r, ak)
    t = atan_unit(lo, hi if hi > 0.0 else 1.0)
    t = (1.5707963267948966 - t) + 6.123233995736766e-17 if r > ak else t
    return (3.141592653589793 - t) + 1.2246467991473532e-16 if k < 0.0 else t


def rootdet(q1: float, q2: float, k: float) -> float:
    """sqrt(q1 q2 - k^2) with the snapping of snapped_det; shared by the arc-cosine kernels."""
    return math.sqrt(snapped_det(q1, q2, k))


def angle(q1: float, q2: float, r: float, k: float) -> float:
    """theta = atan2(r, k) for r = rootdet(q1, q2, k); pi/2 at zero norm (neural-tangents)."""
    t = atan2_pos(r, k)
    # `|` not `or`: no short-circuit branch, so a loop over pairs still vectorises
    return 0.5 * math.pi if (q1 <= 0.0) | (q2 <= 0.0) else t


def relu_relu_rt(r: float, t: float, k: float) -> float:
    """relu_relu from r = rootdet and t = angle (computed once a layer, shared with step_step_t)."""
    return r * 0.15915494309189535 + 0.5 * k * ((math.pi - t) * 0.3183098861837907)


def step_step_t(t: float) -> float:
    """step_step from t = angle: (pi - theta) / (2 pi), exact at theta = 0 and pi."""
    return 0.5 * ((math.pi - t) * 0.3183098861837907)


def expm1h(x: float) -> float:
    """exp(x) - 1, accurate near 0 (closed forms are sums of w (exp(x) - 1): no cancellation)."""
    # math.expm1 raises (Python) or returns inf (numba) past ~709: the same inf in both
    return math.expm1(x) if x < 709.0 else math.inf


def step_mean(q: float) -> float:
    """E[step(u)], u ~ N(0, q): 1/2, but 0 at q = 0 (a point mass at 0, where step is 0)."""
    return 0.5 if q > 0.0 else 0.0


def step_step_q(q1: float, q2: float, t: float) -> float:
    """step_step_t, 0 when either variance is 0 (step(0) = 0 on a point mass)."""
    return 0.0 if (q1 <= 0.0) | (q2 <= 0.0) else 0.5 * ((math.pi - t) * 0.3183098861837907)


# Derivatives (passes/tangent.py): the directional derivative of a helper along (dq1, dq2, dk),
# at a zero variance 0 (a zero variance comes from a zero input without bias, and stays 0
# whatever the params), the weak derivative at kinks as in the NTK.
def relu_relu_dq(q1: float, q2: float, r: float, dq1: float, dq2: float) -> float:
    """The variance part of d relu_relu, r (dq1 / q1 + dq2 / q2) / (4 pi); its k part: step_step."""
    # homogeneity: relu_relu(s^2 q1, q2, s k) = s relu_relu, so 2 q1 d/dq1 = f - k d/dk = r / (2 pi)
    if (q1 <= 0.0) | (q2 <= 0.0):
        return 0.0
    return r * (dq1 / q1 + dq2 / q2) * 0.07957747154594767


def step_step_d(q1: float, q2: float, r: float, k: float, dq1: float, dq2: float,
                dk: float) -> float:
    """d step_step = (2 q1 q2 dk - k (q2 dq1 + q1 dq2)) / (4 pi q1 q2 r), inf if it is infinite."""
    if (q1 <= 0.0) | (q2 <= 0.0):
        return 0.0
    a = 2.0 * q1 * q2 * dk
    b = k * (q2 * dq1 + q1 * dq2)
    n = a - b
    if r <= 0.0:
        # (anti)parallel pre-activations: the angle moves only if the direction separates them
        # (n != 0, then like sqrt: an infinite derivative); identical inputs stay identical
        return 0.0 if abs(n) <= 1e-6 * (abs(a) + abs(b)) else math.inf
    return n / (12.566370614359172 * q1 * q2 * r)


def relu_mean_d(q: float, dq: float) -> float:
    """d relu_mean = dq / (2 sqrt(2 pi q)); 0 at q = 0."""
    return dq * 0.19947114020071635 / math.sqrt(q) if q > 0.0 else 0.0


def relu_step_d(q1: float, q2: float, k: float, dq1: float, dq2: float, dk: float) -> float:
    """d relu_step, relu_step = (sqrt(q1) + k / sqrt(q2)) / (2 sqrt(2 pi)); 0 at zero variance."""
    if (q1 <= 0.0) | (q2 <= 0.0):
        return 0.0
    s2 = math.sqrt(q2)
    return (0.5 * dq1 / math.sqrt(q1) + dk / s2 - 0.5 * k * dq2 / (q2 * s2)) * 0.19947114020071635


def lin_step_d(q2: float, k: float, dq2: float, dk: float) -> float:
    """d lin_step = (dk - k dq2 / (2 q2)) / sqrt(2 pi q2); 0 at q2 = 0."""
    if q2 <= 0.0:
        return 0.0
    return (dk - 0.5 * k * dq2 / q2) / math.sqrt(2.0 * math.pi * q2)


HELPER_SOURCE_ORDER: tuple[str, ...] = (
    "atan_unit",
    "atan2_pos",
    "snapped_det",
    "th",
    "relu_relu",
    "step_step",
    "relu_step",
    "lin_step",
    "relu_mean",
    "erf_erf",
    "gauss_gauss",
    "gelu_gelu",
    "dgelu_dgelu",
    "gelu_mean",
    "gelu_lin",
    "erf_lin",
    "rootdet",
    "angle",
    "relu_relu_rt",
    "step_step_t",
    "expm1h",
    "step_mean",
    "step_step_q",
    "relu_relu_dq",
    "step_step_d",
    "relu_mean_d",
    "relu_step_d",
    "lin_step_d",
)

HELPERS: dict[str, Callable[..., float]] = {
    "atan_unit": atan_unit,
    "atan2_pos": atan2_pos,
    "snapped_det": snapped_det,
    "th": th,
    "relu_relu": relu_relu,
    "step_step": step_step,
    "relu_step": relu_step,
    "lin_step": lin_step,
    "relu_mean": relu_mean,
    "erf_erf": erf_erf,
    "gauss_gauss": gauss_gauss,
    "gelu_gelu": gelu_gelu,
    "dgelu_dgelu": dgelu_dgelu,
    "gelu_mean": gelu_mean,
    "gelu_lin": gelu_lin,
    "erf_lin": erf_lin,
    "rootdet": rootdet,
    "angle": angle,
    "relu_relu_rt": relu_relu_rt,
    "step_step_t": step_step_t,
    "expm1h": expm1h,
    "step_mean": step_mean,
    "step_step_q": step_step_q,
    "relu_relu_dq": relu_relu_dq,
    "step_step_d": step_step_d,
    "relu_mean_d": relu_mean_d,
    "relu_step_d": relu_step_d,
    "lin_step_d": lin_step_d,
}
