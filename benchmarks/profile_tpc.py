"""Profiles behind the targets (section 7 of results.md): where tpcompiler's time goes.

    python benchmarks/profile_tpc.py [relu|tanh|compile]...   # print the Markdown

relu (depth-10 MLP, N = 4000 unless --quick-ish arguments): the generated module's own drivers
run single-threaded and taken apart -- the whole `square` driver, the Gram inner products alone,
the per-pair code without the mirror writes K[:, j, i] -- plus thread utilisation of the real
call (per-thread CPU time inside each block), whether the compiled code is SIMD (packed vs scalar
double instructions in its assembly), and a row-vectorised variant of the same recursion written
here with the module's own helper functions (`_row_kernel`), which shows what the loop structure
costs.

tanh: the number of tanh evaluations the quadrature does per pair (read off the generated
module: nodes per rule x tanh calls per node x rule calls per pair), the measured cost of one
Numba `math.tanh`, and, when `perf` works, the share of libm in the samples.

compile: Numba's compile timers (cold), the split of the warm path (cProfile), and an experiment
on a copy of the generated module with `inline='always'` removed (compile time vs speed).
"""

from __future__ import annotations

import collections
import concurrent.futures
import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import floor  # noqa: E402
import numpy as np  # noqa: E402
import peers  # noqa: E402
from numba import njit  # noqa: E402

REPEAT = 3  # every profile timing is the best of REPEAT runs (the machine may be shared)


def _t(fn, *args, repeat: int | None = None) -> float:
    best = float("inf")
    for _ in range(repeat or REPEAT):
        t = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t)
    return best


def simd_counts(dispatcher) -> dict:
    """Packed (xmm/ymm/zmm 'pd') vs scalar ('sd') double arithmetic in the compiled code."""
    asm = "\n".join(dispatcher.inspect_asm(sig) for sig in dispatcher.signatures)
    ops = re.findall(r"^\s+v(add|sub|mul|div|sqrt|fmadd\w*|fmsub\w*|fnmadd\w*|max|min)"
                     r"(pd|sd)\s+[^\n]*%([xyz])mm", asm, re.M)
    c = collections.Counter()
    for _, kind, reg in ops:
        c["scalar" if kind == "sd" else f"packed {reg}mm"] += 1
    # register spills: vector registers stored to / loaded from the stack
    c["stack stores"] = len(re.findall(r"^\s+vmov\w+\s+%[xyz]mm\d+, -?\d*\(%rsp\)", asm, re.M))
    c["stack loads"] = len(re.findall(r"^\s+v\w+\s+-?\d*\(%rsp\), %[xyz]mm", asm, re.M))
    # scalar libm functions the loop calls (their address is loaded, then called): a call
    # inside the column loop keeps those lanes scalar
    libm = sorted(set(re.findall(r"movabsq\s+\$(atan2|atan|acos|asin|tanh|exp|expm1|log|log1p|erf|"
                                 r"erfc|sin|cos|pow|cosh|sinh),", asm)))
    if libm:
        c["libm calls"] = ",".join(libm)
    return dict(c)


# ------------------------------------------------------------------------------------------
# relu MLP


DRIVERS = ("diag", "rows", "mirror", "square", "cross")  # whichever the module has


class _DriverTimer:
    """Wraps the generated module's drivers (looked up on the module at call time by the
    backend's run()) to record, per call, the thread, wall time and thread CPU time."""

    def __init__(self, module):
        self.module = module
        self.orig = {}
        self.rec = []
        self.lock = threading.Lock()

    def __enter__(self):
        for name in DRIVERS:
            f = getattr(self.module, name, None)
            if f is None:
                continue
            self.orig[name] = f

            def wrapped(*a, _f=f, _name=name):
                c = time.thread_time()
                t = time.perf_counter()
                r = _f(*a)
                with self.lock:
                    self.rec.append((_name, threading.get_ident(), time.perf_counter() - t,
                                     time.thread_time() - c))
                return r
            setattr(self.module, name, wrapped)
        return self

    def __exit__(self, *exc):
        for name, f in self.orig.items():
            setattr(self.module, name, f)

    def by_driver(self) -> dict:
        out = collections.defaultdict(lambda: [0.0, 0.0, 0])
        for name, _, dt, cpu in self.rec:
            out[name][0] += dt
            out[name][1] += cpu
            out[name][2] += 1
        return {k: tuple(v) for k, v in out.items()}

    def by_thread(self) -> list:
        out = collections.defaultdict(lambda: [0.0, 0.0])
        for _, tid, dt, cpu in self.rec:
            out[tid][0] += dt
            out[tid][1] += cpu
        return [tuple(v) for v in out.values()]


def _timed_call(net, x, nthreads: int) -> tuple[float, dict, list, float]:
    """One net.kernels(x) on `nthreads` threads (TPC_NUM_THREADS) with the drivers timed:
    (wall, per driver (wall, cpu, calls), per thread (wall, cpu), process cpu)."""
    old = os.environ.get("TPC_NUM_THREADS")
    os.environ["TPC_NUM_THREADS"] = str(nthreads)
    try:
        module = net._module
        with _DriverTimer(module) as tm:
            c = os.times()
            t = time.perf_counter()
            k = net.kernels(x)
            wall = time.perf_counter() - t
            c2 = os.times()
        del k
        return wall, tm.by_driver(), tm.by_thread(), (c2.user + c2.system) - (c.user + c.system)
    finally:
        if old is None:
            os.environ.pop("TPC_NUM_THREADS", None)
        else:
            os.environ["TPC_NUM_THREADS"] = old


