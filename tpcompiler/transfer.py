"""Learning-rate transfer across widths (`tpc transfer`): does the optimal learning rate stay put
when the network widens (Tensor Programs V, arXiv 2203.03466; microsoft/mup's MLP demo)?

At every width n, learning rate eta (a log2 grid) and seed s, the finite network of the program
(coordcheck.AbcNetwork: the simulator's forward and backward passes in the program's, or the
given, abc-parametrization; its per-tensor learning rates eta n^-c) is trained `steps` minibatch
steps of SGD or Adam on a regression task, L = 1/(2N) sum (f(x) - y)^2, and its training and
held-out losses are recorded. The same seed gives the same initial draws (at each width), the
same minibatch order and the same data, whatever the learning rate.

Optimum per (width, seed): the grid point of least training loss, refined by the parabola through
it and its two neighbours in log2 eta (the vertex, clipped to the neighbours; the grid point when
the curvature is not positive or the best point is at the grid's edge, which is flagged).
Slope: d log2 eta* / d log2 n fitted per seed by least squares, its mean over the seeds and the
standard error of that mean (the seeds' spread / sqrt(seeds)). Verdict: "transfers" when
|slope| <= SLOPE_TOL + 2 se, "shifts" otherwise, "undetermined" when the optima of more than a
quarter of the (width, seed) pairs are at the grid's edge (the grid does not bracket them).
Theory (TP V): muP's optimum is width-independent (slope 0); SP's shrinks (for SGD on an MLP,
the hidden and readout updates grow like eta n, so eta* ~ 1/n: slope -1).

A run diverges when its loss is not finite or exceeds DIVERGED times the initial loss: it is
stopped, recorded as diverged (shown as such, never dropped) and counts as +inf in the search.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from . import ir
from .errors import TPError
from .passes.abc import OPTIMIZERS, abc_table

SLOPE_TOL = 0.2  # |d log2 eta* / d log2 n| that still counts as "transfers" (plus 2 se)
DIVERGED = 1e3  # a loss this many times the initial one is a divergence
EDGE_SHARE = 0.25  # optima on the grid's edge beyond this share leave the verdict undetermined
PRESETS = ("sp", "ntk", "mup", "mf")


@dataclass(frozen=True)
class Task:
    """Training and held-out data: input name -> array, and targets."""

    name: str
    train: dict
    y_train: np.ndarray
    test: dict
    y_test: np.ndarray


def digits_task(program: ir.Program, seed: int = 0, test_fraction: float = 0.2) -> Task:
    """scikit-learn's bundled digits (1797 8 x 8 images): target +1 for digits 5..9, -1 for
    0..4; pixels standardised (one global mean and standard deviation); a vector input reads the
    64 pixels, a sequence input s[T] the image in T consecutive pieces (T divides 64: the RNN
    reads rows). A fixed split (seeded) holds out test_fraction of the images."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise TPError("--data digits needs scikit-learn, which is not installed",
                      hint="pip install 'tpcompiler[sklearn]', or give --data X.npy "
                           "--labels y.npy") from None
    d = load_digits()
    x = (d.data - d.data.mean()) / d.data.std()
    y = np.where(d.target >= 5, 1.0, -1.0)
    return split_task("digits", program, x, y, seed, test_fraction)


def split_task(name: str, program: ir.Program, x: np.ndarray, y: np.ndarray, seed: int,
               test_fraction: float = 0.2) -> Task:
    """x (N, D) or (N, T, d) and y (N,) as the program's one input, split at random."""
    if len(program.inputs) != 1:
        raise TPError("tpc transfer trains programs with one input",
                      hint="the MLP and RNN examples have one (`input x`, `input s[T]`)")
    inp = program.inputs[0]
    if inp.grid:
        raise TPError("tpc transfer does not train image programs (conv) yet")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape[0] != y.shape[0] or x.shape[0] < 4:
        raise TPError(f"the data have {x.shape[0]} points and the labels {y.shape[0]}: they "
                      "must agree, at least 4")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise TPError("the data or the labels are not all finite numbers")
    if inp.length is not None:
        if x.ndim == 2:
            if x.shape[1] % inp.length:
                raise TPError(f"the sequence input {inp.name}[{inp.length}] reads {x.shape[1]} "
                              f"features in {inp.length} pieces: {inp.length} must divide "
                              f"{x.shape[1]}")
            x = x.reshape(x.shape[0], inp.length, -1)
        elif x.ndim != 3 or x.shape[1] != inp.length:
            raise TPError(f"data of shape {x.shape} for the sequence input "
                          f"{inp.name}[{inp.length}]")
    elif x.ndim != 2:
        raise TPError(f"data of shape {x.shape} for the vector input {inp.name}: want (N, d)")
    order = np.random.default_rng([seed, 4409]).permutation(x.shape[0])
    cut = x.shape[0] - max(1, int(round(test_fraction * x.shape[0])))
    tr, te = order[:cut], order[cut:]
    return Task(name, {inp.name: x[tr]}, y[tr], {inp.name: x[te]}, y[te])


