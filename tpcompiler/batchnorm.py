"""The infinite-width maps of batch normalisation on a batch: the covariance V(S) of its output
and the tangent map M(S, Theta) that carries the NTK (and the backward gradient) through it.

A batch of B inputs has, at a layer of width n -> infinity, pre-activations h in R^B ~ N(0, S)
per coordinate, with tangent kernel Theta (B x B). Batch normalisation (scale 1, shift 0)
maps h to z = u / sigma, u = G h, G = I - 1 1^T / B, sigma^2 = |u|^2 / B + eps (each coordinate
centred and divided by its standard deviation over the batch), then phi acts elementwise:
    V(S)_ij = E[phi(z_i) phi(z_j)]                                         (Yang et al., eq. 10)
    M(S, Theta) = E[J Theta J^T],  J = d phi(z) / dh = diag(phi'(z)) P G / sigma,
                  P = I - u u^T / (B sigma^2)
(Yang, Pennington, Rao, Sohl-Dickstein, Schoenholz, "A Mean Field Theory of Batch
Normalization", ICLR 2019). M is the NTK's forward rule (Theta of the next layer is
s_W^2 (V + M) + s_b^2); its adjoint maps the gradients' covariance backward, so its spectral
radius at the fixed point is the growth per layer of the squared gradient norm.

**Positively homogeneous phi** (abrelu(a, b) = a z + c relu(z), c = b - a: relu, identity,
leaky relu). phi(z) = phi(u) / sigma and phi'(z) = phi'(u), so every term is E[F(u) /
sigma^(2k)] with F a product of at most two coordinates' functions times polynomials. The
Laplace transform 1 / sigma^(2k) = int_0^inf s^(k-1) exp(-s sigma^2) ds / (k-1)! turns the
1 / sigma^(2k) into a Gaussian tilt: E[F(u) exp(-s |u|^2 / B)] = det(I + 2 s C / B)^(-1/2)
E_{C_s}[F], C_s = C (I + 2 s C / B)^(-1), C = G S G (the paper's route to its Theorem 2). Under
the tilted Gaussian (covariance K = C_s) the terms are 2-D closed forms, the cross terms
(u_k with k != i, j) by Stein's lemma, E[u_k g(u_i, u_j)] = K_ki E[d_i g] + K_kj E[d_j g] and
E[u_k u_l g] = K_kl E[g] + (K (dd g) K)_kl, with no 2 x 2 inverse (exact at identical and
antipodal points); phi'' = c delta gives E[phi(u_j) phi''(u_i)] = c^2 r / (2 pi q_i),
r = sqrt(q_i q_j - K_ij^2). With A = G Theta G, N = K A K, e = E[phi'(u_i) phi'(u_j)],
n = E[phi(u_i) phi(u_j)], D_i = c^2 r / (2 pi q_i):
    V_ij      = int s w n_ij dt
    M_ij      = int w [ s A_ij e_ij - s^2 (E2_ij + E2_ji) / B + s^3 E4_ij / (2 B^2) ] dt
    E2_ij     = (A K)_ji e_ij + (A K)_jj D_j        (= E[phi(u_i) phi'(u_j) (A u)_j])
    E4_ij     = tr(A K) n_ij + N_ii D_i + 2 N_ij e_ij + N_jj D_j   (= E[phi_i phi_j u^T A u])
with w = det(I + 2 s C / B)^(-1/2) exp(-s eps), t = log s. The integrands decay like
s^(-r/2) (V) and s^(1 - r/2) (M) past s ~ B / lambda_min (r = rank C): with eps = 0 the tangent
map needs r >= 3 (E[1 / |u|^2] is infinite in <= 2 dimensions: a batch of 2 or 3 points, or
fewer than 4 distinct centred directions, has an infinite NTK and gradient through BN; a
TPError, not a number).

The trapezoid rule in t converges exponentially in 1 / STEP (the integrands are analytic in a
strip; Trefethen & Weideman 2014): measured on the identity's exact invariants (trace V = B,
V 1 = 0) and the linear network's gradient rate (B - 2) / (B - 3) (tests/test_batchnorm.py),
STEP = 1/4 is at rounding.

**Other phi** (tanh, erf, a shifted relu, ...): Monte Carlo over the direction of the centred
batch with the radius integrated exactly (`moments_mc`: seeded, antithetic pairs; a finite
variance where plain sampling of h has none), the standard error of every entry as the error
estimate; the callers warn (TPWarning) where it exceeds the tolerance, which it does at any
tolerance below ~1e-3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import TPError

#: trapezoid step in t = log s (error ~ exp(-2 pi^2 / STEP), module docstring)
STEP = 0.25
#: Monte Carlo samples (antithetic pairs count twice) for a non-homogeneous phi
MC_SAMPLES = 1 << 16
#: Gauss-Legendre nodes for the radius when eps > 0 (moments_mc): the integrand is analytic
#: in R for a smooth phi, so the rule converges exponentially (measured: the exact relu
#: quadrature reproduced to 1e-9 with 64)
RADIAL = 64


@dataclass(frozen=True)
class Moments:
    """V (B x B), M (the tangent map applied to the given Theta, or None) and their error
    estimates (0 for the quadrature: at rounding; standard errors for Monte Carlo)."""

    v: np.ndarray
    m: np.ndarray | None
    v_error: float = 0.0
    m_error: float = 0.0


def _check_cov(cov) -> np.ndarray:
    s = np.asarray(cov, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 1:
        raise TPError(f"a batch covariance is a square matrix, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise TPError("the batch covariance has non-finite entries")
    return (s + s.T) / 2


def _centred(s: np.ndarray, eps: float):
    """C = G S G, its eigen-decomposition with round-off eigenvalues set to 0, and its rank;
    a TPError when the batch has no spread and eps = 0."""
    n = s.shape[0]
    g = np.eye(n) - 1.0 / n
    c = g @ s @ g
    lam, u = np.linalg.eigh((c + c.T) / 2)
    top = lam[-1] if n else 0.0
    scale = max(np.abs(s).max(), np.finfo(float).tiny)
    if top <= 1e-14 * scale:
        if eps == 0:
            why = ("a batch of one point" if n == 1 else
                   "every point of the batch has the same pre-activations")
            raise TPError(f"{why}: batch normalisation divides by a zero standard deviation "
                          "(eps = 0)", hint="a batch needs distinct points, or give eps > 0")
        return np.zeros(n), u, 0
    keep = lam > top * n * 1e-15  # G's null direction and round-off are 0
    lam = np.where(keep, lam, 0.0)
    return lam, u, int(keep.sum())


def _nodes(lam: np.ndarray, rank: int, batch: int, eps: float, power: float):
    """t = log s nodes of the trapezoid rule: the integrand grows like s^k below the peak
    (s ~ B / lam_max) and decays like s^(-power) above s ~ B / lam_min (and like
    exp(-s eps)); tails below 1e-17 of the peak."""
    top = lam.max() if rank else 0.0
    low = lam[lam > 0].min() if rank else 0.0
    if rank:
        t0 = math.log(1e-17 * batch / (2.0 * top))
    else:
        t0 = math.log(1e-17 / eps)
    t1 = math.inf
    if rank and power > 0:
        t1 = math.log(batch / (2.0 * low)) + 40.0 / power
    if eps > 0:
        t1 = min(t1, math.log(45.0 / eps) + 1.0)
    return np.arange(t0, t1 + STEP, STEP)


def _pair_terms(k: np.ndarray, a: float, b: float):
    """For a covariance K: n = E[phi(u_i) phi(u_j)], e = E[phi'(u_i) phi'(u_j)] and
    D[i, j] = c^2 r / (2 pi q_i) (0 where q_i = 0), phi = abrelu(a, b), step(0) = 0."""
    c = b - a
    q = np.clip(np.diag(k), 0.0, None)
    q1, q2 = q[:, None], q[None, :]
    qq = q1 * q2
    det = qq - k * k
    det = np.where(det <= 8 * np.finfo(float).eps * qq, 0.0, det)  # identical, antipodal
    r = np.sqrt(det)
    theta = np.arctan2(r, k)
    live = qq > 0.0
    relu_relu = np.where(live, (r + (math.pi - theta) * k) / (2.0 * math.pi), 0.0)
    both = np.where(live, (math.pi - theta) / (2.0 * math.pi), 0.0)  # P(u_i > 0, u_j > 0)
    half = np.where(q > 0.0, 0.5, 0.0)
    n = c * c * relu_relu + a * b * k
    e = a * a + a * c * (half[:, None] + half[None, :]) + c * c * both
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(q1 > 0.0, c * c * r / (2.0 * math.pi * q1), 0.0)
    return n, e, d


def _node_terms(s: np.ndarray, a: float, b: float, eps: float, tangent: bool):
    """Per trapezoid node: (w, s, K, n, e, D) (module docstring), for a covariance S."""
    n = s.shape[0]
    lam, u, rank = _centred(s, eps)
    if tangent and eps == 0 and rank <= 2:
        raise TPError(
            f"the NTK through batch normalisation is infinite here: the batch's centred "
            f"pre-activations span {rank} direction(s), and with eps = 0 the Jacobian's "
            "1 / |u|^2 has no finite mean in fewer than 3 (a batch of 2 or 3 points, or "
            "repeated points)", hint="use a batch of >= 4 distinct points, or eps > 0")
    if rank == 0:  # eps > 0, no spread: z = 0 exactly, phi(0) = 0, M = 0
        return
    for tk in _nodes(lam, rank, n, eps, rank / 2.0 - (1.0 if tangent else 0.0)):
        sv = math.exp(tk)
        shrink = 1.0 / (1.0 + 2.0 * sv * lam / n)
        w = math.exp(0.5 * np.log(shrink).sum() - sv * eps)
        if w == 0.0:
            continue
        k = (u * (lam * shrink)) @ u.T
        k = (k + k.T) / 2
        yield (w, sv, k, *_pair_terms(k, a, b))


def _tangent_node(amat: np.ndarray, node) -> np.ndarray:
    w, sv, k, nn, e, d = node
    n = k.shape[0]
    ak = amat @ k
    nk = k @ ak
    e2 = ak.T * e + np.diag(ak)[None, :] * d.T  # (A K)_ji e_ij + (A K)_jj D_j
    e4 = (np.trace(ak) * nn + np.diag(nk)[:, None] * d + 2.0 * nk * e
          + np.diag(nk)[None, :] * d.T)
    return w * (sv * amat * e - sv * sv * (e2 + e2.T) / n + sv ** 3 * e4 / (2.0 * n * n))


def _sym(x: np.ndarray) -> np.ndarray:
    return (x + x.T) / 2


def moments(cov, a: float = 0.0, b: float = 1.0, eps: float = 0.0,
            theta=None) -> Moments:
    """V(S) and (theta given) M(S, Theta) for phi = abrelu(a, b) (a z for z < 0, b z for
    z > 0: relu (0, 1), identity (1, 1), leaky relu (s, 1)); cov = S, the (B, B) covariance of
    the pre-activations over the batch; theta their tangent kernel."""
    s = _check_cov(cov)
    n = s.shape[0]
    g = np.eye(n) - 1.0 / n
    amat = None if theta is None else g @ _check_cov(theta) @ g
    v = np.zeros((n, n))
    m = None if theta is None else np.zeros((n, n))
    for node in _node_terms(s, a, b, float(eps), theta is not None):
        v += (node[0] * node[1]) * node[3]
        if m is not None:
            m += _tangent_node(amat, node)
    return Moments(_sym(v * STEP), None if m is None else _sym(m * STEP))


class TangentMap:
    """Theta -> M(S, Theta) at one S (abrelu(a, b)), the nodes' 2-D terms computed once: the
    power iteration of `tpc diagnose --batch` applies it many times."""

    def __init__(self, cov, a: float, b: float, eps: float):
        self.s = _check_cov(cov)
        self.nodes = list(_node_terms(self.s, a, b, float(eps), True))

    def __call__(self, theta) -> np.ndarray:
        n = self.s.shape[0]
        g = np.eye(n) - 1.0 / n
        amat = g @ _check_cov(theta) @ g
        m = np.zeros((n, n))
        for node in self.nodes:
            m += _tangent_node(amat, node)
        return _sym(m * STEP)


def batch_map(cov, a: float = 0.0, b: float = 1.0, eps: float = 0.0) -> np.ndarray:
    """V(S) = E[phi(BN(h)) phi(BN(h))^T], h ~ N(0, S), for phi = abrelu(a, b)."""
    return moments(cov, a, b, eps).v


def moments_mc(cov, phi, dphi, eps: float = 0.0, theta=None, samples: int = MC_SAMPLES,
               seed: int = 0) -> Moments:
    """V and M for any phi by Monte Carlo over the direction of the centred pre-activations
    (the radius integrated exactly), phi and dphi NumPy functions of an array; the errors are
    the largest standard error of an entry. Seeded: the same numbers on every call.

    u = G h = R C^(1/2) w, w uniform on the unit sphere of the r-dimensional range of C and
    R^2 ~ chi^2_r independent of it. With eps = 0, z = sqrt(B) u / |u| depends on w alone and
    the Jacobian's 1 / sigma^2 = B / (R^2 |L w|^2) has E[1 / R^2] = 1 / (r - 2): plain Monte
    Carlo over h would carry E[1 / |u|^4] (infinite for r <= 4) into its variance, this
    estimator has a finite one. With eps > 0 the radius is integrated by Gauss-Legendre
    quadrature of the chi_r density on [0, sqrt(r) + 12] (RADIAL nodes)."""
    s = _check_cov(cov)
    eps = float(eps)
    n = s.shape[0]
    lam, u, rank = _centred(s, eps)
    if theta is not None and eps == 0 and rank <= 2:
        next(_node_terms(s, 1.0, 1.0, eps, True), None)  # the quadrature's TPError
    if rank == 0:
        zero = np.zeros((n, n))
        out = np.full((n, n), float(phi(np.zeros(1))[0]) ** 2)
        return Moments(out, None if theta is None else zero)
    keep = lam > 0
    # u = C^(1/2) (R w), w uniform on the unit sphere of C's range: drawn as the normalised
    # projection of a standard Gaussian of R^B, so that the seeded samples move continuously
    # with S (an eigenbasis would jump where eigenvalues are equal, as at BSB1 batches)
    root = (u[:, keep] * np.sqrt(lam[keep])) @ u[:, keep].T
    proj = u[:, keep] @ u[:, keep].T
    g = np.eye(n) - 1.0 / n
    amat = None if theta is None else g @ _check_cov(theta) @ g
    if eps == 0:
        radii, rweights = np.array([1.0]), np.array([1.0])
    else:  # R has the chi_r density R^(r-1) exp(-R^2 / 2) / (2^(r/2-1) Gamma(r/2))
        top = math.sqrt(rank) + 12.0  # the mass beyond is < exp(-72)
        x, wts = np.polynomial.legendre.leggauss(RADIAL)
        radii = top * (x + 1.0) / 2.0
        logd = ((rank - 1) * np.log(radii) - radii * radii / 2.0
                - (rank / 2.0 - 1.0) * math.log(2.0) - math.lgamma(rank / 2.0))
        rweights = wts * top / 2.0 * np.exp(logd)
    rng = np.random.default_rng(seed)
    acc = {"v": [np.zeros((n, n)), np.zeros((n, n))], "m": [np.zeros((n, n)), np.zeros((n, n))]}
    done = 0
    chunk = max(64, min(4096, (1 << 21) // max(n * n * len(radii), 1)))
    while done < samples:
        w = rng.standard_normal((max(1, min(chunk, samples - done) // 2), n)) @ proj
        w /= np.linalg.norm(w, axis=1, keepdims=True)
        ud = np.concatenate([w, -w]) @ root  # antithetic directions
        norm2 = (ud * ud).sum(axis=1)
        v_s = np.zeros((len(ud), n, n))
        m_s = None if amat is None else np.zeros((len(ud), n, n))
        for rad, rw in zip(radii, rweights):
            if eps == 0:
                sig2 = norm2 / n  # times R^2, whose 1 / R^2 has mean 1 / (r - 2)
                z = ud / np.sqrt(sig2)[:, None]
            else:
                sig2 = rad * rad * norm2 / n + eps
                z = rad * ud / np.sqrt(sig2)[:, None]
            x = phi(z)
            v_s += rw * x[:, :, None] * x[:, None, :]
            if m_s is None:
                continue
            # J Theta J^T = diag(f') P A P diag(f') / sigma^2, P = I - u u^T / (B sigma^2)
            y = z / math.sqrt(n)
            pa = amat[None] - y[:, :, None] * (y @ amat)[:, None, :]
            pap = pa - (pa @ y[:, :, None]) * y[:, None, :]
            fp = dphi(z)
            scale = (1.0 / (rank - 2.0) if eps == 0 else 1.0) / sig2
            m_s += rw * fp[:, :, None] * pap * fp[:, None, :] * scale[:, None, None]
        half = len(ud) // 2
        for key, arr in (("v", v_s), ("m", m_s)):
            if arr is None:
                continue
            pair = (arr[:half] + arr[half:]) / 2
            acc[key][0] += pair.sum(axis=0)
            acc[key][1] += (pair * pair).sum(axis=0)
        done += 2 * half
    count = done // 2

    def mean_err(key):
        mean = acc[key][0] / count
        var = np.clip(acc[key][1] / count - mean * mean, 0.0, None)
        return _sym(mean), float(np.sqrt(var / count).max())

    v, v_err = mean_err("v")
    if amat is None:
        return Moments(v, None, v_err)
    m, m_err = mean_err("m")
    return Moments(v, m, v_err, m_err)