def _make_row_kernel(module):
    """A hand-written relu MLP recursion (NNGP + NTK), one row of pairs at a time, layer by
    layer over contiguous arrays so that LLVM vectorises the loop over j, with the generated
    module's helpers (rootdet, angle, relu_relu_rt, step_step_t); Gram row included."""
    rootdet, angle = module.rootdet, module.angle
    relu_relu_rt, step_step_t = module.relu_relu_rt, module.step_step_t

    @njit(nogil=True, error_model="numpy")
    def row_kernel(xt, q, K, w, b, rw, rb, lo, hi):  # pragma: no cover - compiled
        d, n = xt.shape
        depth = q.shape[0]
        kk = np.empty(n)
        th = np.empty(n)
        for r in range(lo, hi):
            for side in range(2):
                i = r if side == 0 else n - 1 - r
                if side == 1 and i == r:
                    continue
                kv = kk[i:]
                tv = th[i:]
                m = kv.shape[0]
                for j in range(m):
                    kv[j] = 0.0
                for t in range(d):  # Gram row, vectorised over j
                    a = xt[t, i]
                    xr = xt[t, i:]
                    for j in range(m):
                        kv[j] += a * xr[j]
                for j in range(m):
                    kv[j] = w * (kv[j] / d) + b
                    tv[j] = kv[j]
                for layer in range(depth):
                    q1 = q[layer, i]
                    qv = q[layer, i:]
                    wl = w if layer < depth - 1 else rw
                    bl = b if layer < depth - 1 else rb
                    for j in range(m):
                        k = kv[j]
                        q2 = qv[j]
                        rr = rootdet(q1, q2, k)
                        tt = angle(q1, q2, rr, k)
                        kn = wl * relu_relu_rt(rr, tt, k) + bl
                        tv[j] = wl * tv[j] * step_step_t(tt) + kn
                        kv[j] = kn
                for j in range(m):
                    K[0, i, i + j] = kv[j]
                    K[1, i, i + j] = tv[j]
                for j in range(1, m):
                    K[0, i + j, i] = kv[j]
                    K[1, i + j, i] = tv[j]

    return row_kernel


def _uncached_copy(net):
    """The generated module compiled again without Numba's cache (whose code cannot be
    inspected), from a temporary file."""
    import importlib.util

    from tpcompiler.backends import numba as nb

    src = nb.render(net.kernel_program).replace("cache=True", "cache=False")
    tmp = Path(tempfile.mkdtemp(prefix="tpc_asm_"))
    path = tmp / "tpc_uncached_copy.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("tpc_uncached_copy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _relu_q(x, depth):
    """Per-point pre-activation variances of every layer (relu: E[relu(u)^2] = q / 2)."""
    w, b = peers.HYPER["relu"]
    q = np.empty((depth, x.shape[0]))
    k = w * np.sum(x * x, 1) / x.shape[1] + b
    for layer in range(depth):
        q[layer] = k
        k = w * (k / 2) + b
    return q


def _threaded(fn, args, total, nthreads):
    """fn(*args, lo, hi) over [0, total) in 4 x threads blocks on a thread pool: wall time."""
    nblocks = max(4 * nthreads, 1) if total >= 8 else 1
    step = -(-total // min(nblocks, total))
    blocks = [(lo, min(total, lo + step)) for lo in range(0, total, step)]
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=nthreads) as pool:
        for f in [pool.submit(fn, *args, lo, hi) for lo, hi in blocks]:
            f.result()
    return time.perf_counter() - t


