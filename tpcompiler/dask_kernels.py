"""Kernels by blocks on Dask: lazy dask arrays, and Zarr stores written by a cluster that
survive interruptions and lost workers (the `[dask]` extra: dask[array], distributed, zarr).

A kernel of N1 x N2 points is cut into chunk x chunk blocks. Each block is one call of the
compiled module (backends/runner.run_block: the Numba drivers release the GIL) on the per-point
tables of its row chunk and its column chunk, which are computed once per chunk and shared by
the blocks that read them. A square kernel (X2 None) computes the blocks on and above the
diagonal and mirrors the others (their transposes). Chunks are multiples of the Gram's TILE
(backends/gram.py), so every block has the same bits as the in-memory kernel's.

The store (`write_store`, `tpc kernel --out K.zarr`): one Zarr array per kind, chunked as the
blocks, and a marker per finished block: its chunk of the array `blocks_sha256` (uint8,
(block rows, block columns, kinds, 32), one chunk per block) holds the SHA-256 of the block of
each kind, written after its chunks (all zeros: not done). A rerun skips the blocks whose
chunks still hash to their marker (and whose mirrored chunks are still their transposes) and
computes the others, so an interrupted run or a lost worker costs
time, never data. The store's attributes hold a fingerprint of the program, the data, the
params, the kinds and the chunking: a store written for anything else is refused, never mixed.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .backends import runner
from .backends.gram import TILE
from .data import prepare_pair
from .errors import TPError

CHUNKS = 4096
MARKERS = "blocks_sha256"
KINDS = ("nngp", "ntk")


def require() -> None:
    """dask, distributed and zarr, or a TPError that says how to install them."""
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401
        import zarr  # noqa: F401
    except ImportError as e:
        raise TPError(f"kernels on Dask need the [dask] extra ({e.name} is missing)",
                      hint='pip install "tpcompiler[dask]"') from None


@dataclass(frozen=True)
class Blocks:
    """The block grid of an n1 x n2 kernel: rows and columns cut every `chunk` points."""

    n1: int
    n2: int
    chunk: int
    square: bool

    @staticmethod
    def cut(n: int, chunk: int) -> list[tuple[int, int]]:
        return [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]

    @property
    def rows(self) -> list[tuple[int, int]]:
        return self.cut(self.n1, self.chunk)

    @property
    def cols(self) -> list[tuple[int, int]]:
        return self.cut(self.n2, self.chunk)

    def computed(self) -> list[tuple[int, int]]:
        """(i, j) of the blocks that are computed: on and above the diagonal when square."""
        return [(i, j) for i in range(len(self.rows)) for j in range(len(self.cols))
                if not self.square or j >= i]


def chunk_size(chunks) -> int:
    """`chunks` rounded up to a multiple of TILE (the bit-exact block boundaries)."""
    if isinstance(chunks, bool) or not isinstance(chunks, (int, np.integer)) or chunks < 1:
        raise TPError(f"chunks={chunks!r} is not a positive integer", hint="e.g. chunks=4096")
    return int(-(-int(chunks) // TILE) * TILE)


# --- the work of one task (runs on a worker) -------------------------------------------------

_NETS: dict = {}


def _spec(net) -> tuple:
    """What a worker needs to rebuild the network: its source text, path and tolerance (the
    compiled module then comes from the compile cache, or is compiled once per worker)."""
    if net._source is None:
        raise TPError("kernels on Dask need a network compiled from .tp text (compile() or "
                      "compile_source()), which the workers rebuild")
    if net.ir.batched:
        raise TPError("a network with batchnorm has kernels within one batch: they are not "
                      "computed by blocks", hint="net.kernels(X) computes the batch's kernels")
    if net.ir.gridded:
        raise TPError("kernels on Dask are implemented for programs without positions (conv, "
                      "pooling) so far", hint="net.kernels(X) computes them in memory")
    return (*net._source, net.tol)


def _network(spec):
    net = _NETS.get(spec)
    if net is None:
        from .api import compile_source

        net = _NETS[spec] = compile_source(spec[0], spec[1], spec[2])
        net._module  # noqa: B018 - load (or compile) the module once per worker
    return net


def _aligned(part: dict | None) -> dict | None:
    """The arrays copied where their buffer is not 8-byte aligned: data that arrive pickled
    (protocol 5) may not be, and OpenBLAS takes another path then, with other last bits."""
    if part is None:
        return None
    return {k: v if v.ctypes.data % 8 == 0 and v.flags.c_contiguous else np.array(v)
            for k, v in part.items()}


def point_tables(spec, part: dict, params: np.ndarray):
    net = _network(spec)
    return runner.point_tables(net._module, net._meta, _aligned(part), params)


def block(spec, part1: dict, part2: dict | None, offsets: tuple[int, int], t1, t2,
          params: np.ndarray, get: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One block: kind -> (rows, cols) array (part2 None: a diagonal block of a square
    kernel)."""
    net = _network(spec)
    res = runner.run_block(net._module, net._meta, _aligned(part1), _aligned(part2), t1, t2,
                           params, offsets)
    return {k: res[k] for k in get}


