"""The per-point Gram entries every backend reads: one routine, so that a pair of identical
points gets bit-identical values on both sides, whichever backend computes them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def vec(arrays: dict, ref) -> np.ndarray:
    a = arrays[ref.input]
    return a if ref.index is None else a[:, ref.index, :]


def self_gram(arrays: dict, ga, gb) -> np.ndarray:
    """<x_a, x_b>/d at each point: the one routine for the per-point Gram entries, so that a
    pair of identical points gets bit-identical values on both sides."""
    a, b = vec(arrays, ga), vec(arrays, gb)
    return np.einsum("nd,nd->n", a, b) / a.shape[-1]


#: Gram entries are computed in TILE x TILE products at multiples of TILE of the points'
#: global indices: BLAS's result for one entry depends on the shape of the product it is part
#: of (measured: OpenBLAS, d >= 100), so a fixed tiling makes every entry the same bits
#: whatever block of the kernel asks for it (the in-memory call's row blocks, a Dask block)
TILE = 256


def cross_block(arrays1: dict, arrays2: dict, g, lo: int, hi: int, col0: int,
                exact: np.ndarray | None = None, same=(), anti=(),
                col_end: int | None = None, offsets: tuple[int, int] = (0, 0)) -> np.ndarray:
    """<x_a, x'_b>/d for the first points lo..hi and the second points col0..col_end (BLAS, in
    TILE x TILE products aligned at multiples of TILE of the global indices: position +
    `offsets`), with the pairs of identical (same) and antipodal (anti) points set from exact,
    the first points' self_gram: a product in another order would differ from the diagonal in
    the last digits."""
    a, b = vec(arrays1, g.a), vec(arrays2, g.b)
    end = b.shape[0] if col_end is None else col_end
    gram = np.empty((hi - lo, end - col0))
    r0, c0 = offsets
    rows = _tiles(lo, hi, r0)
    cols = _tiles(col0, end, c0)
    for rl, rh in rows:
        ta = a[rl:rh]
        for cl, ch in cols:
            gram[rl - lo:rh - lo, cl - col0:ch - col0] = ta @ b[cl:ch].T
    gram /= a.shape[-1]
    if exact is not None:
        for pairs, sign in ((same, 1.0), (anti, -1.0)):
            for i, j in pairs:
                if lo <= i < hi and col0 <= j < end:
                    gram[i - lo, j - col0] = sign * exact[i]
    return gram


def _tiles(lo: int, hi: int, offset: int) -> list[tuple[int, int]]:
    """[lo, hi) cut at the positions whose global index (position + offset) is a multiple of
    TILE."""
    out = []
    start = lo
    while start < hi:
        stop = min(hi, (((start + offset) // TILE) + 1) * TILE - offset)
        out.append((start, stop))
        start = stop
    return out


def call_shape(arrays1: dict, arrays2: dict | None) -> tuple[bool, dict, int, int]:
    """(square, the second points' arrays, N1, N2) of a kernel call (arrays2 None: the
    points of arrays1 with themselves)."""
    sym = arrays2 is None
    a2 = arrays1 if sym else arrays2
    return sym, a2, len(next(iter(arrays1.values()))), len(next(iter(a2.values())))


@dataclass(frozen=True)
class InputShape:
    name: str
    length: int | None  # None for a vector input, T for a sequence


@dataclass(frozen=True)
class Ref:
    """The input vector (index None) or step `index` of a sequence input."""

    input: str
    index: int | None


@dataclass(frozen=True)
class GramPair:
    a: Ref  # at the first point
    b: Ref  # at the first point (diag) or the second point (cross)


@dataclass(frozen=True)
class GramLayout:
    """What running a generated module needs besides the module: the inputs and the Gram
    entries in the order of its arguments. Kept in the compile cache as JSON, so that a warm
    start needs no KernelProgram (and no sympy)."""

    inputs: tuple[InputShape, ...]
    diag_gram: tuple[GramPair, ...]
    cross_gram: tuple[GramPair, ...]

    @staticmethod
    def of(kp) -> GramLayout:
        """The layout of a KernelProgram."""
        def pair(g):
            return GramPair(Ref(g.a.input, g.a.index), Ref(g.b.input, g.b.index))
        return GramLayout(tuple(InputShape(i.name, i.length) for i in kp.inputs),
                          tuple(pair(g) for g in kp.diag_gram),
                          tuple(pair(g) for g in kp.cross_gram))

    def to_json(self) -> dict:
        def pair(g):
            return [[g.a.input, g.a.index], [g.b.input, g.b.index]]
        return {"inputs": [[i.name, i.length] for i in self.inputs],
                "diag_gram": [pair(g) for g in self.diag_gram],
                "cross_gram": [pair(g) for g in self.cross_gram]}

    @staticmethod
    def from_json(data: dict) -> GramLayout:
        def pair(e):
            return GramPair(Ref(*e[0]), Ref(*e[1]))
        return GramLayout(tuple(InputShape(n, ln) for n, ln in data["inputs"]),
                          tuple(pair(e) for e in data["diag_gram"]),
                          tuple(pair(e) for e in data["cross_gram"]))
