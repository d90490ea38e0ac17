"""The machine's floor for a kernel of `layers` nonlinearities per pair: the time of one acos and
one sqrt per layer per pair, for the n (n + 1) / 2 pairs of the upper triangle (diagonal
included; NNGP and NTK share them), in a tight Numba loop on all threads.

acos is tpcompiler's own branch-free one (acos(c) = atan2_pos(sqrt(1 - c^2), c),
tpcompiler/helpers.py: within 4.5e-16, no libm call), which LLVM vectorises over a contiguous
block of pairs: ~2 ns per acos + sqrt on this machine against ~6-8 ns with `math.acos` (a call
per evaluation), so the floor measured with `math.acos` before issue 15 overstated it.
`libm=True` measures that one for comparison.

The layers of one pair form a dependent chain, as in any kernel recursion (layer l + 1 needs
layer l): c <- (sqrt(1 - c^2) + (pi - acos(c)) c) / pi, the normalised arc-cosine map of a relu
layer (it keeps c in [0, 1]). Different pairs are independent: both loops run innermost over
the pairs of a row, held in an array (structure of arrays), so the SIMD width is used at every
layer. Rows r and n - 1 - r go together (as in tpcompiler's `square` driver) so that every row
index has the same n + 1 pairs; the row indices are split in blocks over a thread pool, as
tpcompiler does (its drivers release the GIL; `numba.prange` would cost a parallel compile of
~4 s).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import time
import types

import numba
import numpy as np
from numba import njit

from tpcompiler import helpers

# the helpers as the generated modules have them: atan2_pos bound to a jitted atan_unit
_atan_unit = njit(inline="always")(helpers.atan_unit)
_atan2_pos = njit(inline="always")(types.FunctionType(
    helpers.atan2_pos.__code__, {"math": math, "atan_unit": _atan_unit}, "atan2_pos"))


@njit(inline="always")
def _acos_libm(s, c):  # pragma: no cover - compiled
    return math.acos(c)


@njit(inline="always")
def _row(n, r, side):  # pragma: no cover - compiled
    """The first point of row r's side-th half (rows r and n - 1 - r go together); -1 where
    the second half is the first (the middle row of an odd n)."""
    i = r if side == 0 else n - 1 - r
    return -1 if side == 1 and i == r else i


@njit(inline="always")
def _start(i, j, t):  # pragma: no cover - compiled
    """A pair- and layer-dependent value in [0.05, 0.95] (no memory traffic)."""
    u = i * 0.6180339887 + j * 0.4142135623 + t * 0.01
    return 0.05 + 0.9 * (u - math.floor(u))


def _over_rows(per_row):
    """A driver over rows lo..hi of `per_row(n, i, layers, scratch)` (the sum over the pairs
    (i, i..n-1) of one half-row): rows r and n - 1 - r together, the sum per row in out[r]."""

    # reassoc: sums may be reordered, so LLVM vectorises the inlined per-row loops
    @njit(nogil=True, error_model="numpy", fastmath={"reassoc"})
    def run(n, layers, out, lo, hi):  # pragma: no cover - compiled
        scratch = np.empty(n)
        for r in range(lo, hi):
            acc = 0.0
            for side in range(2):
                i = _row(n, r, side)
                if i >= 0:
                    acc += per_row(n, i, layers, scratch)
            out[r] = acc

    return run


def _loops(acos):
    """The chained and the independent loop with this acos(sqrt(1 - c^2), c): closures over a
    jitted function, compiled per variant (not cached). Indices run from 0 (pair (i, i + k)):
    LLVM then vectorises."""

    @njit(inline="always", fastmath={"reassoc"})
    def chain(n, i, layers, c):  # pragma: no cover - compiled
        m = n - i
        for k in range(m):
            c[k] = _start(i, i + k, 0)
        for _ in range(layers):
            for k in range(m):
                ck = c[k]
                s = math.sqrt(1.0 - ck * ck)
                c[k] = (s + (math.pi - acos(s, ck)) * ck) * (1.0 / math.pi)
        acc = 0.0
        for k in range(m):
            acc += c[k]
        return acc

    @njit(inline="always", fastmath={"reassoc"})
    def independent(n, i, layers, c):  # pragma: no cover - compiled
        """The same count of acos + sqrt, every evaluation independent (throughput bound)."""
        acc = 0.0
        for t in range(layers):
            for k in range(n - i):
                v = _start(i, i + k, t)
                s = math.sqrt(1.0 - v * v)
                acc += s + acos(s, v)
        return acc

    return _over_rows(chain), _over_rows(independent)


_LOOPS = {False: _loops(_atan2_pos), True: _loops(_acos_libm)}


def threads() -> int:
    """The thread count tpcompiler uses (TPC_NUM_THREADS, else NUMBA_NUM_THREADS)."""
    return max(1, int(os.environ.get("TPC_NUM_THREADS", 0) or 0)
               or numba.config.NUMBA_NUM_THREADS)


def floor_time(n: int, layers: int, independent: bool = True, nthreads: int | None = None,
               libm: bool = False):
    """Seconds for n (n + 1) / 2 * layers (acos + sqrt) on `nthreads` (default: tpcompiler's
    count) threads; independent=False: chained per pair; libm=True: with `math.acos`."""
    nthreads = nthreads or threads()
    half = (n + 1) // 2
    out = np.empty(half)
    chain, indep = _LOOPS[libm]
    fn = indep if independent else chain
    nblocks = min(half, 4 * nthreads) if nthreads > 1 else 1
    step = -(-half // max(nblocks, 1))
    blocks = [(lo, min(half, lo + step)) for lo in range(0, half, step)]
    t = time.perf_counter()
    if len(blocks) == 1:
        fn(n, layers, out, 0, half)
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=nthreads) as pool:
            for f in [pool.submit(fn, n, layers, out, lo, hi) for lo, hi in blocks]:
                f.result()
    return time.perf_counter() - t


def warm() -> None:
    """Compile the loops."""
    out = np.empty(2)
    for chain, indep in _LOOPS.values():
        chain(3, 2, out, 0, 2)
        indep(3, 2, out, 0, 2)


# --- the stencil floor of a CNN kernel (issue 16) ---------------------------------------------
# One pair of images, `layers` layers of [3 x 3 SAME conv, relu] on a side x side grid, NNGP and
# NTK: per position pair and layer, the two 9-term conv sums (shifted reads of a zero-padded
# (side + 2)^4 array, the last axis contiguous, so LLVM vectorises them), the per-position
# normalisation and the relu arc-cosine closed form with tpcompiler's branch-free acos. Nothing
# else: no tables, no pooling, no per-point stage. What a pair costs at least on this machine.

@njit(nogil=True, error_model="numpy", fastmath=True)
def _stencil_pairs(side, layers, lo, hi, out):  # pragma: no cover - compiled
    m = side + 2
    plane = m * m
    first, last = m + 1, plane - m - 1  # the second position's range, padding excluded
    a = np.zeros((m, m, plane))  # [first position (padded), second position (padded plane)]
    t = np.zeros((m, m, plane))
    na = np.zeros((m, m, plane))
    nt = np.zeros((m, m, plane))
    q = np.empty(plane)
    r = np.empty(plane)
    scale = np.empty(plane)
    inside = np.zeros(plane)  # 1 inside the grid, 0 on the padding: keeps the zero padding
    for i2 in range(side):
        for j2 in range(side):
            inside[(i2 + 1) * m + j2 + 1] = 1.0
    for pair in range(lo, hi):
        for k in range(plane):
            scale[k] = 1.0 / (1.5 + 0.01 * ((pair + k) % 7))
        for i1 in range(1, side + 1):
            for j1 in range(1, side + 1):
                for k in range(plane):
                    a[i1, j1, k] = _start(pair, i1 * m + j1, k) * inside[k]
        for _ in range(layers):
            for i1 in range(1, side + 1):
                for j1 in range(1, side + 1):
                    q[:] = 0.0
                    r[:] = 0.0
                    for di in range(-1, 2):
                        for dj in range(-1, 2):
                            src_a = a[i1 + di, j1 + dj]
                            src_t = t[i1 + di, j1 + dj]
                            shift = di * m + dj
                            for k in range(first, last):
                                q[k] += src_a[k + shift]
                                r[k] += src_t[k + shift]
                    s1 = scale[i1 * m + j1]
                    dst_a = na[i1, j1]
                    dst_t = nt[i1, j1]
                    for k in range(first, last):
                        qk = 2.0 * q[k] * (1.0 / 9.0) + 0.1
                        rk = 2.0 * r[k] * (1.0 / 9.0) + qk
                        c = min(1.0, qk * s1 * scale[k])
                        sk = math.sqrt(1.0 - c * c)
                        theta = _atan2_pos(sk, c)
                        dst_a[k] = inside[k] * (sk + (math.pi - theta) * c) * (1.0 / math.pi)
                        dst_t[k] = inside[k] * rk * (math.pi - theta) * (1.0 / math.pi)
            a, na = na, a
            t, nt = nt, t
        out[pair - lo] = a[1, 1, first] + t[side, side, last - 1]


def stencil_floor_time(n: int, side: int = 8, layers: int = 5,
                       nthreads: int | None = None) -> float:
    """Seconds for the n (n + 1) / 2 pairs of the stencil floor above on `nthreads` threads."""
    nthreads = nthreads or threads()
    pairs = n * (n + 1) // 2
    out = np.empty(pairs)
    step = -(-pairs // (4 * nthreads))
    blocks = [(lo, min(pairs, lo + step)) for lo in range(0, pairs, step)]
    _stencil_pairs(side, layers, 0, 1, out)  # compile
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=nthreads) as pool:
        for f in [pool.submit(_stencil_pairs, side, layers, lo, hi, out[lo:hi])
                  for lo, hi in blocks]:
            f.result()
    return time.perf_counter() - t