# --- lazy arrays -----------------------------------------------------------------------------

def _part(data: dict, cut: tuple[int, int]) -> dict:
    return {k: np.ascontiguousarray(v[cut[0]:cut[1]]) for k, v in data.items()}


def _chunk(part: dict) -> dict:
    return part


def _parts(data: dict, cuts) -> list[dict]:
    return [_part(data, c) for c in cuts]


def _setup(net, x1, x2, get, chunks, params):
    require()
    spec = _spec(net)
    get = (get,) if isinstance(get, str) else tuple(get)
    bad = [k for k in get if k not in KINDS]
    if bad or not get:
        raise TPError(f"unknown kernel {bad[0] if bad else '(none)'}", hint="nngp or ntk")
    values = net._values(params)
    refused = [k for k in get if k in net.recursion.refused]
    if refused:
        raise TPError(f"the {refused[0].upper()} of this network is not available: "
                      f"{net.recursion.refused[refused[0]]}")
    a, b = prepare_pair(net.spec, x1, x2)
    n1 = len(next(iter(a.values())))
    n2 = n1 if b is None else len(next(iter(b.values())))
    grid = Blocks(n1, n2, chunk_size(chunks), b is None)
    return spec, get, values, a, b, grid


def kernel_arrays(net, x1, x2=None, get=KINDS, *, chunks: int = CHUNKS,
                  params: dict | None = None) -> dict:
    """kind -> lazy dask.array (N1, N2) of the kernels, chunked (chunks, chunks) (rounded up to
    a multiple of TILE). Computed by whichever scheduler computes them (a distributed Client
    when one is active)."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    spec, get, values, a, b, grid = _setup(net, x1, x2, get, chunks, params)
    p = net._param_array(values)
    token = hashlib.sha256(repr((spec[0], spec[2], _fingerprint(a, b, values, get,
                                                                 grid.chunk))).encode())
    tag = token.hexdigest()[:16]
    rows1 = _parts(a, grid.rows)
    rows2 = rows1 if b is None else _parts(b, grid.cols)
    dsk: dict = {}
    for i, part in enumerate(rows1):
        dsk[(f"tpc-x1-{tag}", i)] = part
        dsk[(f"tpc-t1-{tag}", i)] = (point_tables, spec, (f"tpc-x1-{tag}", i), p)
    if b is not None:
        for j, part in enumerate(rows2):
            dsk[(f"tpc-x2-{tag}", j)] = part
            dsk[(f"tpc-t2-{tag}", j)] = (point_tables, spec, (f"tpc-x2-{tag}", j), p)
    second = "x1" if b is None else "x2"
    tables2 = "t1" if b is None else "t2"
    for i, j in grid.computed():
        offsets = (grid.rows[i][0], grid.cols[j][0])
        part2 = None if (b is None and i == j) else (f"tpc-{second}-{tag}", j)
        dsk[(f"tpc-block-{tag}", i, j)] = (
            block, spec, (f"tpc-x1-{tag}", i), part2, offsets, (f"tpc-t1-{tag}", i),
            (f"tpc-{tables2}-{tag}", j), p, get)
    out = {}
    for kind in get:
        name = f"tpc-{kind}-{tag}"
        layer = {}
        for i in range(len(grid.rows)):
            for j in range(len(grid.cols)):
                if grid.square and j < i:
                    layer[(name, i, j)] = (np.transpose, (name, j, i))
                else:
                    layer[(name, i, j)] = (_pick, (f"tpc-block-{tag}", i, j), kind)
        graph = HighLevelGraph.from_collections(name, {**dsk, **layer}, dependencies=())
        chunks2 = (tuple(h - lo for lo, h in grid.rows), tuple(h - lo for lo, h in grid.cols))
        out[kind] = da.Array(graph, name, chunks2, dtype=np.float64)
    return out


def _pick(res: dict, kind: str) -> np.ndarray:
    return res[kind]


# --- the resumable store ---------------------------------------------------------------------

def _fingerprint(a: dict, b: dict | None, values: dict, get, chunk: int) -> str:
    h = hashlib.sha256()
    for data in (a, b or {}):
        for name in sorted(data):
            arr = np.ascontiguousarray(data[name])
            h.update(name.encode() + repr(arr.shape).encode() + arr.tobytes())
        h.update(b"|")
    h.update(repr(sorted((str(k), float(v)) for k, v in values.items())).encode())
    h.update(repr((tuple(get), chunk)).encode())
    return h.hexdigest()


def _digest(arr: np.ndarray) -> np.ndarray:
    """SHA-256 of the array's bytes (C order), as 32 uint8."""
    buf = np.ascontiguousarray(arr, dtype=np.float64)
    return np.frombuffer(hashlib.sha256(memoryview(buf).cast("B")).digest(), dtype=np.uint8)