def with_preset(program: ir.Program, preset: str | None) -> ir.Program:
    """The program in another preset parametrization (None: its own)."""
    if preset is None:
        return program
    if preset not in PRESETS:
        raise TPError(f"unknown parametrization '{preset}'",
                      hint="one of " + ", ".join(PRESETS))
    return dataclasses.replace(program, parametrization=ir.Parametrization(preset))


@dataclass(frozen=True)
class Run:
    width: int
    log2_lr: float
    seed: int
    train_loss: float  # inf when diverged
    test_loss: float
    diverged: bool


def train(program: ir.Program, task: Task, width: int, lr: float, steps: int, batch: int,
          optimizer: str, seed: int, table=None) -> tuple[float, float, bool]:
    """(training loss, held-out loss, diverged) of one network after `steps` minibatch steps."""
    from .coordcheck import AbcNetwork

    dims = {k: v.shape[-1] for k, v in task.train.items()}
    net = AbcNetwork(program, width, dims, seed=(seed, 5), optimizer=optimizer, table=table)
    n = task.y_train.shape[0]
    rng = np.random.default_rng([seed, 6067])  # the minibatch order: the same at every width
    perm, at = rng.permutation(n), 0
    readout = program.readout.matrix
    with np.errstate(all="ignore"):
        first = net.loss(task.train, task.y_train)
        for t in range(steps):
            if at + batch > n:
                perm, at = rng.permutation(n), 0
            idx = perm[at:at + batch]
            at += batch
            net.step({k: v[idx] for k, v in task.train.items()}, task.y_train[idx], lr)
            # a blow-up reaches the readout's gradient at once: its n weights are a cheap test
            if t % 10 == 9 and not np.all(np.isfinite(net.param(readout))):
                return math.inf, math.inf, True
        loss = net.loss(task.train, task.y_train)
        if not math.isfinite(loss) or loss > DIVERGED * max(first, 1e-12):
            return math.inf, math.inf, True
        return loss, net.loss(task.test, task.y_test), False


def optimum(log2_lrs: np.ndarray, losses: np.ndarray) -> tuple[float, bool]:
    """(log2 eta*, at the grid's edge) from losses on an equally spaced log2 grid (inf where
    diverged): the best grid point refined by the parabola through it and its neighbours."""
    losses = np.where(np.isfinite(losses), losses, np.inf)
    if not np.isfinite(losses).any():
        return math.nan, True
    k = int(np.argmin(losses))
    if k == 0 or k == len(losses) - 1 or not np.isfinite(losses[[k - 1, k + 1]]).all():
        return float(log2_lrs[k]), k == 0 or k == len(losses) - 1
    h = log2_lrs[1] - log2_lrs[0]
    lo, mid, hi = losses[k - 1], losses[k], losses[k + 1]
    curv = lo - 2 * mid + hi
    if curv <= 0:
        return float(log2_lrs[k]), False
    shift = 0.5 * h * (lo - hi) / curv
    return float(log2_lrs[k] + np.clip(shift, -h, h)), False


