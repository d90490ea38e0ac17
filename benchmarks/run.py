#!/usr/bin/env python
"""tpcompiler against neural-tangents (JAX, CPU, float64, jitted kernel_fn) and a naive NumPy
layer-by-layer recursion; writes a Markdown report (default benchmarks/results.md).

    python benchmarks/run.py            # the full benchmark (~20 min on 2 cores)
    python benchmarks/run.py --quick    # CI-sized (< 60 s); exit 1 if a closed-form kernel
                                        # differs from neural-tangents / naive NumPy by > 1e-10

See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import floor  # noqa: E402
import numpy as np  # noqa: E402
import peers  # noqa: E402

GATE = 1e-10  # max rel diff allowed on a closed-form case in --quick

FULL = {
    "mlp_cases": [("relu", 3), ("relu", 10), ("erf", 3), ("erf", 10)],
    "mlp_ns": (1000, 2000, 4000),
    "d": 64,
    # ElementwiseNumerical degrees per N: deg 25 is its usual setting; higher degrees (more
    # accurate, O(deg^2 N^2) time and memory) only where they fit
    "tanh_degs": {100: (25, 50, 100, 150), 200: (25, 50), 500: (25,)},
    "tanh_subset": 30, "tanh_ref_order": 200,
    "tanh_nt_ref_deg": 150,
    "rnn_ns": (1000, 2000), "rnn_subset": 60,
    "scale": [(dp, n) for n in (1000, 2000, 4000) for dp in (3, 10, 30, 50)]
    + [(10, 8000), (50, 8000), (10, 20000), (50, 20000)],
    "compile_nets": ["relu_mlp.tp", "relu_mlp_10", "relu_mlp_30", "relu_mlp_100", "erf_mlp_3",
                     "tanh_mlp_3", "tanh_mlp_10", "tanh_mlp_30", "tanh_mlp_100", "rnn_erf_8"],
    "compile_cold_reps": {"relu_mlp.tp": 3, "relu_mlp_10": 3},
    "compile_warm_reps": 3,
    "budget_s": 20.0, "min_reps": 3, "max_reps": 9,
    # the headline case gets more rounds: its timings vary most on a shared machine
    "case_min_reps": {("relu", 10, 4000): 7},
    "memory": True,
}
QUICK = {
    "mlp_cases": [("relu", 3), ("erf", 3)],
    "mlp_ns": (400,),
    "d": 64,
    "tanh_degs": {50: (25,)}, "tanh_subset": 16, "tanh_ref_order": 100,
    "tanh_nt_ref_deg": None,
    "rnn_ns": (150,), "rnn_subset": 30,
    "scale": [],
    "compile_nets": [], "compile_cold_reps": {}, "compile_warm_reps": 0,
    "budget_s": 1.5, "min_reps": 3, "max_reps": 5,
    "memory": False,
}

# every section at toy sizes: tests this script, measures nothing (--smoke)
SMOKE = dict(FULL, mlp_cases=[("relu", 3), ("relu", 10)], mlp_ns=(100, 200),
             tanh_degs={20: (25, 50), 30: (25,)}, tanh_subset=10, tanh_ref_order=60,
             tanh_nt_ref_deg=60,
             rnn_ns=(50,), rnn_subset=10,
             scale=[(3, 300), (10, 300), (30, 300), (3, 600), (10, 600)],
             compile_nets=["relu_mlp.tp", "rnn_erf_8"], compile_cold_reps={},
             compile_warm_reps=1, budget_s=0.5)

PEER_LABEL = {"tpcompiler": "tpcompiler", "nt": "neural-tangents", "naive": "naive NumPy",
              "floor": "floor"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_time() -> float:
    t = os.times()
    return t.user + t.system


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_s(t) -> str:
    if t is None or (isinstance(t, float) and math.isnan(t)):
        return "-"
    if t >= 100:
        return f"{t:.0f} s"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.1f} ms"
    return f"{t * 1e6:.0f} us"


def fmt_x(r) -> str:
    if r is None or (isinstance(r, float) and (math.isnan(r) or math.isinf(r))):
        return "-"
    return f"{r:.1f}x" if r < 100 else f"{r:.0f}x"


def fmt_e(e) -> str:
    return "-" if e is None else f"{e:.1e}"


def fmt_mb(b) -> str:
    return "-" if b is None else f"{b / 2**20:.0f}" if b >= 10 * 2**20 else f"{b / 2**20:.1f}"


# --------------------------------------------------------------------------------------------
# machine


def fingerprint() -> str:
    """Hash of tpcompiler's source now (others may edit it while the benchmark runs)."""
    try:
        from tpcompiler.backends import cache

        return cache.compiler_fingerprint.__wrapped__()
    except Exception:
        return "?"


def machine() -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__}
    import numba

    import tpcompiler

    info["numba"] = numba.__version__
    info["tpcompiler"] = tpcompiler.__version__
    info.update(peers.nt_versions())
    try:
        txt = Path("/proc/cpuinfo").read_text()
        models = [ln.split(":", 1)[1].strip() for ln in txt.splitlines()
                  if ln.startswith("model name")]
        info["cpu"] = models[0] if models else platform.processor()
        flags = next((ln for ln in txt.splitlines() if ln.startswith("flags")), "")
        info["simd"] = " ".join(f for f in ("avx2", "fma", "avx512f") if f" {f}" in flags)
    except OSError:
        info["cpu"] = platform.processor()
    info["logical_cpus"] = os.cpu_count()
    info["usable_cpus"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()
        kb = int(next(ln for ln in mem if ln.startswith("MemTotal")).split()[1])
        info["ram_gib"] = kb / 2**20
    except (OSError, StopIteration):
        info["ram_gib"] = None
    info["threads"] = floor.threads()
    info["numba_threading_layer"] = numba.config.THREADING_LAYER
    info["svml"] = bool(numba.config.USING_SVML)
    info["kernel"] = platform.release()
    return info


# --------------------------------------------------------------------------------------------
# accuracy


def rel_diffs(a: dict, b: dict) -> dict:
    """Per kernel: max|a-b| / max|b| over all entries, over the off-diagonal ones, the diagonal."""
    out = {}
    for k in ("nngp", "ntk"):
        x, y = np.asarray(a[k]), np.asarray(b[k])
        scale = float(np.abs(y).max())
        diff = np.abs(x - y)
        dg = float(diff.diagonal().max()) / scale if diff.shape[0] == diff.shape[1] else None
        if diff.shape[0] == diff.shape[1]:
            np.fill_diagonal(diff, 0.0)
        off = float(diff.max()) / scale
        out[k] = {"off": off, "diag": dg, "all": max(off, dg or 0.0)}
        del diff
    return out


# --------------------------------------------------------------------------------------------
# interleaved timing


def interleave(runners: list, cfg: dict, label: str, min_reps: int | None = None) -> dict:
    """runners: [(name, fn)], fn() -> result. A B C A B C ...: the first round decides the
    number of rounds (budget / round time, within [min_reps, max_reps]). Keeps the last result
    of each runner. Returns name -> {"times", "cpu", "result"}."""
    res = {name: {"times": [], "cpu": [], "result": None} for name, _ in runners}
    lo_reps = max(cfg["min_reps"], min_reps or 0)
    reps = lo_reps
    r = 0
    while r < reps:
        parts = []
        for name, fn in runners:
            res[name]["result"] = None  # freed before the next call (no gc.collect here:
            c = cpu_time()                 # with jax and sympy loaded it costs ~0.2 s)
            t = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t
            res[name]["cpu"].append(cpu_time() - c)
            res[name]["times"].append(dt)
            res[name]["result"] = out
            parts.append(f"{name} {fmt_s(dt)}")
        if r == 0:
            round_s = sum(res[name]["times"][0] for name, _ in runners)
            reps = int(max(lo_reps, min(cfg["max_reps"],
                                        max(cfg["min_reps"], cfg["budget_s"] // max(round_s,
                                                                                    1e-9)))))
        r += 1
        log(f"  {label} round {r}/{reps}: " + " | ".join(parts))
    return res


