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


def settle(k: np.ndarray, diag, same: list, rows: list, cols: list) -> None:
    """A point given twice is one point, in place: pairs of identical points (`same`, from
    coincident) take the diagonal's value, which the per-point code computes by the integrals
    of one point (a pair's integrals of twice the dimension, or a series cut short, may differ
    from it in the last digits or more); rows of repeated points (repeated(X1)) and columns
    (repeated(X2)) are their first occurrence's, to the last digit, whatever the rounding of
    their pairs' integrals (their Cholesky order follows the pair's order; with nearly
    degenerate covariances that moved them by ~1e-12, and two rows that differ by that made a
    kernel with a repeated point indefinite by about as much)."""
    for i, j in same:
        k[i, j] = diag[i]
    for first, j in rows:
        k[j, :] = k[first, :]
    for first, j in cols:
        k[:, j] = k[:, first]


def repeats(a1: dict, a2: dict | None, kp_inputs) -> tuple[list, list]:
    """(rows, cols) for settle: the repeated points of the first data set and of the second
    (the first again when there is no second)."""
    rows = repeated(a1, kp_inputs)
    return rows, (rows if a2 is None or a2 is a1 else repeated(a2, kp_inputs))
