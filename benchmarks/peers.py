"""The peers tpcompiler is timed against, and the networks they share.

* neural-tangents (JAX, CPU, float64): ``nt_mlp_fn`` builds a *fresh* stax network and a fresh
  ``jax.jit`` every call, so that its first call is a true cold start (trace + XLA compile).
  neural-tangents is imported by ``tests/nt_reference._nt()`` (on JAX's CPU platform): when
  tensorflow is not installed it puts an empty ``neural_tangents.experimental`` module in
  ``sys.modules`` first (NT's ``__init__`` imports that TF-interop sub-package unconditionally).
* naive NumPy: the textbook layer-by-layer recursion, one set of N x N arrays per layer
  (``naive_mlp``), and a Gauss-Hermite version for smooth nonlinearities (``naive_mlp_quad``,
  used as the high-order accuracy reference for tanh). ``naive_rnn`` is the GP4A / NTK4A
  recursion of an erf RNN with shared weights (the accuracy reference of the RNN case).

Conventions (neural-tangents' ``parameterization='ntk'``): K_1 = w x.x'/d + b, Theta_1 = K_1;
per hidden layer K <- w E[phi(u) phi(v)] + b, Theta <- w Theta E[phi'(u) phi'(v)] + K;
the readout uses (readout_w, readout_b).
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np

_TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if _TESTS not in sys.path:
    sys.path.append(_TESTS)  # for nt_reference (importable without jax / neural-tangents)

import nt_reference  # noqa: E402

NT_INSTALL = ('pip install "jax[cpu]==0.5.3" "jaxlib==0.5.3" "frozendict>=2.3.8" && '
              'pip install --no-deps neural-tangents==0.6.5')

# the benchmarked networks: (weight variance, bias variance) of every hidden Dense
HYPER = {"relu": (2.0, 0.05), "erf": (1.5, 0.1), "tanh": (1.5, 0.05)}
READOUT = (1.0, 0.0)


# ------------------------------------------------------------------------------------------
# .tp sources


def mlp_source(act: str, depth: int) -> str:
    """`depth` hidden Dense+act layers then a readout: NT's
    serial(Dense, act, *[Dense, act] * (depth - 1), Dense(readout))."""
    w, b = HYPER[act]
    lines = [f"network {act}_mlp_{depth}", "input x", f"h = dense(x, var={w}, bias={b})"]
    if depth > 1:
        lines.append(f"repeat {depth - 1} {{ h = dense({act}(h), var={w}, bias={b}) }}")
    lines.append(f"y = readout({act}(h), var={READOUT[0]}, bias={READOUT[1]})")
    return "\n".join(lines) + "\n"


RNN = {"T": 8, "act": "erf", "w": 1.5, "u": 1.0, "b": 0.1, "v": 1.0}


def rnn_source(steps: int = RNN["T"], act: str = RNN["act"]) -> str:
    """An Elman RNN with the weights W (hidden) and U (input, with a bias) shared over time."""
    return (f"network rnn_{act}_{steps}\n"
            f"input s[{steps}]\n"
            f"weight U(var={RNN['u']}, bias={RNN['b']})\n"
            f"weight W(var={RNN['w']})\n"
            f"h = {act}(dense(s[0], U))\n"
            f"for t in 1..{steps - 1} {{ h = {act}(dense(h, W) + dense(s[t], U)) }}\n"
            f"y = readout(h, var={RNN['v']})\n")


# ------------------------------------------------------------------------------------------
# neural-tangents


def nt_import():
    """(jax, jnp, stax) on the CPU with x64 enabled; raises ImportError (message kept) when
    unusable."""
    return nt_reference._nt(platforms="cpu")


def nt_versions() -> dict:
    try:
        jax, _, _ = nt_import()
        import jaxlib
        import neural_tangents

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                "neural-tangents": getattr(neural_tangents, "__version__", "?")}
    except ImportError:
        return {}


def nt_mlp_fn(act: str, depth: int, deg: int = 25):
    """A freshly built, freshly jitted NT kernel_fn(x1, x2, get) of the MLP `mlp_source(act,
    depth)`; act 'tanh' is ElementwiseNumerical(jnp.tanh, deg)."""
    jax, jnp, stax = nt_import()
    w, b = HYPER[act]

    def dense(wv, bv):
        return stax.Dense(1, W_std=math.sqrt(wv), b_std=math.sqrt(bv), parameterization="ntk")

    def nonlin():
        if act == "relu":
            return stax.Relu()
        if act == "erf":
            return stax.Erf()
        if act == "tanh":
            return stax.ElementwiseNumerical(jnp.tanh, deg=deg)
        raise ValueError(act)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ElementwiseNumerical warns on construction
        layers = []
        for _ in range(depth):
            layers += [dense(w, b), nonlin()]
        layers.append(dense(*READOUT))
        _, _, kernel_fn = stax.serial(*layers)
    return jax.jit(kernel_fn, static_argnames=("get",))


def nt_call(fn, x) -> tuple:
    """NNGP and NTK (x2=None) as jax arrays, computed (block_until_ready); no copy to numpy."""
    _, jnp, _ = nt_import()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = fn(jnp.asarray(x), None, get=("nngp", "ntk"))
        k.nngp.block_until_ready()
        k.ntk.block_until_ready()
    return k.nngp, k.ntk


def nt_numpy(res) -> dict:
    nngp, ntk = res
    if nngp.dtype != np.float64:
        raise RuntimeError(f"neural-tangents computed in {nngp.dtype}, not float64")
    return {"nngp": np.asarray(nngp), "ntk": np.asarray(ntk)}


# ------------------------------------------------------------------------------------------
# naive NumPy (textbook recursion, N x N arrays per layer)


def _relu_expect(q, k):
    """E[relu(u)relu(v)], E[step(u)step(v)] for (u, v) ~ N(0, [[q_i, k], [k, q_j]])."""
    norms = np.sqrt(np.outer(q, q))
    cos = np.clip(k / norms, -1.0, 1.0)
    np.fill_diagonal(cos, 1.0)  # x2 = None: the diagonal pairs are identical points
    theta = np.arccos(cos)
    e = norms * (np.sin(theta) + (np.pi - theta) * cos) / (2 * np.pi)
    ed = (np.pi - theta) / (2 * np.pi)
    return e, ed


def _erf_expect(q, k):
    """E[erf(u)erf(v)] = (2/pi) asin(2k / sqrt((1+2q)(1+2q'))), E[erf'erf'] = (4/pi) /
    sqrt((1+2q)(1+2q') - 4k^2)."""
    prod = np.outer(1 + 2 * q, 1 + 2 * q)
    e = (2 / np.pi) * np.arcsin(np.clip(2 * k / np.sqrt(prod), -1.0, 1.0))
    ed = (4 / np.pi) / np.sqrt(prod - 4 * k * k)
    return e, ed


def naive_mlp(x: np.ndarray, act: str, depth: int) -> dict:
    """NNGP and NTK of `mlp_source(act, depth)` on x (x2 = None), layer by layer."""
    w, b = HYPER[act]
    expect = {"relu": _relu_expect, "erf": _erf_expect}[act]
    k = w * (x @ x.T) / x.shape[1] + b
    t = k.copy()
    for layer in range(depth):
        e, ed = expect(np.diag(k).copy(), k)
        wv, bv = (w, b) if layer < depth - 1 else READOUT
        k = wv * e + bv
        t = wv * t * ed + k
    return {"nngp": k, "ntk": t}


def _hermite(order: int):
    z, wt = np.polynomial.hermite_e.hermegauss(order)
    return z, wt / wt.sum()


def naive_mlp_quad(x: np.ndarray, act: str, depth: int, order: int = 200,
                   chunk: int = 64) -> dict:
    """The same recursion with E[.] by a tensor Gauss-Hermite rule of `order` nodes per axis
    (for tanh; the accuracy reference). O(N^2 order^2) work: use on a small subset."""
    if act != "tanh":
        raise ValueError(act)
    fn = np.tanh

    def dfn(z):
        return 1.0 / np.cosh(z) ** 2

    w, b = HYPER[act]
    z, wt = _hermite(order)
    z0, z1 = np.meshgrid(z, z, indexing="ij")
    z0, z1, w2 = z0.ravel(), z1.ravel(), np.outer(wt, wt).ravel()
    keep = w2 > 1e-300
    z0, z1, w2 = z0[keep], z1[keep], w2[keep]
    n = x.shape[0]
    k = w * (x @ x.T) / x.shape[1] + b
    t = k.copy()
    iu = np.triu_indices(n)
    for layer in range(depth):
        q1, q2, kk = np.diag(k)[iu[0]], np.diag(k)[iu[1]], k[iu]
        e = np.empty_like(kk)
        ed = np.empty_like(kk)
        for s in range(0, kk.size, chunk):
            sl = slice(s, s + chunk)
            l00 = np.sqrt(q1[sl])[:, None]
            l10 = (kk[sl] / np.sqrt(q1[sl]))[:, None]
            l11 = np.sqrt(np.maximum(q2[sl] - (kk[sl] ** 2) / q1[sl], 0.0))[:, None]
            u = l00 * z0
            v = l10 * z0 + l11 * z1
            e[sl] = (fn(u) * fn(v)) @ w2
            ed[sl] = (dfn(u) * dfn(v)) @ w2
        E = np.zeros_like(k)
        ED = np.zeros_like(k)
        E[iu], ED[iu] = e, ed
        E = E + np.triu(E, 1).T
        ED = ED + np.triu(ED, 1).T
        wv, bv = (w, b) if layer < depth - 1 else READOUT
        k = wv * E + bv
        t = wv * t * ED + k
    return {"nngp": k, "ntk": t}


def naive_rnn(s: np.ndarray) -> dict:
    """GP4A / NTK4A recursion of `rnn_source()` (erf, W and U shared over time), x2 = None:
    h^t = W erf(h^{t-1}) + U s^t + b; O(N^2 T^2) memory -- use on a subset."""
    if RNN["act"] != "erf":
        raise ValueError(RNN["act"])
    sw, su, sb, sv = RNN["w"], RNN["u"], RNN["b"], RNN["v"]
    n, steps, d = s.shape
    g = np.einsum("itd,jrd->ijtr", s, s) / d  # (n, n, T, T)
    gd = np.einsum("iitt->it", g)  # (n, T)
    var = np.zeros((n, steps))
    es = np.zeros((n, steps))  # E[erf(h^t)^2]
    for t in range(steps):
        var[:, t] = su * gd[:, t] + sb + (sw * es[:, t - 1] if t else 0.0)
        es[:, t] = (2 / np.pi) * np.arcsin(2 * var[:, t] / (1 + 2 * var[:, t]))
    sig = np.zeros((n, n, steps, steps))
    e = np.zeros_like(sig)
    ed = np.zeros_like(sig)
    for t in range(steps):
        for r in range(steps):
            prev = sw * e[:, :, t - 1, r - 1] if t and r else 0.0
            sig[:, :, t, r] = su * g[:, :, t, r] + sb + prev
            prod = np.outer(1 + 2 * var[:, t], 1 + 2 * var[:, r])
            kk = sig[:, :, t, r]
            e[:, :, t, r] = (2 / np.pi) * np.arcsin(np.clip(2 * kk / np.sqrt(prod), -1, 1))
            ed[:, :, t, r] = (4 / np.pi) / np.sqrt(prod - 4 * kk * kk)
    nngp = sv * e[:, :, -1, -1]
    dh = np.zeros_like(sig)
    for t in reversed(range(steps)):
        for r in reversed(range(steps)):
            ds = sv if (t == steps - 1 and r == steps - 1) else 0.0
            if t < steps - 1 and r < steps - 1:
                ds = ds + sw * dh[:, :, t + 1, r + 1]
            dh[:, :, t, r] = ed[:, :, t, r] * ds
    ntk = nngp.copy()
    for t in range(steps):
        for r in range(steps):
            ntk += dh[:, :, t, r] * sig[:, :, t, r]
    return {"nngp": nngp, "ntk": ntk}