def relu_profile(n: int = 4000, depth: int = 10, log=print) -> dict:
    import tpcompiler as tp

    out = {"n": n, "depth": depth}
    x = np.ascontiguousarray(np.random.default_rng(0).normal(size=(n, 64)))
    net = tp.compile_source(peers.mlp_source("relu", depth))
    net.kernels(x[:3])
    module = net._module
    nthreads = floor.threads()
    out["threads"] = nthreads
    out["pairs"] = n * (n - 1) // 2
    out["loadavg"] = os.getloadavg()
    runs = {}
    for nt in sorted({1, nthreads}):
        best = min((_timed_call(net, x, nt) for _ in range(REPEAT)), key=lambda r: r[0])
        runs[nt] = {"wall": best[0], "drivers": best[1], "threads": best[2], "cpu": best[3]}
        log(f"  profile relu: {nt} thread(s): {best[0]:.2f} s wall, drivers "
            + ", ".join(f"{k} {v[0]:.2f} s" for k, v in best[1].items()))
    out["runs"] = runs
    try:
        nocache = _uncached_copy(net)
        nocache_net = types_simple(net, nocache)
        nocache_net.kernels(x[:5])
        out["simd"] = {name: simd_counts(getattr(nocache, name)) for name in DRIVERS
                       if hasattr(nocache, name) and getattr(nocache, name).signatures}
    except Exception as e:  # the layout changed: no SIMD report
        out["simd_error"] = f"{type(e).__name__}: {e}"
    try:
        row_kernel = _make_row_kernel(module)
        xt = np.ascontiguousarray(x.T)
        q = _relu_q(x, depth)
        w, b = peers.HYPER["relu"]
        rw, rb = peers.READOUT
        K2 = np.empty((2, n, n))
        row_kernel(xt[:, :4].copy(), q[:, :4].copy(), np.empty((2, 4, 4)), w, b, rw, rb, 0, 2)
        half = (n + 1) // 2
        out["row_1t"] = _t(row_kernel, xt, q, K2, w, b, rw, rb, 0, half)
        out["row_threads"] = min(_threaded(row_kernel, (xt, q, K2, w, b, rw, rb), half,
                                           nthreads) for _ in range(REPEAT))
        ref = net.kernels(x)
        out["row_vs_tpc"] = {k: float(np.abs(K2[i] - ref[k]).max() / np.abs(ref[k]).max())
                             for i, k in enumerate(("nngp", "ntk"))}
        out["simd_row"] = simd_counts(row_kernel)
        del K2, ref
        log(f"  profile relu: hand-written row kernel {out['row_1t']:.2f} s (1 thread), "
            f"{out['row_threads']:.2f} s ({nthreads} threads)")
    except Exception as e:
        out["row_error"] = f"{type(e).__name__}: {e}"
    out["floor_indep_1t"] = min(floor.floor_time(n, depth, True, 1) for _ in range(REPEAT))
    out["floor_chain_1t"] = min(floor.floor_time(n, depth, False, 1) for _ in range(REPEAT))
    try:  # the BLAS Gram blocks alone, as the backend forms them (x2 = None: columns >= lo)
        from tpcompiler.backends import numba as nb

        old = os.environ.get("TPC_NUM_THREADS")
        os.environ["TPC_NUM_THREADS"] = "1"
        try:
            blocks = nb._row_blocks(n, n, True, 1, None)
        finally:
            if old is None:
                os.environ.pop("TPC_NUM_THREADS", None)
            else:
                os.environ["TPC_NUM_THREADS"] = old

        def grams():
            for lo, hi in blocks:
                np.ascontiguousarray(x[lo:hi] @ x[lo:].T / x.shape[1])
        out["gram_blas"] = _t(grams)
        out["gram_blocks"] = len(blocks)
    except Exception as e:
        out["gram_error"] = f"{type(e).__name__}: {e}"
    return out


def types_simple(net, module):
    """A shallow copy of `net` whose generated module is `module`."""
    import copy

    other = copy.copy(net)
    other.__dict__["_module"] = module
    return other


def relu_markdown(p: dict) -> str:
    n, depth, pairs = p["n"], p["depth"], p["pairs"]

    def ns(t):  # per pair and layer
        return t / (pairs * depth) * 1e9
    L = [f"### relu MLP, depth {depth}, N = {n}: where the time goes\n"]
    L.append(f"`net.kernels(X)` (NNGP + NTK) with the generated module's drivers wrapped in "
             f"timers; best of {REPEAT} runs each (load average at the start "
             f"{p['loadavg'][0]:.1f}). *Outside the drivers* = the Python driver code in "
             "`backends/numba.py` (BLAS Gram blocks, coincident-point detection, allocation, "
             "thread pool).\n")
    L.append("| threads | wall | " + " | ".join(f"`{k}`" for k in DRIVERS
                                                 if any(k in r["drivers"]
                                                        for r in p["runs"].values()))
             + " | outside the drivers | process CPU |")
    used = [k for k in DRIVERS if any(k in r["drivers"] for r in p["runs"].values())]
    L.append("|---|---|" + "---|" * len(used) + "---|---|")
    for nt, r in sorted(p["runs"].items()):
        dr = r["drivers"]
        inside = sum(v[0] for v in dr.values())
        cells = []
        for k in used:
            if k in dr:
                v = dr[k]
                cells.append(f"{v[0]:.3f} s ({ns(v[0]):.1f} ns/pair-layer)" if k in
                             ("rows", "square", "cross") else f"{v[0]:.3f} s")
            else:
                cells.append("-")
        outside = r["wall"] - inside if nt == 1 else None
        L.append(f"| {nt} | {r['wall']:.3f} s | " + " | ".join(cells)
                 + f" | {'-' if outside is None else f'{outside:.3f} s'} | {r['cpu']:.2f} s |")
    L.append("")
    if len(p["runs"]) > 1:
        one = p["runs"][1]["wall"]
        many_key = max(p["runs"])
        many = p["runs"][many_key]
        L.append(f"With {many_key} threads the call is {one / many['wall']:.2f}x faster than "
                 "with 1 (driver time is summed over threads above). Per thread (time inside "
                 "drivers / thread CPU time): " + ", ".join(f"{a:.2f} s / {c:.2f} s"
                                                           for a, c in many["threads"])
                 + f"; the threads got {sum(c for _, c in many['threads']) / max(sum(a for a, _ in many['threads']), 1e-9):.0%} "  # noqa: E501
                 "of a core while inside the drivers (the rest went to other processes on "
                 "the shared machine).\n")
    if "gram_blas" in p:
        L.append(f"The Gram blocks alone (`x[lo:hi] @ x[lo:].T / d` over the backend's "
                 f"{p['gram_blocks']} row blocks, NumPy's BLAS with its own threads): "
                 f"{p['gram_blas']:.3f} s.\n")
    L.append(f"Floors for the same {pairs:,} pairs x {depth} layers on 1 thread: acos + sqrt "
             f"independent {p['floor_indep_1t']:.2f} s ({ns(p['floor_indep_1t']):.1f} "
             f"ns/pair-layer), chained per pair {p['floor_chain_1t']:.2f} s "
             f"({ns(p['floor_chain_1t']):.1f} ns).")
    if "row_1t" in p:
        L.append(f" A hand-written row kernel of the same recursion (`profile_tpc.py`, the "
                 f"module's own helpers, Gram rows and mirror writes included): "
                 f"{p['row_1t']:.2f} s on 1 thread ({ns(p['row_1t']):.1f} ns/pair-layer), "
                 f"{p['row_threads']:.2f} s on {p['threads']}; agrees with tpcompiler to "
                 f"{max(p['row_vs_tpc'].values()):.1e}.")
    L.append("\n")
    if "simd" in p:
        L.append("SIMD: double-precision arithmetic instructions in the compiled drivers "
                 "(packed = vectorised): " + "; ".join(f"`{k}` {v}" for k, v in p["simd"].items())
                 + (f"; hand-written row kernel {p['simd_row']}" if "simd_row" in p else "")
                 + ".\n")
    return "\n".join(L)


