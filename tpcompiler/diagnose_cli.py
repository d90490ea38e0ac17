"""`tpc diagnose FILE`: signal propagation through the program's repeated block
(tpcompiler.diagnose), as a table, JSON, and a plot of correlation and gradient norm against
depth.

Registered by tpcompiler.cli; the work is imported when the command runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def figure(diag, title: str):
    """Two panels against depth: the correlation of two inputs (c0 at the block's entry) and
    the squared gradient norm relative to the last layer (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.plot(diag.depth, diag.c, marker=".", lw=1)
    if diag.c_star is not None:
        a.axhline(diag.c_star, color="gray", ls="--", lw=0.8, label=f"c* = {diag.c_star:.4g}")
        a.legend(loc="best", fontsize=8)
    a.set_xlabel("layer of the repeated block")
    a.set_ylabel("correlation c of two inputs")
    b.semilogy(diag.depth, [math.exp(v) for v in diag.log_grad], marker=".", lw=1)
    b.set_xlabel("layer of the repeated block")
    b.set_ylabel("|grad|^2 relative to the last layer")
    rate = "-" if diag.gradient_rate is None else f"{diag.gradient_rate:.4g}"
    fig.suptitle(f"{title}: {diag.phase}, chi1 = {rate}", fontsize=10)
    fig.tight_layout()
    return fig


def cmd_diagnose(args) -> int:
    from .api import compile
    from .check_cli import _need_matplotlib, save_plot
    from .cli import _params
    from .diagnose import diagnose

    if args.plot:
        _need_matplotlib()
    net = compile(args.file)
    diag = diagnose(net.ir, params=_params(args.param), c0=args.c0, depth=args.depth)
    if args.format == "json":
        print(json.dumps(diag.to_json(), indent=2))
    else:
        print(diag.text())
    if args.plot:
        save_plot(Path(args.plot), figure(diag, net.name or Path(args.file).stem))
    return 0


def register(subparsers) -> None:
    from .cli import _param_arg

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
    s.add_argument("--param", type=_param_arg, action="append", metavar="NAME=VALUE",
                   help="the value of a `param` of the program (repeat for several)")
    s.add_argument("--c0", type=float, default=0.5,
                   help="the correlation of the two inputs the iteration starts from "
                        "(default 0.5)")
    s.add_argument("--depth", type=int, default=None,
                   help="layers of the plotted trajectories (default: the block's own count, "
                        "at least 50)")
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.add_argument("--plot", help="write correlation and gradient norm against depth (.png)")
    s.set_defaults(fn=cmd_diagnose)