@dataclass(frozen=True)
class Transfer:
    preset: str
    optimizer: str
    widths: tuple[int, ...]
    log2_lrs: tuple[float, ...]
    seeds: int
    steps: int
    batch: int
    task: str
    runs: tuple[Run, ...]

    def losses(self, which: str = "train") -> np.ndarray:
        """(widths, lrs, seeds) losses, inf where diverged."""
        out = np.full((len(self.widths), len(self.log2_lrs), self.seeds), np.inf)
        wi = {w: i for i, w in enumerate(self.widths)}
        li = {lr: i for i, lr in enumerate(self.log2_lrs)}
        for r in self.runs:
            out[wi[r.width], li[r.log2_lr], r.seed] = \
                r.train_loss if which == "train" else r.test_loss
        return out

    def optima(self) -> tuple[np.ndarray, np.ndarray]:
        """(widths, seeds) log2 eta*, and whether each is at the grid's edge."""
        loss = self.losses()
        opt = np.empty((len(self.widths), self.seeds))
        edge = np.zeros_like(opt, dtype=bool)
        for i in range(len(self.widths)):
            for s in range(self.seeds):
                opt[i, s], edge[i, s] = optimum(np.asarray(self.log2_lrs), loss[i, :, s])
        return opt, edge

    def slope(self) -> tuple[float, float | None]:
        """(mean over seeds of d log2 eta* / d log2 n, its standard error or None)."""
        opt, _ = self.optima()
        x = np.log2(np.asarray(self.widths, dtype=float))
        per_seed = [float(np.polyfit(x, opt[:, s], 1)[0]) for s in range(self.seeds)
                    if np.all(np.isfinite(opt[:, s]))]
        if not per_seed:
            return math.nan, None
        se = float(np.std(per_seed, ddof=1) / math.sqrt(len(per_seed))) \
            if len(per_seed) > 1 else None
        return float(np.mean(per_seed)), se

    def verdict(self) -> str:
        slope, se = self.slope()
        if not math.isfinite(slope):
            return "undetermined"
        if self.optima()[1].mean() > EDGE_SHARE:  # an edge optimum is a bound, not a value
            return "undetermined (optima at the edge of the learning-rate grid: widen --lr)"
        return "transfers" if abs(slope) <= SLOPE_TOL + 2 * (se or 0.0) else "shifts"

    def to_dict(self) -> dict:
        opt, edge = self.optima()
        slope, se = self.slope()
        loss = self.losses()
        return {
            "parametrization": self.preset, "optimizer": self.optimizer,
            "widths": list(self.widths), "log2_lr": list(self.log2_lrs), "seeds": self.seeds,
            "steps": self.steps, "batch": self.batch, "data": self.task,
            "optimum_log2_lr": {str(w): [None if not math.isfinite(v) else v for v in opt[i]]
                                for i, w in enumerate(self.widths)},
            "optimum_at_edge": {str(w): [bool(e) for e in edge[i]]
                                for i, w in enumerate(self.widths)},
            "slope": None if not math.isfinite(slope) else slope, "slope_se": se,
            "slope_tolerance": SLOPE_TOL, "verdict": self.verdict(),
            "runs": [{"width": r.width, "log2_lr": r.log2_lr, "seed": r.seed,
                      "train_loss": None if r.diverged else r.train_loss,
                      "test_loss": None if r.diverged else r.test_loss,
                      "diverged": r.diverged} for r in self.runs],
            "diverged_runs": sum(r.diverged for r in self.runs),
            "mean_train_loss": [[None if not np.isfinite(v) else float(v) for v in row]
                                for row in _mean(loss)],
        }

    def text(self) -> str:
        opt, edge = self.optima()
        slope, se = self.slope()
        loss = _mean(self.losses())
        lines = [f"learning-rate transfer: parametrization {self.preset}, {self.optimizer}, "
                 f"{self.steps} steps of batch {self.batch} on {self.task}, {self.seeds} seed(s), "
                 f"log2 lr {self.log2_lrs[0]:g}..{self.log2_lrs[-1]:g} "
                 f"({len(self.log2_lrs)} points)"]
        lines.append(f"{'width':>7}  {'log2 lr*':>16}  {'train loss at lr*':>18}  diverged")
        for i, w in enumerate(self.widths):
            o = opt[i][np.isfinite(opt[i])]
            shown = "-" if not o.size else f"{o.mean():+.2f}" + (
                f" +- {o.std(ddof=1) / math.sqrt(o.size):.2f}" if o.size > 1 else "")
            flag = " (edge)" if edge[i].any() else ""
            best = np.nanmin(np.where(np.isfinite(loss[i]), loss[i], np.nan)) \
                if np.isfinite(loss[i]).any() else math.inf
            div = sum(r.diverged for r in self.runs if r.width == w)
            lines.append(f"{w:>7}  {shown + flag:>16}  {best:>18.4g}  "
                         f"{div}/{len(self.log2_lrs) * self.seeds}")
        sl = "-" if not math.isfinite(slope) else f"{slope:+.3f}" + (
            f" +- {se:.3f}" if se is not None else "")
        lines.append(f"slope d log2 lr* / d log2 width: {sl} (tolerance {SLOPE_TOL:g} + 2 se): "
                     f"{self.verdict()}")
        return "\n".join(lines) + "\n"


