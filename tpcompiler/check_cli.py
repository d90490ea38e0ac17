"""`tpc check`: do finite networks converge to the limit kernels? (for a user's CI)

For each width n it simulates the .tp network (tpcompiler/simulate.py) and measures the error
of finite-width estimates against the limit kernels K: the compiled ones (net.kernels) or, with
--against, any kernel file. The error of an estimate K_n is relative: ||K_n - K||_F / ||K||_F
("frobenius", the default), or the same after scaling row and column i by K_ii^(-1/2)
("normalized": every pair of points weighs alike, so a row of size 1e8 does not hide the others).
  NNGP (hidden)  var_v h(x).h(x')/n + bias_v from the readout's argument h of one network (the
                 output covariance given the hidden layer), --seeds networks per width.
  NTK            the exact empirical NTK of one network, --seeds networks per width.
  NNGP (MC)      the Monte Carlo output covariance mean_s f_s f_s^T over --samples networks:
                 reported, not gated (its error is Monte Carlo noise at every width, see
                 mc_noise_level).

The gate (judge): per gated kernel, the mean error over the seeds is fitted as
    err(n) = a n^(-1/2) + b
by weighted least squares (fit_offset). The check FAILS when the offset b is significantly above
zero: b > z se(b) (z = 4 by default) and b > MIN_OFFSET (0.01). A right limit has b = 0 (the
fluctuations are O(n^-1/2), shared/THEORY.md §5); a network that converges to another limit K'
has an error that levels off at ||K' - K|| / ||K||, which the fit sees as b > 0 however large
the errors of the small widths are. The fitted log-log slope is reported (and gated only with
--max-slope).
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TPError
from .files import UNREADABLE, atomic_path, load_data

EXACT = 1e-10  # a relative error below this at every width counts as exact
Z = 4.0  # an offset counts as significant above Z standard errors
# ...and only above this size. Measured on five networks (relu, erf/relu, tanh MLPs, hardtanh,
# a product of tanhs; 300 networks per width), the fitted b of a RIGHT limit sits within
# 0.0043 of 0 for widths 64..1024 and reaches 0.010 when width 32 is included: the n^-1 terms
# the model leaves out. 0.01 of ||K|| is also far above any quadrature error of the compiler.
MIN_OFFSET = 0.01
METRICS = ("frobenius", "normalized")
KINDS = ("nngp", "ntk")


def register(subparsers) -> None:
    s = subparsers.add_parser(
        "check", help="compare the limit kernels (or a program's reports) with simulated "
                      "finite networks",
        description="Simulate the network at several widths and check that the empirical NNGP "
                    "and NTK converge to the limit kernels (the compiled ones, or a kernel file "
                    "with --against). The mean error is fitted as a n^-1/2 + b; exit status 1 "
                    "when the offset b is significantly above zero (the networks converge to "
                    "another limit), 2 for an error in the program, the data or the options.")
    s.add_argument("file")
    s.add_argument("--widths", default=None,
                   help="comma-separated widths, at least two (default 64,256,1024,4096; for "
                        "a program's reports 250,500,1000,2000,4000)")
    s.add_argument("--samples", type=int, default=200,
                   help="networks per width in the Monte Carlo NNGP (default 200)")
    s.add_argument("--seeds", type=int, default=4,
                   help="networks per width for the NTK and hidden-layer NNGP, at least 2: their "
                        "spread gives the standard errors (default 4)")
    s.add_argument("--points", type=int, default=8, help="random data points (default 8)")
    s.add_argument("--dim", type=int, default=4,
                   help="dimension d of the random points (default 4)")
    s.add_argument("--data", help=".npy array (or .npz, one array per input) instead of "
                                  "random points")
    s.add_argument("--against", metavar="K.npz",
                   help="check the kernels in this .npz (arrays 'nngp' and/or 'ntk', N x N for "
                        "the N points of --data) instead of the compiled ones")
    s.add_argument("--seed", type=int, default=0, help="seed of the data and the networks")
    s.add_argument("--z", type=float, default=Z,
                   help=f"fail when the offset b exceeds this many standard errors (default {Z:g})")
    s.add_argument("--min-offset", type=float, default=MIN_OFFSET,
                   help=f"...and exceeds this relative error (default {MIN_OFFSET:g})")
    s.add_argument("--max-slope", type=float, default=None,
                   help="also fail when a fitted log-log slope is above this (default: the "
                        "slope is reported, not gated)")
    s.add_argument("--metric", choices=METRICS, default="frobenius",
                   help="relative Frobenius error of the kernel (default) or of the kernel "
                        "normalized by its diagonal")
    s.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                   help="backend of the limit kernels (default numba)")
    s.add_argument("--plot", help="write a log-log convergence plot (PNG) here")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_check)


# --- errors of finite-width estimates ------------------------------------------------------------


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
    if len(widths) < 2:
        raise TPError(f"--widths: give at least two widths, got '{text}'",
                      hint="the offset b of err = a n^-1/2 + b needs two widths to be told "
                           "apart from the n^-1/2 part")
    return sorted(widths)


def random_data(program, points: int, dim: int, seed: int):
    """Standard-normal points for every input: (N, d), (N, T, d) for a sequence, (N, H, W, d)
    for an image."""
    rng = np.random.default_rng(seed)
    out = {}
    for inp in program.inputs:
        shape = (points, dim) if inp.length is None else (points, inp.length, dim)
        if inp.grid:
            shape = (points, *inp.grid, dim)
        out[inp.name] = rng.standard_normal(shape)
    return out if len(out) > 1 else next(iter(out.values()))


def _normalizer(limit: np.ndarray) -> np.ndarray:
    """K_ii^(-1/2) per point; a point whose limit variance is not positive gets the typical
    scale instead, so that a finite network that is not zero there still shows."""
    diag = np.real(np.diagonal(limit)).astype(float)
    good = diag > 0
    typical = float(np.mean(diag[good])) if good.any() else 1.0
    return 1.0 / np.sqrt(np.where(good, diag, typical))


def rel_error(k: np.ndarray, limit: np.ndarray, metric: str = "frobenius") -> float:
    """||K_n - K|| / ||K|| in the Frobenius norm, of the kernels as they are ("frobenius") or
    scaled to K_ii = 1 ("normalized"). The absolute error when K is zero."""
    if metric == "normalized":
        s = _normalizer(limit)
        k, limit = k * np.outer(s, s), limit * np.outer(s, s)
    elif metric != "frobenius":
        raise TPError(f"unknown metric '{metric}'", hint=f"use one of {', '.join(METRICS)}")
    norm = np.linalg.norm(limit)
    diff = np.linalg.norm(k - limit)
    return float(diff / norm) if norm > 0 else float(diff)


def finite_errors(program, x, limit: dict[str, np.ndarray], widths, seeds: int, seed: int = 0,
                  metric: str = "frobenius", progress=None) -> dict[str, np.ndarray]:
    """Errors of one network's estimates against `limit` (kind -> (N, N)): kind -> array
    (len(widths), seeds). Network s at width n has seed (seed, 1, s) (the same network for every
    kind). progress: callable(width, 1) after every network."""
    from .simulate import FiniteNetwork

    kinds = tuple(k for k in KINDS if k in limit)
    out = {k: np.empty((len(widths), seeds)) for k in kinds}
    for i, n in enumerate(widths):
        for s in range(seeds):
            est = FiniteNetwork(program, n, (seed, 1, s)).kernels(x, get=kinds)
            for kind in kinds:
                out[kind][i, s] = rel_error(est[kind], limit[kind], metric)
            if progress is not None:
                progress(n, 1)
    return out


def mc_noise_level(limit: np.ndarray, samples: int) -> float:
    """The RMS relative error of a Monte Carlo estimate mean_s f_s f_s^T from `samples` exact
    draws f ~ N(0, K): the noise of the MC NNGP, which no width removes.

    Derivation: the S draws are independent, so E||K_hat - K||_F^2 = sum_ij Var(f_i f_j) / S,
    and for a Gaussian vector (Isserlis) Var(f_i f_j) = K_ii K_jj + K_ij^2, whose sum over i, j
    is tr(K)^2 + ||K||_F^2. It is the root MEAN SQUARE error: by Jensen the mean error is
    below it, and a single estimate scatters around it (it is not a floor). At finite width the
    networks' output covariance differs from K by O(1/n) only, negligible next to this noise."""
    norm = np.linalg.norm(limit)
    if norm == 0:
        return 0.0
    return math.sqrt((norm ** 2 + np.trace(limit) ** 2) / samples) / norm