def depth_profile(cases=(("relu", 3), ("relu", 10), ("relu", 20), ("relu", 30), ("erf", 3),
                         ("erf", 10)), n: int = 1000, log=print) -> dict:
    """Per (act, depth): the per-pair driver's time per pair and layer (1 thread), whether its
    loop is vectorised (SIMD counts of an uncached copy), and (relu) the hand-written row
    kernel's time."""
    import tpcompiler as tp

    x = np.ascontiguousarray(np.random.default_rng(0).normal(size=(n, 64)))
    pairs = n * (n - 1) // 2
    out = {"n": n, "rows": []}
    w, b = peers.HYPER["relu"]
    rw, rb = peers.READOUT
    for act, depth in cases:
        net = tp.compile_source(peers.mlp_source(act, depth))
        net.kernels(x[:3])
        best = min((_timed_call(net, x, 1) for _ in range(REPEAT)), key=lambda r: r[0])
        drv = next((k for k in ("rows", "square", "cross") if k in best[1]), None)
        row = {"act": act, "depth": depth, "wall": best[0], "driver": drv,
               "driver_s": best[1][drv][0] if drv else None}
        try:
            nocache = _uncached_copy(net)
            types_simple(net, nocache).kernels(x[:20])
            row["simd"] = simd_counts(getattr(nocache, drv)) if drv else {}
        except Exception as e:
            row["simd_error"] = str(e)[:200]
        try:
            if act != "relu":
                raise ValueError("the hand-written row kernel is the relu recursion")
            rk = _make_row_kernel(net._module)
            q = _relu_q(x, depth)
            xt = np.ascontiguousarray(x.T)
            K2 = np.empty((2, n, n))
            rk(xt[:, :4].copy(), q[:, :4].copy(), np.empty((2, 4, 4)), w, b, rw, rb, 0, 2)
            row["row_kernel_s"] = _t(rk, xt, q, K2, w, b, rw, rb, 0, (n + 1) // 2)
        except Exception as e:
            row["row_error"] = str(e)[:200]
        out["rows"].append(row)
        log(f"  profile {act} depth {depth}: {drv} {row['driver_s']:.3f} s "
            f"({row['driver_s'] / (pairs * depth) * 1e9:.1f} ns/pair-layer), SIMD "
            f"{row.get('simd')}, row kernel {row.get('row_kernel_s', float('nan')):.3f} s")
    out["pairs"] = pairs
    return out


def depth_markdown(p: dict) -> str:
    n, pairs = p["n"], p["pairs"]
    L = [f"### Depth: per-layer cost and vectorisation (N = {n}, 1 thread)\n"]
    L.append("| net | depth | call | per-pair driver | ns / (pair layer) | packed / scalar "
             "double ops in the driver | stack stores | libm calls in the driver | "
             "hand-written row kernel | ns / (pair layer) |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in p["rows"]:
        sd = r.get("simd", {})
        packed = sum(v for k, v in sd.items() if k.startswith("packed"))
        rk = r.get("row_kernel_s")
        L.append(f"| {r.get('act', 'relu')} | {r['depth']} | {r['wall']:.3f} s | "
                 f"`{r['driver']}` {r['driver_s']:.3f} s | "
                 f"{r['driver_s'] / (pairs * r['depth']) * 1e9:.1f} | {packed} / "
                 f"{sd.get('scalar', 0)} | {sd.get('stack stores', '-')} | "
                 f"{sd.get('libm calls', '-')} | "
                 + (f"{rk:.3f} s | {rk / (pairs * r['depth']) * 1e9:.1f} |" if rk else "- | - |"))
    L.append("")
    return "\n".join(L)


# ------------------------------------------------------------------------------------------
# tanh


def _tanh_count(func, module, seen=None) -> int:
    """tanh evaluations of one call of a generated Numba function, read off its source: every
    line's distinct math.tanh(...) arguments (LLVM merges repeated calls with the same
    argument), times the trip counts of the `for ... in range(...)` loops around it; calls to
    other generated functions (integrands) are followed."""
    src = inspect.getsource(func.py_func)
    ns = vars(module)
    total = 0
    stack = []  # (indent, trip count)
    for line in src.splitlines():
        body = line.strip()
        if not body or body.startswith(("#", "@", "def ")):
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        mult = math.prod(c for _, c in stack)
        m = re.match(r"for \w+ in range\((.+)\):$", body)
        if m:
            stack.append((indent, int(eval(m.group(1), dict(ns)))))  # noqa: S307 - own code
            continue
        total += mult * len(set(re.findall(r"math\.tanh\(([^()]*)\)", body)))
        for callee in set(re.findall(r"\b(_Q\w+)\(", body)):
            f = ns.get(callee)
            if f is not None and hasattr(f, "py_func"):
                total += mult * _tanh_count(f, module)
    return total


def tanh_profile(n: int = 100, log=print) -> dict:
    import tpcompiler as tp

    out = {"n": n}
    x = np.ascontiguousarray(np.random.default_rng(1).normal(size=(n, 64)))
    net = tp.compile_source(peers.mlp_source("tanh", 3))
    net.kernels(x[:3])
    module = net._module
    pair_src = ""
    for name in ("rows", "pair", "cross", "square"):  # the per-pair code, whatever the layout
        f = getattr(module, name, None)
        if f is not None and "quad" in inspect.getsource(f.py_func):
            pair_src = inspect.getsource(f.py_func)
            out["pair_function"] = name
            break
    rules = []
    per_pair = 0
    by_args = collections.defaultdict(list)
    for full in sorted(set(re.findall(r"\b(quad\d_\w+?)\(", pair_src))):
        f = getattr(module, full)
        calls = re.findall(rf"\b{full}\(([^()]*)\)", pair_src)
        per_call = _tanh_count(f, module)
        rules.append({"rule": full, "calls_per_pair": len(calls), "tanh_per_call": per_call})
        per_pair += len(calls) * per_call
        for a in calls:
            by_args[a].append(per_call)
    out["rules"] = rules
    out["tanh_per_pair"] = per_pair
    # rules called with the same covariance (a layer's NNGP and NTK integrands) evaluate tanh
    # at the same nodes when their node sets agree: one evaluation could serve both
    out["tanh_per_pair_shared"] = sum(max(v) for v in by_args.values())
    pairs = n * (n - 1) // 2
    best = min((_timed_call(net, x, 1) for _ in range(REPEAT)), key=lambda r: r[0])
    out["call_1t"] = best[0]
    out["drivers_1t"] = best[1]
    out["square_1t"] = best[1].get(out.get("pair_function", "rows"), (best[0],))[0]
    out["pairs"] = pairs

    @njit(error_model="numpy")
    def tanh_loop(z, reps):  # pragma: no cover - compiled
        s = 0.0
        for _ in range(reps):
            for v in z:
                s += math.tanh(v)
        return s

    z = np.random.default_rng(0).normal(size=4096) * 2.0
    tanh_loop(z, 1)
    reps = 2000
    out["tanh_ns"] = _t(tanh_loop, z, reps) / (reps * z.size) * 1e9
    out["predicted_tanh_s"] = per_pair * pairs * out["tanh_ns"] * 1e-9
    log(f"  profile tanh: {per_pair} tanh per pair, {out['tanh_ns']:.1f} ns each -> "
        f"{out['predicted_tanh_s']:.2f} s of {out['square_1t']:.2f} s (1 thread, N={n})")
    out["perf"] = _perf_tanh(n)
    return out


_PERF_SCRIPT = """
import sys, time
sys.path.insert(0, {here!r}); sys.path.insert(0, {root!r})
import numpy as np, tpcompiler as tp, peers
net = tp.compile_source(peers.mlp_source('tanh', 3))
x = np.random.default_rng(1).normal(size=({n}, 64))
net.kernels(x[:3])
t = time.perf_counter(); net.kernels(x); print(time.perf_counter() - t)
"""


def _perf_tanh(n: int) -> dict | None:
    """Share of libm (tanh, expm1) vs JIT code in perf's cpu-clock samples of a 1-thread run;
    None where perf is missing or not permitted."""
    if shutil.which("perf") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="tpc_perf_") as tmp:
        script = Path(tmp) / "run.py"
        script.write_text(_PERF_SCRIPT.format(here=str(HERE), root=str(ROOT), n=n))
        data = Path(tmp) / "perf.data"
        env = {**os.environ, "TPC_NUM_THREADS": "1"}
        r = subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", "499", "-o", str(data),
                            sys.executable, str(script)], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            return None
        rep = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort",
                              "dso,sym", "--stdio"], capture_output=True, text=True)
        if rep.returncode != 0:
            return None
    shares = collections.Counter()
    for ln in rep.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+(?: tid \d+)?)\s+\[\.\]\s+(\S+)", ln)
        if not m:
            continue
        pct, dso, sym = float(m.group(1)), m.group(2), m.group(3)
        if dso.startswith("libm"):
            shares["libm " + sym] += pct
        elif "JIT" in dso or dso.startswith("[unknown]") or dso.startswith("perf-"):
            shares["JIT (Numba code)"] += pct
        else:
            shares["other (Python, imports)"] += pct
    return dict(shares)