# --------------------------------------------------------------------------------------------
# sections


def closed_form_mlps(cfg: dict, nt_ok: bool, results: dict) -> None:
    import tpcompiler as tp

    d = cfg["d"]
    nmax = max(cfg["mlp_ns"])
    x_all = np.random.default_rng(0).normal(size=(nmax, d))
    rows = []
    for act, depth in cfg["mlp_cases"]:
        net = tp.compile_source(peers.mlp_source(act, depth))
        t = time.perf_counter()
        net.kernels(x_all[:3])  # compile (or load from the cache)
        first = time.perf_counter() - t
        log(f"{act} MLP depth {depth}: tpcompiler ready ({fmt_s(first)} to compile/load)")
        for n in cfg["mlp_ns"]:
            x = np.ascontiguousarray(x_all[:n])
            row = {"act": act, "depth": depth, "n": n, "d": d, "tpc_first_call_s": first}
            runners = [("tpcompiler", lambda: net.kernels(x))]
            if nt_ok:
                t = time.perf_counter()
                fn = peers.nt_mlp_fn(act, depth)
                res = peers.nt_call(fn, x)
                row["nt_cold_s"] = time.perf_counter() - t
                del res
                log(f"  {act} d{depth} N={n}: neural-tangents cold (jit + first call) "
                    f"{fmt_s(row['nt_cold_s'])}")
                runners.append(("nt", lambda fn=fn: peers.nt_call(fn, x)))
            runners.append(("naive", lambda: peers.naive_mlp(x, act, depth)))
            runners.append(("floor", lambda: floor.floor_time(n, depth)))
            res = interleave(runners, cfg, f"{act} d{depth} N={n}",
                             cfg.get("case_min_reps", {}).get((act, depth, n)))
            for name in res:
                row[f"{name}_times"] = res[name]["times"]
                row[f"{name}_cpu"] = res[name]["cpu"]
            row["floor_chain_s"] = floor.floor_time(n, depth, independent=False)
            ktp = res["tpcompiler"]["result"]
            kn = res["naive"]["result"]
            row["vs_naive"] = rel_diffs(ktp, kn)
            if nt_ok:
                row["vs_nt"] = rel_diffs(ktp, peers.nt_numpy(res["nt"]["result"]))
                row["naive_vs_nt"] = rel_diffs(kn, peers.nt_numpy(res["nt"]["result"]))
            del res, ktp, kn
            gc.collect()
            acc = row.get("vs_nt", row["vs_naive"])
            log(f"  {act} d{depth} N={n}: tpcompiler {fmt_s(median(row['tpcompiler_times']))}"
                + (f", NT {fmt_s(median(row['nt_times']))}" if nt_ok else "")
                + f", naive {fmt_s(median(row['naive_times']))}, max rel diff off-diag "
                f"{fmt_e(max(acc[k]['off'] for k in acc))}")
            rows.append(row)
    results["mlp"] = rows


