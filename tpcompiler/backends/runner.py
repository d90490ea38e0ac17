"""Running a generated kernel module on data: per-point tables, row blocks of pairs on a
thread pool (the generated drivers release the GIL), the mirrored triangle and the exact
values of repeated points. It needs only the module and its GramLayout, not the
KernelProgram, so a warm start (tpcompiler/warm.py) runs without sympy or the front end."""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np
from threadpoolctl import threadpool_limits

from .coincident import coincident as _coincident
from .coincident import repeats, settle
from .gram import TILE, call_shape, cross_block, self_gram


def threads() -> int:
    return max(1, int(os.environ.get("TPC_NUM_THREADS", 0)) or _numba_threads())


def pool_map(fn, blocks, progress, total):
    """fn(lo, hi) for every block on a thread pool (the drivers release the GIL)."""
    if len(blocks) == 1 or threads() == 1:
        done = 0
        for lo, hi in blocks:
            fn(lo, hi)
            done += hi - lo
            if progress:
                progress(done, total)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads()) as pool:
        futures = [pool.submit(fn, lo, hi) for lo, hi in blocks]
        done = 0
        for fut, (lo, hi) in zip(futures, blocks):
            fut.result()
            done += hi - lo
            if progress:
                progress(done, total)


def _row_blocks(n1: int, n2: int, sym: bool, n_gram: int, progress) -> list[tuple[int, int]]:
    """Row blocks of about equal work (the triangle's rows shrink), each small enough that its
    Gram blocks stay under ~32 MB, and enough of them to balance the threads."""
    per_row = max(1, n_gram) * n2 * 8
    max_rows = max(1, (32 << 20) // per_row)
    want = max(4 * threads(), 50 if progress else 1)
    if sym:
        work = np.arange(n1, 0, -1, dtype=np.float64)  # row i has n - i pairs
    else:
        work = np.ones(n1)
    cum = np.concatenate([[0.0], np.cumsum(work)])
    target = cum[-1] / want
    # boundaries at multiples of the Gram's TILE (gram.py: the entries' bits then do not
    # depend on the blocking), so a block has at least TILE rows
    step = TILE if n1 >= 2 * TILE else 1
    max_rows = max(step, max_rows // step * step)
    blocks, lo = [], 0
    while lo < n1:
        hi = int(np.searchsorted(cum, cum[lo] + target, side="left"))
        hi = min(max(hi, lo + 1), lo + max_rows, n1)
        hi = min(-(-hi // step) * step, n1)
        blocks.append((lo, hi))
        lo = hi
    return blocks


def param_array(values) -> np.ndarray:
    """The values of the program's params in the order generated code reads them (THETA[i])."""
    return np.ascontiguousarray(np.asarray(values if values is not None else (),
                                           dtype=np.float64).reshape(-1))


def run(module, kp_or_meta, arrays1: dict, arrays2: dict | None, progress=None,
        params=None) -> dict:
    """Evaluate every kind the module computes: kind -> (N1, N2) float64 array.

    kp_or_meta: the KernelProgram, or the cached metadata (inputs, diag_gram, cross_gram).
    progress: callable(done, total) as row blocks finish (for a progress bar).
    params: the values of the program's params, in order (none: a program without params).
    """
    p = param_array(params)
    meta = kp_or_meta
    inputs, dgram, cgram = meta.inputs, meta.diag_gram, meta.cross_gram
    kinds = module.KINDS
    sym, a2, n1, n2 = call_shape(arrays1, arrays2)

    d1, o1 = _per_point(module, dgram, arrays1, p)
    d2, o2 = (d1, o1) if sym else _per_point(module, dgram, a2, p)
    d2t = np.ascontiguousarray(d2[:, :module.N_SCALARS].T)
    ks = [np.empty((n1, n2)) for _ in kinds]
    same, anti = _coincident(arrays1, a2, inputs)
    exact = [self_gram(arrays1, g.a, g.b) if (same or anti) else None for g in cgram]

    def block(lo, hi):
        col0 = lo if sym else 0
        grams = [np.ascontiguousarray(cross_block(arrays1, a2, g, lo, hi, col0, ex, same, anti))
                 for g, ex in zip(cgram, exact)]
        module.rows(*grams, d1, d2t, d2, *ks, p, lo, hi, col0, sym)

    # each block's Gram entries on its own thread, BLAS single-threaded: BLAS threads that
    # spin-wait after a call take the cores from the other blocks' drivers (measured with
    # OpenBLAS: relu depth 10, N = 4000 on 2 cores, 375 ms against 240 ms)
    with threadpool_limits(limits=1, user_api="blas"):
        pool_map(block, _row_blocks(n1, n2, sym, len(cgram), progress), progress, n1)
    if sym:
        for k, o in zip(ks, o1.T):
            pool_map(lambda lo, hi, k=k: module.mirror(k, lo, hi),
                      _row_blocks(n1, n1, False, 1, None), None, n1)
            np.fill_diagonal(k, o)
    rows, cols = repeats(arrays1, None if sym else a2, inputs)
    for k, o in zip(ks, o1.T):  # a point given twice is one point (backends/coincident.py)
        settle(k, o, same, rows, cols)
    return dict(zip(kinds, ks))


def point_tables(module, kp_or_meta, arrays: dict, params=None):
    """The per-point stage of some points (a block row or column of a kernel computed by
    blocks): (values (N, N_DIAG), kernels at (x, x) (N, kinds))."""
    return _per_point(module, kp_or_meta.diag_gram, arrays, param_array(params))


def run_block(module, kp_or_meta, part1: dict, part2: dict | None, tables1, tables2,
              params=None, offsets: tuple[int, int] = (0, 0)) -> dict:
    """One block of a kernel computed by blocks: the points part1 against part2 (None: part1
    with itself, a diagonal block of a square kernel), with their per-point tables
    (point_tables); offsets: the global indices of their first points. The same bits as the
    block of run()'s whole kernel: the Gram entries come in the same TILE products
    (gram.py), which needs the offsets (and the ends, but for the data's last point) at
    multiples of TILE. A diagonal block is computed as run() computes a square."""
    p = param_array(params)
    meta = kp_or_meta
    sym = part2 is None
    a2 = part1 if sym else part2
    d1, o1 = tables1
    d2, _ = tables1 if sym else tables2
    d2t = np.ascontiguousarray(d2[:, :module.N_SCALARS].T)
    n1, n2 = len(next(iter(part1.values()))), len(next(iter(a2.values())))
    ks = [np.empty((n1, n2)) for _ in module.KINDS]
    same, anti = _coincident(part1, a2, meta.inputs)
    with threadpool_limits(limits=1, user_api="blas"):
        grams = [np.ascontiguousarray(cross_block(
            part1, a2, g, 0, n1, 0, self_gram(part1, g.a, g.b) if (same or anti) else None,
            same, anti, offsets=offsets)) for g in meta.cross_gram]
    module.rows(*grams, d1, d2t, d2, *ks, p, 0, n1, 0, sym)
    if sym:
        for k, o in zip(ks, o1.T):
            module.mirror(k, 0, n1)
            np.fill_diagonal(k, o)
    rows, cols = repeats(part1, None if sym else part2, meta.inputs)
    for k, o in zip(ks, o1.T):
        settle(k, o, same, rows, cols)
    return dict(zip(module.KINDS, ks))


def diagonal(module, kp_or_meta, arrays: dict, params=None) -> dict:
    """K(x, x) for every point of `arrays` and every kind the module computes: kind -> (N,),
    from the per-point stage alone (no pair is computed)."""
    _, out = _per_point(module, kp_or_meta.diag_gram, arrays, param_array(params))
    return {kind: out[:, i].copy() for i, kind in enumerate(module.KINDS)}


def _per_point(module, dgram, arrays: dict, p: np.ndarray):
    """The per-point stage: (values (N, N_DIAG), kernels at (x, x) (N, kinds))."""
    n = len(next(iter(arrays.values())))
    gd = [np.ascontiguousarray(self_gram(arrays, g.a, g.b)) for g in dgram]
    d = np.empty((n, module.N_DIAG))
    out = np.empty((n, len(module.KINDS)))
    pool_map(lambda lo, hi: module.diag(*gd, p, d, out, lo, hi),
              [(0, n)] if n < 32 else _row_blocks(n, 1, False, 1, None), None, n)
    return d, out


def _numba_threads() -> int:
    from numba import config  # imported with the generated module anyway

    return config.NUMBA_NUM_THREADS
