"""Signal propagation through a program's repeated block, from its kernel recursion
(`tpc diagnose`; Poole et al. 2016, Schoenholz et al. 2017).

The block is the body of the program's longest rolled loop (passes/loops.py): one layer maps the
covariances of its Gaussian vectors at one point (the diag states: q) and between two points
(the cross states: q12) to the next layer's. From those maps, evaluated numerically (the NumPy
evaluator, any nonlinearity the compiler integrates):
  q*        the fixed point of the variance map, iterated from a unit input (<x, x>/d = 1);
  c*        the stable fixed point of the correlation q12 / q* at q*, iterated from c = c0;
  chi1      the slope of the covariance map at c = 1 (identical inputs) at q*: sigma_w^2
            E[phi'(u)^2] for an MLP. The squared gradient norm at initialisation grows by this
            factor per layer going backward (the backward recursion of the NTK is the adjoint of
            this slope: Schoenholz et al. eq. 13), so `gradient_rate` is chi1;
  xi_q      -1 / log of the variance map's slope at q* (its depth scale);
  xi_c      -1 / log chi_c, chi_c the correlation map's slope at c* (= chi1 when c* = 1);
  phase     ordered (chi1 < 1: inputs converge, c* = 1), chaotic (chi1 > 1: c* < 1) or
            critical (chi1 = 1 to 1e-9: xi_c infinite); `exploding` when the variance grows
            without bound (relu with sigma_w^2 > 2, or = 2 with a bias), chi1 then taken where
            the iteration stopped; q* = 0 when the variance vanishes (relu below 2 without
            bias: ordered).
The slopes are exact derivatives of the maps (passes/tangent.py's rules, seeded on the states),
not differences. A block whose state is more than one covariance (several vectors carried from
layer to layer) has Jacobians: the slopes are their spectral radii.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from . import ir, passes
from .backends.numpy import evaluate_expr
from .errors import TPError
from .kernel_program import KernelProgram, Loop, PointValue, is_first_point, twin
from .passes.spatial import SpatialProgram
from .passes.tangent import NoRule, Tangent

#: iterations allowed to reach a fixed point, and the relative change that counts as reached
MAX_ITERATIONS = 5000
CONVERGED = 1e-13
#: plain layers before Newton steps join in (enough to land in the attracting fixed point's
#: basin: a Newton step from far away may find a repelling one, c = 1 in the chaotic phase)
NEWTON_AFTER = 200
#: |chi1 - 1| below this is the critical line (closed forms give exactly 1 there)
CRITICAL = 1e-9
#: a variance past these bounds (relative to the input's 1) has no finite fixed point
HUGE, TINY = 1e100, 1e-100


@dataclass(frozen=True)
class Diagnosis:
    """What `diagnose` finds (None where a quantity does not exist, e.g. q* of a vanishing
    signal); trajectories from the loop's entry for the plots."""

    q_star: float | None
    c_star: float | None
    chi1: float | None
    chi_c: float | None
    xi_q: float | None
    xi_c: float | None
    phase: str
    gradient_rate: float | None
    c0: float
    depth: tuple[int, ...] = field(default=(), repr=False)
    q: tuple[float, ...] = field(default=(), repr=False)
    c: tuple[float, ...] = field(default=(), repr=False)
    #: log of the squared gradient norm at each layer relative to the last one
    log_grad: tuple[float, ...] = field(default=(), repr=False)

    def to_json(self) -> dict:
        out = {k: _finite(getattr(self, k)) for k in (
            "q_star", "c_star", "chi1", "chi_c", "xi_q", "xi_c", "gradient_rate")}
        out["phase"] = self.phase
        out["c0"] = self.c0
        return out

    def text(self) -> str:
        def show(v):
            return "-" if v is None else ("inf" if v == math.inf else f"{v:.6g}")

        rows = [("q*", self.q_star, "fixed point of the variance"),
                ("c*", self.c_star, f"fixed point of the correlation (from c = {self.c0:g})"),
                ("chi1", self.chi1, "slope of the correlation map at c = 1"),
                ("chi_c", self.chi_c, "slope at c*"),
                ("xi_q", self.xi_q, "depth scale of the variance (layers)"),
                ("xi_c", self.xi_c, "depth scale of the correlation (layers)"),
                ("gradient_rate", self.gradient_rate,
                 "growth of the squared gradient norm per layer, going backward")]
        lines = [f"phase: {self.phase}"]
        lines += [f"{name:<14}{show(v):>14}  {what}" for name, v, what in rows]
        return "\n".join(lines)