def _mean(loss: np.ndarray) -> np.ndarray:
    """Mean over seeds; inf where any seed diverged."""
    return np.where(np.isfinite(loss).all(axis=-1), np.where(np.isfinite(loss), loss, 0)
                    .mean(axis=-1), np.inf)


def lr_grid(text: str, points: int) -> np.ndarray:
    """log2 learning rates from 'A..B' (numbers or 2^k), `points` equally spaced."""
    def one(t: str) -> float:
        t = t.strip()
        try:
            if t.startswith("2^"):
                return float(t[2:])
            v = float(t)
        except ValueError:
            raise TPError(f"--lr: {t!r} is not a number or 2^k",
                          hint="write e.g. --lr 2^-12..2^2 or --lr 0.001..1") from None
        if not v > 0:
            raise TPError(f"--lr: {t!r} is not a positive learning rate")
        return math.log2(v)

    parts = text.split("..")
    if len(parts) != 2:
        raise TPError(f"--lr {text!r}: give a range A..B", hint="e.g. --lr 2^-12..2^2")
    lo, hi = one(parts[0]), one(parts[1])
    if not lo < hi or points < 3:
        raise TPError("--lr needs A < B and --points at least 3")
    return np.linspace(lo, hi, points)


def transfer(program: ir.Program, task: Task, widths, log2_lrs, steps: int = 200,
             batch: int = 32, optimizer: str = "sgd", seeds: int = 2, preset: str | None = None,
             progress=None) -> Transfer:
    """Train every (width, learning rate, seed) and collect the losses (module doc)."""
    if optimizer not in OPTIMIZERS:
        raise TPError(f"unknown optimizer '{optimizer}'", hint="use sgd or adam")
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise TPError("tpc transfer needs at least two positive widths")
    if steps < 1 or batch < 1 or seeds < 1:
        raise TPError("--steps, --batch and --seeds must be at least 1")
    program = with_preset(program, preset)
    table = abc_table(program, optimizer)
    runs = []
    for w in widths:
        for lr in log2_lrs:
            for s in range(seeds):
                tr, te, div = train(program, task, w, 2.0 ** lr, steps, batch, optimizer, s,
                                    table)
                runs.append(Run(w, float(lr), s, tr, te, div))
                if progress is not None:
                    progress(w)
    return Transfer(program.parametrization.preset, optimizer, widths,
                    tuple(float(v) for v in log2_lrs), seeds, steps, batch, task.name,
                    tuple(runs))


def figure(results: list[Transfer]):
    """mup's picture: one panel per parametrization, training loss (mean over seeds) against
    log2 lr, one curve per width (darker = wider), the optimum marked; diverged runs as
    crosses along the top."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(results), 4.4), dpi=110)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, res in zip(axes, results):
        loss = _mean(res.losses())
        opt, _ = res.optima()
        finite = loss[np.isfinite(loss)]
        top = float(finite.max()) * 1.3 if finite.size else 1.0
        lrs = np.asarray(res.log2_lrs)
        for i, w in enumerate(res.widths):
            color = _shade(i, len(res.widths))
            ok = np.isfinite(loss[i])
            ax.plot(lrs[ok], loss[i][ok], "-", color=color, label=f"width {w}")
            if (~ok).any():
                ax.plot(lrs[~ok], np.full((~ok).sum(), top), "x", color=color, ms=6)
            o = opt[i][np.isfinite(opt[i])]
            if o.size:
                best = np.interp(o.mean(), lrs[ok], loss[i][ok]) if ok.sum() > 1 else top
                ax.plot([o.mean()], [best], "o", color=color, ms=7, mec="black")
        slope, se = res.slope()
        sl = "-" if not math.isfinite(slope) else f"{slope:+.2f}" + (
            f" +- {se:.2f}" if se is not None else "")
        ax.set_title(f"{res.preset} ({res.optimizer}): slope of log2 lr* {sl}\n"
                     f"{res.verdict()}", fontsize=10)
        ax.set_xlabel("log2 learning rate")
        ax.set_ylabel(f"training loss after {res.steps} steps")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"learning-rate transfer on {results[0].task} (x: diverged; o: optimum)",
                 fontsize=11)
    fig.tight_layout()
    return fig


def _shade(i: int, n: int):
    import matplotlib

    return matplotlib.colormaps["viridis"](0.85 - 0.75 * i / max(1, n - 1))
