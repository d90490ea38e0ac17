"""tpcompiler against neural-tangents (the peer, an independent implementation).

Skipped when neural-tangents is not installed (see README: `pip install -e .[nt]` then
`pip install --no-deps neural-tangents==0.6.5`). Comparisons use X1 vs X2 with no shared rows:
neural-tangents loses ~1e-8 on coincident points (its arccos on the diagonal; NT_NOTES.md), which
is its error, not ours; the diagonal is checked separately with that documented looseness.
Closed forms on both sides: 1e-10 relative. tanh: neural-tangents' ElementwiseNumerical at
deg 150 (its own error ~1e-8 measured, NT_NOTES.md) against our Gauss-Hermite rule.
"""

from __future__ import annotations

import numpy as np
import pytest

import tpcompiler as tp

import nt_reference as ntr

pytestmark = pytest.mark.skipif(not ntr.available(), reason="neural-tangents not installed")

CLOSED = {
    # NT activation (name, params) -> the same function in the .tp language
    ("relu", ()): "relu(h)",
    ("leaky_relu", (("slope", 0.2),)): "leaky_relu(h, slope=0.2)",
    ("abrelu", (("a", -0.3), ("b", 1.5))): "abrelu(h, a=-0.3, b=1.5)",
    ("abs", ()): "abs(h)",
    ("erf", ()): "erf(h)",
    ("erf", (("a", 2.0), ("b", 0.5), ("c", 0.1))): "2 * erf(0.5 * h) + 0.1",
    ("gelu", ()): "gelu(h)",
    ("sin", (("a", 1.5), ("b", 0.7), ("c", 0.3))): "1.5 * sin(0.7 * h + 0.3)",
    ("cos", ()): "cos(h)",
    ("sign", ()): "sign(h)",
    ("identity", ()): "identity(h)",
    ("sigmoid_like", ()): "0.5 * erf(h / 2.4020563531719796) + 0.5",
    ("monomial", (("degree", 2),)): "h ** 2",
    ("monomial", (("degree", 3),)): "h ** 3",
}


def mlp_tp(act_tp: str, depth: int, w: float, b: float, rw: float, rb: float) -> str:
    return (f"input x\nh = dense(x, var={w}, bias={b})\n"
            f"repeat {depth - 1} {{ h = dense({act_tp}, var={w}, bias={b}) }}\n"
            f"y = readout({act_tp}, var={rw}, bias={rb})\n")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2024)
    return rng.normal(size=(5, 6)), rng.normal(size=(4, 6))


def _compare(got, want, rtol, kinds=("nngp", "ntk")):
    for kind in kinds:
        np.testing.assert_allclose(got[kind], want[kind], rtol=rtol, atol=rtol * 1e-3,
                                   err_msg=kind)


@pytest.mark.parametrize("act", sorted(CLOSED, key=str), ids=lambda a: CLOSED[a])
@pytest.mark.parametrize("depth,w,b", [(1, 1.0, 0.0), (3, 1.6, 0.2)])
def test_mlp_closed_forms_agree_with_neural_tangents(data, act, depth, w, b):
    x1, x2 = data
    name, params = act
    if name == "monomial" and depth > 1:
        w = 0.7  # keep the powers' moments moderate
    net = tp.compile_source(mlp_tp(CLOSED[act], depth, w, b, 1.3, 0.1))
    want = ntr.mlp_kernels(x1, x2, depth=depth, act=name, w_var=w, b_var=b, readout_w_var=1.3,
                           readout_b_var=0.1, act_params=dict(params))
    _compare(net.kernels(x1, x2, backend="numpy"), want, 1e-10)


def test_exp_nngp_agrees_with_neural_tangents(data):
    x1, x2 = data
    net = tp.compile_source(mlp_tp("exp(0.5 * h)", 1, 1.0, 0.1, 1.0, 0.0))
    want = ntr.mlp_kernels(x1, x2, depth=1, act="exp", w_var=1.0, b_var=0.1,
                           act_params={"b": 0.5})
    _compare(net.kernels(x1, x2, ("nngp",), backend="numpy"), want, 1e-10, ("nngp",))


@pytest.mark.parametrize("act,act_tp", [("relu", "relu(h)"), ("erf", "erf(h)")])
def test_residual_agrees_with_fanout_faninsum(data, act, act_tp):
    x1, x2 = data
    src = (f"input x\nh = dense(x, var=1.5, bias=0.1)\n"
           f"repeat 3 {{ h = h + 0.6 * dense({act_tp}, var=1.5, bias=0.1) }}\n"
           f"y = readout({act_tp})\n")
    want = ntr.residual_kernels(x1, x2, depth=3, act=act, w_var=1.5, b_var=0.1, alpha=0.6)
    _compare(tp.compile_source(src).kernels(x1, x2, backend="numpy"), want, 1e-10)


def test_product_agrees_with_faninprod(data):
    x1, x2 = data
    src = ("input x\nu = dense(x, var=1.4, bias=0.2)\ng = erf(dense(x, var=1.4, bias=0.2))\n"
           "y = readout(u * g, var=0.9, bias=0.3)\n")
    want = ntr.product_kernels(x1, x2, w_var=1.4, b_var=0.2, readout_w_var=0.9,
                               readout_b_var=0.3)
    _compare(tp.compile_source(src).kernels(x1, x2, backend="numpy"), want, 1e-10)


def test_tanh_agrees_with_elementwise_numerical(data):
    x1, x2 = data
    net = tp.compile_source(mlp_tp("tanh(h)", 2, 1.2, 0.1, 1.0, 0.0))
    want = ntr.mlp_kernels(x1, x2, depth=2, act="tanh_numerical", w_var=1.2, b_var=0.1,
                           act_params={"deg": 150})
    _compare(net.kernels(x1, x2, backend="numpy"), want, 1e-7)


def test_square_kernels_and_numba_backend(data):
    """The x2=None path through the Numba backend; the diagonal within NT's own ~1e-8."""
    x1, _ = data
    net = tp.compile_source(mlp_tp("relu(h)", 3, 2.0, 0.05, 1.0, 0.0))
    got = net.kernels(x1)
    want = ntr.mlp_kernels(x1, None, depth=3, act="relu", w_var=2.0, b_var=0.05)
    off = ~np.eye(len(x1), dtype=bool)
    for kind in ("nngp", "ntk"):
        np.testing.assert_allclose(got[kind][off], want[kind][off], rtol=1e-10)
        np.testing.assert_allclose(np.diag(got[kind]), np.diag(want[kind]), rtol=1e-7)