def _finite(v):
    return None if v is None else ("inf" if v == math.inf else float(v))


def _signal(kp: KernelProgram, program: ir.Program, s: sp.Symbol) -> bool:
    """Whether a loop state is the covariance of a vector the block computes (not of a bias,
    whose variance is a constant the state merely carries)."""
    labels = kp.labels.get(s.name, ())
    if not labels or labels[0].kind != "cov":
        return False
    return all(program.gvar(g).op is not ir.Op.BIAS for g in (labels[0].a, labels[0].b))


def _run(kp: KernelProgram, assigns, env: dict) -> None:
    for s, e in assigns:
        env[s.name] = float(evaluate_expr(e, env, kp))
        if is_first_point(s):
            env[twin(s).name] = env[s.name]  # both points have the same norm


def _step(kp: KernelProgram, lp: Loop, env: dict, cross: bool = True,
          hold: bool = False) -> None:
    """One layer of the loop: every state replaced by its next value (all at once); with
    hold=True the per-point states stay (the pair map at a fixed point of the variance)."""
    _run(kp, lp.diag, env)
    states = [] if hold else list(lp.diag_state)
    if cross:
        _run(kp, lp.cross, env)
        states += list(lp.cross_state)
    env.update({s.name: float(evaluate_expr(e, env, kp)) for s, e in states})
    for s, _ in lp.diag_state:
        if is_first_point(s):
            env[twin(s).name] = env[s.name]


def _bias_variance(program: ir.Program, kp: KernelProgram, state: sp.Symbol,
                   values: dict) -> float:
    """The variance of the bias added to the state's vector by the same dense layer: the
    papers' q is the pre-activation's variance, W phi(h) + b (the kernel program keeps the
    bias as a Gaussian vector of its own, often folded into a constant)."""
    labels = kp.labels.get(state.name, ())
    if not labels or labels[0].a != labels[0].b:
        return 0.0
    # dense(h, var=, bias=) makes its bias vector right before its matmul (lowering.py)
    at = [g.name for g in program.gvars].index(labels[0].a)
    g, b = program.gvars[at], program.gvars[at - 1] if at else None
    if b is None or b.op is not ir.Op.BIAS or g.span is None or b.span != g.span:
        return 0.0
    return float(program.param_var(b.param).xreplace(values))


class _Block:
    """The loop's two maps, numerically: states in, next states out (an env of names); q and k
    read the pre-activations' covariances (each state plus its layer's bias variance)."""

    def __init__(self, kp: KernelProgram, lp: Loop, program: ir.Program):
        self.kp, self.lp, self.program = kp, lp, program
        self.dcov = [i for i, (s, _) in enumerate(lp.diag_state) if _signal(kp, program, s)]
        self.xcov = [i for i, (s, _) in enumerate(lp.cross_state) if _signal(kp, program, s)]
        if not self.dcov or len(self.dcov) != len(self.xcov):
            raise TPError("the repeated block carries no covariance from layer to layer: "
                          "there is no signal to propagate")
        self.bias = np.zeros(len(self.dcov))
        self._jacobians: dict = {}

    def use(self, values: dict) -> None:
        """The params' values (symbol -> number) that q and k add the bias variances at."""
        self.bias = np.array([_bias_variance(self.program, self.kp, self.lp.diag_state[i][0],
                                             values) for i in self.dcov])

    def step(self, env: dict, cross: bool = True, hold: bool = False) -> None:
        _step(self.kp, self.lp, env, cross, hold)

    def q(self, env: dict) -> np.ndarray:
        return np.array([env[self.lp.diag_state[i][0].name] for i in self.dcov]) + self.bias

    def k(self, env: dict) -> np.ndarray:
        return np.array([env[self.lp.cross_state[i][0].name] for i in self.xcov]) + self.bias

    def set_k(self, env: dict, k) -> None:
        for i, v in zip(self.xcov, np.asarray(k) - self.bias):
            env[self.lp.cross_state[i][0].name] = float(v)

    def _jacobian(self, block: str):
        """(assignments, Jacobian entries, program with their integrals) of the covariance
        states' next values in themselves, derived once per block."""
        if block in self._jacobians:
            return self._jacobians[block]
        states = self.lp.diag_state if block == "diag" else self.lp.cross_state
        picks = self.dcov if block == "diag" else self.xcov
        T = Tangent(self.kp, len(picks), params=False)
        for m, i in enumerate(picks):
            T.tan[(states[i][0], m)] = sp.S.One
        try:
            assigns = T.block(getattr(self.lp, block), "dz")
            jac = [[T.d(states[i][1], m) for m in range(len(picks))] for i in picks]
        except NoRule as why:
            raise TPError(f"the slope of this block's covariance map needs the derivative of "
                          f"{why}, which has no rule yet", hint="passes/tangent.py lists the "
                          "rules; the kernels themselves are unaffected") from None
        program = dataclasses.replace(
            self.kp, integrands=self.kp.integrands + tuple(
                q for q in T.new.values() if q is not None))
        self._jacobians[block] = (assigns, jac, program)
        return self._jacobians[block]

    def jacobian(self, env: dict, block: str) -> np.ndarray:
        """The Jacobian of the covariance states' next values in themselves (block "diag":
        the variance map; "cross": the covariance map at fixed variances), exact (tangent
        rules seeded on the states)."""
        assigns, jac, program = self._jacobian(block)
        local = dict(env)
        with np.errstate(all="ignore"):  # the NTK's tangents are not read (inf at c = 1)
            for s, e in assigns:
                local[s.name] = float(evaluate_expr(e, local, program))
            return np.array([[float(evaluate_expr(e, local, program)) for e in row]
                             for row in jac])

    def slope(self, env: dict, block: str) -> float:
        """The Jacobian's spectral radius: the map's growth factor per layer."""
        return _radius(self.jacobian(env, block))


