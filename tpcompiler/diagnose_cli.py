"""`tpc diagnose FILE`: signal propagation through the program's repeated block
(tpcompiler.diagnose), as a table, JSON, and a plot of correlation and gradient norm against
depth.

Registered by tpcompiler.cli; the work is imported when the command runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def figure(diag, title: str, grid=None):
    """Two panels against depth: the correlation of two inputs (c0 at the block's entry) and
    the squared gradient norm relative to the last layer (log scale); with a grid, a third:
    chi1 over two params with its chi1 = 1 line and the program's point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if grid else 2, figsize=(13.5 if grid else 9, 3.6))
    a, b = axes[0], axes[1]
    a.plot(diag.depth, diag.c, marker=".", lw=1)
    if diag.c_star is not None:
        a.axhline(diag.c_star, color="gray", ls="--", lw=0.8, label=f"c* = {diag.c_star:.4g}")
        a.legend(loc="best", fontsize=8)
    a.set_xlabel("layer of the repeated block")
    a.set_ylabel("correlation c of two inputs")
    b.semilogy(diag.depth, [math.exp(v) for v in diag.log_grad], marker=".", lw=1)
    b.set_xlabel("layer of the repeated block")
    b.set_ylabel("|grad|^2 relative to the last layer")
    if grid:
        import numpy as np

        g = axes[2]
        chi = np.asarray(grid["chi1"], dtype=float)
        mesh = g.pcolormesh(grid["xs"], grid["ys"], np.log(chi), shading="auto", cmap="RdBu_r",
                            vmin=-1.0, vmax=1.0)
        fig.colorbar(mesh, ax=g, label="log chi1")
        if np.nanmin(chi) < 1.0 < np.nanmax(chi):
            g.contour(grid["xs"], grid["ys"], chi, levels=[1.0], colors="k", linewidths=1.2)
        g.plot([grid["at"][0]], [grid["at"][1]], marker="*", color="gold", ms=12, mec="k")
        g.set_xlabel(grid["x"])
        g.set_ylabel(grid["y"])
        g.set_title("ordered (blue) | chaotic (red), chi1 = 1 line", fontsize=9)
    rate = "-" if diag.gradient_rate is None else f"{diag.gradient_rate:.4g}"
    what = f"batch {diag.batch}, gradient rate" if hasattr(diag, "batch") else "chi1"
    fig.suptitle(f"{title}: {diag.phase}, {what} = {rate}", fontsize=10)
    fig.tight_layout()
    return fig


def _grid_arg(text: str) -> list[tuple[str, float, float]]:
    """--grid NAME=LO:HI,NAME=LO:HI: two params and their ranges."""
    import argparse

    out = []
    for part in text.split(","):
        name, eq, span = part.partition("=")
        lo, colon, hi = span.partition(":")
        try:
            out.append((name.strip(), float(lo), float(hi)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected NAME=LO:HI, got {part!r}") from None
        if not eq or not colon or not name.strip() or not out[-1][1] < out[-1][2]:
            raise argparse.ArgumentTypeError(f"expected NAME=LO:HI with LO < HI, got {part!r}")
    if len(out) != 2 or out[0][0] == out[1][0]:
        raise argparse.ArgumentTypeError("--grid takes two params: e.g. sw=0.5:4,sb=0:0.3")
    return out


def cmd_diagnose(args) -> int:
    import numpy as np

    from .api import compile
    from .check_cli import need_matplotlib, save_plot
    from .cli import param_values, progress_bar
    from .diagnose import Propagation, critical_line
    from .errors import TPError

    if args.plot:
        need_matplotlib()
    if not 2 <= args.grid_points <= 400:
        raise TPError("--grid-points must be between 2 and 400")
    net = compile(args.file)
    params = param_values(args.param)
    if net.ir.batched or args.batch is not None:
        if not net.ir.batched:
            raise TPError("--batch is for networks with batchnorm; this one has none",
                          hint="leave --batch out: the pairwise analysis applies")
        if args.batch is None:
            raise TPError("a network with batchnorm is analysed on a batch: give its size",
                          hint="e.g. tpc diagnose FILE --batch 8")
        if args.grid:
            raise TPError("--grid is not available with --batch yet")
        from .diagnose_batch import diagnose_batch

        diag = diagnose_batch(net, args.batch, params, c0=args.c0, depth=args.depth)
        if args.format == "json":
            print(json.dumps(diag.to_json(), indent=2))
        else:
            print(diag.text())
        if args.plot:
            save_plot(Path(args.plot), figure(diag, net.name or Path(args.file).stem))
        return 0
    prop = Propagation(net.ir)
    diag = prop.diagnose(params, c0=args.c0, depth=args.depth)
    grid = None
    if args.grid:
        (x, x0, x1), (y, y0, y1) = args.grid
        missing = [n for n in (x, y) if n not in net.params]
        if missing:
            raise TPError(f"--grid: {', '.join(missing)} not params of this program",
                          hint="its params: " + (", ".join(net.params) or "none (declare "
                                                 "them: param sw = 2.0, used in var=)"))
        xs = np.linspace(x0, x1, args.grid_points)
        ys = np.linspace(y0, y1, args.grid_points)
        bar, progress = progress_bar(args.format == "json", "phase diagram")
        try:
            chi = prop.grid(x, xs, y, ys, params, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        values = {**net.params, **params}
        grid = {"x": x, "xs": xs.tolist(), "y": y, "ys": ys.tolist(),
                "chi1": [[None if not np.isfinite(v) else float(v) for v in row]
                         for row in chi],
                "critical_x": critical_line(xs, ys, chi), "at": (values[x], values[y])}
    if args.format == "json":
        out = diag.to_json()
        if grid is not None:
            out["grid"] = grid
        print(json.dumps(out, indent=2))
    else:
        print(diag.text())
        if grid is not None:
            print(f"\nchi1 = 1 line ({grid['x']} where chi1 crosses 1, for each {grid['y']}):")
            for vy, vx in zip(grid["ys"], grid["critical_x"]):
                print(f"  {grid['y']} = {vy:<10.4g} {grid['x']} = "
                      f"{'-' if vx is None else f'{vx:.4g}'}")
    if args.plot:
        save_plot(Path(args.plot), figure(diag, net.name or Path(args.file).stem, grid))
    return 0


def register(subparsers) -> None:
    from .cli import add_param_argument

    s = subparsers.add_parser(
        "diagnose", help="signal propagation of the repeated block: fixed points, chi1, depth "
                         "scales, phase, gradient growth",
        description="The fixed point q* of the variance and c* of the correlation through the "
                    "program's repeated block (its `repeat`), chi1 (the slope of the "
                    "correlation map at c = 1, the per-layer growth of the squared gradient "
                    "norm), the depth scales xi_q and xi_c and the phase (ordered, chaotic, "
                    "critical), from the kernel recursion (Schoenholz et al. 2017). See "
                    "docs/theory.md.")
    s.add_argument("file")
    add_param_argument(s)
    s.add_argument("--c0", type=float, default=0.5,
                   help="the correlation of the two inputs the iteration starts from "
                        "(default 0.5)")
    s.add_argument("--depth", type=int, default=None,
                   help="layers of the plotted trajectories (default: the block's own count, "
                        "at least 50)")
    s.add_argument("--grid", type=_grid_arg, metavar="X=LO:HI,Y=LO:HI",
                   help="the phase diagram over two params of the program (e.g. the weight "
                        "and bias variances, sw=0.5:4,sb=0:0.3): chi1 on a grid, its chi1 = 1 "
                        "line (and a third panel with --plot)")
    s.add_argument("--grid-points", type=int, default=21,
                   help="points per axis of --grid (default 21)")
    s.add_argument("--batch", type=int, metavar="B",
                   help="for a network with batchnorm: the batch size; reports the BSB1 fixed "
                        "point of the batch covariance, the gradient explosion rate per layer "
                        "and their large-batch limits (Yang et al. 2019)")
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.add_argument("--plot", help="write correlation and gradient norm against depth (.png)")
    s.set_defaults(fn=cmd_diagnose)
