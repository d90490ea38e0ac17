"""Exactness off the closed-form paths: per family of programs, the largest integral dimension,
time per pair and error against an independent reference (issue 13's before/after table).

    python benchmarks/exactness.py [--label after] [--json out.json]

Run it once on the tree before a change (PYTHONPATH pointing at that checkout) and once after,
then `--table before.json after.json` writes the Markdown table. References: tests/reference.py
(nested adaptive scipy quadrature split at the kinks) for the one-layer families, the same
through a hand derivation of the NTK for tanh(h) * tanh(dense(h)), and composite Gauss-Legendre
4-D integrals for tanh(u) * tanh(u + w) (two resolutions: their difference is the reference's
own error, reported); reference-free consistency for all (a duplicated row against the
diagonal, the smallest eigenvalue relative to the largest).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

FAMILIES = {
    "tanh(h) * tanh(dense(h)), var 4": (
        "input x\nh = dense(x, var=4.0, bias=0.1)\nh = tanh(h) * tanh(dense(h, var=4.0))\n"
        "y = readout(h)\n", None),
    "tanh(u) * tanh(u + w), var 5": (
        "input x\nu = dense(x, var=5.0)\nw = dense(x, var=5.0)\n"
        "y = readout(tanh(u) * tanh(u + w))\n", None),
    "hardtanh relu(g+1) - relu(g-1) - 1": (None, "hardtanh"),
    "relu6": (None, "relu6"),
    "leaky_relu(g - 1)": (None, "leaky_shift"),
    "step(g + 0.5)": (None, "step_shift"),
    "tanh(g + 0.5) relu(g - 0.3)": (None, "tanh_relu"),
    "swish(dense(x) + b) (user act)": (
        "act swish(z) = z * sigmoid(z)\ninput x\nh = dense(x, var=2.0, bias=0.05)\n"
        "y = readout(swish(h))\n", None),
    "sin(30 dense(x)) (SIREN)": ("input x\ny = readout(sin(30 * dense(x)))\n", None),
    "sign(g) ** 2, a zero row": ("input x\ng = dense(x)\ny = readout(sign(g) ** 2)\n", None),
    "relu(leaky_relu(g) + 0.5) (kink of a kink)": (None, "relu_leaky"),
    "abrelu(cos(g)) (kinks at the zeros of cos)": (None, "abrelu_cos"),
    "relu(h - 0.5) * tanh(h + g) (two matrices)": (
        "input x\nh = dense(x, var=2.0, bias=0.1)\ng = dense(x, var=1.0)\n"
        "y = readout(relu(h - 0.5) * tanh(h + g))\n", None),
    "relu(h) * step(h + g - 1) (kinks in every coordinate)": (
        "input x\nh = dense(x, var=2.0, bias=0.1)\ng = dense(x, var=1.0)\n"
        "y = readout(relu(h) * step(h + g - 1))\n", None),
}
VAR, BIAS = 2.0, 0.1


def _data(name: str, n: int, rng) -> np.ndarray:
    x = rng.normal(size=(n, 3))
    x[1] = x[0] + 1e-5 * rng.normal(size=3)  # nearly collinear
    x[2] = x[0]  # duplicate
    x[3] = -x[4]  # antipodal
    if "zero row" in name:
        x[5] = 0.0
    return x


def _references() -> dict:
    """family -> (X -> (reference kernels, the reference's own error or 0))."""
    from reference import (
        kinked_every_coordinate,
        kinked_two_vectors,
        tanh_product_layer,
        tanh_two_vectors,
    )

    def two_vectors(x):
        ref = tanh_two_vectors(x, 5.0, nodes=10)
        fine = tanh_two_vectors(x, 5.0, nodes=12)
        return fine, max(float(np.max(np.abs(ref[k] - fine[k])) / np.max(np.diag(fine[k])))
                         for k in fine)

    return {"tanh(h) * tanh(dense(h)), var 4": lambda x: (tanh_product_layer(x, 4.0, 0.1), 0.0),
            "tanh(u) * tanh(u + w), var 5": two_vectors,
            "relu(h - 0.5) * tanh(h + g) (two matrices)":
                lambda x: (kinked_two_vectors(x, 2.0, 0.1, 1.0, 0.5), 0.0),
            "relu(h) * step(h + g - 1) (kinks in every coordinate)":
                lambda x: (kinked_every_coordinate(x, 2.0, 0.1, 1.0, 0.0, 1.0), 0.0)}


def measure(n_time: int = 200, n_ref: int = 6, only: str | None = None) -> dict:
    import tpcompiler as tp

    from reference import ACTS, CURVED, one_layer

    acts = {**ACTS, **CURVED}

    refs = _references()

    out = {}
    for name, (src, act) in FAMILIES.items():
        if only and only not in name:
            continue
        rng = np.random.default_rng(0)
        if src is None:
            src = f"input x\ng = dense(x, var={VAR}, bias={BIAS})\ny = readout({acts[act][0]})\n"
        row = {}
        try:
            net = tp.compile_source(src)
            kp = net.kernel_program
            row["dim"] = max((q.dim for q in kp.integrands), default=0)
            xs = _data(name, n_ref, rng)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                K = net.kernels(xs)
            row["warned"] = sorted({w.category.__name__ for w in caught
                                    if w.category.__name__ == "TPWarning"})
            row["dup_vs_diag"] = max(abs(K[k][0, 0] - K[k][0, 2]) / abs(K[k][0, 0])
                                     for k in K)
            row["nan"] = bool(any(np.isnan(K[k]).any() for k in K))
            if not row["nan"]:
                row["min_eig"] = min(float(np.linalg.eigvalsh(K[k])[0] /
                                           max(np.linalg.eigvalsh(K[k])[-1], 1e-300))
                                     for k in K)
            ref = None
            if act is not None:
                ref = one_layer(act, xs, VAR, BIAS)
            elif name in refs:
                ref, row["ref_err"] = refs[name](xs)
            if ref is not None:
                row["err"] = max(float(np.max(np.abs(K[k] - ref[k])) /
                                       np.max(np.abs(np.diag(ref[k])))) for k in K)
            X = rng.normal(size=(n_time, 3))
            net.kernels(X[:4])  # compile (and the probe on other data)
            pairs = n_time * (n_time + 1) / 2
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = time.perf_counter()
                net.kernels(X)  # new data: the accuracy probe runs (a fixed cost per call)
                row["us_per_pair_first"] = 1e6 * (time.perf_counter() - t) / pairs
                t = time.perf_counter()
                net.kernels(X)  # the same data again: the kernels alone
                row["us_per_pair"] = 1e6 * (time.perf_counter() - t) / pairs
        except Exception as err:  # a family the version cannot compile is reported as such
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
        out[name] = row
        print(name, row, flush=True)
    return out


def table(before: dict, after: dict) -> str:
    def fmt(row: dict, key: str, spec: str) -> str:
        if "error" in row:
            return "error"
        v = row.get(key)
        return "-" if v is None else format(v, spec)

    lines = ["| family | dim before | dim after | error before | error after | "
             "dup vs diag before | after | min eig / max before | after | NaN before | "
             "after | us/pair before | after | after, first call (probe) | TPWarning after |",
             "|" + "---|" * 15]
    for name in FAMILIES:
        b, a = before.get(name, {}), after.get(name, {})
        lines.append(
            f"| {name} | {fmt(b, 'dim', 'd')} | {fmt(a, 'dim', 'd')} | {fmt(b, 'err', '.1e')} "
            f"| {fmt(a, 'err', '.1e')} | {fmt(b, 'dup_vs_diag', '.1e')} | "
            f"{fmt(a, 'dup_vs_diag', '.1e')} | {fmt(b, 'min_eig', '.1e')} | "
            f"{fmt(a, 'min_eig', '.1e')} | {b.get('nan', '-')} | {a.get('nan', '-')} | "
            f"{fmt(b, 'us_per_pair', '.2f')} | {fmt(a, 'us_per_pair', '.2f')} | "
            f"{fmt(a, 'us_per_pair_first', '.2f')} | {'yes' if a.get('warned') else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the measurements here")
    ap.add_argument("--table", nargs=2, metavar=("BEFORE", "AFTER"),
                    help="print the Markdown table of two --json files")
    ap.add_argument("--n", type=int, default=200, help="points of the timed call")
    ap.add_argument("--only", help="the families whose name contains this text")
    ap.add_argument("--merge", help="update this --json file with the families measured")
    args = ap.parse_args()
    if args.table:
        with open(args.table[0]) as f0, open(args.table[1]) as f1:
            print(table(json.load(f0), json.load(f1)))
        return
    res = measure(args.n, only=args.only)
    if args.merge:
        with open(args.merge) as f:
            res = {**json.load(f), **res}
    res["_meta"] = {"load": os.getloadavg(), "time": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                   time.gmtime())}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