# --- the offset fit and the gate -----------------------------------------------------------------


@dataclass(frozen=True)
class OffsetFit:
    """err(n) = a n^-1/2 + b fitted to per-seed errors (one row per width).

    means, sems: per-width mean error and its observed standard error (spread / sqrt(seeds));
    sigma: the pooled spread of one network's error at unit width (spread = sigma / sqrt(n));
    dof: its degrees of freedom, widths * (seeds - 1); slope: the log-log slope of the means
    (None where it cannot be fitted); worst: the largest per-seed error."""

    widths: tuple[int, ...]
    means: tuple[float, ...]
    sems: tuple[float, ...]
    a: float
    b: float
    se_b: float
    sigma: float
    dof: int
    slope: float | None
    worst: float

    @property
    def t(self) -> float:
        """b in standard errors (inf for b > 0 with no spread at all)."""
        if self.se_b > 0:
            return self.b / self.se_b
        return math.copysign(math.inf, self.b) if self.b != 0 else 0.0

    def curve(self, n) -> np.ndarray:
        return self.a / np.sqrt(np.asarray(n, dtype=float)) + self.b


def fit_slope(widths, errors) -> float | None:
    """Least-squares slope of log(error) against log(width); None if it cannot be fitted."""
    w = np.asarray(widths, dtype=float)
    e = np.asarray(errors, dtype=float)
    if len(w) < 2 or np.any(e <= 0) or not np.all(np.isfinite(e)):
        return None
    return float(np.polyfit(np.log(w), np.log(e), 1)[0])