def _radius(jac: np.ndarray) -> float:
    return float(np.max(np.abs(np.linalg.eigvals(jac))))


def _entry(kp: KernelProgram, lp: Loop, c0: float, values: dict) -> dict:
    """The env at the loop's entry for two unit inputs at correlation c0 (<x, x>/d = 1,
    <x, x'>/d = c0): the straight code (and earlier loops) before it."""
    env: dict = {s.name: v for s, v in values.items()}
    for g in kp.diag_gram:
        env[g.symbol.name] = 1.0
        if isinstance(g.symbol, PointValue):
            env[twin(g.symbol).name] = 1.0
    for g in kp.cross_gram:
        env[g.symbol.name] = c0
    for (d_piece, dl), (c_piece, _) in zip(kp.pieces("diag"), kp.pieces("cross")):
        if dl is lp:
            return env
        if dl is None:
            _run(kp, d_piece, env)
            _run(kp, c_piece, env)
            continue
        for _ in range(dl.count):
            _step(kp, dl, env)
    raise AssertionError("the loop is not among the program's pieces")


def _newton(block: _Block, env: dict) -> None:
    """One Newton step of the pair map towards its fixed point k = F(k), with its exact
    Jacobian, where the map contracts (an attracting fixed point near) and the step stays a
    valid covariance (|correlation| <= 1); else nothing. Near chi_c = 1 plain iteration
    converges like chi_c^layers, Newton quadratically. (The variance map is iterated plainly:
    a Newton step could land on a repelling fixed point, q = 0 of relu above criticality.)"""
    k = block.k(env)
    jac = block.jacobian(env, "cross")
    if _radius(jac) >= 1.0:
        return
    trial = dict(env)
    block.step(trial, hold=True)
    try:
        new = k - np.linalg.solve(jac - np.eye(len(k)), block.k(trial) - k)
    except np.linalg.LinAlgError:
        return
    if np.all(np.isfinite(new)) and np.all(np.abs(new) <= block.q(env)):
        block.set_k(env, new)


def _fixed(block: _Block, env: dict, which: str) -> str:
    """Iterate (the diag map alone, or both) until the covariance states settle: 'fixed',
    'vanishing' or 'exploding' (relative to the input's scale 1). Plain layers first (they
    find the attracting fixed point), then Newton steps in between."""
    read = block.q if which == "diag" else block.k
    prev = read(env)
    for it in range(MAX_ITERATIONS):
        if which == "cross" and it >= NEWTON_AFTER and it % 2 == 0:
            _newton(block, env)
        block.step(env, cross=which == "cross", hold=which == "cross")
        now = read(env)
        scale = np.max(np.abs(now))
        if not np.all(np.isfinite(now)) or scale > HUGE:
            return "exploding"
        if which == "diag" and scale < TINY:
            return "vanishing"
        if np.max(np.abs(now - prev)) <= CONVERGED * max(scale, TINY):
            return "fixed"
        prev = now
    return "slow"  # no fixed point within MAX_ITERATIONS: reported as not found


