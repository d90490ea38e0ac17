"""`tpc check` on a program's reports: do finite networks' means converge to the limits?

For each width n and seed it runs the program (simulate_limits.finite_reports) and measures,
per report, |r_n - L| / s: the distance of the finite mean r_n from the limit L in units of the
report's size s = sqrt(E[expr^2]) (relative to L itself would be meaningless for the limits
that are 0, the odd moments). A right limit leaves an error of O(n^-1/2) (the fluctuations of a
mean of n weakly dependent coordinates; the bias is O(1/n)); the gate is the kernels' one
(check_cli.fit_offset and judge): err = a n^-1/2 + b, FAIL when b is significantly above 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .check_cli import (
    convergence_figure,
    fit_offset,
    fit_table,
    judge,
    parse_widths,
    rule_text,
    save_plot,
    width_bar,
)
from .simulate_limits import finite_reports

DEFAULT_WIDTHS = "250,500,1000,2000,4000"


def run_report_check(net, widths, seeds: int, seed: int = 0, progress=None) -> dict:
    """limits (name -> LimitValue), errors (name -> (widths, seeds) array), fits (name ->
    OffsetFit). Network s at width n has seed (seed, 3, s)."""
    lim = net.limit_values()
    prog = net.ir.bind()
    errors = {v.name: np.empty((len(widths), seeds)) for v in lim.values}
    for i, n in enumerate(widths):
        for s in range(seeds):
            got = finite_reports(prog, n, (seed, 3, s))
            for v in lim.values:
                errors[v.name][i, s] = abs(got[v.name] - float(v.value)) / max(v.scale, 1e-300)
            if progress is not None:
                progress(n, 1)
    fits = {name: fit_offset(widths, e) for name, e in errors.items()}
    return {"limits": lim, "errors": errors, "fits": fits}


def cmd_check_reports(args, net, plot: Path | None) -> int:
    widths = parse_widths(args.widths or DEFAULT_WIDTHS)
    lim = net.limit_values()  # before the bar: its warnings print on their own lines
    with width_bar(len(widths) * args.seeds, "net", "check", args.quiet) as progress:
        res = run_report_check(net, widths, args.seeds, args.seed, progress)
    name = Path(args.file).name
    print(f"tpc check {name}: {len(lim.values)} report(s); widths "
          f"{', '.join(map(str, widths))}; {args.seeds} networks per width")
    print("error |mean_n - limit| / sqrt(E[expr^2]) (mean +- standard error over the networks)")
    for v in lim.values:
        shown = str(v.value) if v.exact else f"{float(v.value):.10g}"
        print(f"  {v.name} = {shown} ({v.how}), size {v.scale:.4g}")
    fits = res["fits"]
    for line in fit_table(widths, fits):
        print(line)
    print(rule_text(args.z, args.min_offset, min(f.dof for f in fits.values())))
    ok = True
    for key, fit in fits.items():
        good, why = judge(fit, args.z, args.min_offset, args.max_slope)
        ok &= good
        print(f"{key}: {'ok' if good else 'FAIL'} ({why})")
    if plot is not None:
        curves = {}
        for key, f in fits.items():
            slope = "-" if f.slope is None else f"{f.slope:.2f}"
            curves[f"{key} (slope {slope})"] = (f.means, f.sems, {"marker": "o"}, f)
        save_plot(plot, convergence_figure(
            f"tpc check {name}", widths, curves, None,
            ylabel=r"$|\mathrm{mean}_n - \mathrm{limit}| \,/\, \sqrt{E[\mathrm{expr}^2]}$"))
        print(f"wrote {plot}")
    return 0 if ok else 1


def limits_json(lim) -> str:
    """The JSON of `tpc limits --format json`."""
    def number(x: float) -> float | None:
        return x if math.isfinite(x) else None  # JSON has no inf or nan

    out = {}
    for v in lim.values:
        out[v.name] = {"value": number(float(v.value)),
                       "exact": str(v.value) if v.exact else None,
                       "how": v.how, "error": number(v.error), "size": number(v.scale)}
    return json.dumps({"limits": out}, indent=2, allow_nan=False)
