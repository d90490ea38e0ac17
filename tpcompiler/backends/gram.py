"""The per-point Gram entries every backend reads: one routine, so that a pair of identical
points gets bit-identical values on both sides, whichever backend computes them."""

from __future__ import annotations

import numpy as np


def vec(arrays: dict, ref) -> np.ndarray:
    a = arrays[ref.input]
    return a if ref.index is None else a[:, ref.index, :]


def self_gram(arrays: dict, ga, gb) -> np.ndarray:
    """<x_a, x_b>/d at each point: the one routine for the per-point Gram entries, so that a
    pair of identical points gets bit-identical values on both sides."""
    a, b = vec(arrays, ga), vec(arrays, gb)
    return np.einsum("nd,nd->n", a, b) / a.shape[-1]


def call_shape(arrays1: dict, arrays2: dict | None) -> tuple[bool, dict, int, int]:
    """(square, the second points' arrays, N1, N2) of a kernel call (arrays2 None: the
    points of arrays1 with themselves)."""
    sym = arrays2 is None
    a2 = arrays1 if sym else arrays2
    return sym, a2, len(next(iter(arrays1.values()))), len(next(iter(a2.values())))