def tanh_markdown(p: dict) -> str:
    L = ["### tanh MLP: where the time goes\n"]
    L.append(f"Quadrature rules called per pair by the generated `{p.get('pair_function')}` and "
             "the tanh evaluations of one call (read off the generated source: distinct "
             "`math.tanh` arguments per line times the trip counts of the loops around it):\n")
    L.append("| rule | calls per pair | tanh per call |")
    L.append("|---|---|---|")
    for r in p["rules"]:
        L.append(f"| `{r['rule']}` | {r['calls_per_pair']} | {r['tanh_per_call']:,} |")
    L.append("")
    frac = p["predicted_tanh_s"] / p["square_1t"]
    L.append(f"{p['tanh_per_pair']:,} `math.tanh` evaluations per pair; one costs "
             f"{p['tanh_ns']:.1f} ns in a Numba loop (libm, scalar: Numba has no SIMD tanh "
             f"without SVML), so tanh alone predicts {p['predicted_tanh_s']:.2f} s of the "
             f"measured {p['square_1t']:.2f} s (`{p.get('pair_function', 'rows')}`, 1 thread, "
             f"N = {p['n']}, {p['pairs']:,} pairs; the whole call took {p['call_1t']:.2f} s): "
             f"{frac:.0%}.")
    if p.get("tanh_per_pair_shared") and p["tanh_per_pair_shared"] < p["tanh_per_pair"]:
        L.append(f" Rules called with the same covariance (a layer's NNGP and NTK integrands) "
                 f"evaluate tanh at the same points; sharing them would need "
                 f"{p['tanh_per_pair_shared']:,} per pair "
                 f"({p['tanh_per_pair'] / p['tanh_per_pair_shared']:.1f}x fewer).")
    if p.get("perf"):
        tot = sum(p["perf"].values())
        kern = {k: v for k, v in p["perf"].items() if not k.startswith("other")}
        ks = sum(kern.values()) or 1.0
        L.append(" `perf record -e cpu-clock` of a 1-thread run (share of the kernel's samples, "
                 "imports excluded): " + ", ".join(f"{k} {v / ks:.0%}" for k, v in
                                                    sorted(kern.items(), key=lambda kv: -kv[1]))
                 + f" (imports and Python: {p['perf'].get('other (Python, imports)', 0) / tot:.0%} "
                 "of all samples).")
    L.append("\n")
    return "\n".join(L)


