"""`tpc diagnose --batch B`: signal and gradient propagation through a repeated block with
batchnorm (Yang, Pennington, Rao, Sohl-Dickstein, Schoenholz, "A Mean Field Theory of Batch
Normalization", ICLR 2019).

The block is the stage of passes/batch.py that the program's `repeat` copies: it maps the
batch covariance S of one batchnorm's argument to the next one's, through the source
f(batchnorm(h)) it reads, S' = stage(V_f(S)). From a batch of B points with unit variances,
one pair at correlation c0 and the others uncorrelated, it is iterated to its fixed point, of
the paper's BSB1 form S* = q* ((1 - c*) I + c* 1 1^T) (a BSB1 batch is normalised to the same
V whatever its q and c, so from one the fixed point is reached in a layer). The squared
gradient norm going backward grows per layer by the spectral radius of the adjoint of
Theta -> sum_w w M_f(S*, Theta) (the tangent map, batchnorm.py), found by power iteration: the
paper's gradient explosion rate ((B - 2) / (B - 3) for the linear network; for relu tending to
pi / (pi - 1) as B grows).

The large-batch limit: as B -> infinity the normalised coordinates become independent N(0, 1)
(the batch's mean and variance are those of its law), so V -> Var f(z) I + E[f(z)]^2 1 1^T and
the rate -> w E[f'(z)^2] / (q*(1 - c*)) at the limit's fixed point: E[f'^2] / Var f for the
paper's block h' = W f(BN(h)) + b (relu: pi / (pi - 1)), independent of the variances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import batchnorm
from .batch_kernels import factor, numeric_functions, source_moments, warn_monte_carlo
from .errors import TPError

#: fixed-point and power iterations stop at this relative change (or at MAX_STEPS)
RTOL = 1e-13
MC_RTOL = 1e-9
MAX_STEPS = 5000


@dataclass(frozen=True)
class BatchDiagnosis:
    batch: int
    q_star: float
    c_star: float
    gradient_rate: float | None
    large_batch_c_star: float
    large_batch_rate: float | None
    c0: float
    iterations: int
    depth: tuple[int, ...] = field(default=(), repr=False)
    c: tuple[float, ...] = field(default=(), repr=False)
    log_grad: tuple[float, ...] = field(default=(), repr=False)

    @property
    def phase(self) -> str:
        if self.gradient_rate is None:
            return "no gradient rate (NTK refused)"
        if self.gradient_rate > 1 + 1e-9:
            return "gradient explosion"
        return "critical" if self.gradient_rate > 1 - 1e-9 else "gradient vanishing"

    def to_json(self) -> dict:
        return {"q_star": self.q_star, "c_star": self.c_star, "chi1": None, "chi_c": None,
                "xi_q": None, "xi_c": None, "phase": self.phase,
                "gradient_rate": self.gradient_rate, "c0": self.c0,
                "batch": {"size": self.batch, "q_star": self.q_star, "c_star": self.c_star,
                          "gradient_rate": self.gradient_rate,
                          "iterations": self.iterations,
                          "large_batch": {"c_star": self.large_batch_c_star,
                                          "gradient_rate": self.large_batch_rate}}}

    def text(self) -> str:
        def show(v):
            return "-" if v is None else f"{v:.6g}"

        rows = [("q*", self.q_star, "BSB1 fixed point: variance of the batchnorm's argument"),
                ("c*", self.c_star, f"BSB1 fixed point: correlation (one pair from c = "
                                    f"{self.c0:g})"),
                ("gradient_rate", self.gradient_rate,
                 f"growth of the squared gradient norm per layer (batch {self.batch})"),
                ("c* (B -> inf)", self.large_batch_c_star, "large-batch limit"),
                ("rate (B -> inf)", self.large_batch_rate, "large-batch limit")]
        return "\n".join([f"phase: {self.phase}"] +
                         [f"{n:<16}{show(v):>14}  {w}" for n, v, w in rows])


def _block(plan):
    """(index of the repeated stage, its source): a stage equal to the one before it that
    reads exactly the source of the previous stage's batchnorm."""
    stages = plan.stages
    for i in range(1, len(stages) - 1):
        prev, st = stages[i - 1], stages[i]
        if not (prev.target and st.target) or prev.program.digest() != st.program.digest():
            continue
        if len(st.sources) != 1 or len(st.program.inputs) != 1:
            continue
        src = plan.source(st.sources[0][1])
        if src.bn != prev.target or plan.eps[prev.target] != plan.eps[st.target]:
            continue
        if len(prev.sources) == 1 and plan.source(prev.sources[0][1]).body != src.body:
            continue
        return i, src
    raise TPError("no repeated block with batchnorm: `diagnose --batch` iterates the body of "
                  "a `repeat` that maps one batchnorm's argument to the next through "
                  "dense(f(batchnorm(h)))", hint="e.g. repeat 10 { h = dense(relu(batchnorm(h)), "
                  "var=2.0) }; the block must not read the network's input")


