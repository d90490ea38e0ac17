"""Optional, independent reference kernels from neural-tangents (Google, JAX).

Nothing here is imported at module import time: jax / neural_tangents are imported lazily
inside the functions, so this module is always importable; tests should do

    import nt_reference as ntr
    pytestmark = pytest.mark.skipif(not ntr.available(), reason="neural-tangents not installed")

Working pins (see tests/NT_NOTES.md): neural-tangents==0.6.5 with jax==jaxlib==0.5.3
(0.4.30 .. 0.5.3 all work; jax >= 0.6.0 breaks NT's import), in the same environment as
numpy 2.x / numba 0.68:

    pip install "jax[cpu]==0.5.3" "jaxlib==0.5.3" "frozendict>=2.3.8"
    pip install --no-deps neural-tangents==0.6.5

The ``--no-deps`` skips NT's hard dependency on tensorflow + tf2jax (~2 GB), which only its
``neural_tangents.experimental`` (TF interop) sub-package uses; but NT's ``__init__`` imports that
sub-package unconditionally.  So when tensorflow is not installed, ``_nt()`` below puts an empty
stand-in module at ``sys.modules['neural_tangents.experimental']`` before importing NT.  With
tensorflow installed (plain ``pip install "jax[cpu]==0.5.3" neural-tangents==0.6.5``) NT imports
normally and the stand-in is not used.

Side effects of the first call that imports NT: ``jax.config.update('jax_enable_x64', True)``
(process-global) and the import itself (~1 s).

Fallback: when jax / neural_tangents cannot be imported in this process, but the environment
variable ``TPC_NT_PYTHON`` names a python executable that has them (e.g. a venv's
``bin/python``), every function runs this file in that interpreter as a subprocess, passing the
arrays through temporary ``.npz`` files.

Conventions shared by all networks below (NT, ``parameterization='ntk'``, infinite width):

* inputs ``x1`` (N1, d), ``x2`` (N2, d) or ``None`` (meaning ``x1``); NT's input kernel is
  ``x1 @ x2.T / d``;
* ``Dense(W_std=s_w, b_std=s_b)`` maps an input kernel K to ``s_w**2 * K + s_b**2`` for the NNGP;
  for the NTK, ``Theta -> s_w**2 * Theta + (s_w**2 * K + s_b**2)`` (on the raw input Theta = 0,
  so the first layer's NTK equals its NNGP);
* an elementwise ``phi`` maps (K, Theta) to ``(E[phi(u) phi(v)], Theta * E[phi'(u) phi'(v)])``
  with (u, v) ~ N(0, K) -- so the ``ntk`` returned right after an activation has no "+ NNGP" term;
  every network here ends in a readout Dense, which adds it;
* the returned ``'nngp'`` / ``'ntk'`` are the kernels of the (scalar) network output, as float64
  numpy arrays of shape (N1, N2).
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np

ACTIVATIONS = (
    "relu", "leaky_relu", "abrelu", "abs", "erf", "gelu", "sin", "cos", "exp", "sign",
    "identity", "tanh_numerical", "sigmoid_like", "monomial",
)

_NT = None  # (jax, jnp, stax) once imported in-process
_NT_ERROR: str | None = None
_AVAILABLE: bool | None = None


# ---------------------------------------------------------------------------------------------
# lazy import


def _nt(platforms: str | None = None):
    """Import (jax, jax.numpy, neural_tangents.stax) in-process with x64 on; raise ImportError.

    Also the importer of benchmarks/peers.py. `platforms` (e.g. "cpu": jax's ``jax_platforms``)
    takes effect on the call that imports NT, before any jax backend starts; later calls return
    the modules imported then."""
    global _NT, _NT_ERROR
    if _NT is not None:
        return _NT
    if _NT_ERROR is not None:
        raise ImportError(_NT_ERROR)
    import importlib.util
    import types

    stub = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if importlib.util.find_spec("jax") is None:
                raise ImportError("jax is not installed")
            if ("neural_tangents" not in sys.modules
                    and importlib.util.find_spec("tensorflow") is None):
                # NT's __init__ does `from . import experimental`, whose only content is TF interop
                # (imports tensorflow, tf2jax). Give it an empty package instead.
                stub = types.ModuleType("neural_tangents.experimental")
                stub.__path__ = []
                sys.modules.setdefault("neural_tangents.experimental", stub)
            import jax

            jax.config.update("jax_enable_x64", True)
            if platforms:
                jax.config.update("jax_platforms", platforms)
            import jax.numpy as jnp
            from neural_tangents import stax
    except Exception as e:  # ImportError, or AttributeError etc. from an incompatible jax
        if stub is not None and sys.modules.get("neural_tangents.experimental") is stub:
            del sys.modules["neural_tangents.experimental"]
        _NT_ERROR = f"{type(e).__name__}: {e}"
        raise ImportError(_NT_ERROR) from e
    _NT = (jax, jnp, stax)
    return _NT


def _in_process_ok() -> bool:
    try:
        _nt()
    except ImportError:
        return False
    return True


def available() -> bool:
    """True if neural-tangents works with float64, in-process or via ``$TPC_NT_PYTHON``.

    Checks by computing a small Dense-Relu-Dense kernel and asserting it is float64 and finite.
    """
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            x = np.array([[1.0, 0.5], [-0.3, 2.0], [0.1, 0.1]])
            k = mlp_kernels(x, None, depth=1, act="relu", w_var=2.0, b_var=0.1)
            _AVAILABLE = all(
                a.dtype == np.float64 and a.shape == (3, 3) and np.isfinite(a).all()
                for a in (k["nngp"], k["ntk"])
            )
        except Exception:
            _AVAILABLE = False
    return _AVAILABLE


# ---------------------------------------------------------------------------------------------
# activations


def _freeze(params) -> tuple:
    return tuple(sorted((params or {}).items()))


def _activation(stax, jnp, act: str, params: tuple):
    """The NT layer for `act`; `params` a sorted tuple of (name, value).

    relu()                       stax.Relu()                 max(x, 0)
    leaky_relu(slope)            stax.LeakyRelu(slope)       slope*min(x, 0) + max(x, 0)
    abrelu(a, b)                 stax.ABRelu(a, b)           a*min(x, 0) + b*max(x, 0)
    abs()                        stax.Abs()                  |x|  (= ABRelu(-1, 1))
    erf(a=1, b=1, c=0)           stax.Erf(a, b, c)           a*erf(b*x) + c
    gelu(approximate=False)      stax.Gelu(approximate)      x * Phi(x)  (exact, erf-based)
    sin(a=1, b=1, c=0)           stax.Sin(a, b, c)           a*sin(b*x + c)
    cos(a=1, b=1, c=0)           stax.Cos(a, b, c)           a*cos(b*x + c)
    exp(a=1, b=1)                stax.Exp(a, b)              a*exp(b*x)
    sign()                       stax.Sign()                 sign(x); NT sets its NTK term to 0
    identity()                   stax.Identity()             x
    tanh_numerical(deg=25)       stax.ElementwiseNumerical(jnp.tanh, deg)   (Gauss-Hermite,
                                 deg x deg nodes; derivative by jax.grad; slow convergence:
                                 abs err ~1e-3 at deg 25, ~1e-7 at deg 120, see NT_NOTES.md)
    sigmoid_like()               stax.Sigmoid_like()         0.5*erf(x/2.4020563531719796) + 0.5
    monomial(degree)             stax.Monomial(degree)       x**degree, degree in 0..5
    relu / leaky_relu / abrelu / abs also accept do_stabilize (NT rescaling for deep nets).
    """
    p = dict(params)

    def take(*required, **optional):
        missing = [r for r in required if r not in p]
        if missing:
            raise TypeError(f"activation {act!r} needs act_params {missing}")
        extra = set(p) - set(required) - set(optional)
        if extra:
            raise TypeError(f"activation {act!r}: unknown act_params {sorted(extra)}")
        return [p[r] for r in required], {k: p.get(k, v) for k, v in optional.items()}

    if act == "relu":
        _, o = take(do_stabilize=False)
        return stax.Relu(**o)
    if act == "leaky_relu":
        (slope,), o = take("slope", do_stabilize=False)
        return stax.LeakyRelu(float(slope), **o)
    if act == "abrelu":
        (a, b), o = take("a", "b", do_stabilize=False)
        return stax.ABRelu(float(a), float(b), **o)
    if act == "abs":
        _, o = take(do_stabilize=False)
        return stax.Abs(**o)
    if act in ("erf", "sin", "cos"):
        _, o = take(a=1.0, b=1.0, c=0.0)
        return {"erf": stax.Erf, "sin": stax.Sin, "cos": stax.Cos}[act](**o)
    if act == "gelu":
        _, o = take(approximate=False)
        return stax.Gelu(**o)
    if act == "exp":
        _, o = take(a=1.0, b=1.0)
        return stax.Exp(**o)
    if act == "sign":
        take()
        return stax.Sign()
    if act == "identity":
        take()
        return stax.Identity()
    if act == "tanh_numerical":
        _, o = take(deg=25)
        return stax.ElementwiseNumerical(jnp.tanh, deg=int(o["deg"]))
    if act == "sigmoid_like":
        take()
        return stax.Sigmoid_like()
    if act == "monomial":
        (degree,), _ = take("degree")
        return stax.Monomial(int(degree))
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


# ---------------------------------------------------------------------------------------------
# networks (built once per hyper-parameter set, jitted, cached)


def _dense(stax, w_var, b_var):
    return stax.Dense(1, W_std=math.sqrt(w_var), b_std=math.sqrt(b_var), parameterization="ntk")


@functools.lru_cache(maxsize=64)
def _kernel_fn(kind: str, spec: tuple):
    jax, jnp, stax = _nt()
    s = dict(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ElementwiseNumerical warns on construction
        if kind == "mlp":
            act = lambda: _activation(stax, jnp, s["act"], s["act_params"])  # noqa: E731
            layers = [_dense(stax, s["w_var"], s["b_var"]), act()]
            for _ in range(s["depth"] - 1):
                layers += [_dense(stax, s["w_var"], s["b_var"]), act()]
            layers.append(_dense(stax, s["readout_w_var"], s["readout_b_var"]))
        elif kind == "residual":
            a = s["alpha"]
            act = lambda: _activation(stax, jnp, s["act"], s["act_params"])  # noqa: E731
            layers = [_dense(stax, s["w_var"], s["b_var"])]
            for _ in range(s["depth"]):
                branch = stax.serial(act(), _dense(stax, a * a * s["w_var"], a * a * s["b_var"]))
                layers += [stax.FanOut(2), stax.parallel(stax.Identity(), branch),
                           stax.FanInSum()]
            layers += [act(), _dense(stax, s["readout_w_var"], s["readout_b_var"])]
        elif kind == "product":
            layers = [
                stax.FanOut(2),
                stax.parallel(_dense(stax, s["w_var"], s["b_var"]),
                              stax.serial(_dense(stax, s["w_var"], s["b_var"]), stax.Erf())),
                stax.FanInProd(),
                _dense(stax, s["readout_w_var"], s["readout_b_var"]),
            ]
        elif kind == "cnn":
            layers = [_cnn_layer(stax, jnp, item) for item in s["layers"]]
        else:
            raise ValueError(kind)
        _, _, kernel_fn = stax.serial(*layers)
    return jax.jit(kernel_fn, static_argnames=("get",))


def _cnn_layer(stax, jnp, item: tuple):
    """One layer of `cnn_kernels`' list (see there)."""
    what, *args = item
    if what == "conv":
        var, bias, size, padding, dims = args
        return stax.Conv(1, (size,) * dims, padding=padding.upper(), W_std=math.sqrt(var),
                         b_std=math.sqrt(bias) if bias else None, parameterization="ntk")
    if what == "act":
        return _activation(stax, jnp, args[0], ())
    if what == "avgpool":
        size, dims = args
        return stax.AvgPool((size,) * dims, (size,) * dims)
    if what == "gap":
        return stax.GlobalAvgPool()
    if what == "flatten":
        return stax.Flatten()
    if what == "dense":
        return _dense(stax, args[0], args[1])
    if what == "layernorm":
        return stax.LayerNorm(axis=-1, eps=args[0])
    if what == "attention":  # the one configuration with a kernel: see cnn_kernels
        qk, vv, oo, bias, heads, pos_var, val_pos = args
        return stax.GlobalSelfAttention(
            1, 1, 1, int(heads), linear_scaling=True, W_key_std=math.sqrt(qk),
            W_query_std=math.sqrt(qk), W_value_std=math.sqrt(vv), W_out_std=math.sqrt(oo),
            b_std=math.sqrt(bias) if bias else None, attention_mechanism="SOFTMAX",
            pos_emb_type="SUM" if pos_var else "NONE", pos_emb_decay_fn=None,
            W_pos_emb_std=math.sqrt(pos_var) if pos_var else 1.0, val_pos_emb=bool(val_pos))
    if what == "residual":  # x + serial(inner)
        inner = stax.serial(*[_cnn_layer(stax, jnp, it) for it in args[0]])
        return stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), inner),
                           stax.FanInSum())
    if what == "product":  # serial(a) * serial(b)
        a = stax.serial(*[_cnn_layer(stax, jnp, it) for it in args[0]])
        b = stax.serial(*[_cnn_layer(stax, jnp, it) for it in args[1]])
        return stax.serial(stax.FanOut(2), stax.parallel(a, b), stax.FanInProd())
    raise ValueError(what)


