"""The coordinate check (issue 6): train the finite network a few steps at several widths and
watch how the size of every layer's coordinates scales with the width (TP5 §D; microsoft/mup's
`get_coord_data`, shared/THEORY.md §4.6).

`coord_check(program, widths, steps, optimizer, lr, batch, seed)` builds, at each width n, one
`AbcNetwork` (a `simulate.FiniteNetwork` in the program's abc-parametrization), trains it `steps`
full-batch steps of SGD or Adam on a fixed batch, and records after every step t (t = 0 is init)
the mean |coordinate| of every layer and of the output. `CoordCheck.slopes` fits the width
exponent (slope of log mean|x| against log n) at the last step; `CoordCheck.predicted` is what the
abc table implies; `CoordCheck.flags` lists the layers where the two disagree by more than
`TOLERANCE`.

Parametrization: `parametrization.scales`, the one interpreter the simulator uses too (a tensor
with exponents (a, b, c) is W = n^-a k w, w ~ N(0, n^-2b), learning rate eta n^-c; see there).

Layers (what is measured): one per INPUT or HIDDEN matrix the output depends on, the mean |.|
over every G-var that matrix produces (all its uses: a shared `weight` or a recurrence is one
layer), i.e. the pre-activation A h of a `dense()` without its bias; plus the output f.

Loss: L = 1/(2N) sum_i (f(x_i) - y_i)^2 on a fixed batch x_i ~ N(0, I_d) with fixed targets
y_i ~ N(0, 1) (both drawn from `seed`, independent of the width). Gradients of L w.r.t. every
trainable tensor come from one forward and one backward pass of the simulator (`_forward`,
`_backward`): with l' = dL/df = (f - y)/N, a matrix used as g_u = mult * W h_u has
dL/dW = mult * sum_u (l' * dG_u)^T H_u, a bias mult * sum_u sum_i l'_i dG_u[i], the readout
mult * l'^T H, its bias mult * sum_i l'_i; no per-example gradient is materialised.
SGD: w <- w - eta n^-c g. Adam (betas 0.9, 0.999, eps 1e-8, bias-corrected):
w <- w - eta n^-c m_hat / (sqrt(v_hat) + eps), with the abc table's Adam exponents c.

Predictions (`predicted_exponents`), from the abc table (TP4 §3, Prop. 5.3; TP IVb Def. 2.8.5):
the update of layer l moves its output like n^-r_l, and a change propagates forward unchanged in
size through the later (stable, a+b = 1/2) matrices. So the pre-activation of a layer grows like
n^max(0, -min r_l') over the INPUT/HIDDEN layers l' it depends on (itself included); its init
value is Theta(1) when stable at init. The output at t >= 1 is
    n^max(1 - (a_R + b_R + r), 1 - u_R, 1/2 - (a_R + b_R)),   u_R = 2a_R + c_R (SGD), a_R + c_R
(Adam), clipped below at 0: the features' change seen by the initial readout, the readout's own
update, and the initial output; when all three are <= 0 the trained output is Theta(1) (the
targets are Theta(1)). muP: every prediction 0. SP with a width-independent learning rate (r = -1):
the input layer 0, the hidden layers 1, the output 3/2. These are the steady-state exponents of
the theory; at the first steps of an unstable parametrization the measured growth can differ
(see docs/abc.md "Coordinate check").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from . import growth, ir
from .errors import TPError
from .files import atomic_path
from .growth import NONE, ZERO
from .parametrization import Scale, scales
from .passes.abc import OPTIMIZERS, AbcTable, Role, abc_table
from .simulate import FiniteNetwork

TOLERANCE = 0.25  # |fitted slope - predicted exponent| allowed (docs/abc.md "Coordinate check")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
DEFAULT_DIM = 8  # data dimension of the synthetic batch


# --- the parametrization -------------------------------------------------------------------------


class AbcNetwork(FiniteNetwork):
    """A FiniteNetwork in the program's own abc-parametrization (any preset or custom), with the
    learning-rate exponents of `optimizer`, and full-batch training steps.

    Always built with explicit weights and known input dimensions."""

    def __init__(self, program: ir.Program, width: int, dims: dict[str, int], seed=0,
                 optimizer: str = "sgd", table: AbcTable | None = None):
        if optimizer not in OPTIMIZERS:
            raise TPError(f"unknown optimizer '{optimizer}'", hint="use sgd or adam")
        self.table = table if table is not None else abc_table(program, optimizer)
        self.optimizer = optimizer
        super().__init__(program, width, seed, dims=dict(dims))
        self._lr_exp = {r.name: float(r.c) for r in self.table.rows}
        self._adam: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._t = 0

    def _check_parametrization(self) -> None:
        pass  # any preset or custom block: abc_table has resolved it

    def _scales_for(self, dims: dict[str, int]) -> dict[str, Scale]:
        return scales(self.program, self.width, dims, self.optimizer)

    # --- loss and gradients ----------------------------------------------------------------

    def loss(self, data: dict, targets: np.ndarray) -> float:
        f = self._forward(data).out
        return float(0.5 * np.mean((f - targets) ** 2))

    def loss_gradients(self, data: dict, targets: np.ndarray, fw=None):
        """(pass, {tensor name: dL/dw}) for L = 1/(2N) sum (f - y)^2 (module doc)."""
        fw = self._forward(data) if fw is None else fw
        lp = (fw.out - targets) / fw.n_points  # dL/df, (N,)
        dg = self._backward(fw)
        sc = self.scales
        r = self.program.readout
        uses = self._plan.uses
        grads: dict[str, np.ndarray] = {}
        for name, s in sc.items():
            if name == r.matrix:
                grads[name] = s.mult * (lp @ fw.features)
            elif name == r.bias:
                grads[name] = np.asarray(s.mult * lp.sum())
            elif s.fan_in is None:  # a width-n bias
                g = np.zeros(self.width)
                for u in uses.get(name, ()):
                    if u in dg:
                        g += lp @ dg[u]
                grads[name] = s.mult * g
            else:
                g = np.zeros(s.shape)
                for u in uses.get(name, ()):
                    if u in dg:
                        g += (lp[:, None] * dg[u]).T @ fw.args[u]
                grads[name] = s.mult * g
        return fw, grads

    def step(self, data: dict, targets: np.ndarray, lr: float) -> None:
        """One full-batch SGD/Adam step, learning rate lr * n^-c per tensor."""
        _, grads = self.loss_gradients(data, targets)
        self._t += 1
        n = float(self.width)
        b1, b2 = ADAM_BETAS
        for name, g in grads.items():
            p = self.param(name)
            eta = lr * n ** -self._lr_exp.get(name, 0.0)
            if self.optimizer == "sgd":
                upd = g
            else:
                m, v = self._adam.get(name, (np.zeros_like(g), np.zeros_like(g)))
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                self._adam[name] = (m, v)
                upd = (m / (1 - b1 ** self._t)) / (np.sqrt(v / (1 - b2 ** self._t)) + ADAM_EPS)
            p -= eta * upd  # in place: the live array of the network


# --- layers and predictions ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    name: str  # IR matrix name, or "out"
    label: str  # what the user wrote (dense@line:col, a weight name), or "output"
    gvars: tuple[str, ...]


def layers(program: ir.Program, table: AbcTable) -> list[Layer]:
    """The measured layers: every used INPUT/HIDDEN matrix (its G-vars), in program order."""
    used = {r.name for r in table.rows if r.used and r.role in (Role.INPUT, Role.HIDDEN)}
    out: dict[str, list[str]] = {}
    for g in program.gvars:
        if g.op is not ir.Op.BIAS and g.param in used:
            out.setdefault(g.param, []).append(g.name)
    return [Layer(m, program.matrix(m).label, tuple(gs)) for m, gs in out.items()]


def _upstream(program: ir.Program) -> dict[str, set[str]]:
    """G-var -> the matrices and biases its value depends on (itself included)."""
    deps: dict[str, set[str]] = {}
    for g in program.gvars:
        s = {g.param}
        if g.op is ir.Op.MATMUL:
            for h in ir.gvars_of(g.arg):
                s |= deps[h]
        deps[g.name] = s
    return deps


def predicted_exponents(program: ir.Program, table: AbcTable) -> dict[str, Fraction | None]:
    """Layer name (and "out") -> predicted width exponent of mean|x_t| for t >= 1 (module doc).
    None when the table has no r (a width-independent program)."""
    if table.r is None:
        return {L.name: None for L in layers(program, table)} | {"out": None}
    out: dict[str, Fraction | None] = {
        k: max(ZERO, -r) for k, r in _least_r(program, table).items()}
    sR, uR = table.readout_init, table.readout_update
    out["out"] = max(Fraction(0), 1 - (sR + table.r), 1 - uR, Fraction(1, 2) - sR)
    return out


def _least_r(program: ir.Program, table: AbcTable) -> dict[str, Fraction]:
    """Layer -> the smallest r_l over the layers it depends on (itself included)."""
    rl = {r.name: r.r for r in table.rows if r.r is not None}
    deps = _upstream(program)
    out = {}
    for L in layers(program, table):
        up = set().union(*(deps[g] for g in L.gvars))
        out[L.name] = min(rl[p] for p in up if p in rl)
    return out


def predicted_changes(program: ir.Program, table: AbcTable) -> dict[str, Fraction | None]:
    """Layer name (and "out") -> predicted width exponent of mean|x_t - x_0| for t >= 1 (TP4
    Thm 3.3, 3.5): a layer's pre-activation moves like n^-r over the layers it depends on
    (the smallest r_l: -1/2 in the kernel regime, 0 under muP), the output like
    n^max(1 - (a_R + b_R + r), 1 - u_R) (the features' change seen by the initial readout,
    the readout's own update). Not clipped at 0: what tells ntk from muP."""
    if table.r is None:
        return {L.name: None for L in layers(program, table)} | {"out": None}
    out: dict[str, Fraction | None] = {k: -r for k, r in _least_r(program, table).items()}
    sR, uR = table.readout_init, table.readout_update
    out["out"] = max(1 - (sR + table.r), 1 - uR)
    return out


def first_step_exponents(program: ir.Program, table: AbcTable) -> dict[str, Fraction | None]:
    """Layer name (and "out") -> predicted width exponent of mean|x_1| after ONE step, from the
    same (a, b, c) rows, by following sizes through the program (docs/abc.md, "Coordinate
    check"): init sizes x0, gradient sizes s at init (seeded by the readout, n^-(a_R+b_R)),
    the change of every G-var e after the update, and x1 = max(x0, e)."""
    return first_step(program, table)[0]


def first_step(program: ir.Program, table: AbcTable) -> tuple[dict, dict]:
    """(sizes, changes): layer name (and "out") -> the predicted width exponents of mean|x_1|
    and of mean|x_1 - x_0| after one step (first_step_exponents), following the step through
    the program with growth.py's rules (bounded functions cap, products add exponents)."""
    if table.r is None:
        none = {L.name: None for L in layers(program, table)} | {"out": None}
        return none, dict(none)
    ex = {r.name: (r.a, r.b, r.c) for r in table.rows}
    kinds = {m.name: m.kind for m in program.matrices}
    sgd = table.optimizer == "sgd"
    half = Fraction(1, 2)
    rd = program.readout
    aR, bR, cR = ex[rd.matrix]

    def hsize(arg, sizes):
        return ZERO if isinstance(arg, ir.InputRef) else growth.size(arg, sizes)

    x0: dict[str, Fraction] = {}
    for g in program.gvars:
        a, b, _ = ex[g.param]
        base = hsize(g.arg, x0) + half if g.op is ir.Op.MATMUL else ZERO
        x0[g.name] = base - (a + b)
    # gradient sizes at init: the readout's weights, then back through every matrix and the
    # derivatives of the functions between (a saturated tanh passes nothing back)
    s: dict[str, Fraction] = {}

    def seed(expr, top):
        if isinstance(expr, ir.InputRef):
            return
        for q in expr.free_symbols:
            d = growth.dsize(expr, q, x0)
            if d > NONE:
                s[q.name] = max(s.get(q.name, NONE), top + d)

    seed(rd.arg, -(aR + bR))
    for g in reversed(program.gvars):
        if g.op is ir.Op.MATMUL and g.name in s:
            a, b, _ = ex[g.param]
            seed(g.arg, s[g.name] + half - (a + b))
    uses: dict[str, list] = {}
    for g in program.gvars:
        uses.setdefault(g.param, []).append(g)
    e: dict[str, Fraction] = {}
    x1: dict[str, Fraction] = {}
    for g in program.gvars:
        a, _, c = ex[g.param]
        hidden = g.op is ir.Op.MATMUL and kinds.get(g.param) is ir.Kind.HIDDEN
        own = NONE
        for u in uses[g.param]:
            if u.name not in s:
                continue
            if hidden:  # correlated inner product over n coordinates
                corr = 1 + (hsize(u.arg, x0) if sgd else 0) + hsize(g.arg, x0 | x1)
            else:  # finite fan-in (input matrix, bias)
                corr = ZERO
            own = max(own, (-2 * a - c + s[u.name] if sgd else -a - c) + corr)
        prop = NONE
        if g.op is ir.Op.MATMUL:
            b = ex[g.param][1]
            prop = growth.change(g.arg, x0, x0 | x1, {k: NONE for k in x0} | e) \
                + half - (a + b)
        e[g.name] = max(own, prop)
        x1[g.name] = max(x0[g.name], e[g.name])
    out: dict[str, Fraction | None] = {}
    moved: dict[str, Fraction | None] = {}
    for L in layers(program, table):
        out[L.name] = max(x1[g] for g in L.gvars)
        moved[L.name] = max(e[g] for g in L.gvars)
    if isinstance(rd.arg, ir.InputRef):
        f0, fe, f1 = ZERO, NONE, ZERO
    else:
        f0, f1 = growth.size(rd.arg, x0), growth.size(rd.arg, x1)
        fe = growth.change(rd.arg, x0, x1, e)
    moves = [1 - (aR + bR) + fe,
             (-2 * aR - cR + 1 + f0 + f1) if sgd else (-aR - cR + 1 + f1)]
    if rd.bias is not None:
        moves.append(ZERO)
    out["out"] = max([half - (aR + bR) + f0] + moves)
    moved["out"] = max(moves)
    return out, moved


# --- the check -----------------------------------------------------------------------------------


@dataclass
class CoordCheck:
    program: str | None
    preset: str
    optimizer: str
    widths: tuple[int, ...]
    steps: int
    lr: float
    layers: tuple[Layer, ...]  # measured layers; the output is the extra key "out"
    coords: dict  # name -> (steps + 1, len(widths)) mean |coordinate|
    predicted: dict  # name -> Fraction | None: the exponent expected at step `judged`
    judged: int  # the step compared: the last one, or 1 for an unstable parametrization
    table: AbcTable = field(repr=False)
    tolerance: float = TOLERANCE
    seeds: int = 1
    #: name -> (steps + 1, len(widths)) mean |x_t - x_0| (the change since initialisation)
    changes: dict = field(default_factory=dict)
    #: name -> Fraction | None: the change's exponent expected at step `judged`
    predicted_change: dict = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [L.name for L in self.layers] + ["out"]

    def label(self, name: str) -> str:
        return "output f" if name == "out" else next(
            f"{L.name} {L.label}" for L in self.layers if L.name == name)

    def slopes(self, step: int | None = None, change: bool = False) -> dict[str, float]:
        """Least-squares slope of log mean|x_t| (change: of mean|x_t - x_0|) against log n
        (t = the last step by default); nan when some value is not finite and positive."""
        t = self.steps if step is None else step
        logn = np.log(np.asarray(self.widths, dtype=float))
        data = self.changes if change else self.coords
        out = {}
        for k in self.names:
            y = data[k][t] if k in data else np.full(len(self.widths), np.nan)
            if np.all(np.isfinite(y)) and np.all(y > 0) and len(y) > 1:
                out[k] = float(np.polyfit(logn, np.log(y), 1)[0])
            else:
                out[k] = float("nan")
        return out

    def flags(self) -> list[str]:
        """Layers whose fitted exponent at step `judged` disagrees with the prediction: of the
        change x_t - x_0 (marked "change") or of the size x_t."""
        bad = []
        for change, pred, mark in ((True, self.predicted_change, " change"),
                                   (False, self.predicted, "")):
            if change and self.judged == 0:
                continue
            s = self.slopes(self.judged, change)
            for k in self.names:
                p = pred.get(k)
                if p is None:
                    continue
                if not math.isfinite(s[k]) or abs(s[k] - float(p)) > self.tolerance:
                    bad.append(k + mark)
        return bad

    def text(self) -> str:
        j = self.judged
        s0, sj = self.slopes(0), self.slopes(j)
        cj = self.slopes(j, change=True)
        head = ["layer", "label", f"change slope t={j}", "predicted", "",
                "size slope t=0", f"size slope t={j}", "predicted", ""]
        rows = []
        bad = set(self.flags())
        for k in self.names:
            p, q = self.predicted_change.get(k), self.predicted.get(k)

            def verdict(flag, pred):
                return "DISAGREES" if flag in bad else ("ok" if pred is not None else "")
            rows.append([k, "output f" if k == "out" else self.label(k).split(" ", 1)[1],
                         f"{cj[k]:+.3f}" if j else "-", "-" if p is None or not j else str(p),
                         verdict(k + " change", p) if j else "",
                         f"{s0[k]:+.3f}", f"{sj[k]:+.3f}", "-" if q is None else str(q),
                         verdict(k, q)])
        w = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        fmt = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)).rstrip() for r in [head] + rows]
        title = (f"coordinate check of '{self.program or '<unnamed>'}': preset {self.preset}, "
                 f"optimizer {self.optimizer}, lr {self.lr:g}, {self.steps} steps, "
                 f"{self.seeds} seed(s), widths {', '.join(map(str, self.widths))}")
        if self.table.r is None or self.table.verdict("stable").holds:
            how = (f"predicted from the abc table's r_l (steady state; r = {self.table.r}, "
                   f"regime: {self.table.regime})")
        else:
            how = (f"regime {self.table.regime} (r = {self.table.r}): no steady state, the growth "
                   f"compounds with every step, so step {self.judged} is judged against the "
                   f"first-step exponents of the abc rows (docs/abc.md)")
        tail = (f"change = mean|x_t - x_0|, size = mean|x_t|; slope = d log(.) / d log n (least "
                f"squares over the widths); {how}; tolerance {self.tolerance:g}. The change "
                f"tells the regimes apart: n^-1/2 in the kernel regime, n^0 under muP")
        verdict = ("all layers agree with the abc table" if not bad else
                   f"{len(bad)} measurement(s) disagree with the abc table: "
                   f"{', '.join(sorted(bad))}")
        return "\n".join([title, "", *fmt, "", tail, verdict]) + "\n"

    def plot(self, path: str) -> None:
        """One panel per layer (and the output): mean |x_t| against n, log-log, a line per t.
        Written atomically (a temporary file in the same folder, then os.replace)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = self.names
        cols = min(4, len(names))
        blocks = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(2 * blocks, cols, figsize=(3.6 * cols, 3.1 * 2 * blocks),
                                 squeeze=False)
        cmap = plt.get_cmap("viridis")
        for i, k in enumerate(names):
            for change in (True, False):
                ax = axes[2 * (i // cols) + (0 if change else 1)][i % cols]
                data = self.changes if change else self.coords
                first = 1 if change else 0  # the change at t = 0 is 0
                for t in range(first, self.steps + 1):
                    ax.plot(self.widths, data[k][t], "o-", ms=3,
                            color=cmap(t / max(1, self.steps)), label=f"t={t}")
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ys = data[k][first:]
                ys = ys[np.isfinite(ys) & (ys > 0)]
                if ys.size and ys.max() / ys.min() < 100:  # flat lines look flat: 2 decades
                    mid = math.sqrt(ys.max() * ys.min())
                    ax.set_ylim(mid / 10, mid * 10)
                p = (self.predicted_change if change else self.predicted).get(k)
                sj = self.slopes(self.judged, change)[k]
                what = "change |x_t - x_0|" if change else "size |x_t|"
                ax.set_title(f"{self.label(k)}: {what}\nslope t={self.judged}: {sj:+.2f}"
                             + ("" if p is None else f" (predicted {p})"), fontsize=9)
                ax.set_xlabel("width n")
                ax.set_ylabel("mean " + ("|x_t - x_0|" if change else "|x_t|"))
                if ys.size:
                    ax.legend(fontsize=7, loc="best")
        for j in range(len(names), blocks * cols):
            axes[2 * (j // cols)][j % cols].axis("off")
            axes[2 * (j // cols) + 1][j % cols].axis("off")
        fig.suptitle(f"coordinate check: {self.program or ''} ({self.preset}, {self.optimizer}, "
                     f"lr {self.lr:g})")
        fig.tight_layout()
        try:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=100)
        finally:
            plt.close(fig)


def batch_data(program: ir.Program, batch: int, seed: int = 0, dim: int = DEFAULT_DIM):
    """A fixed batch: input name -> (N, d) or (N, T, d) standard normal, and targets (N,)."""
    rng = np.random.default_rng([seed, 7919])
    data = {}
    for inp in program.inputs:
        shape = (batch, dim) if inp.length is None else (batch, inp.length, dim)
        data[inp.name] = rng.standard_normal(shape)
    return data, rng.standard_normal(batch)


def coord_check(program: ir.Program, widths, steps: int = 3, optimizer: str = "sgd",
                lr: float = 0.1, batch: int = 8, seed: int = 0, dim: int = DEFAULT_DIM,
                seeds: int = 1, progress=None) -> CoordCheck:
    """Train `seeds` networks per width (seeds (seed, 0), (seed, 1), ...) `steps` steps each on
    one fixed batch and record mean |coordinate| per layer and step, averaged over the seeds."""
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or any(w < 1 for w in widths):
        raise TPError("the coordinate check needs at least two positive widths")
    if steps < 0 or batch < 1 or seeds < 1:
        raise TPError("steps must be >= 0, batch and seeds >= 1")
    if optimizer not in OPTIMIZERS:
        raise TPError(f"unknown optimizer '{optimizer}'", hint="use sgd or adam")
    table = abc_table(program, optimizer)
    lays = tuple(layers(program, table))
    data, targets = batch_data(program, batch, seed, dim)
    dims = {k: v.shape[-1] for k, v in data.items()}
    names = [L.name for L in lays] + ["out"]
    coords = {k: np.zeros((steps + 1, len(widths))) for k in names}
    changes = {k: np.zeros((steps + 1, len(widths))) for k in names}
    with np.errstate(all="ignore"):
        for j, n in enumerate(widths):
            for k in range(seeds):
                net = AbcNetwork(program, n, dims, seed=(seed, k), optimizer=optimizer,
                                 table=table)
                start = None
                for t in range(steps + 1):
                    fw = net._forward(data)
                    now = {L.name: [fw.env[g] for g in L.gvars] for L in lays}
                    now["out"] = [fw.out]
                    start = start or now
                    for name in names:
                        coords[name][t, j] += np.mean([np.mean(np.abs(v))
                                                       for v in now[name]]) / seeds
                        changes[name][t, j] += np.mean([np.mean(np.abs(v - v0)) for v, v0
                                                        in zip(now[name], start[name])]) / seeds
                    if t < steps:
                        net.step(data, targets, lr)
            if progress is not None:
                progress(j + 1, len(widths))
    stable = table.r is None or bool(table.verdict("stable").holds)
    if stable or steps == 0:
        judged, predicted = steps, predicted_exponents(program, table)
        change = predicted_changes(program, table)
        if steps == 0:  # at init: Theta(1) features, the output n^(1/2 - (a_R + b_R))
            predicted = dict.fromkeys(predicted, Fraction(0))
            if table.readout_init is not None:
                predicted["out"] = Fraction(1, 2) - table.readout_init
    else:
        judged = 1
        predicted, change = first_step(program, table)
    return CoordCheck(program.name, program.parametrization.preset, optimizer, widths, steps,
                      lr, lays, coords, predicted, judged, table, TOLERANCE, seeds, changes,
                      change)


# --- the command ---------------------------------------------------------------------------------


def cmd_coordcheck(args) -> int:
    from .lowering import lower
    from .parse import parse_file

    program = lower(parse_file(args.file))
    if args.dim < 1:
        raise TPError(f"--dim must be at least 1, got {args.dim}")
    from .check_cli import parse_widths

    res = coord_check(program, parse_widths(args.widths), args.steps, args.optimizer, args.lr,
                      args.batch, args.seed, dim=args.dim, seeds=args.seeds)
    print(res.text(), end="")
    if args.plot:
        res.plot(args.plot)
        print(f"wrote {args.plot}")
    return 1 if res.flags() else 0
