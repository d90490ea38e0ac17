"""Predictions of infinitely wide networks from their kernels (neural-tangents' conventions).

gp_posterior   the NNGP posterior: an infinitely wide Bayesian network given (x, y) with
               Gaussian noise diag_reg (Neal 1996; Lee et al. 2018).
ntk_flow       the outputs of an infinite ensemble of infinitely wide networks trained by
               gradient flow on the MSE loss 0.5 * |f - y|^2 / y.size for time t with learning
               rate lr: a Gaussian whose mean and covariance are closed forms in the NTK (the
               dynamics) and the NNGP (the initial outputs) (Jacot et al. 2018; Lee et al. 2019,
               eqs. 15-16). kind="nngp" trains with the NNGP in place of the NTK (only the
               readout layer trained), as neural-tangents' get="nngp".

Kernels given as dask arrays (too large for one process: dask_kernels.py) take solve.py's
preconditioned conjugate gradients for the mean at the end of training instead.

Both go through the eigendecomposition of the regularised train kernel K + diag_reg I
(relative: diag_reg * mean(diag K), neural-tangents' default). The mode weights
(1 - exp(-lam tau)) / lam tend to tau at lam = 0 and to 1 / lam at tau = inf; eigenvalues below
the round-off floor (N * eps * max lam) count as zero, and their modes are never learned (their
weight at tau = inf is 0: a PSD kernel's test rows are orthogonal to the train kernel's null
space, so this is the limit of gradient flow, not a regulariser). So singular or tiny
eigenvalues give finite answers where a division by them would give inf or NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import TPError


@dataclass(frozen=True)
class Gaussian:
    """A prediction: the mean (M,) or (M, k) per output, and the covariance (M, M) shared by
    the outputs (or only its diagonal, `variance`), None where not asked for."""

    mean: np.ndarray
    covariance: np.ndarray | None = None
    variance: np.ndarray | None = None
    #: dask kernels: the conjugate-gradient solve behind the mean (iterations, residual)
    solution: object | None = None


def _matrix(k, name: str, shape: tuple | None = None) -> np.ndarray:
    a = np.asarray(k, dtype=np.float64)
    if a.ndim != 2 or (shape is not None and a.shape != shape):
        want = f"{shape[0]} x {shape[1]}" if shape else "a matrix"
        raise TPError(f"{name} has shape {a.shape}; expected {want}")
    if not np.isfinite(a).all():
        raise TPError(f"{name} has NaN or inf entries")
    return a


def check_targets(y, n: int) -> np.ndarray:
    """y as float64 (n,) or (n, k), or a TPError."""
    a = np.asarray(y, dtype=np.float64)
    if a.ndim not in (1, 2) or a.shape[0] != n:
        raise TPError(f"labels have shape {a.shape}; expected ({n},) or ({n}, k), one row per "
                      "training point")
    if not np.isfinite(a).all():
        raise TPError("labels have NaN or inf entries")
    return a


def check_reg(diag_reg: float) -> float:
    """diag_reg as a float, or a TPError."""
    if not (diag_reg >= 0 and math.isfinite(diag_reg)):
        raise TPError(f"diag_reg must be a finite number >= 0, got {diag_reg}")
    return float(diag_reg)


def _eigen(k_train: np.ndarray, diag_reg: float, absolute: bool):
    diag_reg = check_reg(diag_reg)
    n = len(k_train)
    reg = diag_reg if absolute else diag_reg * float(np.trace(k_train)) / n
    lam, vec = np.linalg.eigh(0.5 * (k_train + k_train.T) + reg * np.eye(n))
    floor = n * np.finfo(np.float64).eps * max(float(np.abs(lam).max()), 0.0)
    # negative round-off and the null space are one set: modes gradient flow never moves
    lam = np.where(lam > floor, lam, 0.0)
    return lam, vec


def _weights(lam: np.ndarray, tau: float) -> np.ndarray:
    """(1 - exp(-lam tau)) / lam per mode: 1 / lam at tau = inf (0 on the null space), tau at
    lam = 0 (finite tau)."""
    pos = lam > 0
    safe = np.where(pos, lam, 1.0)
    if math.isinf(tau):
        return np.where(pos, 1.0 / safe, 0.0)
    return np.where(pos, -np.expm1(-safe * tau) / safe, tau)


def gp_posterior(k_train, k_test_train, y, k_test=None, *, diag_reg: float = 0.0,
                 absolute: bool = False) -> Gaussian:
    """The NNGP posterior on the test points.

    k_train (N, N), k_test_train (M, N), y (N,) or (N, k); k_test None (mean only), the (M,)
    diagonal (variance) or the (M, M) test kernel (covariance). diag_reg: the noise variance,
    relative to the mean diagonal of k_train unless absolute=True (neural-tangents'
    diag_reg_absolute_scale)."""
    return _predict(k_train, k_test_train, y, k_test, None, None, math.inf, diag_reg, absolute,
                    nngp=True)


def ntk_flow(ntk_train, ntk_test_train, y, nngp_train=None, nngp_test_train=None,
             nngp_test=None, *, t: float | None = None, learning_rate: float = 1.0,
             diag_reg: float = 0.0, absolute: bool = False) -> Gaussian:
    """Outputs after gradient flow for time t (None or inf: the end of training) on
    0.5 |f - y|^2 / y.size, neural-tangents' `gradient_descent_mse_ensemble(get="ntk")`.

    The mean needs the NTK only; the covariance also the NNGP: nngp_train (N, N),
    nngp_test_train (M, N) and nngp_test, the (M,) diagonal (variance) or (M, M)."""
    tau = check_time(t, learning_rate)
    if nngp_test is not None and (nngp_train is None or nngp_test_train is None):
        raise TPError("the covariance needs nngp_train and nngp_test_train as well as "
                      "nngp_test")
    return _predict(ntk_train, ntk_test_train, y, nngp_test, nngp_train, nngp_test_train,
                    tau, diag_reg, absolute, nngp=False)


def nngp_flow(nngp_train, nngp_test_train, y, nngp_test=None, *, t: float | None = None,
              learning_rate: float = 1.0, diag_reg: float = 0.0,
              absolute: bool = False) -> Gaussian:
    """Gradient flow with the NNGP as the tangent kernel (only the readout trained):
    neural-tangents' `gradient_descent_mse_ensemble(get="nngp")`. At t = inf this is
    gp_posterior."""
    return _predict(nngp_train, nngp_test_train, y, nngp_test, None, None,
                    check_time(t, learning_rate), diag_reg, absolute, nngp=True)


def check_time(t, learning_rate) -> float:
    """t x learning_rate (inf for t=None), or a TPError."""
    tau = math.inf if t is None else float(t)
    if not tau >= 0 or not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise TPError(f"t must be >= 0 (or None for the end of training) and the learning rate "
                      f"a finite number > 0; got t={t}, learning_rate={learning_rate}")
    return tau * learning_rate


def _predict(k_train, k_test_train, y, k_test, nngp_train, nngp_test_train, time: float,
             diag_reg: float, absolute: bool, nngp: bool) -> Gaussian:
    """time: t x learning rate (inf: the end of training, or the posterior); the loss
    0.5 |f - y|^2 / y.size makes the flow's time time / y.size."""
    from . import solve

    if solve.is_lazy(k_train) or solve.is_lazy(k_test_train):
        # kernels that are not held in memory (dask arrays): the mean at the end of training
        # by conjugate gradients, the test blocks streamed (solve.py)
        if k_test is not None or not math.isinf(time):
            raise TPError("with dask kernels only the mean at the end of training (t = inf) "
                          "is computed (by conjugate gradients)",
                          hint="pass no test kernel and t=None")
        mean, sol = solve.kernel_regression(k_train, k_test_train, y,
                                            diag_reg=check_reg(diag_reg), absolute=absolute)
        return Gaussian(mean, solution=sol)
    kd = _matrix(k_train, "the train kernel")
    n = len(kd)
    if kd.shape != (n, n):
        raise TPError(f"the train kernel has shape {kd.shape}; expected a square matrix")
    ktd = _matrix(k_test_train, "the test-train kernel")
    if ktd.shape[1] != n:
        raise TPError(f"the test-train kernel has shape {ktd.shape}; expected (M, {n})")
    m = len(ktd)
    yy = check_targets(y, n)
    tau = time / yy.size
    lam, vec = _eigen(kd, diag_reg, absolute)
    kv = ktd @ vec  # the test-train kernel in the train kernel's eigenbasis
    # K_td V diag(w) V^T: the linear map from train targets to test means
    a = kv * _weights(lam, tau)
    mean = a @ (vec.T @ yy)
    if k_test is None:
        return Gaussian(mean)
    kt = np.asarray(k_test, dtype=np.float64)
    if kt.shape not in ((m,), (m, m)) or not np.isfinite(kt).all():
        raise TPError(f"the test kernel has shape {kt.shape}; expected ({m},) for the variance "
                      f"or ({m}, {m}) for the covariance, finite")
    if nngp:
        # K** - K*d V diag((1 - exp(-2 lam tau)) / lam) V^T Kd*
        b = kv * _weights(lam, 2 * tau)
        red = b @ kv.T if kt.ndim == 2 else np.einsum("ij,ij->i", b, kv)
    else:
        nd = _matrix(nngp_train, "the NNGP train kernel", (n, n))
        ntd = _matrix(nngp_test_train, "the NNGP test-train kernel", (m, n))
        # K** + T K_dd T^T - (T K_d* + K*d T^T), T = Theta*d Theta_dd^-1 (1 - exp(-Theta tau))
        tmat = a @ vec.T
        cross = tmat @ ntd.T if kt.ndim == 2 else np.einsum("ij,ij->i", tmat, ntd)
        quad = tmat @ nd @ tmat.T if kt.ndim == 2 else np.einsum("ij,ij->i", tmat @ nd, tmat)
        red = (cross + cross.T if kt.ndim == 2 else 2 * cross) - quad
    out = kt - red
    if kt.ndim == 2:
        return Gaussian(mean, covariance=0.5 * (out + out.T), variance=np.diagonal(out).copy())
    return Gaussian(mean, variance=out)
