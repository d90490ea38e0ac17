#!/usr/bin/env python
"""Kernels beyond one process (issue 19): Dask blocks against the in-memory call, a Zarr store
larger than RAM, conjugate-gradient regression out of core, the scheduler's cost per block.

    python benchmarks/dask_scale.py                  # all rows (~1 h on 2 cores, ~60 GB disk)
    python benchmarks/dask_scale.py --skip big,cg    # the in-memory comparison and overheads
    python benchmarks/dask_scale.py --big-n 20000    # a smaller "past RAM" row

Network: examples/relu_mlp.tp at depth 10 (benchmarks/peers.py's relu MLP: Dense var 2, bias
0.05), d = 64 standard-normal inputs, NNGP + NTK. Writes the section "dask" of
benchmarks/results.md. The store goes to --dir (default: a temporary folder, removed after).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sections  # noqa: E402

import tpcompiler as tpc  # noqa: E402
from tpcompiler import dask_kernels as dk  # noqa: E402
from tpcompiler import solve  # noqa: E402

#: the CG row's relative residual (the predictions' own accuracy needs no more)
RTOL = 1e-5

SOURCE = """
input x
h = dense(x, var=2.0, bias=0.05)
repeat 9 { h = dense(relu(h), var=2.0, bias=0.05) }
y = readout(relu(h), var=1.0)
"""


def _cluster(workers: int):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers,
                           threads_per_worker=max(1, (os.cpu_count() or 1) // workers),
                           processes=True, dashboard_address=None, memory_limit=0)
    return Client(cluster), cluster


def _fmt(s: float) -> str:
    return f"{s:.1f} s" if s >= 10 else f"{s:.2f} s"


def row_overhead(net, n: int, store: Path, results: dict) -> None:
    """In memory vs Dask (threads, one process) vs a LocalCluster of 1 and 2 workers writing a
    Zarr store."""
    x = np.random.default_rng(0).standard_normal((n, 64))
    net.kernels(x[:300])  # compile / load
    t = time.perf_counter()
    want = net.kernels(x)
    mem = time.perf_counter() - t
    del want
    import dask

    arrays = net.kernels(x, chunks=4096)
    t = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=os.cpu_count()):
        out = {k: np.empty((n, n)) for k in arrays}
        # one graph for both kinds: each block computed once
        dask.array.store(list(arrays.values()), list(out.values()), lock=False)
    threads = time.perf_counter() - t
    del out
    rows = {"n": n, "in_memory": mem, "dask_threads": threads}
    for workers in (1, 2):
        client, cluster = _cluster(workers)
        try:
            shutil.rmtree(store, ignore_errors=True)
            t = time.perf_counter()
            rep = dk.write_store(net, x, None, store, chunks=4096, client=client)
            rows[f"zarr_{workers}"] = time.perf_counter() - t
            rows[f"zarr_{workers}_blocks"] = rep["block_seconds"]
        finally:
            client.close()
            cluster.close()
    shutil.rmtree(store, ignore_errors=True)
    results["overhead"] = rows


def row_per_block(net, n: int, store: Path, results: dict) -> None:
    """The scheduler's cost per block: a store's wall time x workers against the blocks' own
    compute time, at several chunk sizes."""
    x = np.random.default_rng(1).standard_normal((n, 64))
    client, cluster = _cluster(2)
    out = []
    try:
        for chunk in (256, 512, 1024, 2048, 4096):
            shutil.rmtree(store, ignore_errors=True)
            t = time.perf_counter()
            rep = dk.write_store(net, x, None, store, chunks=chunk, client=client)
            wall = time.perf_counter() - t
            blocks = rep["blocks"]
            over = max(0.0, (2 * wall - rep["block_seconds"]) / blocks)
            out.append({"chunk": chunk, "blocks": blocks, "wall": wall,
                        "block_seconds": rep["block_seconds"], "overhead_per_block": over,
                        "fraction": over * blocks / (2 * wall)})
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(store, ignore_errors=True)
    results["per_block"] = {"n": n, "rows": out}


def _peak_mb(client) -> dict:
    import psutil

    return client.run(lambda: psutil.Process().memory_info().rss / 2 ** 20)


def row_big(net, n: int, store: Path, results: dict) -> None:
    x = np.random.default_rng(2).standard_normal((n, 64))
    client, cluster = _cluster(2)
    peaks: dict = {}
    try:
        import threading

        stop = threading.Event()

        import psutil

        me = psutil.Process()

        def watch():
            while not stop.is_set():
                try:
                    for w, mb in _peak_mb(client).items():
                        peaks[w] = max(peaks.get(w, 0.0), mb)
                except Exception:  # noqa: BLE001 - a worker restarting
                    pass
                peaks["client"] = max(peaks.get("client", 0.0), me.memory_info().rss / 2 ** 20)
                time.sleep(2.0)

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        shutil.rmtree(store, ignore_errors=True)
        t = time.perf_counter()
        dk.write_store(net, x, None, store, chunks=4096, client=client,
                       progress=lambda d, tot: print(f"\rblocks {d}/{tot}", end="",
                                                     file=sys.stderr))
        wall = time.perf_counter() - t
        stop.set()
        th.join()
    finally:
        client.close()
        cluster.close()
    disk = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
    pairs = n * (n + 1) / 2
    client_mb = peaks.pop("client", None)
    results["big"] = {"n": n, "wall": wall, "pairs_per_second": pairs / wall,
                      "disk_bytes": disk, "peak_mb_per_worker": sorted(peaks.values()),
                      "client_peak_mb": client_mb}


def row_cg(net, n: int, store: Path, results: dict, diag_reg: float) -> None:
    """Kernel regression out of core: the NTK of a store (read block by block each
    iteration), y from a teacher (a random finite network of the same program, width 512)."""
    import dask

    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, 64))  # the store's points (row_big's data)
    xt = np.random.default_rng(3).standard_normal((2000, 64))
    teacher = net.simulate(width=512, seed=7)
    teacher(xt[:2])  # its weights, sampled once
    y = np.concatenate([teacher(x[i:i + 5000]) for i in range(0, n, 5000)])
    yt = teacher(xt)
    k = dk.open_store(store)["ntk"]
    kt = net.kernels(xt, x, get="ntk", chunks=4096)["ntk"]
    t = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=os.cpu_count()):
        mean, sol = solve.kernel_regression(k, kt, y, diag_reg=diag_reg, rtol=RTOL, rank=1000,
                                            progress=lambda i, r: print(
                                                f"\rCG {i}: {r:.2e}", end="", file=sys.stderr))
    wall = time.perf_counter() - t
    err = float(np.mean((mean - yt) ** 2) / np.var(yt))
    results["cg"] = {"n": n, "iterations": sol.iterations, "residual": sol.residual,
                     "wall": wall, "test_relative_mse": err, "rank": sol.rank, "rtol": RTOL,
                     "diag_reg": diag_reg, "history": list(sol.history)}


def report(results: dict, load: tuple) -> list[str]:
    import dask
    import distributed
    import zarr

    lines = ["## Kernels on Dask (issue 19)", "",
             f"{sections.machine(load)}; dask {dask.__version__}, distributed "
             f"{distributed.__version__}, zarr {zarr.__version__}. relu MLP depth 10, d = 64, "
             "NNGP + NTK (benchmarks/dask_scale.py).", ""]
    o = results.get("overhead")
    if o:
        n = o["n"]
        lines += [f"N = {n} ({2 * n * n * 8 / 1e9:.1f} GB of kernels), chunks of 4096:", "",
                  "| how | wall | / in memory |", "|---|---|---|",
                  f"| in memory, net.kernels(X) | {_fmt(o['in_memory'])} | 1.00 |",
                  f"| dask arrays, threads scheduler, into NumPy | {_fmt(o['dask_threads'])} | "
                  f"{o['dask_threads'] / o['in_memory']:.2f} |"]
        for w in (1, 2):
            if f"zarr_{w}" in o:
                lines.append(f"| LocalCluster, {w} worker(s), into a Zarr store on disk | "
                             f"{_fmt(o[f'zarr_{w}'])} | {o[f'zarr_{w}'] / o['in_memory']:.2f} |")
        lines.append("")
    b = results.get("big")
    if b:
        lines += [f"Past RAM: N = {b['n']} ({2 * b['n'] ** 2 * 8 / 1e9:.1f} GB) into a Zarr "
                  f"store, 2 workers: {_fmt(b['wall'])}, {b['pairs_per_second'] / 1e6:.1f} M "
                  f"pairs/s (the triangle, both kinds), {b['disk_bytes'] / 1e9:.1f} GB on disk "
                  f"(uncompressed), peak memory per worker "
                  f"{', '.join(f'{m:.0f} MB' for m in b['peak_mb_per_worker'])}"
                  + (f", the client {b['client_peak_mb']:.0f} MB." if b.get("client_peak_mb")
                     else ".") + (" Memory per worker is O(chunk^2), whatever N." ), ""]
    c = results.get("cg")
    if c:
        lines += [f"Conjugate gradients out of core: N = {c['n']}, the NTK read from the store "
                  f"at each iteration, Nystrom rank {c['rank']}, diag_reg {c['diag_reg']:g}, rtol "
                  f"{c['rtol']:g}: {c['iterations']} iterations, residual "
                  f"{c['residual']:.1e}, {_fmt(c['wall'])}; on 2000 test points of a teacher "
                  f"(a random width-512 network of the same program) relative MSE "
                  f"{c['test_relative_mse']:.3f}.", ""]
    for note in results.get("notes", ()):
        lines += [note, ""]
    p = results.get("per_block")
    if p:
        lines += [f"The scheduler's cost per block (N = {p['n']}, 2 workers, into a store; "
                  "overhead = (2 x wall - compute) / blocks):", "",
                  "| chunk | blocks | wall | compute | overhead per block | share |",
                  "|---|---|---|---|---|---|"]
        for r in p["rows"]:
            lines.append(f"| {r['chunk']} | {r['blocks']} | {_fmt(r['wall'])} | "
                         f"{_fmt(r['block_seconds'])} | {r['overhead_per_block'] * 1e3:.0f} ms | "
                         f"{100 * r['fraction']:.0f} % |")
        under = [r["chunk"] for r in p["rows"] if r["fraction"] < 0.05]
        lines += ["", "Blocks are independent: on W workers the cost is about (blocks x "
                  "(compute + overhead)) / W. " + (f"The overhead is under 5 % at chunks of "
                                                   f"{under[0]} here." if under else
                                                   "The overhead stayed above 5 % here."), ""]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--big-n", type=int, default=60000)
    ap.add_argument("--block-n", type=int, default=8192)
    ap.add_argument("--skip", default="", help="comma-separated: overhead,big,cg,per_block")
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temp folder)")
    ap.add_argument("--diag-reg", type=float, default=1e-2,
                    help="the CG row's regulariser, relative to the mean diagonal")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.md")))
    ap.add_argument("--from-json", help="rebuild the section from a run's JSON (with --load)")
    ap.add_argument("--load", type=float, default=None, help="the load average it recorded")
    args = ap.parse_args()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        load = tuple(saved.pop("load", [args.load or 0.0]))
        sections.replace(args.out, "dask", report(saved, load))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    load = os.getloadavg()
    net = tpc.compile_source(SOURCE, "relu_depth10.tp")
    base = Path(args.dir or tempfile.mkdtemp(prefix="tpc-dask-"))
    results: dict = {}
    try:
        if "overhead" not in skip:
            row_overhead(net, args.n, base / "overhead.zarr", results)
            print(json.dumps(results["overhead"]), file=sys.stderr)
        if "per_block" not in skip:
            row_per_block(net, args.block_n, base / "blocks.zarr", results)
            print(json.dumps(results["per_block"]), file=sys.stderr)
        if "big" not in skip:
            row_big(net, args.big_n, base / "big.zarr", results)
            print(json.dumps(results["big"]), file=sys.stderr)
        if "cg" not in skip:  # on the store row_big wrote (this run's, or --dir's)
            row_cg(net, args.big_n, base / "big.zarr", results, args.diag_reg)
            print(json.dumps(results["cg"]), file=sys.stderr)
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    Path(args.out).with_suffix(".dask.json").write_text(json.dumps({**results, "load": load},
                                                                   indent=1))
    sections.replace(args.out, "dask", report(results, load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