def fit_offset(widths, errors) -> OffsetFit:
    """Weighted least squares of the mean error per width on (n^-1/2, 1).

    The weights and se(b) come from the spread of the seeds, pooled over the widths: one
    network's error fluctuates like sigma n^-1/2 (shared/THEORY.md §5), so
    sigma^2 = mean_i n_i s_i^2 (s_i the sample standard deviation at width n_i) has
    widths * (seeds - 1) degrees of freedom instead of seeds - 1. Measured: with 4 seeds and 3
    widths, b > 4 se(b) for a right limit in 0.0-0.3 % of runs pooled, 0.2-2.6 % with each
    width's own spread (a t tail with 3 degrees of freedom). The mean at width n has variance
    sigma^2 / (n S), so the weights are n_i and Cov(a, b) = sigma^2 / S (X^T diag(n) X)^-1,
    X = [n^-1/2, 1]."""
    w = np.asarray(widths, dtype=float)
    e = np.asarray(errors, dtype=float)
    if e.ndim != 2 or e.shape[0] != len(w) or len(w) < 2 or e.shape[1] < 2:
        raise TPError("the offset fit needs at least two widths and two seeds per width, got "
                      f"{len(w)} widths and {e.shape[1] if e.ndim == 2 else 0} seeds")
    seeds = e.shape[1]
    means = e.mean(axis=1)
    spread2 = e.var(axis=1, ddof=1)
    sigma2 = float(np.mean(w * spread2))
    x = np.stack([w ** -0.5, np.ones_like(w)], axis=1)
    gram = x.T @ (x * w[:, None])
    a, b = np.linalg.solve(gram, x.T @ (w * means))
    cov = sigma2 / seeds * np.linalg.inv(gram)
    return OffsetFit(
        widths=tuple(int(n) for n in widths), means=tuple(float(m) for m in means),
        sems=tuple(float(v) for v in np.sqrt(spread2 / seeds)), a=float(a), b=float(b),
        se_b=float(math.sqrt(max(cov[1, 1], 0.0))), sigma=math.sqrt(sigma2),
        dof=len(w) * (seeds - 1), slope=fit_slope(w, means), worst=float(np.max(e)))


