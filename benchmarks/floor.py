"""The machine's floor for a kernel of `layers` nonlinearities per pair: the time of one acos and
one sqrt per layer per pair, for the n (n + 1) / 2 pairs of the upper triangle (diagonal
included; NNGP and NTK share them), in a tight Numba loop on all threads.

The layers of one pair form a dependent chain, as in any kernel recursion (layer l + 1 needs
layer l): c <- (sqrt(1 - c^2) + (pi - acos(c)) c) / pi, the normalised arc-cosine map of a relu
layer (it keeps c in [0, 1]). Different pairs are independent, so the CPU may overlap them.
Rows r and n - 1 - r go together (as in tpcompiler's `square` driver) so that every row index
has the same n + 1 pairs; the row indices are split in blocks over a thread pool, as tpcompiler
does (its drivers release the GIL; `numba.prange` would cost a parallel compile of ~4 s).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import time

import numba
import numpy as np
from numba import njit


@njit(nogil=True, cache=True, error_model="numpy")
def _chain(n, layers, out, lo, hi):  # pragma: no cover - compiled
    for r in range(lo, hi):
        acc = 0.0
        for side in range(2):
            i = r if side == 0 else n - 1 - r
            if side == 1 and i == r:
                continue
            for j in range(i, n):
                # a pair-dependent start in [0.05, 0.95] (no memory traffic)
                c = 0.05 + 0.9 * ((i * 7919 + j * 104729) % 1009) / 1009.0
                for _ in range(layers):
                    c = (math.sqrt(1.0 - c * c) + (math.pi - math.acos(c)) * c) / math.pi
                acc += c
        out[r] = acc


@njit(nogil=True, cache=True, error_model="numpy")
def _independent(n, layers, out, lo, hi):  # pragma: no cover - compiled
    """The same count of acos + sqrt, but every evaluation independent (throughput bound)."""
    for r in range(lo, hi):
        acc = 0.0
        for side in range(2):
            i = r if side == 0 else n - 1 - r
            if side == 1 and i == r:
                continue
            for j in range(i, n):
                c0 = 0.05 + 0.9 * ((i * 7919 + j * 104729) % 1009) / 1009.0
                for t in range(layers):
                    c = c0 * (1.0 - 0.01 * t)
                    acc += math.sqrt(1.0 - c * c) + math.acos(c)
        out[r] = acc


def threads() -> int:
    """The thread count tpcompiler uses (TPC_NUM_THREADS, else NUMBA_NUM_THREADS)."""
    return max(1, int(os.environ.get("TPC_NUM_THREADS", 0) or 0)
               or numba.config.NUMBA_NUM_THREADS)


def floor_time(n: int, layers: int, independent: bool = True, nthreads: int | None = None):
    """Seconds for n (n + 1) / 2 * layers (acos + sqrt) on `nthreads` (default: tpcompiler's
    count) threads; independent=False: chained per pair."""
    nthreads = nthreads or threads()
    half = (n + 1) // 2
    out = np.empty(half)
    fn = _independent if independent else _chain
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
    """Compile (or load from cache) both loops."""
    out = np.empty(2)
    _chain(3, 2, out, 0, 2)
    _independent(3, 2, out, 0, 2)
