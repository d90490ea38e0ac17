"""Batch normalisation (issue 18): the covariance map and the tangent map (tpcompiler/batchnorm.py),
the `batchnorm` construct's kernels (passes/batch.py, batch_kernels.py) and `tpc diagnose --batch`,
against truths that do not use the Laplace-transform integral:
- B = 2: BN(h) = sign(h1 - h2) (1, -1) exactly, so V = [[(a^2 + b^2)/2, -ab], [-ab, (a^2 + b^2)/2]]
  for abrelu(a, b);
- identity: |BN(h)|^2 = B and BN(h) sums to 0 for every h, so trace V = B and V 1 = 0;
- an isotropic batch (S = q I): by symmetry E[u_i^2 / |u|^2] = 1 / B, so relu's V_ii = 1/2;
- Monte Carlo of BN itself (2e5 batches): within 5 standard errors (estimated from the
  samples), which is ~3e-3 here against the map's 1e-15 quadrature error;
- the tangent map M(S, Theta) = E[J Theta J^T] against Monte Carlo with J taken by central
  differences of BN itself (no Jacobian formula): within 5 standard errors of the largest entry;
- the linear network's gradient rate (B - 2) / (B - 3) (Yang et al. 2019; also: E[1/chi^2_(B-1)]
  = 1/(B-3) times the projection's (B-2)/(B-1)), to 1e-12; relu's large-batch limit
  pi / (pi - 1) (the paper's), approached like 1/B;
- the finite-width simulator with batchnorm (its backward pass checked by finite differences):
  NNGP and NTK of a batch-normalised MLP over 8 networks of width 1024, and the per-layer growth
  of the squared gradient norm over 20 layers, within 5 standard errors (the O(1/n) width bias
  is far below them at n = 1024).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import tpcompiler as tpc
from tpcompiler.batchnorm import STEP, TangentMap, batch_map, moments, moments_mc
from tpcompiler.testing import assert_gradients


def _cov(b: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((b, b))
    return a @ a.T / b + 0.3 * np.eye(b)


@pytest.mark.parametrize("a, b", [(0.0, 1.0), (0.1, 1.0), (1.0, 1.0), (-0.5, 2.0)])
def test_batch_of_two_is_exact(a, b):
    v = batch_map(_cov(2, 1), a, b)
    want = np.array([[(a * a + b * b) / 2, -a * b], [-a * b, (a * a + b * b) / 2]])
    assert np.abs(v - want).max() <= 1e-14


@pytest.mark.parametrize("size", [3, 5, 16])
def test_identity_invariants_and_isotropic_relu(size):
    v = batch_map(_cov(size, size), 1.0, 1.0)
    assert abs(np.trace(v) - size) <= 1e-13 * size
    assert np.abs(v @ np.ones(size)).max() <= 1e-13
    iso = batch_map(2.5 * np.eye(size))
    assert np.allclose(np.diag(iso), 0.5, rtol=0, atol=1e-14)


@pytest.mark.parametrize("size, a", [(3, 0.0), (5, 0.0), (5, 0.2)])
def test_against_monte_carlo(size, a):
    s = _cov(size, 7 + size)
    rng = np.random.default_rng(size)
    h = rng.standard_normal((200_000, size)) @ np.linalg.cholesky(s).T
    c = h - h.mean(axis=1, keepdims=True)
    bn = c / np.sqrt((c ** 2).mean(axis=1, keepdims=True))
    phi = np.where(bn > 0, bn, a * bn)
    samples = phi[:, :, None] * phi[:, None, :]
    mean = samples.mean(axis=0)
    se = samples.std(axis=0) / np.sqrt(len(samples))
    v = batch_map(s, a, 1.0)
    assert np.all(np.abs(v - mean) <= 5 * se + 1e-12), np.max(np.abs(v - mean) / se)


def test_quadrature_step_is_converged():
    """Halving the step changes nothing above rounding (exponential convergence in 1 / h)."""
    import tpcompiler.batchnorm as bn

    s = _cov(6, 3)
    v = batch_map(s)
    old = bn.STEP
    try:
        bn.STEP = STEP / 2
        finer = batch_map(s)
    finally:
        bn.STEP = old
    assert np.abs(v - finer).max() <= 1e-14 * np.abs(v).max()


def test_bad_batches():
    with pytest.raises(tpc.TPError, match="zero standard deviation"):
        batch_map(np.ones((3, 3)))
    with pytest.raises(tpc.TPError, match="batch of one point"):
        batch_map(np.ones((1, 1)))
    with pytest.raises(tpc.TPError, match="square matrix"):
        batch_map(np.ones((2, 3)))


# --- the tangent map ---------------------------------------------------------------------------


def _bn(h: np.ndarray, eps: float) -> np.ndarray:
    """BN over the last axis (the batch) of samples h (S, B)."""
    u = h - h.mean(axis=-1, keepdims=True)
    return u / np.sqrt((u * u).mean(axis=-1, keepdims=True) + eps)


@pytest.mark.parametrize("size, eps, a, b", [(5, 0.0, 0.0, 1.0), (6, 0.0, 1.0, 1.0),
                                             (5, 0.0, 0.2, 1.0), (3, 0.1, 0.0, 1.0),
                                             (2, 0.3, -0.5, 2.0)])
def test_tangent_map_against_monte_carlo(size, eps, a, b):
    s, theta = _cov(size, size), _cov(size, size + 7)
    m = moments(s, a, b, eps, theta).m
    rng = np.random.default_rng(size)
    h = rng.standard_normal((40_000, size)) @ np.linalg.cholesky(s).T
    step = 1e-6
    cols = [(_bn(h + step * e, eps) - _bn(h - step * e, eps)) / (2 * step)
            for e in np.eye(size)]
    jac = np.stack(cols, axis=-1)  # (S, B, B): d BN_i / d h_j
    jac = np.where(_bn(h, eps)[:, :, None] > 0, b, a) * jac
    samples = jac @ theta @ np.swapaxes(jac, 1, 2)
    mean = samples.mean(axis=0)
    se = samples.std(axis=0) / np.sqrt(len(samples))
    assert np.all(np.abs(m - mean) <= 5 * se.max()), np.max(np.abs(m - mean)) / se.max()


def test_radial_rule_meets_the_quadrature_at_two_points():
    """B = 2: the centred batch has one direction (up to sign), so moments_mc's average over
    directions is exact and only its radial Gauss-Legendre rule remains: it must agree with
    the Laplace quadrature (two independent integrations of E[f(z)...] with eps > 0)."""
    s, theta = _cov(2, 5), _cov(2, 6)

    def relu(z):
        return np.maximum(z, 0.0)

    def step(z):
        return (z > 0) * 1.0

    mc = moments_mc(s, relu, step, 0.3, theta, samples=64)
    exact = moments(s, 0.0, 1.0, 0.3, theta)
    assert np.abs(mc.v - exact.v).max() <= 1e-13 and np.abs(mc.m - exact.m).max() <= 1e-13


def test_tangent_map_needs_three_directions():
    with pytest.raises(tpc.TPError, match="infinite"):
        moments(_cov(3, 1), 0.0, 1.0, 0.0, np.eye(3))
    assert np.all(np.isfinite(moments(_cov(3, 1), 0.0, 1.0, 0.01, np.eye(3)).m))


def _rate(size: int, a: float, b: float, sw: float = 2.0) -> float:
    """The spectral radius of Theta -> sw M(S*, Theta) at the BSB1 fixed point."""
    s = np.eye(size) + 0.3
    for _ in range(3):
        s = sw * batch_map(s, a, b)
    op = TangentMap(s, a, b, 0.0)
    theta, rate = np.eye(size), 0.0
    for _ in range(200):
        m = sw * op(theta)
        new = np.trace(m) / np.trace(theta)
        theta = m / np.trace(m)
        if abs(new - rate) <= 1e-14 * new:
            break
        rate = new
    return new


@pytest.mark.parametrize("size", [4, 5, 8, 16])
def test_linear_gradient_rate(size):
    assert abs(_rate(size, 1.0, 1.0) - (size - 2) / (size - 3)) <= 1e-12


def test_relu_rate_tends_to_the_large_batch_limit():
    limit = math.pi / (math.pi - 1)
    gaps = [_rate(size, 0.0, 1.0) - limit for size in (8, 16, 32)]
    assert all(g > 0 for g in gaps)
    # asymptotically a 1/B correction: the gap's ratio per doubling of B tends to 1/2
    # (measured 0.38, 0.45, then 0.47 and 0.49 at B = 64, 128)
    assert 0.3 <= gaps[1] / gaps[0] < gaps[2] / gaps[1] <= 0.5, gaps
    assert abs(_rate(5, 0.0, 1.0, sw=2.0) - _rate(5, 0.0, 1.0, sw=0.5)) <= 1e-12  # scale-free


def test_tangent_step_is_converged():
    import tpcompiler.batchnorm as bn

    s, theta = _cov(6, 3), _cov(6, 4)
    m = moments(s, 0.0, 1.0, 0.0, theta).m
    old = bn.STEP
    try:
        bn.STEP = STEP / 2
        finer = moments(s, 0.0, 1.0, 0.0, theta).m
    finally:
        bn.STEP = old
    assert np.abs(m - finer).max() <= 1e-13 * np.abs(m).max()


# --- the batchnorm construct -------------------------------------------------------------------

MLP = """
input x
h = dense(x, var=2.0, bias=0.1)
repeat 2 {{ h = dense({act}(batchnorm(h{eps})), var=2.0, bias=0.1) }}
y = readout({act}(batchnorm(h{eps})), var=1.0)
"""


def _empirical(net, x, width=1024, seeds=8):
    ks = [net.simulate(width=width, seed=s).kernels(x) for s in range(seeds)]
    return {k: np.array([r[k] for r in ks]) for k in ("nngp", "ntk")}


@pytest.mark.parametrize("act, eps", [("relu", ""), ("leaky_relu", ", eps=0.5")])
def test_batchnorm_mlp_against_the_simulator(act, eps):
    net = tpc.compile_source(MLP.format(act=act, eps=eps))
    x = np.random.default_rng(0).standard_normal((6, 4))
    k = net.kernels(x, backend="numpy")
    assert np.allclose(k["ntk"], net.kernels(x)["ntk"], rtol=1e-12, atol=0)
    emp = _empirical(net, x)
    for kind in ("nngp", "ntk"):
        se = emp[kind].std(axis=0) / np.sqrt(len(emp[kind]))
        dev = np.abs(emp[kind].mean(axis=0) - k[kind])
        assert np.all(dev <= 5 * se), (kind, np.max(dev / se))
    assert np.allclose(k["nngp"], k["nngp"].T) and np.linalg.eigvalsh(k["ntk"]).min() > 0


@pytest.mark.parametrize("eps", ["", ", eps=0.3"])
def test_simulator_gradients_through_batchnorm(eps):
    """The simulator's per-example gradients of a batch-coupled network (one backward pass per
    output, BN's backward over the batch) against central differences of its forward pass."""
    net = tpc.compile_source(MLP.format(act="relu", eps=eps))
    fn = net.simulate(12, seed=1)
    grads = assert_gradients(fn, np.random.default_rng(0).standard_normal((5, 3)))
    full = np.concatenate([g.reshape(5, -1) for g in grads.values()], axis=1)
    assert np.allclose(fn.ntk(np.random.default_rng(0).standard_normal((5, 3))),
                       full @ full.T, rtol=1e-12, atol=0)


