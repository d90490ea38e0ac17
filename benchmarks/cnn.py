#!/usr/bin/env python
"""CNN kernels: tpcompiler against neural-tangents (JAX, CPU, float64, jitted, batched with
nt.batch where the N^2 P^2 arrays would not fit), one run, same machine. Writes the CNN section
of benchmarks/results.md (between the `<!-- cnn -->` markers).

    python benchmarks/cnn.py            # the full table (~15 min on 2 cores)
    python benchmarks/cnn.py --quick    # a small smoke run (< 2 min)

Cases (neural-tangents' stax, parameterization='ntk'):
  CNN-GAP      5 x [Conv(3x3, SAME, W_std^2=2, b_std^2=0.1), Relu], GlobalAvgPool, Dense
  CNN-Flatten  the same convs, Flatten, Dense (only each pair's position-diagonal is needed)
on scikit-learn's digits (8 x 8 x 1, standardised) and on random 16 x 16 x 3 images;
  LN-MLP       5 x [Dense(W_std^2=2, b_std^2=0.1), LayerNorm, Relu], Dense: LayerNorm of a
               Gaussian pre-activation, where neural-tangents' LayerNorm is the limit
  relu-LN-MLP  5 x [Dense, Relu, LayerNorm], Dense: LayerNorm after relu (a non-Gaussian
               input with a nonzero mean); neural-tangents refuses it ("LayerNorm only
               implemented for Gaussian inputs"), so the row has our time alone
on the digits as 64-dimensional vectors.
Each timing is the median of the repetitions after one warm-up call (compilation excluded:
the tpcompiler module and NT's jit are warm); peak memory is the child process's max RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

import sections  # noqa: E402

DEPTH = 5
MLPS = ("ln", "ln-relu")
NAMES = {"gap": "CNN-GAP", "flatten": "CNN-Flatten", "ln": "LN-MLP",
         "ln-relu": "relu-LN-MLP"}


def source(readout: str, grid: tuple[int, int]) -> str:
    if readout in MLPS:
        layer = "h = dense(relu(layernorm(h)), var=2.0, bias=0.1)" if readout == "ln" else \
            "h = dense(layernorm(relu(h)), var=2.0, bias=0.1)"
        last = "relu(layernorm(h))" if readout == "ln" else "layernorm(relu(h))"
        return "\n".join(["input x", "h = dense(x, var=2.0, bias=0.1)"]
                         + [layer] * (DEPTH - 1) + [f"y = readout({last}, var=1.0)", ""])
    body = "\n".join(["h = conv(img, size=3, var=2.0, bias=0.1)"]
                     + ["h = conv(relu(h), size=3, var=2.0, bias=0.1)"] * (DEPTH - 1))
    out = "y = readout(gap(relu(h)), var=1.0)" if readout == "gap" else \
        "y = readout(relu(h), var=1.0)"
    return f"input img[{grid[0]}, {grid[1]}]\n{body}\n{out}\n"


def nt_layers(readout: str) -> tuple:
    if readout in MLPS:
        act = (("layernorm", 0.0), ("act", "relu")) if readout == "ln" else \
            (("act", "relu"), ("layernorm", 0.0))
        return (("dense", 2.0, 0.1),) + (act + (("dense", 2.0, 0.1),)) * (DEPTH - 1) + act \
            + (("dense", 1.0, 0.0),)
    conv = ("conv", 2.0, 0.1, 3, "same", 2)
    layers = (conv,) + (("act", "relu"), conv) * (DEPTH - 1) + (("act", "relu"),)
    return layers + ((("gap",) if readout == "gap" else ("flatten",)), ("dense", 1.0, 0.0))


def data(kind: str, n: int, flat: bool = False):
    import numpy as np

    if kind == "digits":
        from sklearn.datasets import load_digits

        x = load_digits().data[:n].astype(np.float64)
        x = (x - x.mean()) / x.std()
        return x if flat else x.reshape(-1, 8, 8, 1)
    return np.random.default_rng(0).standard_normal((n, 16, 16, 3))


def child(args) -> None:
    """One measurement in a fresh process: prints JSON {seconds, reps, rss_mb}."""
    import numpy as np

    x = data(args.data, args.n, args.readout in MLPS)
    grid = x.shape[1:3]
    reps = []
    if args.who == "tpc":
        import tpcompiler as tpc

        net = tpc.compile_source(source(args.readout, grid))
        net.kernels(x[:4])  # compile (the cache may hold it)
        for _ in range(args.reps):
            t = time.perf_counter()
            k = net.kernels(x)
            reps.append(time.perf_counter() - t)
        result = {"nngp": k["nngp"], "ntk": k["ntk"]}
    else:
        import nt_reference as ntr

        jax, jnp, stax = ntr._nt()
        import neural_tangents as nt

        layers = [ntr._cnn_layer(stax, jnp, it) for it in nt_layers(args.readout)]
        _, _, kfn = stax.serial(*layers)
        batch = args.batch
        fn = nt.batch(kfn, batch_size=batch, store_on_device=False) if batch else \
            jax.jit(kfn, static_argnames=("get",))
        xj = jnp.asarray(x)
        fn(xj[: batch or 4], None, get=("nngp", "ntk"))
        for _ in range(args.reps):
            t = time.perf_counter()
            k = fn(xj, None, get=("nngp", "ntk"))
            nn = np.asarray(k.nngp)
            reps.append(time.perf_counter() - t)
        result = {"nngp": nn, "ntk": np.asarray(k.ntk)}
    np.savez(args.out, **result)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": statistics.median(reps), "reps": reps, "rss_mb": rss}))


def measure(who, readout, kind, n, reps, batch, tmp: Path) -> dict:
    out = tmp / f"{who}-{readout}-{kind}-{n}.npz"
    cmd = [sys.executable, __file__, "--child", who, "--readout", readout, "--data", kind,
           "--n", str(n), "--reps", str(reps), "--batch", str(batch or 0), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
    if r.returncode != 0:  # the exception's own line, not JAX's note after it
        lines = [ln for ln in r.stderr.strip().splitlines() if "Error: " in ln]
        return {"error": (lines or r.stderr.strip().splitlines() or ["failed"])[-1]}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["file"] = str(out)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", choices=("tpc", "nt"))
    ap.add_argument("--readout", default="gap")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--out", default="")
    ap.add_argument("--report", default=str(HERE / "results.md"))
    ap.add_argument("--only", help="run only these networks (comma-separated: gap, flatten, "
                    "ln, ln-relu); rows of several runs' logs, concatenated, go to --from-log")
    ap.add_argument("--floor", action="store_true",
                    help="measure the stencil's arithmetic floor (benchmarks/floor.py) for the "
                         "CNN-GAP cases instead; its JSON lines join a log for --from-log")
    ap.add_argument("--from-log", help="rebuild the report from the JSON lines a run printed")
    args = ap.parse_args(argv)
    if args.child:
        args.who = args.child
        args.batch = args.batch or None
        child(args)
        return 0
    if args.from_log:
        lines = Path(args.from_log).read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.startswith('{"readout"')]
        floors = {(f["readout"], f["data"], f["n"]): f["floor"]
                  for f in map(json.loads, (ln for ln in lines if ln.startswith('{"floor"')))}
        for r in rows:
            r["err"] = differences(r["ours"], r["nt"])
            r["floor"] = floors.get((r["readout"], r["data"], r["n"]))
        write(args.report, rows, tuple(json.loads(Path(args.from_log + ".load").read_text()))
              if Path(args.from_log + ".load").exists() else (float("nan"),) * 3)
        return 0
    cases = [("gap", "digits", 100), ("flatten", "digits", 200)] if args.quick else [
        ("gap", "digits", 200), ("gap", "digits", 500),
        ("flatten", "digits", 200), ("flatten", "digits", 1000),
        ("gap", "random16", 100), ("flatten", "random16", 200),
        ("ln", "digits", 1797), ("ln-relu", "digits", 1797)]
    if args.only:
        cases = [c for c in cases if c[0] in args.only.split(",")]
    if args.floor:
        import floor

        for readout, kind, n in cases:
            if readout == "gap":
                side = 8 if kind == "digits" else 16
                t = statistics.median(floor.stencil_floor_time(n, side, DEPTH)
                                      for _ in range(3))
                print(json.dumps({"floor": t, "readout": readout, "data": kind, "n": n,
                                  "side": side}), flush=True)
        return 0
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "tpc_cnn_bench"
    tmp.mkdir(exist_ok=True)
    load = os.getloadavg()
    print(json.dumps({"load": load}), flush=True)
    rows = []
    for readout, kind, n in cases:
        p = 1 if readout in MLPS else 64 if kind == "digits" else 256
        # NT's intermediate arrays are N^2 P^2 float64 (per pair of a batch): keep them near
        # 1 GB, a divisor of N
        per = max(1, int((2 ** 27 / (p * p)) ** 0.5))
        batch = next((b for b in range(min(per, n), 0, -1) if n % b == 0), 1) \
            if n * n * p * p > 2 ** 27 else 0
        reps = 3 if readout in MLPS or n < 1000 else 1
        ours = measure("tpc", readout, kind, n, reps, 0, tmp)
        theirs = measure("nt", readout, kind, n, reps, batch, tmp)
        err = differences(ours, theirs)
        rows.append({"readout": readout, "data": kind, "n": n, "ours": ours, "nt": theirs,
                     "batch": batch, "err": err})
        print(json.dumps(rows[-1]), flush=True)
    write(args.report, rows, load)
    return 0


def differences(ours: dict, theirs: dict) -> dict | None:
    """kind -> (largest difference between different points, at identical points), relative
    to the largest entry of neural-tangents' kernel."""
    import numpy as np

    if "file" not in ours or "file" not in theirs:
        return None
    a, b = np.load(ours["file"]), np.load(theirs["file"])
    out = {}
    for k in a.files:
        d = np.abs(a[k] - b[k]) / np.abs(b[k]).max()
        same = float(d.diagonal().max())
        np.fill_diagonal(d, 0.0)
        out[k] = (float(d.max()), same)
    return out


