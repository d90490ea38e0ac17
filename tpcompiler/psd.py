"""The nearest positive semi-definite kernel, for kernels the accuracy probe could not vouch for.

An exact NNGP or NTK of a set of points is PSD. A kernel computed by per-pair quadrature rules
that miss the tolerance (the probe warns) need not be: each entry carries its own rule error, and
a few of them in the wrong direction give a negative eigenvalue. The exact kernel K lies in the
PSD cone, which is convex, so the Frobenius projection P onto it is never farther from K than
the computed matrix A (||P - K||_F <= ||A - K||_F: a projection onto a closed convex set is
non-expansive and fixes K). Projecting therefore gives up nothing and restores what every use of
a kernel (Cholesky, GP posteriors) needs.

The projection clips the negative eigenvalues of the symmetric matrix (Higham 1988). Repeated
points are collapsed first and expanded after, so a repeated row stays exactly equal to the
diagonal, as the computed kernel had it.
"""

from __future__ import annotations

import numpy as np

#: left as computed when the smallest eigenvalue is above -FLOOR times the largest
FLOOR = 1e-13
#: distinct points above which the O(N^3) eigendecomposition is not attempted
MAX_POINTS = 6000


def distinct_rows(n: int, repeated: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the distinct points, and for each of the n points the position of its first
    occurrence among them), from backends/coincident.repeated's (first, j) pairs."""
    first_of = np.arange(n)
    for first, j in repeated:
        first_of[j] = first
    keep = np.flatnonzero(first_of == np.arange(n))
    position = np.empty(n, dtype=np.intp)
    position[keep] = np.arange(len(keep))
    return keep, position[first_of]


def nearest_psd(k: np.ndarray, first: np.ndarray, inverse: np.ndarray) -> tuple[np.ndarray, float]:
    """(the kernel, its smallest eigenvalue relative to its largest before): k itself when it is
    PSD to FLOOR, else its Frobenius projection onto the PSD cone with repeated points kept
    identical."""
    sub = k[np.ix_(first, first)]
    sub = 0.5 * (sub + sub.T)
    lam, vec = np.linalg.eigh(sub)
    top = max(lam[-1], 0.0)
    ratio = lam[0] / top if top > 0 else (0.0 if lam[0] >= 0 else -np.inf)
    if lam[0] >= -FLOOR * top:
        return k, ratio
    proj = (vec * np.maximum(lam, 0.0)) @ vec.T
    proj = 0.5 * (proj + proj.T)
    return proj[np.ix_(inverse, inverse)], ratio