def quad_accuracy(orders=(25, 48, 100, 200)) -> dict | None:
    """Error of the d x d tensor Gauss-Hermite rule (NT's deg, tpcompiler's default 2-D order
    48, ...) for E[tanh(u) tanh(v)] and E[tanh'(u) tanh'(v)] at a few covariances, against
    nested adaptive quadrature (scipy); None without scipy."""
    try:
        from scipy import integrate
    except ImportError:
        return None
    import warnings

    def sech2(z):
        return 1.0 / np.cosh(z) ** 2

    def gh(order, q, k, f):
        z, w = np.polynomial.hermite_e.hermegauss(order)
        w = w / w.sum()
        l00, l10 = math.sqrt(q), k / math.sqrt(q)
        l11 = math.sqrt(max(q - l10 * l10, 0.0))
        z0, z1 = np.meshgrid(z, z, indexing="ij")
        return float(np.sum(np.outer(w, w) * f(l00 * z0) * f(l10 * z0 + l11 * z1)))

    def exact(q, k, f):
        l00, l10 = math.sqrt(q), k / math.sqrt(q)
        l11 = math.sqrt(q - l10 * l10)

        def phi(t):
            return math.exp(-t * t / 2) / math.sqrt(2 * math.pi)

        def inner(a):
            return integrate.quad(lambda b: phi(b) * f(l10 * a + l11 * b), -40, 40,
                                  epsabs=1e-16, epsrel=1e-14, limit=400)[0]
        return integrate.quad(lambda a: phi(a) * f(l00 * a) * inner(a), -40, 40,
                              epsabs=1e-16, epsrel=1e-14, limit=400)[0]

    out = {"orders": list(orders), "rows": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for q, k in ((1.0, 0.5), (1.55, 1.2), (3.0, 2.5), (10.0, 5.0)):
            row = {"q": q, "k": k}
            for name, f in (("nngp", np.tanh), ("ntk", sech2)):
                ex = exact(q, k, f)
                row[name] = [abs(gh(o, q, k, f) - ex) for o in orders]
            out["rows"].append(row)
    return out


def quad_markdown(p: dict) -> str:
    o = p["orders"]
    L = ["Why ElementwiseNumerical needs a high degree: the error of its d x d Gauss-Hermite "
         "tensor rule for one layer's expectations (absolute, against nested adaptive "
         "quadrature, scipy; u, v with variances q and covariance k; d is NT's deg). tanh has "
         "complex poles at +-i pi/2, which limit full-line Gauss-Hermite convergence; the "
         "benchmark's tanh MLP has q <= 1.55:\n"]
    L.append("| q, k | E[tanh tanh]: " + " | ".join(f"d = {d}" for d in o)
             + " | E[tanh' tanh']: " + " | ".join(f"d = {d}" for d in o) + " |")
    L.append("|---|" + "---|" * (2 * len(o)))
    for r in p["rows"]:
        L.append(f"| {r['q']}, {r['k']} | " + " | ".join(f"{e:.1e}" for e in r["nngp"]) + " | "
                 + " | ".join(f"{e:.1e}" for e in r["ntk"]) + " |")
    L.append("")
    return "\n".join(L)


# ------------------------------------------------------------------------------------------
# compile


_INLINE_SCRIPT = """
import sys, time, json
sys.path.insert(0, {root!r})
import numpy as np
import tpcompiler as tp
from tpcompiler.backends import numba as nb
src = open({path!r}).read()
nb.render = lambda kp: src   # the API renders through this name: serve the variant
net = tp.compile({tp_file!r})
t = time.perf_counter()
net.kernels(np.linspace(-1, 1, 12).reshape(3, 4))
t1 = time.perf_counter() - t
x = np.random.default_rng(0).normal(size=({n}, 64))
ts = []
for _ in range(3):
    t = time.perf_counter(); net.kernels(x); ts.append(time.perf_counter() - t)
print("RESULT " + json.dumps({{"compile_s": t1, "run_s": min(ts)}}))
"""


def inline_experiment(n: int = 2000, log=print) -> dict | None:
    """Compile time and speed of the generated relu_mlp.tp module as generated and with
    inline='always' removed (fresh cache each); None when the module has no inline='always'."""
    import tpcompiler as tp
    from tpcompiler.backends import numba as nb

    tp_file = ROOT / "examples" / "relu_mlp.tp"
    net = tp.compile(tp_file)
    src = nb.render(net.kernel_program)
    if "inline='always'" not in src:
        return None
    variants = {"as generated (inline='always')": src,
                "helpers not inlined by Numba (LLVM may still inline)":
                    src.replace(", inline='always'", "")}
    out = {}
    for name, text in variants.items():
        with tempfile.TemporaryDirectory(prefix="tpc_inline_") as tmp:
            path = Path(tmp) / "src.py"
            path.write_text(text)
            cache_dir = Path(tmp) / "cache"
            env = {**os.environ, "TPC_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT)}
            env.pop("NUMBA_CACHE_DIR", None)
            r = subprocess.run([sys.executable, "-c", _INLINE_SCRIPT.format(
                root=str(ROOT), path=str(path), n=n, tp_file=str(tp_file))],
                capture_output=True, text=True, env=env)
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
            out[name] = json.loads(line[7:]) if line else {"error": r.stderr[-500:]}
            log(f"  profile compile: {name}: {out[name]}")
    out["n"] = n
    return out


def compile_markdown(results: dict, inline: dict | None) -> str:
    L = ["### Compile time: where it goes\n"]
    comp = {r["name"]: r for r in results.get("compile", [])}
    c = comp.get("relu_mlp.tp")
    if c:
        cold = c["cold"][0]
        tm = cold["numba_timers"]
        top = sorted(tm.items(), key=lambda kv: -kv[1]["compiler"])[:4]
        L.append(f"Cold, `examples/relu_mlp.tp` (first cold run): import {cold['import_s']:.2f} s, "
                 f"lowering {cold['lower_s']:.2f} s, kernel program {cold['kernel_program_s']:.2f} "
                 f"s, render {cold['render_import_s']:.2f} s, first call {cold['first_call_s']:.2f}"
                 f" s, of which Numba compiles {len(tm)} functions; the largest timers "
                 "(inclusive of callees; front end = total - llvm): "
                 + ", ".join(f"`{k}` {v['compiler']:.2f} s (front end "
                             f"{v['compiler'] - v['llvm']:.2f}, llvm {v['llvm']:.2f})"
                             for k, v in top) + ".\n")
    if inline:
        L.append(f"Experiment on a copy of that generated module (fresh cache each; run = NNGP + "
                 f"NTK at N = {inline['n']}, best of 3):\n")
        L.append("| variant | compile (first call, 3 points) | run |")
        L.append("|---|---|---|")
        for k, v in inline.items():
            if isinstance(v, dict) and "compile_s" in v:
                L.append(f"| {k} | {v['compile_s']:.2f} s | {v['run_s']:.3f} s |")
        L.append("")
    w = c["warm"][0] if c and c["warm"] else None
    prof = results.get("warm_profile") or ""
    if w:
        L.append(f"Warm (`examples/relu_mlp.tp`, cache filled): import {w['import_s']:.2f} s, "
                 f"lowering {w['lower_s']:.2f} s, first call {w['first_call_s']:.2f} s (Numba "
                 "loads the cached machine code).")

        def cum(pattern):
            for ln in prof.splitlines():
                if re.search(pattern, ln):
                    parts = ln.split()
                    try:
                        return float(parts[3])
                    except (IndexError, ValueError):
                        return None
            return None
        items = [("lark parser construction (`Lark.__init__`)", r"lark/lark\.py:\d+\(__init__\)"),
                 ("of which lark's regex-collision check (interegular)",
                  r"_check_regex_collisions"),
                 ("Numba's first-use registry refresh (`load_additional_registries`)",
                  r"load_additional_registries"),
                 ("of which `import scipy.linalg` (Numba's BLAS check)",
                  r"scipy/linalg/__init__\.py"),
                 ("Numba cache loads (`load_overload`)", r"caching\.py:\d+\(load_overload\)")]
        found = [(k, cum(p)) for k, p in items]
        found = [(k, v) for k, v in found if v is not None]
        if found:
            L.append(" cProfile of the part after import (cumulative seconds, profiler overhead "
                     "included): " + "; ".join(f"{k} {v:.2f}" for k, v in found) + ".")
        if results.get("import_top"):
            L.append(" Import: " + ", ".join(f"{k} {v:.2f} s" for k, v in results["import_top"][:4])
                     + " (`-X importtime`, cumulative).")
        L.append("\n")
    return "\n".join(L)


# ------------------------------------------------------------------------------------------
# BLAS threads


def blas_experiment(cases=((10, 4000), (3, 1000)), rounds: int = 2, reps: int = 5,
                    log=print) -> dict:
    """net.kernels(x) in fresh processes with OpenBLAS's default thread count and with
    OPENBLAS_NUM_THREADS=1, processes alternating; the backend calls BLAS (Gram blocks) from
    inside its own thread pool."""
    out = {}
    for depth, n in cases:
        res = {"default": [], "OPENBLAS_NUM_THREADS=1": []}
        for _ in range(rounds):
            for label in res:
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                env.pop("OPENBLAS_NUM_THREADS", None)
                if label != "default":
                    env["OPENBLAS_NUM_THREADS"] = "1"
                r = subprocess.run([sys.executable, str(HERE / "_probe.py"), "call", "relu",
                                    str(depth), str(n), str(reps)], capture_output=True,
                                   text=True, env=env)
                line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")),
                            None)
                if line:
                    res[label] += json.loads(line[7:])["times"]
        out[f"relu depth {depth}, N = {n}"] = res
        log(f"  profile BLAS threads, relu d{depth} N={n}: " + ", ".join(
            f"{k}: median {np.median(v):.3f} s (min {min(v):.3f})" for k, v in res.items() if v))
    return out


def blas_markdown(p: dict) -> str:
    L = ["### BLAS threads inside the thread pool\n"]
    L.append("The backend forms the Gram blocks with NumPy's BLAS (OpenBLAS, which starts its "
             "own threads) from inside its own thread pool. On a machine whose cores are busy "
             "this nests two thread pools. `net.kernels(X)` in fresh processes, alternating, "
             "with OpenBLAS's default and with one BLAS thread:\n")
    L.append("| case | OpenBLAS default: median (min) | OPENBLAS_NUM_THREADS=1: median (min) | "
             "calls |")
    L.append("|---|---|---|---|")
    for case, res in p.items():
        a, b = res["default"], res["OPENBLAS_NUM_THREADS=1"]
        if a and b:
            L.append(f"| {case} | {np.median(a):.3f} s ({min(a):.3f}) | {np.median(b):.3f} s "
                     f"({min(b):.3f}) | {len(a)} / {len(b)} |")
    L.append("")
    return "\n".join(L)


def run_all(results: dict, log=print, relu_n: int = 4000, tanh_n: int = 100) -> str:
    parts = []
    prof = {}
    try:
        prof["relu"] = relu_profile(relu_n, 10, log)
        parts.append(relu_markdown(prof["relu"]))
    except Exception as e:  # a profile must not lose the benchmark
        parts.append(f"(relu profile failed: {type(e).__name__}: {e})\n")
    try:
        prof["depth"] = depth_profile(log=log)
        parts.append(depth_markdown(prof["depth"]))
    except Exception as e:
        parts.append(f"(depth profile failed: {type(e).__name__}: {e})\n")
    try:
        prof["tanh"] = tanh_profile(tanh_n, log)
        parts.append(tanh_markdown(prof["tanh"]))
        qa = quad_accuracy()
        if qa:
            prof["quad_accuracy"] = qa
            parts.append(quad_markdown(qa))
    except Exception as e:
        parts.append(f"(tanh profile failed: {type(e).__name__}: {e})\n")
    try:
        prof["blas"] = blas_experiment(log=log)
        parts.append(blas_markdown(prof["blas"]))
    except Exception as e:
        parts.append(f"(BLAS experiment failed: {type(e).__name__}: {e})\n")
    inline = None
    try:
        inline = inline_experiment(max(relu_n // 2, 200), log)
        prof["inline"] = inline
    except Exception as e:
        parts.append(f"(inline experiment failed: {type(e).__name__}: {e})\n")
    parts.append(compile_markdown(results, inline))
    results["profile_data"] = prof
    return "\n".join(parts)


if __name__ == "__main__":
    what = sys.argv[1:] or ["relu", "tanh", "compile"]
    res: dict = {}
    if "relu" in what:
        print(relu_markdown(relu_profile(int(os.environ.get("PROFILE_N", 2000)), 10)))
    if "tanh" in what:
        print(tanh_markdown(tanh_profile(int(os.environ.get("PROFILE_TANH_N", 60)))))
    if "depth" in what:
        print(depth_markdown(depth_profile(n=int(os.environ.get("PROFILE_N", 1000)))))
    if "quad" in what:
        print(quad_markdown(quad_accuracy()))
    if "blas" in what:
        print(blas_markdown(blas_experiment(((10, 2000), (3, 1000)), 1, 3)))
    if "compile" in what:
        print(compile_markdown(res, inline_experiment(1000)))
