"""The infinite-width map of batch normalisation on a batch's covariance (issue 18, groundwork
for the `batchnorm` construct: not yet reachable from the language).

A batch of B inputs has, at a layer of width n -> infinity, pre-activations h in R^B ~ N(0, S)
per coordinate. Batch normalisation (scale 1, shift 0, eps = 0) maps h to
BN(h) = sqrt(B) G h / |G h|, G = I - 1 1^T / B (each coordinate centred and divided by its
standard deviation over the batch). The next layer sees the B x B matrix
    V(S) = E[phi(BN(h)) phi(BN(h))^T]
(Yang, Pennington, Rao, Sohl-Dickstein, Schoenholz, "A Mean Field Theory of Batch
Normalization", ICLR 2019, eq. 10). For a positively homogeneous phi (abrelu(a, b): relu,
identity, leaky relu) phi(BN(h)) = sqrt(B) phi(u) / |u| with u = G h ~ N(0, C), C = G S G, and
the Laplace transform 1 / |u|^2 = int_0^inf exp(-s |u|^2) ds gives (the paper's route):
    V(S)_ij = B int_0^inf det(I + 2 s C)^(-1/2) J(C_s)_ij ds,   C_s = C (I + 2 s C)^(-1),
J the 2-D closed form E[phi(x) phi(y)], (x, y) ~ N(0, C_s restricted to i, j): a 1-D integral
of 2-D closed forms. With C = U diag(lam) U^T, det and C_s are diagonal in U.

The integral is taken in t = log s: the integrand decays like e^t at t -> -inf and like
e^(-r t / 2) at t -> +inf (r = rank C >= 1) and is analytic in a strip around the real axis
(the factors det^(-1/2) are singular at Im t = pi, J's square roots where a 2 x 2 minor of C_s
vanishes), so the trapezoid rule converges exponentially in 1 / h (Trefethen & Weideman 2014,
"The exponentially convergent trapezoidal rule"). Measured on the identity's exact invariant
trace V = B at B = 16: h = 1/2 leaves 1e-13 of B, h = 0.35 and 1/4 rounding (4e-15); STEP is
1/4. The range covers the tails to below 1e-17 of the peak.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import TPError

#: trapezoid step in t = log s (error ~ exp(-2 pi^2 / STEP), module docstring)
STEP = 0.25


def _relu_pairs(c: np.ndarray) -> np.ndarray:
    """E[relu(x) relu(y)] for every pair of a covariance matrix c (arc-cosine kernel)."""
    d = np.sqrt(np.clip(np.diag(c), 0.0, None))
    qq = np.outer(d, d)
    det = np.clip(qq * qq - c * c, 0.0, None)  # q1 q2 - k^2, never negative
    r = np.sqrt(det)
    theta = np.arctan2(r, c)  # atan2: exact at parallel and antipodal pairs
    return np.where(qq > 0.0, (r + (math.pi - theta) * c) / (2.0 * math.pi), 0.0)


def batch_map(cov, a: float = 0.0, b: float = 1.0) -> np.ndarray:
    """V(S) = E[phi(BN(h)) phi(BN(h))^T], h ~ N(0, S), for phi = abrelu(a, b)
    (a z for z < 0, b z for z > 0: relu is (0, 1), identity (1, 1), leaky relu (s, 1)).

    cov: the (B, B) covariance S of one coordinate over the batch, B >= 2. A batch whose
    centred covariance G S G is 0 (all inputs equal) has no normalisation: TPError."""
    s = np.asarray(cov, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 2:
        raise TPError(f"a batch covariance is a square matrix of a batch of >= 2 points, got "
                      f"shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise TPError("the batch covariance has non-finite entries")
    n = s.shape[0]
    g = np.eye(n) - 1.0 / n
    c = g @ ((s + s.T) / 2) @ g
    lam, u = np.linalg.eigh(c)
    top = lam[-1]
    if top <= 1e-14 * max(np.abs(s).max(), np.finfo(float).tiny):  # equal points: G S G = 0
        raise TPError("every point of the batch has the same pre-activations: batch "
                      "normalisation divides by a zero standard deviation (eps = 0)",
                      hint="a batch needs distinct points")
    keep = lam > top * n * 1e-15  # the rank: G's null direction and round-off are 0
    lam = np.where(keep, lam, 0.0)
    low = lam[keep].min()
    # t range: below t0 the integrand is ~ e^t J(C) (tail e^t0 <= 1e-17 of the peak near
    # s ~ 1 / lam_max); above t1 it decays like (2 s low)^(-r/2) / s (tail <= 1e-17)
    rank = int(keep.sum())
    t0 = math.log(1e-17 / (2.0 * top))
    t1 = math.log(1.0 / (2.0 * low)) + 2.0 * 40.0 / max(rank, 1)
    ts = np.arange(t0, t1 + STEP, STEP)
    total = np.zeros((n, n))
    for t in ts:
        sv = math.exp(t)
        shrink = 1.0 / (1.0 + 2.0 * sv * lam)
        weight = math.sqrt(np.prod(shrink)) * sv  # det(I + 2 s C)^(-1/2) ds/dt
        cs = (u * (lam * shrink)) @ u.T
        cs = (cs + cs.T) / 2
        pairs = (b - a) ** 2 * _relu_pairs(cs) + a * b * cs  # E[abrelu(x) abrelu(y)]
        total += weight * pairs
    out = n * STEP * total
    return (out + out.T) / 2