def _compute(kind: str, spec: tuple, x1, x2) -> dict[str, np.ndarray]:
    x1 = np.ascontiguousarray(x1, dtype=np.float64)
    x2 = None if x2 is None else np.ascontiguousarray(x2, dtype=np.float64)
    if kind != "cnn" and (x1.ndim != 2 or (x2 is not None and (x2.ndim != 2 or
                                                                 x2.shape[1] != x1.shape[1]))):
        raise ValueError("x1, x2 must be 2-D (N, d) with the same d")
    if not _in_process_ok():
        return _compute_subprocess(kind, spec, x1, x2)
    jax, jnp, _ = _nt()
    fn = _kernel_fn(kind, spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = fn(jnp.asarray(x1), None if x2 is None else jnp.asarray(x2), get=("nngp", "ntk"))
        out = {"nngp": np.asarray(k.nngp, dtype=np.float64),
               "ntk": np.asarray(k.ntk, dtype=np.float64)}
    if k.nngp.dtype != jnp.float64:
        raise RuntimeError(f"NT computed in {k.nngp.dtype}, not float64")
    return out


# ---------------------------------------------------------------------------------------------
# public API


def mlp_kernels(x1, x2, *, depth, act, w_var, b_var, readout_w_var=1.0, readout_b_var=0.0,
                act_params=None) -> dict[str, np.ndarray]:
    """NNGP / NTK of a depth-`depth` MLP (`depth` hidden Dense+act layers, then a readout).

    Exact NT network (``D(wv, bv) = stax.Dense(1, W_std=sqrt(wv), b_std=sqrt(bv),
    parameterization='ntk')``, ``A`` = the layer for `act` / `act_params`, see ``_activation``)::

        stax.serial(D(w_var, b_var), A,
                    *[D(w_var, b_var), A] * (depth - 1),
                    D(readout_w_var, readout_b_var))

    i.e. K_1 = w_var * x.x'/d + b_var;  then per layer K <- w_var * E[A(u)A(v)] + b_var,
    Theta <- w_var * Theta * E[A'(u)A'(v)] + K;  readout with (readout_w_var, readout_b_var).
    """
    if depth < 1:
        raise ValueError("depth must be >= 1")
    spec = (("act", act), ("act_params", _freeze(act_params)), ("b_var", float(b_var)),
            ("depth", int(depth)), ("readout_b_var", float(readout_b_var)),
            ("readout_w_var", float(readout_w_var)), ("w_var", float(w_var)))
    return _compute("mlp", spec, x1, x2)


def residual_kernels(x1, x2, *, depth, act, w_var, b_var, alpha, readout_w_var=1.0,
                     readout_b_var=0.0, act_params=None) -> dict[str, np.ndarray]:
    """NNGP / NTK of a residual network: h = Dense(x); `depth` blocks h <- h + alpha*Dense(act(h)).

    Exact NT network (D, A as in ``mlp_kernels``)::

        block = [stax.FanOut(2),
                 stax.parallel(stax.Identity(),
                               stax.serial(A, stax.Dense(1, W_std=alpha*sqrt(w_var),
                                                         b_std=alpha*sqrt(b_var),
                                                         parameterization='ntk'))),
                 stax.FanInSum()]
        stax.serial(D(w_var, b_var), *block * depth, A, D(readout_w_var, readout_b_var))

    (readout defaults: W_std=1, b_std=0).  FanInSum adds the branches' NNGPs and NTKs (the
    Dense branch has fresh weights, so it is uncorrelated with h):
    K <- K + alpha^2 (w_var E[A(u)A(v)] + b_var);
    Theta <- Theta + alpha^2 (w_var Theta E[A'(u)A'(v)] + w_var E[A(u)A(v)] + b_var).
    """
    if depth < 0:
        raise ValueError("depth must be >= 0")
    spec = (("act", act), ("act_params", _freeze(act_params)), ("alpha", float(alpha)),
            ("b_var", float(b_var)), ("depth", int(depth)),
            ("readout_b_var", float(readout_b_var)), ("readout_w_var", float(readout_w_var)),
            ("w_var", float(w_var)))
    return _compute("residual", spec, x1, x2)


def product_kernels(x1, x2, *, w_var, b_var, readout_w_var=1.0,
                    readout_b_var=0.0) -> dict[str, np.ndarray]:
    """NNGP / NTK of h = u * erf(g) with u = Dense(x), g = Dense(x) (independent weights).

    Exact NT network (D as in ``mlp_kernels``)::

        stax.serial(stax.FanOut(2),
                    stax.parallel(D(w_var, b_var), stax.serial(D(w_var, b_var), stax.Erf())),
                    stax.FanInProd(),
                    D(readout_w_var, readout_b_var))

    (readout defaults: W_std=1, b_std=0).  With K0 = w_var x.x'/d + b_var for both branches,
    FanInProd gives NNGP K_u K_g and NTK Theta_u K_g + K_u Theta_g, where K_u = Theta_u = K0,
    K_g = E[erf(u)erf(v)], Theta_g = K0 E[erf'(u)erf'(v)] over (u, v) ~ N(0, K0); then the
    readout: K = readout_w_var K_u K_g + readout_b_var, Theta = readout_w_var (NTK) + K.
    """
    spec = (("b_var", float(b_var)), ("readout_b_var", float(readout_b_var)),
            ("readout_w_var", float(readout_w_var)), ("w_var", float(w_var)))
    return _compute("product", spec, x1, x2)


# ---------------------------------------------------------------------------------------------
# subprocess fallback ($TPC_NT_PYTHON)


def cnn_kernels(x1, x2, layers: tuple) -> dict[str, np.ndarray]:
    """NNGP / NTK of stax.serial over `layers` (NT, parameterization='ntk'), images x (N, H, W,
    C) or sequences (N, T, C). Each layer is a tuple:
        ("conv", var, bias, size, padding, dims)  Conv(1, (size,)*dims, padding.upper(),
                                                   W_std=sqrt(var), b_std=sqrt(bias) or None)
        ("act", name)                             the activation of `mlp_kernels`
        ("avgpool", size, dims)                   AvgPool((size,)*dims, (size,)*dims)
        ("gap",) / ("flatten",)                   GlobalAvgPool() / Flatten()
        ("dense", var, bias)                      Dense (per position on a spatial input)
        ("layernorm", eps)                        LayerNorm(axis=-1, eps=eps)
        ("attention", qk, vv, oo, bias, heads, pos_var, val_pos)
                                                  GlobalSelfAttention(1, 1, 1, heads,
                                                   linear_scaling=True, W_key_std=W_query_std=
                                                   sqrt(qk), W_value_std=sqrt(vv), W_out_std=
                                                   sqrt(oo), b_std=sqrt(bias) or None, softmax;
                                                   pos_emb_type SUM with W_pos_emb_std=
                                                   sqrt(pos_var) and one-hot positions (no
                                                   decay_fn) when pos_var > 0, val_pos_emb)
        ("residual", (layers...))                 x + serial(layers)(x)
        ("product", (layers...), (layers...))     serial(a)(x) * serial(b)(x)
    """
    return _compute("cnn", (("layers", layers),), x1, x2)


def mlp_predict(x_train, y_train, x_test, *, t, get, learning_rate=1.0, diag_reg=0.0,
                depth, act, w_var, b_var, readout_w_var=1.0, readout_b_var=0.0):
    """neural-tangents' `predict.gradient_descent_mse_ensemble` for the MLP of `mlp_kernels`:
    the test mean and covariance at time t (None: infinity) of the `get` ("nngp" / "ntk")
    dynamics; diag_reg relative to the mean diagonal (NT's default). In-process only."""
    jax, jnp, _ = _nt()
    import neural_tangents as nt

    spec = (("act", act), ("act_params", ()), ("b_var", float(b_var)), ("depth", int(depth)),
            ("readout_b_var", float(readout_b_var)), ("readout_w_var", float(readout_w_var)),
            ("w_var", float(w_var)))
    fn = _kernel_fn("mlp", spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predict = nt.predict.gradient_descent_mse_ensemble(
            fn, jnp.asarray(x_train), jnp.asarray(y_train), learning_rate=learning_rate,
            diag_reg=diag_reg)
        mean, cov = predict(t=t, x_test=jnp.asarray(x_test), get=get, compute_cov=True)
    return np.asarray(mean, dtype=np.float64), np.asarray(cov, dtype=np.float64)


def _compute_subprocess(kind, spec, x1, x2) -> dict[str, np.ndarray]:
    py = os.environ.get("TPC_NT_PYTHON")
    if not py:
        raise ImportError(f"neural-tangents unusable here ({_NT_ERROR}) and TPC_NT_PYTHON unset")
    spec_json = json.dumps([kind, [[k, list(v) if isinstance(v, tuple) else v]
                                   for k, v in spec]])
    with tempfile.TemporaryDirectory(prefix="tpc_nt_") as d:
        inp, out = os.path.join(d, "in.npz"), os.path.join(d, "out.npz")
        arrays = {"x1": x1} if x2 is None else {"x1": x1, "x2": x2}
        np.savez(inp, spec=np.array(spec_json), **arrays)
        env = dict(os.environ)
        env.pop("TPC_NT_PYTHON", None)  # the child must not recurse
        r = subprocess.run([py, os.path.abspath(__file__), "--worker", inp, out],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"NT subprocess ({py}) failed:\n{r.stderr[-4000:]}")
        with np.load(out) as z:
            return {"nngp": z["nngp"].astype(np.float64), "ntk": z["ntk"].astype(np.float64)}


def _worker(inp: str, out: str) -> None:
    with np.load(inp) as z:
        kind, spec = json.loads(str(z["spec"]))
        x1 = z["x1"]
        x2 = z["x2"] if "x2" in z.files else None
    spec = tuple((k, tuple(tuple(p) for p in v) if k == "act_params" else v) for k, v in spec)
    _nt()  # raise here, in the child, if NT is unusable
    k = _compute(kind, spec, x1, x2)
    np.savez(out, **k)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--worker":
    _worker(sys.argv[2], sys.argv[3])