class Propagation:
    """The repeated block of a program, derived once: diagnose() at any params' values (the
    values go into the evaluation, not into the derivation: a grid of them costs no sympy)."""

    def __init__(self, program: ir.Program):
        if len(program.inputs) != 1 or program.inputs[0].length is not None or \
                program.inputs[0].grid:
            raise TPError("diagnose reads a program with one vector input (`input x`)",
                          hint="the fixed points are those of a deep MLP-like block")
        kp = passes.run(program, start="recursions", stop="recursions")
        if isinstance(kp, SpatialProgram) or not kp.loops:
            raise TPError("this program has no repeated block whose layers are copies of one "
                          "another: write the block in a `repeat` (a residual sum, h = h + "
                          "..., carries a growing state and is not such a block yet)",
                          hint="`tpc kernel-program FILE` shows `repeat N times` for a rolled "
                               "block")
        self.program, self.kp = program, kp
        self.lp = max(kp.loops, key=lambda loop: loop.count)
        self.block = _Block(kp, self.lp, program)

    def diagnose(self, params: dict | None = None, c0: float = 0.5, depth: int | None = None,
                 full: bool = True) -> Diagnosis:
        """The quantities of the module docstring at these params' values; full=False: q*,
        chi1 and the phase only (no trajectories, no correlation: a grid's cell)."""
        if not -1.0 < c0 < 1.0:
            raise TPError(f"c0={c0} must be a correlation strictly between -1 and 1")
        values = self.program.param_values(params)
        block, lp = self.block, self.lp
        block.use(values)
        start = _entry(self.kp, lp, c0, values)
        layers = max(lp.count, 50) if depth is None else int(depth)
        if not 1 <= layers <= 100_000:
            raise TPError(f"depth={depth}: the trajectories need 1 to 100000 layers")
        traj = _trajectories(block, dict(start), layers) if full else ((), (), ())
        env = dict(start)
        with np.errstate(all="ignore"):
            found = _fixed(block, env, "diag")
        q_star = chi1 = chi_c = c_star = xi_q = xi_c = None
        if found == "slow" and np.all(block.q(env) > 10.0 * block.q(start)):
            found = "exploding"  # growing without settling (relu at 2 with a bias: linearly)
        if found in ("vanishing", "slow"):
            found = "zero" if _zero_is_fixed(block, env) else "slow"
        if found == "slow":
            phase = "no fixed point found"
        elif found == "exploding":
            # the variance grows without bound (relu with sigma_w^2 > 2, or = 2 with a bias): no
            # q*, but the slope at c = 1 of the last finite layer is the gradients' growth
            # (exact for a homogeneous phi)
            phase = "exploding"
            chi1 = block.slope(_at_one(block, env), "cross") if np.all(
                np.isfinite(block.q(env))) else None
        else:
            # found == "zero": q* = 0 (no bias, a contracting or marginal map: relu with
            # sigma_w^2 < 2, tanh with sigma_w^2 <= 1): the slopes are their limits at a
            # vanishing variance, evaluated at TINY; two vanishing signals have no correlation
            # fixed point of their own
            q = block.q(env)
            q_star = 0.0 if found == "zero" else float(q[0])
            chi1 = block.slope(_at_one(block, env), "cross")
            critical = abs(chi1 - 1.0) <= CRITICAL
            phase = "critical" if critical else "ordered" if chi1 < 1.0 else "chaotic"
            if full:
                xi_q = _scale(block.slope(env, "diag"))
            if full and found == "fixed":
                block.set_k(env, c0 * q)
                with np.errstate(all="ignore"):
                    settled = _fixed(block, env, "cross")
                c_now = float(block.k(env)[0] / q[0])
                if settled == "fixed" or (critical and abs(1.0 - c_now) < abs(1.0 - c0)):
                    # at chi1 = 1 the correlation approaches c = 1 (always a fixed point:
                    # identical inputs stay identical) only polynomially, with no depth
                    # scale: steps shrink below the convergence test while 1 - c is ~1e-10
                    c_star = c_now if settled == "fixed" and not (
                        critical and c_now > 1 - 1e-6) else 1.0
                    chi_c = chi1 if abs(c_star - 1.0) <= 1e-12 else block.slope(env, "cross")
                    xi_c = _scale(chi_c)
        depths = tuple(range(layers + 1)) if full else ()
        return Diagnosis(q_star, c_star, chi1, chi_c, xi_q, xi_c, phase, chi1, c0, depths,
                         *traj)

    def grid(self, x: str, xs, y: str, ys, params: dict | None = None, progress=None):
        """chi1 on the grid of two params (the others at `params` or their defaults): a
        (len(ys), len(xs)) array, NaN where it does not exist."""
        base = dict(params or {})
        out = np.full((len(ys), len(xs)), np.nan)
        for i, vy in enumerate(ys):
            for j, vx in enumerate(xs):
                d = self.diagnose({**base, x: float(vx), y: float(vy)}, full=False)
                if d.chi1 is not None:
                    out[i, j] = d.chi1
            if progress:
                progress(i + 1, len(ys))
        return out