def test_nonlinear_stage_nngp_and_the_ntk_refusal():
    net = tpc.compile_source("""
input x
h = dense(x, var=1.5)
y = readout(tanh(dense(relu(batchnorm(h)), var=2.0, bias=0.2)), var=1.0)
""")
    x = np.random.default_rng(1).standard_normal((5, 3))
    k = net.kernels(x, get="nngp", backend="numpy")["nngp"]
    emp = _empirical(net, x, seeds=8)["nngp"]
    se = emp.std(axis=0) / np.sqrt(len(emp))
    assert np.all(np.abs(emp.mean(axis=0) - k) <= 5 * se)
    with pytest.raises(tpc.TPError, match="nonlinearity"):
        net.kernels(x)


def test_non_homogeneous_function_warns():
    net = tpc.compile_source("input x\nh = dense(x)\ny = readout(tanh(batchnorm(h)))")
    x = np.random.default_rng(2).standard_normal((5, 8))
    with pytest.warns(tpc.TPWarning, match="Monte Carlo") as w:
        k = net.kernels(x, backend="numpy")
    # the warning states the estimate's standard error (of the batch moments V, M: the
    # readout's variance 1 multiplies them, so it is the kernels' too)
    ours = float(re.search(r"standard error ([0-9.e+-]+)", str(w[0].message)).group(1))
    assert 0 < ours < 0.1
    emp = _empirical(net, x, seeds=8)
    for kind in ("nngp", "ntk"):
        se = emp[kind].std(axis=0) / np.sqrt(len(emp[kind]))
        assert np.all(np.abs(emp[kind].mean(axis=0) - k[kind]) <= 5 * np.hypot(se, ours))