def _gauss_moments(src) -> tuple[float, float, float]:
    """E[f(z)], E[f(z)^2], E[f'(z)^2] for z ~ N(0, 1): closed forms for abrelu, else
    Gauss-Hermite with 200 nodes (at rounding for a smooth f; a kink away from 0 converges
    algebraically, to ~1e-5 at this order)."""
    if src.slopes is not None:
        a, b = src.slopes
        return (b - a) / math.sqrt(2 * math.pi), (a * a + b * b) / 2, (a * a + b * b) / 2
    f, df = numeric_functions(src.body)
    z, w = np.polynomial.hermite_e.hermegauss(200)
    w = w / math.sqrt(2 * math.pi)
    fz, dz = f(z), df(z)
    return float(w @ fz), float(w @ (fz * fz)), float(w @ (dz * dz))


def diagnose_batch(net, batch: int, params: dict | None = None, c0: float = 0.5,
                   depth: int | None = None) -> BatchDiagnosis:
    if not isinstance(batch, int) or batch < 2:
        raise TPError(f"--batch must be an integer >= 2, got {batch!r}")
    if not -1.0 < c0 < 1.0:
        raise TPError(f"c0 = {c0:g} is not the correlation of two distinct points: it must "
                      "lie in (-1, 1)")
    values = net._values(params)
    ev = net.batch_evaluator
    i, src = _block(ev.plan)
    stage, stage_net = ev.plan.stages[i], ev.networks[i]
    eps = float(ev.plan.eps[src.bn])
    name = stage.program.inputs[0].name

    # a Monte Carlo source (non-homogeneous f) is a deterministic map of S (the same seeded
    # directions every call), smooth in S: the iterations converge to its fixed point, to the
    # looser MC_RTOL; one TPWarning states its error at the end
    exact = src.slopes is not None
    rtol = RTOL if exact else MC_RTOL
    errors = []

    def moments_at(s, theta=None):
        mom = source_moments(src, eps, s, theta)
        errors.append(max(mom.v_error, mom.m_error))
        return mom

    def step(s):
        mom = moments_at(s)
        return stage_net.kernels({name: factor(mom.v)}, get="nngp", backend="numpy",
                                 params=params)["nngp"]

    # the start: unit variances, the first two points at correlation c0, the others
    # uncorrelated (not BSB1: the trajectory shows the batch converging to it)
    s = np.eye(batch)
    s[0, 1] = s[1, 0] = c0
    cs = [c0]
    steps = 0
    for steps in range(1, MAX_STEPS + 1):
        new = step(s)
        cs.append(float(new[0, 1] / new[0, 0]))
        done = np.abs(new - s).max() <= rtol * np.abs(new).max()
        s = new
        if done and steps >= (depth or 0):
            break
    q_star = float(np.mean(np.diag(s)))
    c_star = float((s.sum() - np.trace(s)) / (batch * (batch - 1)) / q_star)
    rate = None
    if stage.carry is not None:
        weight = sum(w for _, w in stage.weights(values))
        if exact:
            op = batchnorm.TangentMap(s, *src.slopes, eps)
        else:
            def op(theta):
                return moments_at(s, theta).m
        g = np.eye(batch) - 1.0 / batch
        theta = g / np.trace(g)
        for _ in range(MAX_STEPS):
            m = weight * op(theta)
            new_rate = float(np.trace(m) / np.trace(theta))
            theta = m / np.trace(m)
            if rate is not None and abs(new_rate - rate) <= rtol * abs(new_rate):
                rate = new_rate
                break
            rate = new_rate
    warn_monte_carlo(src, max(errors), net.tol, "q*, c* and the gradient rate rest on a")
    mean, second, slope = _gauss_moments(src)
    limit_v = np.array([[second, mean * mean], [mean * mean, second]])
    lim = stage_net.kernels({name: factor(limit_v)}, get="nngp", backend="numpy",
                            params=params)["nngp"]
    lim_c = float(lim[0, 1] / lim[0, 0])
    lim_rate = None
    if stage.carry is not None:
        lim_rate = float(weight * slope / (lim[0, 0] - lim[0, 1]))
    layers = max(depth or 0, 50)
    c_traj = (cs + [cs[-1]] * layers)[:layers + 1]
    log_grad = tuple((layers - k) * math.log(rate) for k in range(layers + 1)) if rate else ()
    return BatchDiagnosis(batch, q_star, c_star, rate, lim_c, lim_rate, c0, steps,
                          tuple(range(layers + 1)), tuple(c_traj), log_grad)
