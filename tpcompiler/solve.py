"""Kernel regression at scale: (K + reg I) alpha = y by preconditioned conjugate gradients,
for a train kernel that never sits in one process (a dask array: a lazy graph of blocks or a
Zarr store, dask_kernels.py), then the test means streamed block by block.

Each iteration is one product K @ P (all outputs at once: P is (N, k)), which Dask computes
block by block; nothing larger than (N, k) and the preconditioner's (N, m) is held. The
preconditioner is Nystrom's (Williams & Seeger 2001; as in Rudi et al.'s FALKON and in
EigenPro's spirit): m landmark points (a seeded random sample) give K ~ K_nm K_mm^+ K_mn, and
P = K_nm K_mm^+ K_mn + reg I is inverted by Woodbury:
    P^-1 v = (v - K_nm (reg K_mm + K_mn K_nm)^-1 K_mn v) / reg,
the m x m system by its eigendecomposition (small eigenvalues floored at the round-off of its
largest). The directions the landmarks capture (the kernel's top eigenvectors) converge in a
few iterations; the rest at the rate of the condition number of what is left, K's spectrum
below the landmarks' reach against reg.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import TPError


@dataclass(frozen=True)
class Solution:
    alpha: np.ndarray  # (N,) or (N, k)
    iterations: int
    residual: float  # max over outputs of |y - (K + reg I) alpha| / |y|
    history: tuple[float, ...]  # the residual after each iteration
    reg: float  # the absolute regulariser
    rank: int  # landmarks of the preconditioner (0: none)


def is_lazy(k) -> bool:
    """Whether k is a dask array (computed block by block)."""
    return type(k).__module__.startswith("dask.")


def _compute(x):
    return np.asarray(x.compute() if is_lazy(x) else x, dtype=np.float64)


def _diagonal_mean(k) -> float:
    if is_lazy(k):
        import dask.array as da

        return float(da.diagonal(k).mean().compute())
    return float(np.trace(k)) / k.shape[0]


class _Nystrom:
    def __init__(self, k, reg: float, rank: int, seed: int):
        n = k.shape[0]
        self.idx = np.sort(np.random.default_rng(seed).choice(n, size=rank, replace=False))
        self.knm = _compute(k[:, self.idx])  # one pass over the column blocks
        kmm = self.knm[self.idx]
        inner = reg * (kmm + kmm.T) / 2 + self.knm.T @ self.knm
        lam, vec = np.linalg.eigh((inner + inner.T) / 2)
        floor = rank * np.finfo(np.float64).eps * max(lam.max(), 0.0)
        self.inv = (vec / np.where(lam > floor, lam, np.inf)) @ vec.T
        self.reg = reg

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return (v - self.knm @ (self.inv @ (self.knm.T @ v))) / self.reg


def conjugate_gradients(k_train, y, *, diag_reg: float = 0.0, absolute: bool = False,
                        rtol: float = 1e-10, maxiter: int = 1000, rank: int = 500,
                        seed: int = 0, progress=None) -> Solution:
    """alpha = (K + reg I)^-1 y by preconditioned CG (module docstring); reg = diag_reg, or
    diag_reg times the mean diagonal of K unless absolute (neural-tangents' convention, as in
    predict.py). rank: Nystrom landmarks (0: plain CG; none when reg = 0). progress(i, res)
    after each iteration. Stops at residual <= rtol (relative), or raises a TPError after
    maxiter iterations that says how far it got."""
    n = k_train.shape[0]
    if len(k_train.shape) != 2 or k_train.shape[1] != n:
        raise TPError(f"the train kernel has shape {k_train.shape}; expected a square matrix")
    yy = np.asarray(y, dtype=np.float64)
    if yy.ndim not in (1, 2) or yy.shape[0] != n or not np.isfinite(yy).all():
        raise TPError(f"labels have shape {yy.shape}; expected ({n},) or ({n}, k), finite")
    if not (diag_reg >= 0 and math.isfinite(diag_reg)):
        raise TPError(f"diag_reg must be a finite number >= 0, got {diag_reg}")
    if not 0 < rtol < 1:
        raise TPError(f"rtol must be in (0, 1), got {rtol}")
    reg = float(diag_reg) if absolute else float(diag_reg) * _diagonal_mean(k_train)
    b = yy.reshape(n, -1)
    norms = np.linalg.norm(b, axis=0)
    norms = np.where(norms > 0, norms, 1.0)
    m = min(int(rank), n) if reg > 0 else 0
    precond = _Nystrom(k_train, reg, m, seed) if m > 0 else None

    def apply(p):
        return _compute(k_train @ p) + reg * p

    x = np.zeros_like(b)
    r = b.copy()
    z = precond(r) if precond else r
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    history = []
    res = float((np.linalg.norm(r, axis=0) / norms).max())
    it = 0
    while res > rtol and it < maxiter:
        ap = apply(p)
        pap = np.einsum("ij,ij->j", p, ap)
        step = np.where(pap > 0, rz / np.where(pap > 0, pap, 1.0), 0.0)
        x += p * step
        r -= ap * step
        res = float((np.linalg.norm(r, axis=0) / norms).max())
        it += 1
        history.append(res)
        if progress:
            progress(it, res)
        if res <= rtol:
            break
        z = precond(r) if precond else r
        rz_new = np.einsum("ij,ij->j", r, z)
        beta = np.where(rz > 0, rz_new / np.where(rz > 0, rz, 1.0), 0.0)
        p = z + p * beta
        rz = rz_new
    if res > rtol:
        raise TPError(f"conjugate gradients stopped after {it} iterations at a relative "
                      f"residual of {res:.2e} (wanted {rtol:g})",
                      hint="raise maxiter, the preconditioner's rank, or diag_reg")
    # the residual of the returned alpha, recomputed (not the recursion's running value)
    true = float((np.linalg.norm(b - apply(x), axis=0) / norms).max())
    alpha = x.reshape(yy.shape)
    return Solution(alpha, it, true, tuple(history), reg, m)


def kernel_regression(k_train, k_test_train, y, **kw) -> tuple[np.ndarray, Solution]:
    """(test means K_td alpha, the solve), alpha from conjugate_gradients(k_train, y, **kw);
    the product streamed block by block for a dask k_test_train."""
    n = k_train.shape[0]
    if len(k_test_train.shape) != 2 or k_test_train.shape[1] != n:
        raise TPError(f"the test-train kernel has shape {k_test_train.shape}; expected "
                      f"(M, {n})")
    sol = conjugate_gradients(k_train, y, **kw)
    mean = _compute(k_test_train @ sol.alpha)
    return mean, sol
