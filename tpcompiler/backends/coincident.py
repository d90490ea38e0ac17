"""Points given more than once, or as each other's negatives: every backend gives their pairs
exact values (a pair of identical points is one point: the diagonal's value)."""

from __future__ import annotations

import numpy as np


def _points(arrays: dict, kp_inputs) -> list[bytes]:
    """One byte key per point (all its inputs), -0.0 folded into 0.0."""
    flat = np.concatenate([arrays[i.name].reshape(len(arrays[i.name]), -1) + 0.0
                           for i in kp_inputs], axis=1)
    return [row.tobytes() for row in np.ascontiguousarray(flat)]


def coincident(a1: dict, a2: dict, kp_inputs) -> tuple[list, list]:
    """(i, j) pairs with x2_j == x1_i and with x2_j == -x1_i, exactly."""
    keys1 = _points(a1, kp_inputs)
    neg1 = _points({k: -v for k, v in a1.items()}, kp_inputs)
    where: dict[bytes, list[int]] = {}
    for j, key in enumerate(_points(a2, kp_inputs)):
        where.setdefault(key, []).append(j)
    same = [(i, j) for i, key in enumerate(keys1) for j in where.get(key, ())]
    anti = [(i, j) for i, key in enumerate(neg1) for j in where.get(key, ())]
    return same, anti


def repeated(arrays: dict, kp_inputs) -> list[tuple[int, int]]:
    """(first, j) for every point j that repeats an earlier point `first`, exactly."""
    seen: dict[bytes, int] = {}
    out = []
    for j, key in enumerate(_points(arrays, kp_inputs)):
        if key in seen:
            out.append((seen[key], j))
        else:
            seen[key] = j
    return out


def copy_repeats(k: np.ndarray, rows: list, cols: list) -> None:
    """Rows of repeated points (repeated(X1)) and columns (repeated(X2)) copied from their
    first occurrence, in place: a point given twice has the same row to the last digit,
    whatever the rounding of its pairs' integrals (their Cholesky order follows the pair's
    order; with nearly degenerate covariances that moves them by ~1e-12, and two rows that
    differ by that make a kernel with a repeated point indefinite by about as much)."""
    for first, j in rows:
        k[j, :] = k[first, :]
    for first, j in cols:
        k[:, j] = k[:, first]