def write_block(spec, path: str, part1, part2, offsets, t1, t2, params, get, ij,
                mirror: bool) -> float:
    """Compute one block, write its chunks (and, mirror: a square kernel's block above the
    diagonal, its transposed chunks below), then
    its marker: one SHA-256 per kind, of the block (the mirrored chunk is checked against the
    block's transpose). Returns the seconds it took."""
    import zarr

    start = time.perf_counter()
    res = block(spec, part1, part2, offsets, t1, t2, params, get)
    i, j = ij
    r0, c0 = offsets
    for kind, arr in res.items():
        z = zarr.open_array(f"{path}/{kind}", mode="r+")
        z[r0:r0 + arr.shape[0], c0:c0 + arr.shape[1]] = arr
        if mirror:
            z[c0:c0 + arr.shape[1], r0:r0 + arr.shape[0]] = arr.T
    marks = zarr.open_array(f"{path}/{MARKERS}", mode="r+")
    marks[i, j] = np.stack([_digest(res[kind]) for kind in get])
    return time.perf_counter() - start


def verify_block(path: str, grid: Blocks, ij, get) -> bool:
    """Whether block ij's marker is set, its chunks still hash to it and (a square kernel's
    block above the diagonal) its mirrored chunks are its transpose."""
    import zarr

    i, j = ij
    mark = zarr.open_array(f"{path}/{MARKERS}", mode="r")[i, j]
    if not mark.any():
        return False
    (r0, r1), (c0, c1) = grid.rows[i], grid.cols[j]
    for k, kind in enumerate(get):
        z = zarr.open_array(f"{path}/{kind}", mode="r")
        upper = z[r0:r1, c0:c1]
        if not np.array_equal(_digest(upper), mark[k]):
            return False
        if grid.square and i != j and not np.array_equal(z[c0:c1, r0:r1], upper.T):
            return False
    return True


def _done(path: Path, grid: Blocks) -> list:
    import zarr

    marks = zarr.open_array(str(path / MARKERS), mode="r")[:]
    return [ij for ij in grid.computed() if marks[ij[0], ij[1]].any()]


def _open_store(path: Path, fingerprint: str, grid: Blocks, get, meta: dict):
    import zarr

    if path.exists():
        try:
            group = zarr.open_group(str(path), mode="r+")
        except Exception:  # noqa: BLE001 - not a Zarr group at all
            raise TPError(f"{path} exists and is not a Zarr store written by tpcompiler",
                          hint="choose another --out, or remove it") from None
        attrs = dict(group.attrs).get("tpcompiler")
        if attrs is None:
            raise TPError(f"{path} is a Zarr store not written by tpcompiler",
                          hint="choose another --out, or remove it")
        if attrs.get("fingerprint") != fingerprint:
            changed = [k for k in ("program", "data", "params", "kinds", "chunks")
                       if attrs.get(k) != meta.get(k)] or ["the data"]
            raise TPError(f"{path} was written for another computation (its "
                          f"{', '.join(changed)} changed): its blocks cannot be reused",
                          hint="choose another --out, or start again (tpc kernel --force, or "
                               "remove the store)")
        return group, True
    group = zarr.open_group(str(path), mode="w")
    for kind in get:
        arr = group.create_array(kind, shape=(grid.n1, grid.n2), chunks=(grid.chunk,
                                 grid.chunk), dtype="float64", compressors=None,
                                 fill_value=np.nan)
        arr.attrs["square"] = grid.square
    group.create_array(MARKERS, shape=(len(grid.rows), len(grid.cols), len(get), 32),
                       chunks=(1, 1, len(get), 32), dtype="uint8", fill_value=0,
                       compressors=None)
    group.attrs["tpcompiler"] = {**meta, "fingerprint": fingerprint, "complete": False}
    return group, False