def write(path: str, rows: list, load) -> None:
    import nt_reference as ntr

    jax = ntr._nt()[0]
    nt = sys.modules["neural_tangents"]

    lines = ["## CNN kernels (issue 16)", "",
             f"{sections.machine(load)}; JAX {jax.__version__}, neural-tangents "
             f"{nt.__version__} (jit, float64, nt.batch where N^2 P^2 does not fit in ~1 GB). "
             "`python benchmarks/cnn.py`; depth 5 (3 x 3 SAME convs or dense layers), relu, NNGP + "
             "NTK, compile excluded; the LN rows are MLPs on the digits as vectors (see the "
             "script's docstring).", "",
             "| network | data | N | tpcompiler | neural-tangents | ratio | peak RSS ours / NT "
             "| time per pair-layer (hand-vectorised stencil) | max rel. diff (other points / "
             "identical points) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, t = r["ours"], r["nt"]
        if "seconds" not in o or "seconds" not in t:
            cell = [f"{v['seconds']:.2f} s" if "seconds" in v else v.get("error")
                    for v in (o, t)]
            lines.append(f"| {NAMES[r['readout']]} | {r['data']} | {r['n']} | {cell[0]} | "
                         f"{cell[1]} | | | | |")
            continue
        pairs = r["n"] * (r["n"] + 1) / 2
        per = o["seconds"] / (pairs * DEPTH) * 1e6
        low = f" ({r['floor'] / (pairs * DEPTH) * 1e6:.1f} us)" if r.get("floor") else ""
        unit = "us"
        if r["readout"] in MLPS:  # one position: nanoseconds
            per, unit = per * 1e3, "ns"
        err = r["err"] or {}
        off = max((v[0] for v in err.values()), default=float("nan"))
        same = max((v[1] for v in err.values()), default=float("nan"))
        lines.append(f"| {NAMES[r['readout']]} | {r['data']} | "
                     f"{r['n']} | {o['seconds']:.2f} s | {t['seconds']:.2f} s"
                     f"{' (batch ' + str(r['batch']) + ')' if r['batch'] else ''} | "
                     f"{t['seconds'] / o['seconds']:.1f}x | {o['rss_mb']:.0f} / "
                     f"{t['rss_mb']:.0f} MB | {per:.1f} {unit}{low} | {off:.1e} / {same:.1e} |")
    sections.replace(path, "cnn", lines)

if __name__ == "__main__":
    sys.exit(main())