@pytest.mark.parametrize("src, match", [
    ("h = dense(x)\ny = readout(batchnorm(relu(h)))", "Gaussian vector"),
    ("h = dense(x)\ny = readout(relu(batchnorm(h)) + relu(h))", "combined with another"),
    ("h = dense(x)\ny = readout(batchnorm(h, eps=-1))", "must be >= 0"),
    ("h = dense(x)\ny = readout(batchnorm(h, scale=2))", "no parameter 'scale'"),
    ("h = dense(x, bias=1.0)\ny = readout(batchnorm(h - dense(x)))", None),
])
def test_errors_are_located(src, match):
    text = "input x\n" + src
    if match is None:  # not an error: the Gaussian argument may have several terms
        tpc.compile_source(text)
        return
    with pytest.raises(tpc.TPError, match=match) as e:
        tpc.compile_source(text)
    assert e.value.span is not None


def test_batch_errors():
    net = tpc.compile_source(MLP.format(act="relu", eps=""))
    x = np.random.default_rng(3).standard_normal((5, 4))
    with pytest.raises(tpc.TPError, match="one batch"):
        net.kernels(x, x)
    with pytest.raises(tpc.TPError, match="infinite"):
        net.kernels(x[:3])
    assert net.kernels(x[:3], get="nngp")["nngp"].shape == (3, 3)
    with pytest.raises(tpc.TPError, match="same pre-activations"):
        net.kernels(np.ones((4, 4)), get="nngp")
    with pytest.raises(tpc.TPError, match="one batch"):
        net.simulate(width=16).kernels(x, x)