def t_tail(t: float, nu: int) -> float:
    """P(T > t) for Student's t with nu degrees of freedom (Abramowitz & Stegun 26.7.3-4: a
    finite series for integer nu; accurate to ~1e-15 absolute). The chance that a right limit
    shows b > t se(b) when sigma is estimated with nu degrees of freedom."""
    if nu < 1:
        raise ValueError(f"nu must be at least 1, got {nu}")
    if t < 0:
        return 1.0 - t_tail(-t, nu)
    theta = math.atan(t / math.sqrt(nu))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if nu % 2 == 0:
        term = total = 1.0
        for k in range(1, nu // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = s * total  # P(|T| < t)
    else:
        series = 0.0
        if nu > 1:
            term = series = 1.0
            for k in range(1, (nu - 1) // 2):
                term *= c2 * (2 * k) / (2 * k + 1)
                series += term
            series *= s * math.cos(theta)
        inside = 2.0 / math.pi * (theta + series)
    return max(0.0, (1.0 - inside) / 2.0)


def judge(fit: OffsetFit, z: float = Z, min_offset: float = MIN_OFFSET,
          max_slope: float | None = None) -> tuple[bool, str]:
    """(passed, why) for one kernel: FAIL when b > z se(b) and b > min_offset (and, with
    max_slope, when the slope is above it)."""
    if not all(map(math.isfinite, fit.means)):
        return False, "the errors are not finite (a finite network's kernel overflowed or is NaN)"
    if fit.worst < EXACT:
        return True, "exact at every width"
    off = f"offset b = {fit.b:.3g} +- {fit.se_b:.2g}"
    if fit.b > z * fit.se_b and fit.b > min_offset:
        return False, (f"{off} ({fit.t:.1f} se > {z:g}, and > {min_offset:g}): the finite "
                       "networks converge to another limit")
    if max_slope is not None and (fit.slope is None or fit.slope > max_slope):
        slope = "none" if fit.slope is None else f"{fit.slope:.2f}"
        return False, f"{off}, but slope {slope} > {max_slope:g}"
    if fit.b > z * fit.se_b:
        return True, f"{off}: significant but below {min_offset:g}"
    return True, f"{off} ({fit.t:.1f} se <= {z:g})"


def rule_text(z: float, min_offset: float, dof: int) -> str:
    """The gate in words, with its false-alarm probability for a right limit."""
    return (f"rule: fit err = a n^-1/2 + b; fail when b > {z:g} se(b) and b > {min_offset:g}; "
            f"false alarm for a right limit ~{t_tail(z, dof):.1e} per kernel (Student t, "
            f"{dof} degrees of freedom)")


# --- kernel files --------------------------------------------------------------------------------


def load_against(path: str, n_points: int, flag: str = "--against") -> dict[str, np.ndarray]:
    """The kernels of an .npz file: kind -> (N, N) float64, for the kinds it holds."""
    p = Path(path)
    if not p.exists():
        raise TPError(f"{flag}: no such file: {path}")
    if p.is_dir():
        raise TPError(f"{flag}: {path} is a directory, not an .npz file")
    try:
        with open(p, "rb") as f:
            obj = np.load(f, allow_pickle=False)
            if not isinstance(obj, np.lib.npyio.NpzFile):
                raise TPError(f"{flag} {path}: a single array; the kernels must be named "
                              "arrays 'nngp' and/or 'ntk' in an .npz file", hint=_SAVE_HINT)
            with obj:
                arrays = {k: obj[k] for k in obj.files}
    except UNREADABLE as err:
        raise TPError(f"{flag}: cannot read {path} as .npz: {err}") from None
    return check_kernels(arrays, n_points, f"{flag} {path}")


_SAVE_HINT = "save them with np.savez('K.npz', nngp=K, ntk=T) (or tpc kernel --kind both)"


def check_kernels(arrays, n_points: int, where: str) -> dict[str, np.ndarray]:
    """kind -> (N, N) float64 from a mapping that holds 'nngp' and/or 'ntk' (other keys are
    ignored); TPError for none, a wrong shape or dtype, or a value that is not finite."""
    found = [k for k in KINDS if k in arrays]
    if not found:
        names = ", ".join(f"'{n}'" for n in arrays) or "no arrays"
        raise TPError(f"{where}: no array named 'nngp' or 'ntk' (found {names})",
                      hint=_SAVE_HINT)
    out = {}
    for kind in found:
        arr = np.asarray(arrays[kind])
        if arr.dtype.kind not in "fiu":
            raise TPError(f"{where}: '{kind}' has dtype {arr.dtype}; a kernel is real")
        if arr.shape != (n_points, n_points):
            raise TPError(f"{where}: '{kind}' has shape {arr.shape}; the data has {n_points} "
                          f"points, so it must be ({n_points}, {n_points})",
                          hint="the kernel of the data's points with themselves, in order")
        if not np.all(np.isfinite(arr)):
            raise TPError(f"{where}: '{kind}' contains NaN or infinity")
        out[kind] = np.ascontiguousarray(arr, dtype=np.float64)
    return out


# --- the plot ------------------------------------------------------------------------------------


def need_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise TPError("--plot needs matplotlib, which is not installed",
                      hint="pip install 'tpcompiler[plot]'  (or: pip install matplotlib)") from None


def convergence_figure(title: str, widths, curves: dict, noise: float | None,
                       samples: int = 0, metric: str = "frobenius", ylabel: str | None = None):
    """The log-log plot of the errors against the width (a matplotlib Figure).

    curves: label -> (means, stderrs or None, matplotlib style, OffsetFit or None). Each fit
    is drawn as its curve a n^-1/2 + b (dashed, the curve's colour) and its offset b (dotted,
    where b > 0: a log axis has no room for the rest); noise is the Monte Carlo noise level."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 6.0), dpi=120)
    ax = fig.add_subplot()
    w = np.asarray(widths, dtype=float)
    grid = np.geomspace(w[0], w[-1], 60)
    for label, (means, errs, style, fit) in curves.items():
        m = np.asarray(means)
        shown = m > 0
        if not shown.any():
            continue
        bars = ax.errorbar(w[shown], m[shown],
                           yerr=None if errs is None else np.asarray(errs)[shown],
                           label=label, capsize=3, **style)
        if fit is None:
            continue
        color = bars[0].get_color()
        name = label.split(" (")[0]
        y = fit.curve(grid)
        sign = "+" if fit.b >= 0 else "-"
        ax.plot(grid[y > 0], y[y > 0], color=color, linestyle="--", linewidth=1,
                label=f"{name}: fit {fit.a:.3g} n^-1/2 {sign} {abs(fit.b):.2g}")
        if fit.b > 0:
            ax.axhline(fit.b, color=color, linestyle=":", linewidth=1.2,
                       label=f"{name}: offset b = {fit.b:.2g} +- {fit.se_b:.1g}")
    if noise:
        ax.axhline(noise, color="grey", linestyle="-.", linewidth=1,
                   label=f"Monte Carlo noise level (RMS error of {samples} exact GP samples)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(w)
    ax.set_xticklabels([str(int(x)) for x in w])
    ax.set_xlabel("width n")
    ax.set_ylabel(ylabel or (r"relative error $\|K_n - K\|_F \,/\, \|K\|_F$"
                             if metric == "frobenius"
                             else r"relative error of $K_{ij} / \sqrt{K_{ii} K_{jj}}$"))
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    # below the axes: inside, it would hide the points it explains
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.tight_layout()
    return fig


def save_plot(path: Path, fig) -> None:
    """Write the figure as PNG atomically (temp file, rename)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


# --- the command ---------------------------------------------------------------------------------


def limit_kernels(net, x, against: dict | None = None, backend: str = "numba"):
    """(limit kind -> (N, N), refused kind -> reason): the kernels to check the networks
    against, the compiled ones or `against` (kind -> array)."""
    if against is not None:
        if "ntk" in against and net.ir.parametrization.preset != "ntk":
            raise TPError(f"the kernel file has an NTK, but under parametrization "
                          f"{net.ir.parametrization.preset} a finite network's NTK has no limit "
                          "to compare with (only the NTK parametrization's does)",
                          hint="check only its NNGP: save the file without 'ntk'")
        refused = {k: "not in the kernel file" for k in KINDS if k not in against}
        return dict(against), refused
    kp = net.recursion
    kinds = [k for k in KINDS if k in kp.kinds]
    refused = {k: kp.refused.get(k, "not available") for k in KINDS if k not in kinds}
    if not kinds:
        raise TPError(f"this network has no kernel to compare with: {refused.get('nngp')}")
    return net.kernels(x, get=tuple(kinds), backend=backend), refused


def run_check(net, x, widths, samples=200, seeds=4, seed=0, backend="numba", progress=None,
              against=None, metric="frobenius"):
    """All the numbers of `tpc check` (also usable from Python).

    Returns a dict: limit {kind: K}, refused {kind: reason}, broken {kind: why the limit
    cannot be compared (NaN)}, errors {"hidden", "ntk": arrays
    (widths, seeds) of relative errors; "mc": one per width}, fits {"hidden", "ntk": OffsetFit},
    noise (the Monte Carlo noise level of the MC NNGP, or None without an NNGP).
    against: kind -> (N, N) to check instead of the compiled kernels.
    progress: callable(width, done_in_width) after every simulated network."""
    from .simulate import empirical_nngp

    limit, refused = limit_kernels(net, x, against, backend)
    # a kernel file with NaN is refused when it is read; compiled kernels with NaN are the
    # compiler's bug, reported as a failed check
    broken = {k: "the limit kernel contains NaN or infinity"
              for k, v in limit.items() if not np.all(np.isfinite(v))}
    limit = {k: v for k, v in limit.items() if k not in broken}
    per_kind = finite_errors(net.ir, x, limit, widths, seeds, seed, metric, progress)
    errors: dict = {"hidden" if k == "nngp" else k: v for k, v in per_kind.items()}
    errors["mc"] = []
    if "nngp" in limit:
        for n in widths:
            step = None if progress is None else (lambda done, total, n=n: progress(n, 1))
            mc = empirical_nngp(net.ir, x, n, samples, (seed, 2), progress=step)
            errors["mc"].append(rel_error(mc, limit["nngp"], metric))
    fits = {k: fit_offset(widths, v) for k, v in errors.items() if k != "mc"}
    noise = None
    if "nngp" in limit:
        k = limit["nngp"]
        if metric == "normalized":
            s = _normalizer(k)
            k = k * np.outer(s, s)
        noise = mc_noise_level(k, samples)
    return {"limit": limit, "refused": refused, "broken": broken, "errors": errors, "fits": fits,
            "noise": noise}


@contextlib.contextmanager
def width_bar(total: int, unit: str, desc: str, quiet: bool):
    """A progress bar on stderr over `total` runs, closed on exit; yields progress(width,
    k=1), which names the width being run and counts k more."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, desc=desc, disable=True if quiet else None, leave=False,
               file=sys.stderr)

    def progress(n, k=1):
        bar.set_postfix_str(f"width {n}", refresh=False)
        bar.update(k)

    try:
        yield progress
    finally:
        bar.close()


def check_plot(path: str | None) -> Path | None:
    """The --plot path, checked before any work: matplotlib installed, a .png, its folder
    there."""
    if not path:
        return None
    plot = Path(path)
    need_matplotlib()
    if plot.suffix.lower() != ".png":
        raise TPError(f"--plot {plot}: the plot is written as PNG; name it {plot.stem}.png")
    if not plot.parent.exists():
        raise TPError(f"--plot: the folder {plot.parent} does not exist")
    return plot


def check_options(args) -> Path | None:
    """The options every check takes, checked before any work; the plot's path."""
    if args.widths is not None:
        parse_widths(args.widths)
    for flag, value, least in (("--samples", args.samples, 1), ("--seeds", args.seeds, 2),
                               ("--points", args.points, 1), ("--dim", args.dim, 1)):
        if value < least:
            raise TPError(f"{flag} must be at least {least}, got {value}")
    if args.seed < 0:
        raise TPError(f"--seed must be non-negative, got {args.seed}")
    if not args.z > 0 or not math.isfinite(args.z):
        raise TPError(f"--z must be a positive number, got {args.z}")
    if not args.min_offset >= 0 or not math.isfinite(args.min_offset):
        raise TPError(f"--min-offset must be a non-negative number, got {args.min_offset}")
    return check_plot(args.plot)


def cmd_check(args) -> int:
    from .api import compile

    plot = check_options(args)
    if args.against and not args.data:
        raise TPError("--against needs --data: a kernel file holds the kernel of particular "
                      "points, the ones the networks must be run on",
                      hint="tpc check FILE --data X.npy --against K.npz")
    net = compile(args.file)
    if net.ir.reports and (net.ir.readout is None or net.ir.netsor_t):
        from .check_reports import cmd_check_reports

        return cmd_check_reports(args, net, plot)
    widths = parse_widths(args.widths or "64,256,1024,4096")
    if args.data:
        x = load_data(args.data, "--data")
        what = f"data {args.data}"
    else:
        x = random_data(net.ir, args.points, args.dim, args.seed)
        what = f"{args.points} random points in d={args.dim} (seed {args.seed})"
    from .data import prepare

    x = prepare(net.ir, x, "--data" if args.data else "X")
    n_points = next(iter(x.values())).shape[0]
    if len(net.ir.inputs) == 1:
        x = next(iter(x.values()))
    against = load_against(args.against, n_points) if args.against else None

    with width_bar(len(widths) * (args.seeds + args.samples), "net", "check",
                   args.quiet) as progress:
        res = run_check(net, x, widths, args.samples, args.seeds, args.seed, args.backend,
                        progress, against, args.metric)
    ok = report(res, args, widths, what)
    if plot is not None:
        _plot(res, args, widths, plot)
        print(f"wrote {plot}")
    return 0 if ok else 1


_LABELS = {"hidden": "NNGP hidden", "ntk": "NTK"}


def fit_table(widths, fits: dict[str, OffsetFit], extra: tuple[str, list] | None = None):
    """Lines of the report: per width the mean error +- its standard error for each labelled
    fit (and an extra column of single values), then the slope and offset rows."""
    labels = list(fits)
    head = f"{'width':>7}" + "".join(f"  {lab:>20}" for lab in labels)
    lines = [head + (f"  {extra[0]:>9}" if extra else "")]
    for i, n in enumerate(widths):
        row = "".join(f"  {f'{fits[k].means[i]:.4g} +- {fits[k].sems[i]:.2g}':>20}"
                      for k in labels)
        lines.append(f"{n:>7}" + row + (f"  {extra[1][i]:>9.4g}" if extra else ""))

    def slope(v):
        return "-" if v is None else f"{v:.3f}"

    row = "".join(f"  {slope(fits[k].slope):>20}" for k in labels)
    lines.append(f"{'slope':>7}" + row
                 + (f"  {slope(fit_slope(widths, extra[1])):>9}" if extra else ""))
    lines.append(f"{'offset':>7}" + "".join(f"  {f'{fits[k].b:.3g} +- {fits[k].se_b:.2g}':>20}"
                                            for k in labels))
    return lines


def report(res: dict, args, widths, what: str) -> bool:
    """Print the table and the verdicts; True when every gated kernel passes."""
    fits, err = res["fits"], res["errors"]
    name = Path(args.file).name
    limit = f"the kernels of {args.against}" if args.against else "the compiled kernels"
    print(f"tpc check {name}: {what}; widths {', '.join(map(str, widths))}; against {limit}")
    metric = ("||K_n - K||_F / ||K||_F" if args.metric == "frobenius"
              else "||D(K_n - K)D||_F / ||DKD||_F, D = diag(K)^-1/2")
    print(f"relative error {metric} (mean +- standard error over {args.seeds} networks; MC "
          f"over {args.samples} networks)")
    has_mc = bool(err["mc"])
    extra = ("NNGP MC", err["mc"]) if has_mc else None
    labelled = {_LABELS[k]: fits[k] for k in ("hidden", "ntk") if k in fits}
    for line in fit_table(widths, labelled, extra):
        print(line)
    if has_mc:
        print(f"(NNGP MC: not gated; its error is Monte Carlo noise, RMS ~{res['noise']:.3g} "
              f"for {args.samples} samples, whatever the width)")
    for kind, reason in res["refused"].items():
        print(f"{kind.upper()}: not compared: {reason}")
    if fits:
        print(rule_text(args.z, args.min_offset, min(f.dof for f in fits.values())))
    ok = not res["broken"]
    for key in (k for k in ("hidden", "ntk") if k in fits):
        good, why = judge(fits[key], args.z, args.min_offset, args.max_slope)
        ok &= good
        print(f"{_LABELS[key]}: {'ok' if good else 'FAIL'} ({why})")
    for kind, reason in res["broken"].items():
        print(f"{kind.upper()}: FAIL ({reason})")
    return ok


def _plot(res: dict, args, widths, plot: Path) -> None:
    fits, err = res["fits"], res["errors"]
    curves = {}
    for key, marker in (("hidden", "o"), ("ntk", "s")):
        if key in fits:
            f = fits[key]
            slope = "-" if f.slope is None else f"{f.slope:.2f}"
            label = "NNGP, hidden layer" if key == "hidden" else "NTK"
            curves[f"{label} (slope {slope})"] = (f.means, f.sems, {"marker": marker}, f)
    if err["mc"]:
        curves[f"NNGP, Monte Carlo {args.samples} nets (not gated)"] = (
            err["mc"], None, {"marker": "^", "linestyle": "none", "alpha": 0.8}, None)
    save_plot(plot, convergence_figure(f"tpc check {Path(args.file).name}", widths, curves,
                                       res["noise"], args.samples, args.metric))
