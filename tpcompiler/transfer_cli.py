"""`tpc transfer FILE`: the command around tpcompiler/transfer.py (options, data, progress bar,
text/JSON, the comparison plot)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .errors import TPError
from .files import atomic_path, load_data


def cmd_transfer(args) -> int:
    from . import transfer as T
    from .check_cli import check_plot, parse_widths, width_bar
    from .lowering import lower
    from .parse import parse_file

    widths = parse_widths(args.widths)
    lrs = T.lr_grid(args.lr, args.points)
    presets = [None if args.parametrization is None else args.parametrization]
    if args.compare:
        if args.parametrization:
            raise TPError("give --compare or --parametrization, not both")
        presets = [p.strip() for p in args.compare.split(",") if p.strip()]
        bad = [p for p in presets if p not in T.PRESETS]
        if bad or len(presets) < 2:
            raise TPError(f"--compare {args.compare}: two or more of " + ", ".join(T.PRESETS))
    plot = check_plot(args.plot)
    program = lower(parse_file(args.file))
    task = _task(program, args)
    total = len(presets) * len(widths) * len(lrs) * args.seeds
    with width_bar(total, "run", "transfer", args.quiet) as progress:
        results = [T.transfer(program, task, widths, lrs, args.steps, args.batch,
                              args.optimizer, args.seeds, p, progress) for p in presets]
    if args.format == "json":
        print(json.dumps({"file": str(args.file), "results": [r.to_dict() for r in results]},
                         indent=1))
    else:
        for r in results:
            print(r.text())
    if plot is not None:
        fig = T.figure(results)
        with atomic_path(plot) as tmp:
            fig.savefig(tmp, format="png")
        print(f"wrote {plot}", file=sys.stderr if args.format == "json" else sys.stdout)
    return 0


def _task(program, args):
    from . import transfer as T

    if args.data == "digits":
        if args.labels:
            raise TPError("--labels goes with --data X.npy, not digits")
        return T.digits_task(program)
    if not args.labels:
        raise TPError("--data X.npy needs --labels y.npy (the regression targets)")
    x = load_data(args.data, "--data")
    y = load_data(args.labels, "--labels")
    if isinstance(x, dict) or isinstance(y, dict):
        raise TPError("--data and --labels are single .npy arrays")
    return T.split_task(Path(args.data).stem, program, np.asarray(x), np.asarray(y), 0)
