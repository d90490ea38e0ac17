"""Measurements that need a fresh process; run by benchmarks/run.py, one JSON line on stdout.

    python benchmarks/_probe.py compile SOURCE_FILE        # TPC_CACHE_DIR set by the caller
    python benchmarks/_probe.py memory PEER SPEC_JSON      # peak RSS of one kernel call
    python benchmarks/_probe.py scale ACT DEPTH N REPS     # tpcompiler alone at large N
    python benchmarks/_probe.py call ACT DEPTH N REPS      # plain call times (BLAS experiment)

compile: times from before `import tpcompiler` to the end of the first kernel call on a tiny
input (3 points), split into import / lowering (text -> IR) / kernel program (the recursion,
sympy) / render + import of the generated module / first call (Numba compile, or load from its
cache), plus Numba's own compile timers of the generated drivers (inclusive of their callees).

memory: peak resident set of one call. After a warm-up (tpcompiler: one call on 3 points, so
that Numba's code is compiled; neural-tangents: one full-size call, so that XLA's is; naive: a
3-point call), the kernel's peak is VmHWM - VmRSS(before) from /proc/self/status, with VmHWM
reset just before the call by writing 5 to /proc/self/clear_refs (Linux >= 4.0). Where that
reset is refused the warm-up's peak is a floor under VmHWM, and the result says so.
"""

from __future__ import annotations

import json
import os
import sys
import time

T_START = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (0 where unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def compile_probe(path: str) -> dict:
    t0 = time.perf_counter()
    import tpcompiler as tp  # noqa: E402 - timed
    t1 = time.perf_counter()
    import numpy as np

    with open(path, encoding="utf-8") as f:
        text = f.read()
    net = tp.compile_source(text, path)
    t2 = time.perf_counter()
    kp_cached = True
    try:
        # the cache index is consulted first by the API: a warm process never builds the
        # kernel program, so only build it here when the index has no entry (cold)
        from tpcompiler.backends import cache

        kp_cached = cache.read_index(net._cache_key) is not None
    except Exception:  # private API changed: fall back to the public path
        kp_cached = False
    if not kp_cached:
        net.kernel_program  # noqa: B018
    t3 = time.perf_counter()
    net.prepare()
    t4 = time.perf_counter()
    shapes = [(i.name, i.length) for i in net.ir.inputs]
    x = np.linspace(-1.0, 1.0, 3 * 4 * (shapes[0][1] or 1)).reshape(
        (3, 4) if shapes[0][1] is None else (3, shapes[0][1], 4))
    k = net.kernels(x)
    t5 = time.perf_counter()
    assert all(np.isfinite(v).all() for v in k.values())
    timers = {}
    source_lines = None
    try:
        import inspect

        import numba

        module = net._module
        for name, f in vars(module).items():
            if isinstance(f, numba.core.registry.CPUDispatcher):
                for cres in f.overloads.values():
                    tm = (cres.metadata or {}).get("timers") or {}
                    if tm:
                        timers[name] = {"compiler": tm.get("compiler_lock", 0.0),
                                        "llvm": tm.get("llvm_lock", 0.0)}
        source_lines = len(inspect.getsource(module).splitlines())
    except Exception:
        pass
    return {"import_s": t1 - t0, "lower_s": t2 - t1, "kernel_program_s": t3 - t2,
            "render_import_s": t4 - t3, "first_call_s": t5 - t4, "after_import_s": t5 - t1,
            "total_s": t5 - t0, "since_interpreter_start_s": t5 - T_START,
            "index_was_cached": kp_cached, "numba_timers": timers,
            "module_lines": source_lines}


def _make_data(spec: dict):
    import numpy as np

    rng = np.random.default_rng(spec.get("seed", 0))
    if spec["kind"] == "rnn":
        return rng.normal(size=(spec["nmax"], spec["T"], spec["d"]))[: spec["n"]]
    return rng.normal(size=(spec["nmax"], spec["d"]))[: spec["n"]]


def memory_probe(peer: str, spec: dict) -> dict:
    sys.path.insert(0, HERE)
    import peers

    x = _make_data(spec)
    tiny = x[:3]
    if peer == "tpcompiler":
        import tpcompiler as tp

        src = (peers.rnn_source(spec["T"]) if spec["kind"] == "rnn"
               else peers.mlp_source(spec["act"], spec["depth"]))
        net = tp.compile_source(src)
        net.kernels(tiny)

        def call():
            return net.kernels(x)
    elif peer == "neural-tangents":
        fn = peers.nt_mlp_fn(spec["act"], spec["depth"], spec.get("deg", 25))
        peers.nt_call(fn, x)  # compile for this shape

        def call():
            return peers.nt_call(fn, x)
    elif peer == "naive":
        peers.naive_mlp(tiny, spec["act"], spec["depth"])

        def call():
            return peers.naive_mlp(x, spec["act"], spec["depth"])
    else:
        raise ValueError(peer)
    import gc

    gc.collect()
    reset = _reset_hwm()
    rss0, hwm0 = _status("VmRSS"), _status("VmHWM")
    t = time.perf_counter()
    res = call()
    dt = time.perf_counter() - t
    hwm1 = _status("VmHWM")
    out_bytes = 2 * x.shape[0] ** 2 * 8
    del res
    return {"peer": peer, "peak_bytes": hwm1 - rss0, "rss_before": rss0, "hwm_before": hwm0,
            "hwm_after": hwm1, "hwm_reset": reset, "output_bytes": out_bytes, "time_s": dt,
            "method": "VmHWM - VmRSS, clear_refs reset" if reset else "VmHWM delta (no reset)"}


def scale_probe(act: str, depth: int, n: int, reps: int) -> dict:
    sys.path.insert(0, HERE)
    import floor
    import numpy as np
    import peers

    import tpcompiler as tp

    x = np.random.default_rng(0).normal(size=(n, 64))
    net = tp.compile_source(peers.mlp_source(act, depth))
    net.kernels(x[:3])
    times, cpus = [], []
    peak = None
    reset = False
    for r in range(reps):
        import gc

        gc.collect()
        if r == 0:
            reset = _reset_hwm()
            rss0 = _status("VmRSS")
        c = _cpu()
        t = time.perf_counter()
        k = net.kernels(x)
        times.append(time.perf_counter() - t)
        cpus.append(_cpu() - c)
        if r == 0:
            peak = _status("VmHWM") - rss0
            ok = bool(np.isfinite(k["nngp"]).all() and np.isfinite(k["ntk"]).all())
        del k
    return {"act": act, "depth": depth, "n": n, "times": times, "cpu": cpus, "peak_bytes": peak,
            "hwm_reset": reset, "finite": ok, "threads": floor.threads(),
            "loadavg": os.getloadavg()}


def call_probe(act: str, depth: int, n: int, reps: int) -> dict:
    """Times of `reps` calls net.kernels(x) (relu/erf MLP, N x 64), in this process's
    environment (the caller sets e.g. OPENBLAS_NUM_THREADS)."""
    sys.path.insert(0, HERE)
    import numpy as np
    import peers

    import tpcompiler as tp

    x = np.random.default_rng(0).normal(size=(n, 64))
    net = tp.compile_source(peers.mlp_source(act, depth))
    net.kernels(x[:3])
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        net.kernels(x)
        times.append(time.perf_counter() - t)
    return {"times": times, "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "compile":
        out = compile_probe(argv[1])
    elif mode == "memory":
        out = memory_probe(argv[1], json.loads(argv[2]))
    elif mode == "call":
        out = call_probe(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
    elif mode == "scale":
        out = scale_probe(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
