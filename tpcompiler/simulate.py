"""Finite-width simulation: a .tp program instantiated as an actual network of width n (NumPy,
float64), its per-example parameter gradients, and the empirical NNGP/NTK.

A `FiniteNetwork` samples one tensor per `Matrix` of the IR (reused by every G-var naming it: weight
sharing is the IR's, not ours) and one vector per `Bias`, runs the forward program over a batch,
and the backward (transpose) program for the gradients of the scalar output f w.r.t. the trainable
tensors. Shapes: a G-var is an (N, n) array (N points), an INPUT/HIDDEN matrix is (n, fan_in), the
readout matrix (fan_in,), a width-n bias (n,), the readout's bias a scalar.

Parametrization (`_scales`, the one place that knows it): every trainable tensor T is sampled with
i.i.d. N(0, std^2) entries and enters the forward pass as mult * T:
    ntk  std 1, mult sqrt(var/fan_in) (biases: std 1, mult sqrt(bias))   neural-tangents 'ntk'
    sp   std sqrt(var/fan_in), mult 1 (biases: std sqrt(bias), mult 1)   neural-tangents 'standard'
fan_in = the data dimension d for INPUT matrices (and a readout of an input), the width n for
HIDDEN and READOUT. Gradients are taken w.r.t. T, so under ntk the empirical NTK estimates the
compiled (M)-convention NTK (shared/THEORY.md §0), under sp it grows like n (shared/THEORY.md §2.2).

Backward: with dE the gradient of f w.r.t. an H-var E (an (N, n) array), every G-var g in E gets
dg += (dE/dg)(forward values) * dE (sympy.diff of the IR expression; Step/Sign derivatives are 0 as
in autodiff); a MATMUL c = mult * W @ arg passes d(arg) = mult * dG_c @ W back; the seed is the
readout, d(arg_readout) = mult_v * v. G-vars are visited in reverse SSA order, so each dG is
complete when it is used.

NTK without the Jacobian: a matrix used as g_u = mult * W h_u (u = its uses) has per-example
gradient mult * sum_u dg_u(x) h_u(x)^T, so
    Theta += mult^2 * sum_{u,u'} (dG_u dG_u'^T) * (H_u H_u'^T)      (elementwise, N x N)
and a bias mult^2 * (sum_u dG_u)(sum_u dG_u)^T, the readout mult_v^2 H H^T (+ mult_b^2).

Forward-only sampling without the matrices (`weights="implicit"`, used for Monte Carlo NNGPs): for
a matrix W with i.i.d. N(0, 1) entries and a batch of arguments H (N x m), H W^T depends on W only
through W Q, Q an orthonormal basis of the row space of H, and W Q has i.i.d. N(0, 1) entries. So a
matrix is represented lazily by (Q, Y = W Q) and extended at each use by the part of the new
arguments orthogonal to Q (Gaussian conditioning, as in the Master theorem's proof). The law of
every forward vector, hence of f, is exactly that of the explicit network; the cost is O(N n r)
per use (r <= N * uses) instead of sampling n * m numbers. Gradients need the explicit matrices.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import sympy as sp

from . import functions as F
from . import ir
from .data import prepare, prepare_pair
from .errors import TPError
from .parametrization import Scale, scales

PRESETS_SIMULATED = ("ntk", "sp")
# implicit weights: parts of a new argument smaller than this (relative to its Frobenius norm)
# outside the span of the earlier arguments are dropped
_RANK_RTOL = 1e-7


# --- parametrization -----------------------------------------------------------------------------


def _scales(program: ir.Program, width: int, dims: dict[str, int]) -> dict[str, Scale]:
    """Per Matrix/Bias name: (init std of the trainable tensor, forward multiplier, shape), by
    the parametrization's interpreter (parametrization.scales); the presets a kernel is
    compiled for only, since the limit compared with is the compiled one."""
    preset = program.parametrization.preset
    if preset not in PRESETS_SIMULATED:
        raise TPError(f"simulation of parametrization {preset} is not implemented yet",
                      hint=f"simulated parametrizations: {', '.join(PRESETS_SIMULATED)}")
    return scales(program, width, dims)


# --- numeric evaluation of H-vars ----------------------------------------------------------------

def evaluate(e: sp.Expr, env: dict, memo: dict):
    """Value of an IR expression; env: G-var name -> (N, n) array; memo: expr -> value."""
    v = memo.get(e)
    if v is not None:
        return v
    if e.is_Symbol:
        v = env[e.name]
    elif not e.free_symbols and not isinstance(e, sp.Function):
        v = float(e)
    else:
        args = [evaluate(a, env, memo) for a in e.args]
        if e.is_Add:
            v = args[0]
            for a in args[1:]:
                v = v + a
        elif e.is_Mul:
            v = args[0]
            for a in args[1:]:
                v = v * a
        elif e.is_Pow:
            base, p = args
            v = base ** int(e.args[1]) if e.args[1].is_Integer else np.power(base, p)
        else:
            fn = F.numpy_function(type(e))
            if fn is None:
                raise TPError(f"simulation has no numeric rule for {type(e).__name__}")
            v = fn(*args)
    memo[e] = v
    return v


def batch_normalise(h: np.ndarray, eps: float) -> np.ndarray:
    """Each coordinate (column) of h (N points x n) centred and divided by its standard
    deviation over the N points (biased, as in training mode), eps added to the variance."""
    u = h - h.mean(axis=0)
    sigma = np.sqrt((u * u).mean(axis=0) + eps)
    if np.any(sigma == 0):
        raise TPError("a coordinate has the same value at every point of the batch: batch "
                      "normalisation divides by 0 (eps = 0)", hint="a batch of distinct "
                      "points, or eps > 0")
    return u / sigma


def batch_normalise_grad(y: np.ndarray, h: np.ndarray, dy: np.ndarray, eps: float):
    """The gradient in h of <dy, batch_normalise(h)>: (dy - mean(dy) - y mean(dy y)) / sigma
    per coordinate (y the normalised values)."""
    u = h - h.mean(axis=0)
    sigma = np.sqrt((u * u).mean(axis=0) + eps)
    return (dy - dy.mean(axis=0) - y * (dy * y).mean(axis=0)) / sigma


# --- the program's plan (derivatives, uses), built once per program ------------------------------


@dataclass(frozen=True)
class _Plan:
    derivs: dict  # MATMUL G-var name or "out" -> tuple of (G-var name, derivative expr)
    uses: dict  # Matrix/Bias name -> tuple of G-var names using it, in program order
    param_index: dict  # Matrix/Bias name -> index (its random stream)


def _derivatives(expr) -> tuple:
    if isinstance(expr, ir.InputRef):
        return ()
    return tuple((name, sp.diff(expr, ir.gsym(name))) for name in ir.gvars_of(expr))


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plan(program: ir.Program) -> _Plan:
    plan = _PLANS.get(program)
    if plan is None:
        derivs = {g.name: _derivatives(g.arg) for g in program.gvars
                  if g.op in (ir.Op.MATMUL, ir.Op.BATCHNORM)}
        derivs["out"] = _derivatives(program.readout.arg)
        uses: dict[str, list[str]] = {}
        for g in program.gvars:
            uses.setdefault(g.param, []).append(g.name)
        index = {p.name: k for k, p in enumerate((*program.matrices, *program.biases))}
        plan = _Plan(derivs, {k: tuple(v) for k, v in uses.items()}, index)
        _PLANS[program] = plan
    return plan


# --- the finite network --------------------------------------------------------------------------


def seed_tuple(seed) -> tuple[int, ...]:
    seq = (seed,) if isinstance(seed, (int, np.integer)) else tuple(seed)
    for s in seq:
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0:
            raise TPError(f"seed must be a non-negative integer (or a tuple of them), got {seed!r}")
    return tuple(int(s) for s in seq)


def _check_width(width) -> int:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise TPError(f"width must be a positive integer, got {width!r}")
    return int(width)


def _vectors(data: dict, ref: ir.InputRef) -> np.ndarray:
    arr = data[ref.input]
    return arr if ref.index is None else arr[:, ref.index, :]


class _Implicit:
    """A matrix with i.i.d. N(0, 1) entries known only through Y = W Q (see the module doc)."""

    def __init__(self, rows: int, fan_in: int, rng: np.random.Generator):
        self.rows, self.rng = rows, rng
        self.q = np.zeros((fan_in, 0))
        self.y = np.zeros((rows, 0))

    def apply(self, h: np.ndarray) -> np.ndarray:
        """h @ W.T for h (N, fan_in), consistent with every earlier call."""
        out = np.zeros((h.shape[0], self.rows))
        resid = np.asarray(h, dtype=np.float64)
        if self.q.shape[1]:
            coef = h @ self.q
            resid = h - coef @ self.q.T
            again = resid @ self.q  # re-orthogonalise (Gram-Schmidt twice is enough)
            resid = resid - again @ self.q.T
            coef = coef + again
            out += coef @ self.y.T
        basis = self._new_directions(resid, float(np.einsum("ij,ij->", h, h)))
        if basis.shape[1]:
            y_new = self.rng.standard_normal((self.rows, basis.shape[1]))
            out += (resid @ basis) @ y_new.T
            self.q = np.hstack([self.q, basis])
            self.y = np.hstack([self.y, y_new])
        return out

    def _new_directions(self, resid: np.ndarray, norm2: float) -> np.ndarray:
        """An orthonormal basis (m x k, orthogonal to q) of the row space of resid, dropping
        directions below _RANK_RTOL * ||h||_F. Eigenvectors of the small Gram matrix, then one
        Cholesky-QR step (LAPACK's SVD/QR of an N x m matrix is ~40x slower here); the SVD if
        that fails."""
        cut = _RANK_RTOL ** 2 * max(norm2, 1e-300)
        lam, u = np.linalg.eigh(resid @ resid.T)
        keep = lam > cut
        if not keep.any():
            return np.zeros((resid.shape[1], 0))
        basis = resid.T @ (u[:, keep] / np.sqrt(lam[keep]))  # nearly orthonormal
        basis -= self.q @ (self.q.T @ basis)
        try:
            chol = np.linalg.cholesky(basis.T @ basis)
            basis = basis @ np.linalg.inv(chol).T
            if np.max(np.abs(basis.T @ basis - np.eye(basis.shape[1]))) < 1e-10:
                return basis
        except np.linalg.LinAlgError:
            pass
        _, s, vt = np.linalg.svd(resid, full_matrices=False)
        basis = vt[s ** 2 > cut].T
        basis -= self.q @ (self.q.T @ basis)
        return np.linalg.qr(basis)[0]


@dataclass
class _Pass:
    """One forward pass over a batch: values and the arguments each G-var multiplied."""

    data: dict
    n_points: int
    env: dict  # G-var name -> (N, n)
    memo: dict
    args: dict  # INPUT/MATMUL G-var name -> (N, fan_in) argument
    features: np.ndarray  # the readout's argument (N, fan_in)
    out: np.ndarray  # f (N,)


class FiniteNetwork:
    """One random instance of a program at width n.

    Arguments:
        program: the IR (`CompiledNetwork.ir`).
        width: n.
        seed: an int (or tuple of ints); parameter k of the program (matrices then biases) is drawn
            from its own stream `default_rng([*seed, k])`, so the network does not depend on the
            order in which tensors are sampled.
        dims: input name -> data dimension d; by default taken from the first data seen.
        weights: "explicit" (sample every tensor; gradients and NTK available) or "implicit"
            (forward only: matrices are sampled lazily in the span of their arguments, the law of
            the outputs is exact; see the module doc).

    Example:
        >>> fn = net.simulate(width=512, seed=0)
        >>> f = fn(X)                  # (N,) outputs
        >>> theta = fn.ntk(X)          # (N, N) empirical NTK
    """

    def __new__(cls, program: ir.Program, *args, **kw):
        if cls is FiniteNetwork and program.spatial:
            from .simulate_spatial import SpatialNetwork

            return super().__new__(SpatialNetwork)
        return super().__new__(cls)

    def __init__(self, program: ir.Program, width: int, seed=0, dims: dict | None = None,
                 weights: str = "explicit"):
        if weights not in ("explicit", "implicit"):
            raise TPError(f"unknown weights mode '{weights}'", hint="use 'explicit' or 'implicit'")
        program = program.bind()  # params at their defaults (bind(values) for others)
        if program.spatial:  # a subclass (the coordinate check's training) on a CNN
            raise TPError(f"{type(self).__name__} does not simulate spatial programs (conv, "
                          "pooling, layernorm) yet", hint="net.simulate(width) and tpc check do")
        self.program = program
        self.width = _check_width(width)
        self.seed = seed_tuple(seed)
        self.weights = weights
        self._plan = _plan(program)
        self.dims: dict[str, int] | None = None
        self._scales: dict[str, Scale] | None = None
        self._params: dict[str, np.ndarray] = {}
        self._implicit: dict[str, _Implicit] = {}
        self._check_parametrization()  # a TPError now, not at the first call
        if dims is not None:
            self._set_dims(dict(dims))

    def __repr__(self) -> str:
        return (f"<FiniteNetwork {self.program.name or '<unnamed>'} width={self.width} "
                f"seed={self.seed} {self.weights}>")

    # --- parameters ----------------------------------------------------------------------

    def _set_dims(self, dims: dict[str, int]) -> None:
        names = [i.name for i in self.program.inputs]
        missing = [n for n in names if n not in dims]
        if missing:
            raise TPError(f"dims: no dimension for input '{missing[0]}'")
        self.dims = {n: int(dims[n]) for n in names}
        self._scales = self._scales_for(self.dims)

    def _check_parametrization(self) -> None:
        if self.program.parametrization.preset not in PRESETS_SIMULATED:
            _scales(self.program, self.width, {})

    def _scales_for(self, dims: dict[str, int]) -> dict[str, Scale]:
        return _scales(self.program, self.width, dims)

    def _rng(self, name: str) -> np.random.Generator:
        return np.random.default_rng([*self.seed, self._plan.param_index[name]])

    @property
    def scales(self) -> dict[str, Scale]:
        if self._scales is None:
            raise TPError("the network has not seen data yet: its input dimensions are unknown",
                          hint="call it on data first, or pass dims={input: d}")
        return self._scales

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Trainable tensors by IR name (all sampled on first access; arrays are live: editing
        one changes the network). Implicit networks have no matrices to show."""
        if self.weights == "implicit":
            raise TPError("an implicit network has no explicit matrices",
                          hint="use weights='explicit'")
        for name in self.scales:
            self.param(name)
        return self._params

    def param(self, name: str) -> np.ndarray:
        p = self._params.get(name)
        if p is None:
            sc = self.scales[name]
            p = sc.std * self._rng(name).standard_normal(sc.shape)
            if sc.shape == ():
                p = np.asarray(p, dtype=np.float64).reshape(())
            self._params[name] = p
        return p

    def _matmul(self, name: str, h: np.ndarray) -> np.ndarray:
        """mult * h @ W.T for the INPUT/HIDDEN matrix `name`."""
        sc = self.scales[name]
        if self.weights == "implicit":
            imp = self._implicit.get(name)
            if imp is None:
                imp = self._implicit[name] = _Implicit(sc.shape[0], sc.shape[1], self._rng(name))
            return (sc.mult * sc.std) * imp.apply(h)
        return sc.mult * (h @ self.param(name).T)

    # --- data ----------------------------------------------------------------------------

    def _data(self, x1, x2=None) -> tuple[dict, int]:
        if x2 is not None and self.program.batched:
            raise TPError("a network with batchnorm normalises over the batch it is given: "
                          "pass one batch", hint="concatenate X1 and X2 into one batch")
        a, b = prepare_pair(self.program, x1, x2)
        n1 = next(iter(a.values())).shape[0]
        if b is not None:
            a = {k: np.concatenate([a[k], b[k]]) for k in a}
        dims = {k: v.shape[-1] for k, v in a.items()}
        if self.dims is None:
            self._set_dims(dims)
        elif dims != self.dims:
            raise TPError(f"this network was built for input dimensions {self.dims}, "
                          f"the data has {dims}")
        return a, n1

    # --- forward / backward --------------------------------------------------------------

    def _forward(self, data: dict) -> _Pass:
        n_points = next(iter(data.values())).shape[0]
        shape = (n_points, self.width)
        env: dict[str, np.ndarray] = {}
        memo: dict = {}
        args: dict[str, np.ndarray] = {}
        sc = self.scales
        for g in self.program.gvars:
            if g.op is ir.Op.BIAS:
                env[g.name] = np.broadcast_to(sc[g.param].mult * self.param(g.param), shape)
                continue
            if g.op is ir.Op.INPUT:
                h = _vectors(data, g.arg)
            else:
                h = np.broadcast_to(evaluate(g.arg, env, memo), shape)
            if g.op is ir.Op.BATCHNORM:
                env[g.name] = batch_normalise(h, float(g.batch_eps))
                continue
            args[g.name] = h
            env[g.name] = self._matmul(g.param, h)
        r = self.program.readout
        if isinstance(r.arg, ir.InputRef):
            feat = _vectors(data, r.arg)
        else:
            feat = np.broadcast_to(evaluate(r.arg, env, memo), shape)
        out = sc[r.matrix].mult * (feat @ self.param(r.matrix))
        if r.bias is not None:
            out = out + sc[r.bias].mult * float(self.param(r.bias))
        return _Pass(data, n_points, env, memo, args, feat, out)

    def _backward(self, fw: _Pass, row: int | None = None) -> dict[str, np.ndarray]:
        """G-var name -> df/dg (N, n), for every G-var the output depends on: row i is
        df(x_i)/dg(x_i). With batchnorm the output at one point depends on every point's
        vectors: `row` = i then gives df(x_i)/dg(x_j) in row j (one backward pass per output)."""
        if self.weights == "implicit":
            raise TPError("gradients need the explicit matrices", hint="use weights='explicit'")
        sc = self.scales
        shape = (fw.n_points, self.width)
        dg: dict[str, np.ndarray] = {}

        def push(derivs, d_expr):
            for name, dexpr in derivs:
                part = evaluate(dexpr, fw.env, fw.memo)
                if isinstance(part, float) and part == 0.0:
                    continue
                contrib = part * d_expr
                dg[name] = dg[name] + contrib if name in dg else contrib

        r = self.program.readout
        if not isinstance(r.arg, ir.InputRef):
            seed = np.broadcast_to(sc[r.matrix].mult * self.param(r.matrix), shape)
            if row is not None:
                seed = np.where(np.arange(fw.n_points)[:, None] == row, seed, 0.0)
            push(self._plan.derivs["out"], seed)
        for g in reversed(self.program.gvars):
            if g.op is ir.Op.MATMUL and g.name in dg:
                d_arg = sc[g.param].mult * (dg[g.name] @ self.param(g.param))
                push(self._plan.derivs[g.name], d_arg)
            elif g.op is ir.Op.BATCHNORM and g.name in dg:
                push(self._plan.derivs[g.name],
                     batch_normalise_grad(fw.env[g.name], evaluate(g.arg, fw.env, fw.memo),
                                          dg[g.name], float(g.batch_eps)))
        return {k: np.broadcast_to(v, shape) for k, v in dg.items()}

    # --- public --------------------------------------------------------------------------

    def __call__(self, x) -> np.ndarray:
        """The outputs f(x), shape (N,)."""
        data, _ = self._data(x)
        return self._forward(data).out

    def features(self, x) -> np.ndarray:
        """The readout's argument at every point, (N, n) (or (N, d) for a readout of an input)."""
        data, _ = self._data(x)
        return np.array(self._forward(data).features)

    def signals(self, x) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Every G-var's vector at each point and the output's gradient in it: (name -> (N, n)
        values, name -> (N, n) df/dg), for signal-propagation checks (tpc diagnose)."""
        data, _ = self._data(x)
        fw = self._forward(data)
        return ({k: np.asarray(v) for k, v in fw.env.items()},
                {k: np.asarray(v) for k, v in self._backward(fw).items()})

    def nngp_hidden(self, x1, x2=None) -> np.ndarray:
        """E over the readout layer alone of f(x1) f(x2)^T given the hidden features:
        (mult_v std_v)^2 h(x).h(x') + (mult_b std_b)^2 (= var_v h.h'/n + bias_v under ntk).
        Converges to the NNGP like n^-1/2 for one network (the raw f f^T does not, THEORY §5)."""
        return self.kernels(x1, x2, ("nngp",))["nngp"]

    def kernels(self, x1, x2=None, get=("nngp", "ntk")) -> dict[str, np.ndarray]:
        """The finite-width estimates of the limit kernels from one forward (and backward) pass:
        "nngp" as nngp_hidden(), "ntk" as ntk(). dict kind -> (N1, N2)."""
        get = (get,) if isinstance(get, str) else tuple(get)
        for kind in get:
            if kind not in ("nngp", "ntk"):
                raise TPError(f"unknown kernel '{kind}'", hint="use 'nngp' or 'ntk'")
        data, n1 = self._data(x1, x2)
        fw = self._forward(data)
        out = {}
        if "nngp" in get:
            out["nngp"] = self._nngp_hidden(fw)
        if "ntk" in get:
            out["ntk"] = self._ntk(fw)
        return out if x2 is None else {k: v[:n1, n1:] for k, v in out.items()}

    def _nngp_hidden(self, fw: _Pass) -> np.ndarray:
        r = self.program.readout
        sv = self.scales[r.matrix]
        k = (sv.mult * sv.std) ** 2 * (fw.features @ fw.features.T)
        if r.bias is not None:
            sb = self.scales[r.bias]
            k = k + (sb.mult * sb.std) ** 2
        return k

    def gradients(self, x) -> dict[str, np.ndarray]:
        """Per-example gradients df(x_i)/dT of every trainable tensor T: name -> (N, *T.shape).

        Materialises N * n * fan_in numbers per matrix: for checks at small widths."""
        data, _ = self._data(x)
        fw = self._forward(data)
        if self.program.batched:
            return self._batch_gradients(fw)
        dg = self._backward(fw)
        sc = self.scales
        n_points = fw.n_points
        out: dict[str, np.ndarray] = {}
        r = self.program.readout
        for name, s in sc.items():
            if name == r.matrix:
                out[name] = s.mult * np.array(fw.features)
            elif name == r.bias:
                out[name] = np.full(n_points, s.mult)
            elif s.fan_in is None:  # a width-n bias
                grad = np.zeros((n_points, self.width))
                for u in self._plan.uses.get(name, ()):
                    if u in dg:
                        grad += dg[u]
                out[name] = s.mult * grad
            else:
                grad = np.zeros((n_points, *s.shape))
                for u in self._plan.uses.get(name, ()):
                    if u in dg:
                        grad += np.einsum("ni,nj->nij", dg[u], fw.args[u])
                out[name] = s.mult * grad
        return out

    def ntk(self, x1, x2=None) -> np.ndarray:
        """The empirical NTK sum_T <df(x)/dT, df(x')/dT>, without materialising the Jacobian."""
        return self.kernels(x1, x2, ("ntk",))["ntk"]

    def _batch_gradients(self, fw: _Pass) -> dict[str, np.ndarray]:
        """Per-example gradients of a network with batchnorm: df(x_i)/dT sums over every
        point's use of T (one backward pass per output)."""
        sc = self.scales
        r = self.program.readout
        out = {name: np.zeros((fw.n_points, *s.shape)) for name, s in sc.items()}
        for i in range(fw.n_points):
            dg = self._backward(fw, row=i)
            for name, s in sc.items():
                if name == r.matrix:
                    out[name][i] = s.mult * np.asarray(fw.features)[i]
                elif name == r.bias:
                    out[name][i] = s.mult
                else:
                    for u in self._plan.uses.get(name, ()):
                        if u not in dg:
                            continue
                        if s.fan_in is None:
                            out[name][i] += s.mult * dg[u].sum(axis=0)
                        else:
                            out[name][i] += s.mult * (dg[u].T @ fw.args[u])
        return out

    def _ntk(self, fw: _Pass) -> np.ndarray:
        if self.program.batched:
            k = np.zeros((fw.n_points, fw.n_points))
            for grad in self._batch_gradients(fw).values():
                flat = grad.reshape(fw.n_points, -1)
                k += flat @ flat.T
            return k
        dg = self._backward(fw)
        sc = self.scales
        r = self.program.readout
        k = np.zeros((fw.n_points, fw.n_points))
        for name, s in sc.items():
            if name == r.matrix:
                k += s.mult ** 2 * (fw.features @ fw.features.T)
            elif name == r.bias:
                k += s.mult ** 2
            elif s.fan_in is None:
                used = [dg[u] for u in self._plan.uses.get(name, ()) if u in dg]
                if used:
                    total = used[0] if len(used) == 1 else sum(used[1:], used[0])
                    k += s.mult ** 2 * (total @ total.T)
            else:
                used = [u for u in self._plan.uses.get(name, ()) if u in dg]
                part = np.zeros_like(k)
                for i, u in enumerate(used):
                    for v in used[i:]:
                        term = (dg[u] @ dg[v].T) * (fw.args[u] @ fw.args[v].T)
                        part += term if v == u else term + term.T
                k += s.mult ** 2 * part
        return k


# --- Monte Carlo / empirical kernels -------------------------------------------------------------


def simulate(program: ir.Program, width: int, seed=0, **kw) -> FiniteNetwork:
    return FiniteNetwork(program, width, seed, **kw)


def empirical_nngp(program: ir.Program, x, width: int, samples: int, seed=0, *,
                   weights: str = "auto", progress=None) -> np.ndarray:
    """Monte Carlo output covariance mean_s f_s(x) f_s(x)^T over `samples` independent networks
    (network s has seed (seed, s)). weights="implicit" samples each network's law exactly without
    its matrices, "explicit" builds simulate(width, (seed, s)); "auto" (default) takes implicit
    when the batch is small against the width (N * uses of the most used matrix <= width / 8,
    where it is several times faster), explicit otherwise."""
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise TPError(f"samples must be a positive integer, got {samples!r}")
    base = seed_tuple(seed)
    width = _check_width(width)
    if weights == "auto":
        n_points = next(iter(prepare(program, x).values())).shape[0]
        uses = max((len(u) for p, u in _plan(program).uses.items()
                    if p in {m.name for m in program.matrices}), default=1)
        weights = "implicit" if 8 * n_points * uses <= width else "explicit"
    acc = None
    for s in range(int(samples)):
        f = FiniteNetwork(program, width, (*base, s), weights=weights)(x)
        acc = np.outer(f, f) if acc is None else acc + np.outer(f, f)
        if progress is not None:
            progress(s + 1, samples)
    return acc / samples


def empirical_ntk(program: ir.Program, x, width: int, seed=0, x2=None) -> np.ndarray:
    """The exact NTK of one network of width n (seed `seed`)."""
    return FiniteNetwork(program, width, seed).ntk(x, x2)