def tanh_section(cfg: dict, nt_ok: bool, results: dict) -> None:
    import tpcompiler as tp

    d = cfg["d"]
    nmax = max(cfg["tanh_degs"])
    x_all = np.random.default_rng(1).normal(size=(nmax, d))
    sub = cfg["tanh_subset"]
    xs = x_all[:sub]
    out = {"depth": 3, "subset": sub, "ref_order": cfg["tanh_ref_order"], "rows": []}
    log(f"tanh: Gauss-Hermite reference, order {cfg['tanh_ref_order']}^2, on {sub} points")
    t = time.perf_counter()
    ref = peers.naive_mlp_quad(xs, "tanh", 3, order=cfg["tanh_ref_order"])
    out["ref_time_s"] = time.perf_counter() - t
    ref_lo = peers.naive_mlp_quad(xs, "tanh", 3, order=cfg["tanh_ref_order"] * 3 // 4)
    out["ref_self"] = {k: float(np.abs(ref_lo[k] - ref[k]).max() / np.abs(ref[k]).max())
                       for k in ("nngp", "ntk")}
    if nt_ok and cfg["tanh_nt_ref_deg"]:
        deg = cfg["tanh_nt_ref_deg"]
        t = time.perf_counter()
        r2 = peers.nt_numpy(peers.nt_call(peers.nt_mlp_fn("tanh", 3, deg), xs))
        out["nt_ref"] = {"deg": deg, "time_s": time.perf_counter() - t,
                         "vs_ref": {k: float(np.abs(r2[k] - ref[k]).max() / np.abs(ref[k]).max())
                                    for k in ("nngp", "ntk")}}
    net = tp.compile_source(peers.mlp_source("tanh", 3))
    t = time.perf_counter()
    net.kernels(x_all[:3])
    out["tpc_first_call_s"] = time.perf_counter() - t

    def err(k):
        return {kk: float(np.abs(np.asarray(k[kk])[:sub, :sub] - ref[kk]).max()
                          / np.abs(ref[kk]).max()) for kk in ("nngp", "ntk")}

    for n, degs in sorted(cfg["tanh_degs"].items()):
        x = np.ascontiguousarray(x_all[:n])
        row = {"n": n, "degs": list(degs) if nt_ok else []}
        runners = [("tpcompiler", lambda: net.kernels(x))]
        if nt_ok:
            for deg in degs:
                t = time.perf_counter()
                fn = peers.nt_mlp_fn("tanh", 3, deg)
                peers.nt_call(fn, x)
                row[f"nt{deg}_cold_s"] = time.perf_counter() - t
                runners.append((f"nt{deg}", lambda fn=fn: peers.nt_call(fn, x)))
        runners.append(("floor", lambda: floor.floor_time(n, 3)))
        res = interleave(runners, cfg, f"tanh d3 N={n}")
        for name in res:
            row[f"{name}_times"] = res[name]["times"]
            row[f"{name}_cpu"] = res[name]["cpu"]
        row["err_tpc"] = err(res["tpcompiler"]["result"])
        if nt_ok:
            for deg in degs:
                row[f"err_nt{deg}"] = err(peers.nt_numpy(res[f"nt{deg}"]["result"]))
        log(f"  tanh N={n}: tpcompiler {fmt_s(median(row['tpcompiler_times']))} "
            f"(err {fmt_e(max(row['err_tpc'].values()))})"
            + "".join(f", NT deg {g} {fmt_s(median(row[f'nt{g}_times']))} "
                      f"(err {fmt_e(max(row[f'err_nt{g}'].values()))})" for g in row["degs"]))
        del res
        out["rows"].append(row)
    results["tanh"] = out


def rnn_section(cfg: dict, results: dict) -> None:
    import tpcompiler as tp

    d, steps = cfg["d"], peers.RNN["T"]
    nmax = max(cfg["rnn_ns"])
    s_all = np.random.default_rng(2).normal(size=(nmax, steps, d))
    net = tp.compile_source(peers.rnn_source())
    t = time.perf_counter()
    net.kernels(s_all[:3])
    out = {"T": steps, "act": peers.RNN["act"], "tpc_first_call_s": time.perf_counter() - t,
           "rows": [], "source": peers.rnn_source()}
    sub = cfg["rnn_subset"]
    ref = peers.naive_rnn(s_all[:sub])
    for n in cfg["rnn_ns"]:
        s = np.ascontiguousarray(s_all[:n])
        res = interleave([("tpcompiler", lambda: net.kernels(s)),
                          ("floor", lambda: floor.floor_time(n, steps))], cfg, f"rnn N={n}")
        k = res["tpcompiler"]["result"]
        row = {"n": n, "tpcompiler_times": res["tpcompiler"]["times"],
               "tpcompiler_cpu": res["tpcompiler"]["cpu"], "floor_times": res["floor"]["times"],
               "vs_naive": {kk: float(np.abs(np.asarray(k[kk])[:sub, :sub] - ref[kk]).max()
                                      / np.abs(ref[kk]).max()) for kk in ("nngp", "ntk")}}
        log(f"  rnn N={n}: tpcompiler {fmt_s(median(row['tpcompiler_times']))}, vs naive "
            f"GP4A recursion {fmt_e(max(row['vs_naive'].values()))}")
        del res, k
        out["rows"].append(row)
    results["rnn"] = out


def _subprocess(args: list, env: dict | None = None, timeout: float = 1800) -> dict:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.pop("NUMBA_CACHE_DIR", None)
    if env:
        full_env.update(env)
    t = time.perf_counter()
    p = subprocess.run([sys.executable, str(HERE / "_probe.py"), *args], capture_output=True,
                       text=True, env=full_env, timeout=timeout)
    wall = time.perf_counter() - t
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"probe {args[:2]} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(line[len("RESULT "):])
    out["process_wall_s"] = wall
    return out


def memory_section(cfg: dict, nt_ok: bool, results: dict) -> None:
    rows = []
    nmax = max(cfg["mlp_ns"])
    for act, depth in cfg["mlp_cases"]:
        for n in cfg["mlp_ns"]:
            spec = {"kind": "mlp", "act": act, "depth": depth, "n": n, "nmax": nmax,
                    "d": cfg["d"]}
            todo = ["tpcompiler"] + (["neural-tangents", "naive"] if n == nmax else [])
            if not nt_ok and "neural-tangents" in todo:
                todo.remove("neural-tangents")
            for peer in todo:
                try:
                    r = _subprocess(["memory", peer, json.dumps(spec)])
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    log(f"  memory {act} d{depth} N={n} {peer}: FAILED {str(e)[-300:]}")
                    continue
                r.update({"act": act, "depth": depth, "n": n})
                rows.append(r)
                log(f"  memory {act} d{depth} N={n} {peer}: peak {fmt_mb(r['peak_bytes'])} MB "
                    f"(outputs {fmt_mb(r['output_bytes'])} MB)")
    results["memory"] = rows


def scale_section(cfg: dict, results: dict) -> None:
    rows = []
    for depth, n in cfg["scale"]:
        reps = 5 if n <= 2000 else 3 if n <= 8000 else 2
        log(f"scaling: relu depth {depth}, N={n}, {reps} run(s) in a fresh process")
        try:
            r = _subprocess(["scale", "relu", str(depth), str(n), str(reps)])
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            log(f"  N={n} depth {depth}: FAILED {str(e)[-300:]}")
            continue
        log(f"  N={n} depth {depth}: {fmt_s(median(r['times']))}, peak {fmt_mb(r['peak_bytes'])}"
            " MB")
        rows.append(r)
    results["scale"] = rows


def _compile_sources(tmp: Path) -> dict:
    srcs = {"relu_mlp.tp": (ROOT / "examples" / "relu_mlp.tp").read_text(),
            "erf_mlp_3": peers.mlp_source("erf", 3), "rnn_erf_8": peers.rnn_source()}
    for act in ("relu", "tanh"):
        for depth in (3, 10, 30, 100):
            srcs[f"{act}_mlp_{depth}"] = peers.mlp_source(act, depth)
    paths = {}
    for name, text in srcs.items():
        p = tmp / (name if name.endswith(".tp") else name + ".tp")
        p.write_text(text)
        paths[name] = p
    return paths


def compile_section(cfg: dict, results: dict) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="tpc_bench_src_") as tmp:
        paths = _compile_sources(Path(tmp))
        for name in cfg["compile_nets"]:
            cold, warm = [], []
            for _ in range(cfg["compile_cold_reps"].get(name, 1)):
                with tempfile.TemporaryDirectory(prefix="tpc_bench_cache_") as cache:
                    try:
                        r = _subprocess(["compile", str(paths[name])], {"TPC_CACHE_DIR": cache})
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        log(f"  compile {name} cold: FAILED {str(e)[-300:]}")
                        continue
                    cold.append(r)
                    log(f"  compile {name} cold: {fmt_s(r['total_s'])} end to end, "
                        f"{fmt_s(r['after_import_s'])} after import")
                    if not warm:
                        for _ in range(cfg["compile_warm_reps"]):
                            try:
                                w = _subprocess(["compile", str(paths[name])],
                                                {"TPC_CACHE_DIR": cache})
                            except (RuntimeError, subprocess.TimeoutExpired) as e:
                                log(f"  compile {name} warm: FAILED {str(e)[-300:]}")
                                continue
                            warm.append(w)
                            log(f"  compile {name} warm: {fmt_s(w['total_s'])} end to end, "
                                f"{fmt_s(w['after_import_s'])} after import")
            if cold:
                rows.append({"name": name, "cold": cold, "warm": warm})
        # where the import time goes
        p = subprocess.run([sys.executable, "-X", "importtime", "-c", "import tpcompiler"],
                           capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        tops = {}
        for ln in p.stderr.splitlines():
            parts = [s.strip() for s in ln.split("|")]
            if len(parts) == 3 and parts[1].isdigit():
                mod = parts[2]
                if not mod.startswith(" ") and "." not in mod.strip():
                    tops[mod.strip()] = int(parts[1]) / 1e6
        results["import_top"] = sorted(tops.items(), key=lambda kv: -kv[1])[:8]
        # where the warm path after import goes (cProfile)
        with tempfile.TemporaryDirectory(prefix="tpc_bench_cache_") as cache:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "TPC_CACHE_DIR": cache}
            code = ("import cProfile, pstats, io, sys, numpy as np, tpcompiler as tp\n"
                    f"src = open({str(paths['relu_mlp.tp'])!r}).read()\n"
                    "tp.compile_source(src).kernels(np.ones((3, 4)))\n")
            subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
            code = ("import cProfile, pstats, io, sys, numpy as np, tpcompiler as tp\n"
                    f"src = open({str(paths['relu_mlp.tp'])!r}).read()\n"
                    "pr = cProfile.Profile(); pr.enable()\n"
                    "tp.compile_source(src).kernels(np.ones((3, 4)))\n"
                    "pr.disable(); s = io.StringIO()\n"
                    "pstats.Stats(pr, stream=s).sort_stats('cumulative').print_stats(25)\n"
                    "print(s.getvalue())\n")
            p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                               text=True)
            results["warm_profile"] = p.stdout[-6000:]
    results["compile"] = rows