def critical_line(xs, ys, chi) -> list[float | None]:
    """For each row of a grid of chi1 (rows: ys, columns: xs), the x where chi1 first crosses
    1, linearly interpolated (None where it does not cross)."""
    out: list[float | None] = []
    for row in np.asarray(chi):
        found = None
        for j in range(len(xs) - 1):
            a, b = row[j] - 1.0, row[j + 1] - 1.0
            if np.isfinite(a) and np.isfinite(b) and a * b <= 0 and a != b:
                found = float(xs[j] + (xs[j + 1] - xs[j]) * a / (a - b))
                break
        out.append(found)
    return out


def diagnose(program: ir.Program, params: dict | None = None, c0: float = 0.5,
             depth: int | None = None) -> Diagnosis:
    """The signal-propagation quantities of the program's repeated block (module docstring),
    with the params at `params` (default: their defaults); trajectories over `depth` layers
    (default: the loop's own count, at least 50)."""
    return Propagation(program).diagnose(params, c0, depth)


def _trajectories(block: _Block, env: dict, layers: int):
    """(q, c, log of the squared gradient norm relative to the last layer) per layer from the
    loop's entry."""
    qs, cs, rates = [], [], []
    with np.errstate(all="ignore"):
        for _ in range(layers + 1):
            q, k = block.q(env), block.k(env)
            qs.append(float(q[0]))
            cs.append(float(k[0] / q[0]) if q[0] > 0 else math.nan)
            rates.append(block.slope(_at_one(block, env), "cross"))
            block.step(env)
    # |grad at layer l|^2 / |grad at the last|^2 = the product of the slopes of the maps
    # l -> l+1, ..., L-1 -> L, each at its layer's variance
    logs = np.log(np.asarray(rates[:-1]))
    log_grad = tuple(float(v) for v in np.concatenate([np.cumsum(logs[::-1])[::-1], [0.0]]))
    return tuple(qs), tuple(cs), log_grad


def _zero_is_fixed(block: _Block, env: dict) -> bool:
    """Whether q = 0 is a fixed point the variance map does not leave: the per-point
    covariance states scaled down to TINY (no bias may hold them up) and one layer applied
    does not grow them. env is left at those states."""
    if np.any(block.bias > 0):
        return False
    raw = block.q(env)
    if not np.all(np.isfinite(raw)) or np.max(raw) <= 0:
        return False
    scaled = raw * (TINY * 1e50 / np.max(raw))  # 1e-50: room below for one layer's products
    for i, v in zip(block.dcov, scaled):
        s = block.lp.diag_state[i][0]
        env[s.name] = float(v)
        env[twin(s).name] = float(v)
    trial = dict(env)
    with np.errstate(all="ignore"):
        block.step(trial, cross=False)
    return bool(np.all(block.q(trial) <= scaled * (1.0 + 1e-6)))


def _at_one(block: _Block, env: dict) -> dict:
    """The env with the pair at c = 1: the cross states equal to the per-point ones."""
    out = dict(env)
    block.set_k(out, block.q(env))
    return out


def _scale(slope: float) -> float:
    """-1 / log(slope): the depth over which a perturbation decays by e (inf at slope 1)."""
    if slope >= 1.0 - CRITICAL:
        return math.inf
    if slope <= 0.0:
        return 0.0
    return -1.0 / math.log(slope)
