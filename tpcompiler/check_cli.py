"""`tpc check`: do finite networks converge to the compiled kernels? (for a user's CI)

For each width n it simulates the .tp network (tpcompiler/simulate.py) and measures the relative
Frobenius error ||K_n - K||_F / ||K||_F against the limit kernels K (net.kernels):
  NNGP (MC)      the Monte Carlo output covariance mean_s f_s f_s^T over --samples networks. Its
                 error has a floor ~ sqrt((||K||_F^2 + tr(K)^2) / samples) / ||K||_F that does not
                 shrink with n (f f^T of one network is one GP sample, THEORY.md §5): reported, not
                 gated.
  NNGP (hidden)  var_v h(x).h(x')/n + bias_v from the readout's argument h of one network (the
                 output covariance given the hidden layer), per-seed errors averaged over --seeds
                 networks: fluctuates like n^-1/2.
  NTK            the exact empirical NTK of one network, per-seed errors averaged over --seeds.
Rule: the fitted log-log slope of the mean error against n (least squares over the widths) must
be <= --max-slope (default -0.25; the theory says -0.5, the O(1/n) bias of the mean only steepens
it) for the hidden-layer NNGP and for the NTK (when the program has one). Otherwise exit 1. An
error below 1e-10 at every width (a width-independent network) passes.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import TPError

EXACT = 1e-10  # a relative error below this at every width counts as exact


def register(subparsers) -> None:
    s = subparsers.add_parser(
        "check", help="compare the limit kernels with simulated finite networks",
        description="Simulate the network at several widths and check that the empirical NNGP "
                    "and NTK converge to the compiled kernels (relative Frobenius error, fitted "
                    "log-log slope). Exit status 1 when an error does not shrink with the width "
                    "(slope > --max-slope), 2 for an error in the program or the options.")
    s.add_argument("file")
    s.add_argument("--widths", default="64,256,1024,4096",
                   help="comma-separated widths (default 64,256,1024,4096)")
    s.add_argument("--samples", type=int, default=200,
                   help="networks per width in the Monte Carlo NNGP (default 200)")
    s.add_argument("--seeds", type=int, default=4,
                   help="networks per width for the NTK and hidden-layer NNGP (default 4)")
    s.add_argument("--points", type=int, default=8, help="random data points (default 8)")
    s.add_argument("--dim", type=int, default=4,
                   help="dimension d of the random points (default 4)")
    s.add_argument("--data", help=".npy array (or .npz, one array per input) instead of "
                                  "random points")
    s.add_argument("--seed", type=int, default=0, help="seed of the data and the networks")
    s.add_argument("--max-slope", type=float, default=-0.25,
                   help="fail when a fitted slope is above this (default -0.25)")
    s.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                   help="backend of the limit kernels (default numba)")
    s.add_argument("--plot", help="write a log-log convergence plot (PNG) here")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_check)


# --- helpers -------------------------------------------------------------------------------------


def parse_widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise TPError(f"--widths: expected comma-separated integers, got '{text}'",
                      hint="e.g. --widths 64,256,1024") from None
    if not widths or any(w < 1 for w in widths):
        raise TPError(f"--widths: widths must be positive integers, got '{text}'")
    if len(set(widths)) != len(widths):
        raise TPError(f"--widths: a width is repeated in '{text}'")
    return sorted(widths)


def random_data(program, points: int, dim: int, seed: int):
    """Standard-normal points for every input: (N, d), or (N, T, d) for a sequence."""
    rng = np.random.default_rng(seed)
    out = {}
    for inp in program.inputs:
        shape = (points, dim) if inp.length is None else (points, inp.length, dim)
        out[inp.name] = rng.standard_normal(shape)
    return out if len(out) > 1 else next(iter(out.values()))


def rel_error(k: np.ndarray, limit: np.ndarray) -> float:
    norm = np.linalg.norm(limit)
    diff = np.linalg.norm(k - limit)
    return float(diff / norm) if norm > 0 else float(diff)


def fit_slope(widths, errors) -> float | None:
    """Least-squares slope of log(error) against log(width); None if it cannot be fitted."""
    w = np.asarray(widths, dtype=float)
    e = np.asarray(errors, dtype=float)
    if len(w) < 2 or np.any(e <= 0) or not np.all(np.isfinite(e)):
        return None
    return float(np.polyfit(np.log(w), np.log(e), 1)[0])


def mc_floor(limit: np.ndarray, samples: int) -> float:
    """Expected relative error of mean_s f f^T for a Gaussian f ~ N(0, K) (no width effect):
    E||K_hat - K||_F^2 = (||K||_F^2 + tr(K)^2) / samples."""
    norm = np.linalg.norm(limit)
    if norm == 0:
        return 0.0
    return math.sqrt((norm ** 2 + np.trace(limit) ** 2) / samples) / norm


def verdict(errors, slope, max_slope) -> tuple[bool, str]:
    if max(errors) < EXACT:
        return True, "exact at every width"
    if slope is None:
        return True, "no slope (one width)"
    if slope <= max_slope:
        return True, f"slope {slope:.2f} <= {max_slope:g}"
    return False, f"slope {slope:.2f} > {max_slope:g}: the error does not shrink with the width"


def _need_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise TPError("--plot needs matplotlib, which is not installed",
                      hint="pip install 'tpcompiler[plot]'  (or: pip install matplotlib)") from None


def save_plot(path: Path, title: str, widths, curves: dict, floor: float | None,
              samples: int = 0) -> None:
    """curves: label -> (means, stderrs or None, matplotlib style, gated); the reference line
    C n^-1/2 takes C = the geometric mean of error * sqrt(n) over the gated curves' points.
    Written atomically (temp file, rename)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.6), dpi=120)
    ax = fig.add_subplot()
    w = np.asarray(widths, dtype=float)
    anchor = []
    for label, (means, errs, style, gated) in curves.items():
        m = np.asarray(means)
        shown = m > 0
        if not shown.any():
            continue
        ax.errorbar(w[shown], m[shown], yerr=None if errs is None else np.asarray(errs)[shown],
                    label=label, capsize=3, **style)
        if gated:
            anchor.extend(m[shown] * np.sqrt(w[shown]))
    if anchor:
        c = math.exp(np.mean(np.log(anchor)))
        grid = np.geomspace(w[0], w[-1], 50)
        ax.plot(grid, c / np.sqrt(grid), color="black", linestyle="--", linewidth=1,
                label=r"reference $\propto n^{-1/2}$")
    if floor:
        ax.axhline(floor, color="grey", linestyle=":", linewidth=1,
                   label=f"Monte Carlo floor ({samples} samples)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(w)
    ax.set_xticklabels([str(int(x)) for x in w])
    ax.set_xlabel("width n")
    ax.set_ylabel(r"relative error $\|K_n - K\|_F \,/\, \|K\|_F$")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tpc-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- the command ---------------------------------------------------------------------------------


def run_check(net, x, widths, samples=200, seeds=4, seed=0, backend="numba", progress=None):
    """All the numbers of `tpc check` (also usable from Python).

    Returns a dict: limit {kind: K}, refused {kind: reason}, errors {"mc", "hidden", "ntk":
    list per width of per-seed relative errors (mc: one per width)}, floor (of the MC NNGP).
    progress: callable(width, done_in_width) after every simulated network."""
    from .simulate import FiniteNetwork, empirical_nngp

    kp = net.kernel_program
    kinds = [k for k in ("nngp", "ntk") if k in kp.kinds]
    refused = {}
    if "ntk" not in kinds:
        refused["ntk"] = kp.refused.get("ntk", "not available")
    if "nngp" not in kinds:
        raise TPError(f"this network has no NNGP to compare with: "
                      f"{kp.refused.get('nngp', 'not available')}")
    limit = net.kernels(x, get=tuple(kinds), backend=backend)
    errors: dict[str, list] = {"mc": [], "hidden": [], "ntk": []}
    for n in widths:
        per_hidden, per_ntk = [], []
        for s in range(seeds):
            est = FiniteNetwork(net.ir, n, (seed, 1, s)).kernels(x, get=tuple(limit))
            per_hidden.append(rel_error(est["nngp"], limit["nngp"]))
            if "ntk" in limit:
                per_ntk.append(rel_error(est["ntk"], limit["ntk"]))
            if progress is not None:
                progress(n, 1)
        errors["hidden"].append(per_hidden)
        errors["ntk"].append(per_ntk)
        step = None if progress is None else (lambda done, total, n=n: progress(n, 1))
        mc = empirical_nngp(net.ir, x, n, samples, (seed, 2), progress=step)
        errors["mc"].append([rel_error(mc, limit["nngp"])])
    return {"limit": limit, "refused": refused, "errors": errors,
            "floor": mc_floor(limit["nngp"], samples)}


def cmd_check(args) -> int:
    from .api import compile
    from .cli import _load_data

    widths = parse_widths(args.widths)
    for flag, value in (("--samples", args.samples), ("--seeds", args.seeds),
                        ("--points", args.points), ("--dim", args.dim)):
        if value < 1:
            raise TPError(f"{flag} must be at least 1, got {value}")
    if args.seed < 0:
        raise TPError(f"--seed must be non-negative, got {args.seed}")
    plot = Path(args.plot) if args.plot else None
    if plot is not None:
        _need_matplotlib()
        if plot.suffix.lower() != ".png":
            raise TPError(f"--plot {plot}: the plot is written as PNG; name it {plot.stem}.png")
        if not plot.parent.exists():
            raise TPError(f"--plot: the folder {plot.parent} does not exist")
    net = compile(args.file)
    if args.data:
        x = _load_data(args.data, net, "--data")
        what = f"data {args.data}"
    else:
        x = random_data(net.ir, args.points, args.dim, args.seed)
        what = f"{args.points} random points in d={args.dim} (seed {args.seed})"
    from .data import prepare

    x = prepare(net.ir, x, "--data" if args.data else "X")
    if len(net.ir.inputs) == 1:
        x = next(iter(x.values()))

    from tqdm import tqdm

    total = len(widths) * (args.seeds + args.samples)
    bar = tqdm(total=total, unit="net", desc="check", disable=True if args.quiet else None,
               leave=False, file=sys.stderr)

    def progress(n, k):
        bar.set_postfix_str(f"width {n}", refresh=False)
        bar.update(k)

    try:
        res = run_check(net, x, widths, args.samples, args.seeds, args.seed, args.backend,
                        progress)
    finally:
        bar.close()

    err = res["errors"]
    rows = {
        "hidden": [float(np.mean(e)) for e in err["hidden"]],
        "mc": [e[0] for e in err["mc"]],
    }
    sem = {"hidden": [_sem(e) for e in err["hidden"]]}
    has_ntk = "ntk" in res["limit"]
    if has_ntk:
        rows["ntk"] = [float(np.mean(e)) for e in err["ntk"]]
        sem["ntk"] = [_sem(e) for e in err["ntk"]]
    slopes = {k: fit_slope(widths, v) for k, v in rows.items()}

    name = Path(args.file).name
    print(f"tpc check {name}: {what}; widths {', '.join(map(str, widths))}")
    print("relative Frobenius error ||K_n - K||_F / ||K||_F (mean +- standard error over "
          f"{args.seeds} networks; MC over {args.samples} networks)")
    head = f"{'width':>7}  {'NNGP hidden':>20}  {'NTK':>20}  {'NNGP MC':>9}"
    print(head)
    for i, n in enumerate(widths):
        ntk = (f"{rows['ntk'][i]:.4g} +- {sem['ntk'][i]:.2g}" if has_ntk else "-")
        hid = f"{rows['hidden'][i]:.4g} +- {sem['hidden'][i]:.2g}"
        print(f"{n:>7}  {hid:>20}  {ntk:>20}  {rows['mc'][i]:>9.4g}")
    fmt = {k: ("-" if v is None else f"{v:.3f}") for k, v in slopes.items()}
    print(f"{'slope':>7}  {fmt['hidden']:>20}  {fmt.get('ntk', '-'):>20}  {fmt['mc']:>9}")
    print(f"(NNGP MC: not gated; its error cannot go below the Monte Carlo floor "
          f"~{res['floor']:.3g} for {args.samples} samples, whatever the width)")
    for kind, reason in res["refused"].items():
        print(f"{kind.upper()}: not compared: {reason}")

    ok = True
    gated = [("NNGP hidden", "hidden")] + ([("NTK", "ntk")] if has_ntk else [])
    for label, key in gated:
        good, why = verdict(rows[key], slopes[key], args.max_slope)
        ok &= good
        print(f"{label}: {'ok' if good else 'FAIL'} ({why})")

    if plot is not None:
        curves = {f"NNGP, hidden layer (slope {fmt['hidden']})":
                  (rows["hidden"], sem["hidden"], {"marker": "o"}, True)}
        if has_ntk:
            curves[f"NTK (slope {fmt['ntk']})"] = (
                rows["ntk"], sem["ntk"], {"marker": "s"}, True)
        curves[f"NNGP, Monte Carlo {args.samples} nets (slope {fmt['mc']})"] = (
            rows["mc"], None, {"marker": "^", "linestyle": "--", "alpha": 0.8}, False)
        save_plot(plot, f"tpc check {name}", widths, curves, res["floor"], args.samples)
        print(f"wrote {plot}")
    return 0 if ok else 1


def _sem(values) -> float:
    v = np.asarray(values, dtype=float)
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