# --------------------------------------------------------------------------------------------
# report


def scale_fits(rows: list) -> dict:
    """N -> (a, b, depths): least squares of time / N^2 = a + b depth (ns)."""
    by = {}
    for r in rows:
        by.setdefault(r["n"], []).append((r["depth"], median(r["times"]) / r["n"] ** 2 * 1e9))
    out = {}
    for n, pts in by.items():
        if len({d for d, _ in pts}) < 2:
            continue
        dp = np.array([d for d, _ in pts], float)
        y = np.array([v for _, v in pts])
        b, a = np.polyfit(dp, y, 1)
        out[n] = (float(a), float(b), sorted(int(d) for d in dp))
    return out


def _ratio(a, b):
    return a / b if a and b else None


def report(results: dict, cfg: dict, args) -> str:
    m = results["machine"]
    L = []
    L.append("# tpcompiler benchmarks\n")
    mode = "--quick" if args.quick else "full"
    L.append(f"Generated by `{results['command']}` ({mode} run) on {results['date']}; the run "
             f"took {results['elapsed_s'] / 60:.1f} min. Raw numbers: "
             f"`{Path(getattr(args, 'from_json', None) or args.out).with_suffix('.json').name}`.\n")
    L.append("## Machine\n")
    L.append(f"- CPU: {m.get('cpu')} ({m.get('simd')}), {m.get('logical_cpus')} logical CPUs "
             f"({m.get('usable_cpus')} usable), {m['ram_gib']:.0f} GiB RAM, Linux "
             f"{m.get('kernel')}")
    L.append(f"- Python {m['python']}, numpy {m['numpy']}, numba {m['numba']} (threading layer "
             f"{m['numba_threading_layer']}, SVML {'on' if m['svml'] else 'off'}), tpcompiler "
             f"{m['tpcompiler']}" + (f", jax {m['jax']}, jaxlib {m['jaxlib']}, neural-tangents "
                                     f"{m['neural-tangents']}" if m.get("jax") else
                                     ", neural-tangents not installed"))
    L.append(f"- tpcompiler threads: {m['threads']} (TPC_NUM_THREADS / NUMBA_NUM_THREADS); "
             f"neural-tangents: XLA's CPU thread pool (all cores); naive NumPy: BLAS threads "
             "for x x^T, one thread elsewhere.")
    la0, la1 = results["loadavg_start"], results["loadavg_end"]
    L.append(f"- Load average (1/5/15 min) at start {la0[0]:.1f}/{la0[1]:.1f}/{la0[2]:.1f}, at "
             f"end {la1[0]:.1f}/{la1[1]:.1f}/{la1[2]:.1f}. **The machine is shared** (other "
             "developers run tests on it): wall times are inflated and noisy; every number is "
             "the median of interleaved repetitions (A B C A B C ...), so ratios compare peers "
             "under the same load. Process CPU seconds are recorded as well (JSON).")
    fp0, fp1 = results.get("fingerprint_start"), results.get("fingerprint_end")
    L.append(f"- tpcompiler source fingerprint (hash of every file of the package) {fp0}"
             + ("" if fp0 == fp1 else f" at the start, {fp1} at the end: the package was "
                "edited during the run (others work on it concurrently), so later sections may "
                "have run a slightly different version"))
    L.append(f"- Environment: {results['env']}\n")

    # headline
    if results.get("headline"):
        L.append("## Targets\n")
        L.append("| target | goal | measured | met |")
        L.append("|---|---|---|---|")
        for t in results["headline"]:
            L.append(f"| {t['target']} | {t['goal']} | {t['measured']} | "
                     f"{'yes' if t['met'] else ('n/a' if t['met'] is None else '**no**')} |")
        L.append("")

    if results.get("mlp"):
        L.append("## 1. Closed-form MLPs (relu, erf), NNGP + NTK, x2 = None, d = "
                 f"{cfg['d']}\n")
        L.append("Median wall time of the call that returns both kernels (tpcompiler: "
                 "`net.kernels(X)`; neural-tangents: `jit(kernel_fn)(X, None, get=('nngp', "
                 "'ntk'))` + `block_until_ready`, *warm*; cold = a freshly built network and "
                 "`jax.jit`, first call, trace + XLA compile included; naive: "
                 "`peers.naive_mlp`, N x N arrays per layer). Floor: one acos + one sqrt per "
                 "layer per pair of the upper triangle (incl. diagonal), the acos tpcompiler's "
                 "branch-free one, vectorised over the pairs of a row, independent "
                 "evaluations in a tight Numba loop on all threads (`floor.py`); chained: the "
                 "same count as a per-pair dependent chain (as a recursion is), the pairs of a "
                 "row held in an array. x = speed-up of tpcompiler.\n")
        L.append("| net | N | tpcompiler | NT warm | NT cold | naive NumPy | vs NT warm | "
                 "vs NT cold | vs naive | floor | floor (chained) | tpc / floor | "
                 "tpc / chained | runs |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results["mlp"]:
            tt = median(r["tpcompiler_times"])
            nt = median(r.get("nt_times", []))
            nv = median(r["naive_times"])
            fl = median(r["floor_times"])
            L.append(f"| {r['act']} depth {r['depth']} | {r['n']} | {fmt_s(tt)} | "
                     f"{fmt_s(nt if 'nt_times' in r else None)} | {fmt_s(r.get('nt_cold_s'))} | "
                     f"{fmt_s(nv)} | {fmt_x(_ratio(nt, tt) if 'nt_times' in r else None)} | "
                     f"{fmt_x(_ratio(r.get('nt_cold_s'), tt))} | {fmt_x(_ratio(nv, tt))} | "
                     f"{fmt_s(fl)} | {fmt_s(r['floor_chain_s'])} | {tt / fl:.2f} | "
                     f"{tt / r['floor_chain_s']:.2f} | {len(r['tpcompiler_times'])} |")
        L.append("")
        L.append("Accuracy: max |a - b| / max |b| per kernel (NNGP / NTK), a = tpcompiler. "
                 "Off-diagonal = distinct points; diagonal = each point with itself, where "
                 "neural-tangents evaluates sqrt(q q - k^2) ~ sqrt(eps) (tests/NT_NOTES.md) "
                 "and the naive recursion sets cos = 1 exactly.\n")
        L.append("| net | N | vs NT, off-diagonal | vs NT, diagonal | vs naive, all | "
                 "naive vs NT, diagonal |")
        L.append("|---|---|---|---|---|---|")
        for r in results["mlp"]:
            def pair_(d, key):
                return "-" if d is None else f"{fmt_e(d['nngp'][key])} / {fmt_e(d['ntk'][key])}"
            L.append(f"| {r['act']} depth {r['depth']} | {r['n']} | "
                     f"{pair_(r.get('vs_nt'), 'off')} | {pair_(r.get('vs_nt'), 'diag')} | "
                     f"{pair_(r['vs_naive'], 'all')} | {pair_(r.get('naive_vs_nt'), 'diag')} |")
        L.append("")

    t = results.get("tanh")
    if t:
        L.append(f"## 2. tanh MLP (depth {t['depth']}): quadrature vs neural-tangents' "
                 "ElementwiseNumerical\n")
        L.append("neural-tangents' `ElementwiseNumerical(jnp.tanh, deg)` integrates on a deg x "
                 "deg Gauss-Hermite grid with memory O(deg^2 N^2): at deg 25 it takes ~47 s at "
                 "N = 1000 on this kind of machine and runs out of memory at higher degree, "
                 "hence the small N here (deg 150 at N = 100 needs ~2 GB per intermediate). "
                 "Accuracy is measured against a Gauss-Hermite "
                 f"recursion with {t['ref_order']} x {t['ref_order']} nodes per layer "
                 f"(`peers.naive_mlp_quad`) on the first {t['subset']} points (that block of "
                 "each kernel); the reference's own error is estimated by the same recursion at "
                 f"{t['ref_order'] * 3 // 4} nodes: NNGP {fmt_e(t['ref_self']['nngp'])}, NTK "
                 f"{fmt_e(t['ref_self']['ntk'])}"
                 + (f"; ElementwiseNumerical deg {t['nt_ref']['deg']} agrees with it to "
                    f"{fmt_e(t['nt_ref']['vs_ref']['nngp'])} / "
                    f"{fmt_e(t['nt_ref']['vs_ref']['ntk'])} (NNGP / NTK)" if t.get("nt_ref")
                    else "") + ".\n")
        L.append("| N | peer | warm (median) | cold | error NNGP / NTK | tpcompiler speed-up | "
                 "tpc / floor | runs |")
        L.append("|---|---|---|---|---|---|---|---|")
        for r in t["rows"]:
            tt = median(r["tpcompiler_times"])
            L.append(f"| {r['n']} | tpcompiler | {fmt_s(tt)} | - | "
                     f"{fmt_e(r['err_tpc']['nngp'])} / {fmt_e(r['err_tpc']['ntk'])} | - | "
                     f"{tt / median(r['floor_times']):.0f} | {len(r['tpcompiler_times'])} |")
            for g in r.get("degs", []):
                nt = median(r[f"nt{g}_times"])
                e = r[f"err_nt{g}"]
                L.append(f"| {r['n']} | ElementwiseNumerical deg {g} | {fmt_s(nt)} | "
                         f"{fmt_s(r.get(f'nt{g}_cold_s'))} | {fmt_e(e['nngp'])} / "
                         f"{fmt_e(e['ntk'])} | {fmt_x(nt / tt)} | - | "
                         f"{len(r[f'nt{g}_times'])} |")
        L.append("")

    rn = results.get("rnn")
    if rn:
        L.append(f"## 3. RNN with shared weights ({rn['act']}, T = {rn['T']}), tpcompiler "
                 "only\n")
        L.append("neural-tangents cannot share a weight across layers. The network:\n")
        L.append("```\n" + rn["source"] + "```\n")
        L.append("Accuracy against the GP4A / NTK4A recursion written out in NumPy "
                 f"(`peers.naive_rnn`) on the first {cfg['rnn_subset']} sequences. Floor: "
                 f"{rn['T']} acos + sqrt per pair (one per time step).\n")
        L.append("| N | tpcompiler | floor | tpc / floor | rel diff vs recursion (NNGP / NTK) "
                 "| runs |")
        L.append("|---|---|---|---|---|---|")
        for r in rn["rows"]:
            tt = median(r["tpcompiler_times"])
            fl = median(r["floor_times"])
            L.append(f"| {r['n']} | {fmt_s(tt)} | {fmt_s(fl)} | {tt / fl:.2f} | "
                     f"{fmt_e(r['vs_naive']['nngp'])} / {fmt_e(r['vs_naive']['ntk'])} | "
                     f"{len(r['tpcompiler_times'])} |")
        L.append("")

    if results.get("scale"):
        L.append("## 4. Scaling: time / (N^2 depth), relu MLP, NNGP + NTK\n")
        L.append("tpcompiler alone, each point in a fresh process (`_probe.py scale`; median of "
                 "5 runs up to N = 2000, 3 up to 8000, 2 at 20000). The cost has a part per pair "
                 "that does not depend on depth (Gram entry, output stores, mirror, Python), so "
                 "time / (N^2 depth) falls with depth at fixed N when the per-layer code scales. "
                 "Process CPU time is shown as well: on the shared machine "
                 "it is the steadier measure of work. Peak memory: VmHWM - VmRSS around the "
                 "first call.\n")
        L.append("| N | depth | time | ns / (N^2 depth) | process CPU | CPU ns / (N^2 depth) | "
                 "peak memory (MB) | outputs (MB) |")
        L.append("|---|---|---|---|---|---|---|---|")
        for r in sorted(results["scale"], key=lambda r: (r["n"], r["depth"])):
            tt = median(r["times"])
            cc = median(r["cpu"])
            un = r["n"] ** 2 * r["depth"]
            L.append(f"| {r['n']} | {r['depth']} | {fmt_s(tt)} | {tt / un * 1e9:.2f} | "
                     f"{fmt_s(cc)} | {cc / un * 1e9:.2f} | {fmt_mb(r['peak_bytes'])} | "
                     f"{fmt_mb(2 * r['n'] ** 2 * 8)} |")
        L.append("")
    if results.get("memory"):
        L.append("## 5. Memory\n")
        L.append("Peak resident memory of one call, each in a fresh process (`_probe.py "
                 "memory`): VmHWM - VmRSS from /proc/self/status, with VmHWM reset by writing "
                 "5 to /proc/self/clear_refs just before the call, after a warm-up (compile) "
                 "call. This counts every allocation (NumPy, Numba, XLA), not only "
                 "NumPy-side ones. Outputs = the two N x N float64 kernels.\n")
        L.append("| net | N | outputs (MB) | tpcompiler (MB) | tpc - outputs (MB) | "
                 "neural-tangents (MB) | naive NumPy (MB) |")
        L.append("|---|---|---|---|---|---|---|")
        by = {}
        for r in results["memory"]:
            by.setdefault((r["act"], r["depth"], r["n"]), {})[r["peer"]] = r
        for (act, depth, n), d_ in by.items():
            tp_ = d_.get("tpcompiler")
            L.append(f"| {act} depth {depth} | {n} | {fmt_mb(2 * n * n * 8)} | "
                     f"{fmt_mb(tp_['peak_bytes']) if tp_ else '-'} | "
                     f"{(tp_['peak_bytes'] - tp_['output_bytes']) / 2**20:.2f} | "
                     f"{fmt_mb(d_['neural-tangents']['peak_bytes']) if 'neural-tangents' in d_ else '-'} | "  # noqa: E501
                     f"{fmt_mb(d_['naive']['peak_bytes']) if 'naive' in d_ else '-'} |")
        L.append("")

    if results.get("compile"):
        L.append("## 6. Compile time\n")
        L.append("Each measurement is a new process (`_probe.py compile`). Cold: an empty "
                 "TPC_CACHE_DIR (the generated module and Numba's cache both live there); warm: "
                 "the same directory again. *End to end* = from before `import tpcompiler` to "
                 "the end of the first kernel call on 3 points; *after import* = the same "
                 "without the import. Medians; split of the cold run: lowering (parse + IR), "
                 "kernel program (sympy recursion), render + import of the generated module, "
                 "first call (Numba compile; warm: Numba cache load).\n")
        L.append("| network | cold end to end | cold after import | warm end to end | "
                 "warm after import | import | lower | kernel program | render | first call "
                 "(Numba) | runs cold / warm |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results["compile"]:
            c, w = r["cold"], r["warm"]

            def med(lst, key):
                return median([x[key] for x in lst]) if lst else None
            L.append(f"| {r['name']} | {fmt_s(med(c, 'total_s'))} | "
                     f"{fmt_s(med(c, 'after_import_s'))} | {fmt_s(med(w, 'total_s'))} | "
                     f"{fmt_s(med(w, 'after_import_s'))} | {fmt_s(med(c, 'import_s'))} | "
                     f"{fmt_s(med(c, 'lower_s'))} | {fmt_s(med(c, 'kernel_program_s'))} | "
                     f"{fmt_s(med(c, 'render_import_s'))} | {fmt_s(med(c, 'first_call_s'))} "
                     f"(warm {fmt_s(med(w, 'first_call_s'))}) | {len(c)} / {len(w)} |")
        L.append("")
        L.append("Numba's own compile timers of the cold run (seconds, each inclusive of the "
                 "Numba functions it calls and compiles; `llvm` is the part holding the LLVM "
                 "lock, the rest is Numba's front end: typing, inlining, lowering). Drivers are "
                 "the functions the backend calls from Python; *functions* counts every "
                 "function compiled; n/r: Numba recorded no front-end time (the function was "
                 "first compiled on a pool thread):\n")
        L.append("| network | drivers: compile (llvm) | functions compiled | module lines |")
        L.append("|---|---|---|---|")
        drivers = ("diag", "rows", "mirror", "square", "cross", "point", "pair")
        for r in results["compile"]:
            tm = r["cold"][0]["numba_timers"]
            cells = "; ".join(f"`{k}` {tm[k]['compiler']:.2f} ({tm[k]['llvm']:.2f})"
                              if tm[k]["compiler"] >= tm[k]["llvm"] else
                              f"`{k}` n/r ({tm[k]['llvm']:.2f})" for k in drivers if k in tm)
            L.append(f"| {r['name']} | {cells or '-'} | {len(tm)} | "
                     f"{r['cold'][0]['module_lines']} |")
        L.append("")
        if results.get("import_top"):
            L.append("`python -X importtime -c 'import tpcompiler'`, cumulative seconds of the "
                     "top-level packages: " + ", ".join(f"{k} {v:.2f}"
                                                         for k, v in results["import_top"])
                     + ".\n")

    if results.get("warm_profile"):
        L.append("<details><summary>cProfile of the warm path after import (relu_mlp.tp, "
                 "cache filled)</summary>\n\n```\n" + results["warm_profile"].strip()
                 + "\n```\n</details>\n")

    L.append("## Method\n")
    L.append("- Data: standard normal points, d = 64 (seed 0 for the MLPs, 1 for tanh, 2 for "
             "the RNN, sequences of T vectors); the same arrays go to every peer. x2 = None "
             "(the square kernel), both kernels per call.")
    L.append("- Timing: `time.perf_counter` around one call; repetitions interleaved A B C A B "
             "C in one process; the first round decides the number of rounds "
             f"(budget {cfg['budget_s']:.0f} s per case, between {cfg['min_reps']} and "
             f"{cfg['max_reps']}). tpcompiler's Numba code is compiled (or loaded from "
             "TPC_CACHE_DIR) by a 3-point call before timing; neural-tangents' cold call "
             "compiles it for the shape, later calls are warm. neural-tangents' timings stop "
             "at `block_until_ready` (no copy to NumPy).")
    L.append("- Accuracy: |a - b| / max |b| per kernel, max over entries; neural-tangents in "
             "float64 (jax_enable_x64).")
    L.append("- Files: `run.py` (this report), `peers.py` (neural-tangents networks, naive "
             "recursions, .tp sources), `floor.py`, `_probe.py` (fresh-process measurements).")
    return "\n".join(L) + "\n"


def atomic_write(path: Path, text: str) -> None:
    from tpcompiler.files import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items() if k != "result"}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return o


# --------------------------------------------------------------------------------------------
# targets


def headline(results: dict) -> list:
    out = []
    mlp = {(r["act"], r["depth"], r["n"]): r for r in results.get("mlp", [])}
    key = max((k for k in mlp if k[0] == "relu" and k[1] == 10), default=None,
              key=lambda k: k[2])
    if key:
        r = mlp[key]
        tt = median(r["tpcompiler_times"])
        if "floor_times" in r:
            fl = median(r["floor_times"])
            out.append({"target": f"relu depth 10, N = {key[2]}: tpcompiler / the vectorised "
                        "floor (benchmarks/floor.py)", "goal": "<= 1.5",
                        "measured": f"{tt / fl:.2f} ({fmt_s(tt)} vs {fmt_s(fl)})",
                        "met": tt / fl <= 1.5})
        if "nt_times" in r:
            sp = median(r["nt_times"]) / tt
            out.append({"target": f"relu depth 10, N = {key[2]}, NNGP + NTK: speed vs "
                        "neural-tangents (warm jit)", "goal": ">= 15x",
                        "measured": f"{sp:.1f}x ({fmt_s(tt)} vs {fmt_s(median(r['nt_times']))};"
                        f" vs cold jit {median([r['nt_cold_s']]) / tt:.1f}x)",
                        "met": sp >= 15})
            off = max(r["vs_nt"][k]["off"] for k in ("nngp", "ntk"))
            dg = max(r["vs_nt"][k]["diag"] for k in ("nngp", "ntk"))
            nv = max(r["vs_naive"][k]["all"] for k in ("nngp", "ntk"))
            out.append({"target": "same case: max rel diff vs neural-tangents",
                        "goal": "< 1e-10", "measured": f"off-diagonal {off:.1e}; diagonal "
                        f"{dg:.1e} (NT's own sqrt(eps) error, see section 1; tpcompiler vs "
                        f"naive recursion with exact diagonal: {nv:.1e})",
                        "met": off < 1e-10 and nv < 1e-10})
    for (act, depth, n), r in sorted(mlp.items()):
        if act != "erf" or n != max(k[2] for k in mlp) or "nt_times" not in r:
            continue
        sp = median(r["nt_times"]) / median(r["tpcompiler_times"])
        out.append({"target": f"erf depth {depth}, N = {n}, NNGP + NTK: speed vs "
                    "neural-tangents (warm jit)", "goal": ">= 10x",
                    "measured": f"{sp:.1f}x ({fmt_s(median(r['tpcompiler_times']))} vs "
                    f"{fmt_s(median(r['nt_times']))})", "met": sp >= 10})
    mem = [r for r in results.get("memory", []) if r["peer"] == "tpcompiler"]
    if mem:
        worst = max((r["peak_bytes"] - r["output_bytes"]) for r in mem)
        big = max(mem, key=lambda r: r["n"])
        out.append({"target": "memory: outputs + O(N) per layer",
                    "goal": "peak - outputs = O(N depth)",
                    "measured": f"largest excess over the outputs {worst / 2**20:.1f} MB "
                    f"(N = {big['n']}: peak {fmt_mb(big['peak_bytes'])} MB for "
                    f"{fmt_mb(big['output_bytes'])} MB of outputs)",
                    "met": worst < 64 * 2**20})
    t = results.get("tanh")
    if t and any(r.get("degs") for r in t["rows"]):
        runs = [(r, g) for r in t["rows"] for g in r.get("degs", [])]

        def err(r, g):
            return max(r[f"err_nt{g}"].values())
        best_r, best_g = min(runs, key=lambda rg: (err(*rg), -rg[0]["n"]))
        sp_best = median(best_r[f"nt{best_g}_times"]) / median(best_r["tpcompiler_times"])
        big = max((rg for rg in runs if rg[1] == 25), key=lambda rg: rg[0]["n"], default=None)
        e_tpc = max(best_r["err_tpc"].values())
        msg = (f"{sp_best:.2g}x against the most accurate ElementwiseNumerical measured (deg "
               f"{best_g}, N = {best_r['n']}, error {err(best_r, best_g):.1e}; tpcompiler "
               f"{e_tpc:.1e}, NNGP / NTK max)")
        if big:
            r25 = big[0]
            msg += (f"; {median(r25['nt25_times']) / median(r25['tpcompiler_times']):.2g}x "
                    f"against deg 25 at N = {r25['n']} (error {err(r25, 25):.1e})")
        out.append({"target": "tanh depth 3: speed vs ElementwiseNumerical at equal or better "
                    "accuracy", "goal": ">= 100x", "measured": msg,
                    "met": sp_best >= 100 and e_tpc <= err(best_r, best_g)})
    sc = results.get("scale", [])
    if sc:
        def unit(r, key):  # a toy run can measure 0 s of CPU: never divide by it
            return max(median(r[key]), 1e-9) / (r["n"] ** 2 * r["depth"])
        by = {(r["depth"], r["n"]): r for r in sc}
        big = max(r["n"] for r in sc)
        ref_n = max((r["n"] for r in sc if r["n"] <= 4000 and r["n"] < big), default=None)
        parts, worst = [], 1.0
        if ref_n:
            for dp in sorted({d for d, n in by if n == big and (d, ref_n) in by}):
                w = unit(by[(dp, big)], "times") / unit(by[(dp, ref_n)], "times")
                c = unit(by[(dp, big)], "cpu") / unit(by[(dp, ref_n)], "cpu")
                worst = max(worst, c)
                parts.append(f"depth {dp}: per N^2 depth at N = {big} vs {ref_n}: wall {w:.2f}x, "
                             f"CPU {c:.2f}x")
        deep = sorted({d for d, _ in by})
        if len(deep) >= 2:
            n_d = max((n for d, n in by if d == deep[-1]), default=None)
            d0 = max((d for d in deep[:-1] if (d, n_d) in by), default=None)
            if n_d and d0:
                c = unit(by[(deep[-1], n_d)], "cpu") / unit(by[(d0, n_d)], "cpu")
                worst = max(worst, c)
                parts.append(f"depth {deep[-1]} vs {d0} at N = {n_d}: CPU per N^2 depth {c:.2f}x")
        out.append({"target": f"cost ~ N^2 depth up to N = {big}",
                    "goal": "no superlinear surprise", "measured": "; ".join(parts),
                    "met": worst <= 1.5})
        # per pair-layer at depth 50 against depth 10 (wall time: the cost a user sees)
        pairs = [(n, unit(by[(50, n)], "times") / unit(by[(10, n)], "times"))
                 for n in sorted({n for _, n in by}) if (50, n) in by and (10, n) in by]
        if pairs:
            out.append({"target": "per pair-layer cost at depth 50 against depth 10",
                        "goal": "<= 1.2x", "measured": ", ".join(f"N = {n}: {q:.2f}x"
                                                                 for n, q in pairs),
                        "met": max(q for _, q in pairs) <= 1.2})
    comp = {r["name"]: r for r in results.get("compile", [])}
    for act in ("relu", "tanh"):
        rows = [(dp, comp[f"{act}_mlp_{dp}"]) for dp in (10, 30, 100) if f"{act}_mlp_{dp}" in comp]
        if not rows:
            continue
        cold = [(dp, median([x["total_s"] for x in c["cold"]])) for dp, c in rows]
        warm = [(dp, median([x["total_s"] for x in c["warm"]])) for dp, c in rows if c["warm"]]
        out.append({"target": f"compile + first call, {act} MLP depth 10 / 30 / 100, cold / warm",
                    "goal": "< 3 s / < 0.5 s",
                    "measured": "cold " + ", ".join(f"{t:.2f} s" for _, t in cold) + "; warm "
                    + ", ".join(f"{t:.2f} s" for _, t in warm),
                    "met": all(t < 3 for _, t in cold) and all(t < 0.5 for _, t in warm)})
    if "relu_mlp.tp" in comp:
        c = comp["relu_mlp.tp"]
        cold = median([x["total_s"] for x in c["cold"]])
        cold_ai = median([x["after_import_s"] for x in c["cold"]])
        warm = median([x["total_s"] for x in c["warm"]])
        warm_ai = median([x["after_import_s"] for x in c["warm"]])
        out.append({"target": "compile, relu MLP (examples/relu_mlp.tp), cold",
                    "goal": "< 3 s", "measured": f"{cold:.2f} s end to end ({cold_ai:.2f} s "
                    "after import)", "met": cold < 3})
        out.append({"target": "compile, relu MLP, warm (cache filled)", "goal": "< 0.5 s",
                    "measured": f"{warm:.2f} s end to end ({warm_ai:.2f} s after import)",
                    "met": warm < 0.5})
    return out


def gate(results: dict) -> list:
    """Failures of the closed-form agreement check (--quick's exit status)."""
    bad = []
    for r in results.get("mlp", []):
        for k in ("nngp", "ntk"):
            if "vs_nt" in r and r["vs_nt"][k]["off"] > GATE:
                bad.append(f"{r['act']} depth {r['depth']} N={r['n']} {k}: off-diagonal rel "
                           f"diff vs neural-tangents {r['vs_nt'][k]['off']:.2e} > {GATE}")
            if r["vs_naive"][k]["all"] > GATE:
                bad.append(f"{r['act']} depth {r['depth']} N={r['n']} {k}: rel diff vs naive "
                           f"recursion {r['vs_naive'][k]['all']:.2e} > {GATE}")
    for r in (results.get("rnn") or {}).get("rows", []):
        for k in ("nngp", "ntk"):
            if r["vs_naive"][k] > GATE:
                bad.append(f"rnn N={r['n']} {k}: rel diff vs GP4A recursion "
                           f"{r['vs_naive'][k]:.2e} > {GATE}")
    return bad


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized run (< 60 s)")
    ap.add_argument("--out", default=None, help="Markdown report path (default "
                    "benchmarks/results.md; with --quick benchmarks/results-quick.md)")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: mlp, tanh, "
                    "rnn, memory, scale, compile")
    ap.add_argument("--no-nt", action="store_true", help="do not use neural-tangents")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--from-json", metavar="JSON", help="only rebuild the report from a "
                    "previous run's JSON, next to it (JSON's name with .md) unless --out")
    args = ap.parse_args(argv)
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        args.quick = results.get("quick", False)
        results["headline"] = headline(results)
        cfg = dict(QUICK if args.quick else FULL)
        if args.out is None:  # never the full report's name for another run's numbers
            args.out = str(Path(args.from_json).with_suffix(".md"))
        atomic_write(Path(args.out), report(results, cfg, args))
        log(f"wrote {args.out} from {args.from_json}")
        return 0
    if args.out is None:
        args.out = str(HERE / ("results-quick.md" if args.quick else
                               "results-smoke.md" if args.smoke else "results.md"))
    cfg = dict(QUICK if args.quick else SMOKE if args.smoke else FULL)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    started = time.time()
    out_path = Path(args.out)
    if not args.quick and out_path.resolve() == (HERE / "results.md").resolve() and skip:
        log("note: sections skipped; the report will not contain them")

    results = {"command": " ".join(shlex.quote(a) for a in
                                   ["python", os.path.relpath(__file__, os.getcwd()),
                                    *(argv if argv is not None else sys.argv[1:])]),
               "date": time.strftime("%Y-%m-%d %H:%M %Z"), "loadavg_start": os.getloadavg(),
               "quick": args.quick}
    results["env"] = ", ".join(f"{k}={os.environ[k]}" for k in
                               ("TPC_NUM_THREADS", "NUMBA_NUM_THREADS", "TPC_CACHE_DIR",
                                "OMP_NUM_THREADS", "XLA_FLAGS") if k in os.environ) or \
        "no TPC_/NUMBA_/XLA_ variables set"

    nt_ok = False
    if not args.no_nt:
        try:
            peers.nt_import()
            nt_ok = True
        except ImportError as e:
            print(f"neural-tangents is not available ({e}); install it with: "
                  f"{peers.NT_INSTALL} -- running without it", flush=True)
    results["machine"] = machine()
    results["fingerprint_start"] = fingerprint()
    m = results["machine"]
    log(f"machine: {m['cpu']}, {m['logical_cpus']} CPUs, {m['ram_gib']:.0f} GiB; tpcompiler "
        f"threads {m['threads']}; neural-tangents {'yes' if nt_ok else 'no'}; load "
        f"{results['loadavg_start'][0]:.1f}")
    floor.warm()

    if "mlp" not in skip:
        closed_form_mlps(cfg, nt_ok, results)
    if "tanh" not in skip:
        tanh_section(cfg, nt_ok, results)
    if "rnn" not in skip:
        rnn_section(cfg, results)
    if cfg["memory"] and "memory" not in skip:
        log("memory (a fresh process per measurement)")
        memory_section(cfg, nt_ok, results)
    if cfg["scale"] and "scale" not in skip:
        scale_section(cfg, results)
    if cfg["compile_nets"] and "compile" not in skip:
        log("compile time (fresh processes, empty / filled TPC_CACHE_DIR)")
        compile_section(cfg, results)
    results["loadavg_end"] = os.getloadavg()
    results["fingerprint_end"] = fingerprint()
    results["headline"] = headline(results)
    results["elapsed_s"] = time.time() - started
    bad = gate(results)
    results["gate_failures"] = bad
    text = report(results, cfg, args)
    atomic_write(out_path, text)
    atomic_write(out_path.with_suffix(".json"), json.dumps(_jsonable(results), indent=1))
    log(f"wrote {out_path} ({results['elapsed_s']:.0f} s)")
    for t in results["headline"]:
        log(f"target: {t['target']}: {t['measured']} -> "
            f"{'met' if t['met'] else 'n/a' if t['met'] is None else 'MISSED'}")
    if bad:
        for b in bad:
            print("FAIL: " + b, file=sys.stderr)
        return 1
    if args.quick:
        log("agreement check passed (closed forms within "
            f"{GATE:g} of {'neural-tangents and ' if nt_ok else ''}the naive recursion)"
            + ("" if nt_ok else "; neural-tangents NOT checked (not installed)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