# --- tpc diagnose --batch ----------------------------------------------------------------------

DEEP = """
param sw = 2.0
input x
h = dense(x, var=sw, bias=0.1)
repeat 20 { h = dense(relu(batchnorm(h)), var=sw, bias=0.1) }
y = readout(relu(batchnorm(h)), var=1.0)
"""


def test_diagnose_batch_against_theory_and_simulator():
    from tpcompiler.diagnose_batch import diagnose_batch

    net = tpc.compile_source(DEEP)
    d = diagnose_batch(net, 8)
    assert abs(d.gradient_rate - _rate(8, 0.0, 1.0)) <= 1e-12
    assert abs(d.large_batch_rate - math.pi / (math.pi - 1)) <= 1e-12
    assert abs(d.q_star - 1.1) <= 1e-12  # sw E[relu(z)^2] + 0.1, E[z_i^2] = 1 by symmetry
    assert abs(d.large_batch_c_star - (1 / math.pi + 0.1) / 1.1) <= 1e-12
    assert abs(diagnose_batch(net, 8, {"sw": 0.7}).gradient_rate - d.gradient_rate) <= 1e-10
    _simulated_rate(net, 8, d.gradient_rate)


def _simulated_rate(net, batch: int, rate: float) -> None:
    """The per-layer growth of the squared gradient norm of 4 networks of width 1024 (a line
    fitted to its log over layers 4 .. 17, past the first layers' transient) within 5
    standard errors of `rate`."""
    from tpcompiler import ir

    x = np.random.default_rng(0).standard_normal((batch, 16))
    layers = [g.name for g in net.ir.gvars if g.op is ir.Op.MATMUL]
    rates = []
    for seed in range(4):
        _, grads = net.simulate(width=1024, seed=seed).signals(x)
        log = np.log([np.sum(grads[n] ** 2) for n in layers])
        rates.append(math.exp(-np.polyfit(np.arange(4, 18), log[4:18], 1)[0]))
    se = np.std(rates, ddof=1) / math.sqrt(len(rates))
    assert abs(np.mean(rates) - rate) <= 5 * se, (rates, rate)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [5, 6, 16])
def test_gradient_rate_at_other_batch_sizes(batch):
    from tpcompiler.diagnose_batch import diagnose_batch

    net = tpc.compile_source(DEEP)
    _simulated_rate(net, batch, diagnose_batch(net, batch).gradient_rate)


def test_diagnose_batch_cli(tmp_path, capsys):
    import json

    from tpcompiler.cli import main

    path = tmp_path / "bn.tp"
    path.write_text(DEEP)
    assert main(["diagnose", str(path), "--batch", "6", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("q_star", "c_star", "chi1", "xi_q", "xi_c", "phase", "gradient_rate", "batch"):
        assert key in out
    assert out["batch"]["size"] == 6 and out["phase"] == "gradient explosion"
    assert main(["diagnose", str(path)]) == 2
    assert "--batch" in capsys.readouterr().err