def write_store(net, x1, x2, path, get=KINDS, *, chunks: int = CHUNKS,
                params: dict | None = None, client=None, scheduler: str | None = None,
                workers: int | None = None, progress=None) -> dict:
    """Compute the kernels into the Zarr store `path` (created, or resumed when it holds this
    computation's blocks), on `client`, or a Client of `scheduler` (an address), or a
    LocalCluster of `workers` processes. Returns a report: blocks computed and reused,
    seconds, bytes. progress(done, total) as blocks finish."""
    spec, get, values, a, b, grid = _setup(net, x1, x2, get, chunks, params)
    path = Path(path)
    fingerprint = hashlib.sha256((net.ir.digest() + _fingerprint(a, b, values, get, grid.chunk))
                                 .encode()).hexdigest()
    meta = {"program": net.ir.digest(), "data": _fingerprint(a, b, {}, (), 0),
            "params": {q.name: float(values[q.symbol]) for q in net.ir.params},
            "kinds": list(get), "chunks": grid.chunk, "square": grid.square,
            "shape": [grid.n1, grid.n2], "version": __version__}
    group, resumed = _open_store(path, fingerprint, grid, get, meta)
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    own = client is None
    if client is None:
        if scheduler:
            client = Client(scheduler)
        else:
            cores = os.cpu_count() or 1
            n = workers or cores
            # the cores shared among the workers: each thread runs blocks (nogil)
            cluster = LocalCluster(n_workers=n, threads_per_worker=max(1, cores // n),
                                   processes=True, dashboard_address=None)
            client = Client(cluster)
    start = time.perf_counter()
    try:
        todo = grid.computed()
        reused = 0
        if resumed:
            checks = client.map(verify_block, [str(path)] * len(todo), [grid] * len(todo),
                                todo, [get] * len(todo), pure=False)
            ok = client.gather(checks)
            reused = sum(ok)
            todo = [ij for ij, good in zip(todo, ok) if not good]
        p = net._param_array(values)
        need_rows = sorted({i for i, _ in todo})
        need_cols = sorted({j for _, j in todo})
        rows1, cols = grid.rows, grid.cols
        # the chunks as tasks that hold their data (not scattered: scattered data have no
        # lineage, and a lost worker would take them and every block that reads them along)
        x1f = {i: client.submit(_chunk, _part(a, rows1[i]), pure=False)
               for i in set(need_rows) | (set(need_cols) if b is None else set())}
        t1 = {i: client.submit(point_tables, spec, x1f[i], p, pure=False) for i in x1f}
        if b is None:
            x2f, t2 = x1f, t1
        else:
            x2f = {j: client.submit(_chunk, _part(b, cols[j]), pure=False) for j in need_cols}
            t2 = {j: client.submit(point_tables, spec, x2f[j], p, pure=False) for j in x2f}
        futures = []
        for i, j in todo:
            part2 = None if (b is None and i == j) else x2f[j]
            futures.append(client.submit(
                write_block, spec, str(path), x1f[i], part2, (rows1[i][0], cols[j][0]), t1[i],
                t2[j], p, get, (i, j), b is None and i != j, pure=False, retries=2))
        done = 0
        seconds = 0.0
        for fut in as_completed(futures):
            seconds += fut.result()
            done += 1
            if progress:
                progress(done, len(futures))
        missing = len(grid.computed()) - len(_done(path, grid))
        if missing:
            raise TPError(f"{missing} block(s) of {path} have no marker after the run",
                          hint="run the same command again: finished blocks are kept")
        attrs = dict(group.attrs["tpcompiler"])
        attrs["complete"] = True
        group.attrs["tpcompiler"] = attrs
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    return {"path": str(path), "blocks": len(grid.computed()), "computed": len(todo),
            "reused": reused, "wall_seconds": time.perf_counter() - start,
            "block_seconds": seconds, "chunk": grid.chunk, "shape": (grid.n1, grid.n2)}


def open_store(path) -> dict:
    """kind -> dask.array of a complete store (lazy, chunked as written)."""
    require()
    import dask.array as da
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs).get("tpcompiler")
    if attrs is None:
        raise TPError(f"{path} is not a store written by tpcompiler")
    if not attrs.get("complete"):
        raise TPError(f"{path} is incomplete (an interrupted run)",
                      hint="run the same command again: it resumes")
    return {k: da.from_zarr(group[k]) for k in attrs["kinds"]}

