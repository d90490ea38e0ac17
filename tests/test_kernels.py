"""Kernels of whole programs against independent implementations written here.

The references follow THEORY.md section 2 (neural-tangents' conventions) and 1.5/1.6 (the RNN of
GP4A/NTK4A), with their own closed forms (arccos/arcsin, not tpcompiler.helpers). Data are
random Gaussian points, so correlations stay away from +-1 where arccos is ill-conditioned and
1e-10 relative is a fair bar for closed forms.
"""

from __future__ import annotations

import numpy as np
import pytest

import tpcompiler as tp

RTOL = 1e-10


def v_relu(q1, q2, k):
    c = np.clip(k / np.sqrt(q1 * q2), -1, 1)
    th = np.arccos(c)
    v = np.sqrt(q1 * q2) * (np.sin(th) + (np.pi - th) * c) / (2 * np.pi)
    return v, (np.pi - th) / (2 * np.pi)


def v_abrelu(a, b):
    def f(q1, q2, k):
        c = np.clip(k / np.sqrt(q1 * q2), -1, 1)
        th = np.arccos(c)
        v = ((a - b) ** 2 / (2 * np.pi)) * np.sqrt(q1 * q2) * np.sin(th) + (
            (a * a + b * b) / 2 - (a - b) ** 2 * th / (2 * np.pi)) * k
        return v, (a * a + b * b) / 2 - (a - b) ** 2 * th / (2 * np.pi)
    return f


def v_erf(q1, q2, k):
    den = (1 + 2 * q1) * (1 + 2 * q2)
    return (2 / np.pi) * np.arcsin(2 * k / np.sqrt(den)), (4 / np.pi) / np.sqrt(den - 4 * k * k)


def v_identity(q1, q2, k):
    return k, np.ones_like(k)


V = {"relu": v_relu, "erf": v_erf, "identity": v_identity, "abs": v_abrelu(-1, 1),
     "leaky_relu(0.2)": v_abrelu(0.2, 1)}


def mlp_reference(x1, x2, act, depth, w, b, wv=1.0, bv=0.0):
    """THEORY 2.4: Sigma^1 = w x.x'/d + b; K = V(Sigma), Theta *= Vdot; Sigma = w K + b, ..."""
    vfun = V[act]
    d = x1.shape[1]
    s12 = w * x1 @ x2.T / d + b
    s11 = w * np.sum(x1 * x1, 1) / d + b
    s22 = w * np.sum(x2 * x2, 1) / d + b
    t12 = s12.copy()
    for layer in range(depth):
        ww, bb = (w, b) if layer < depth - 1 else (wv, bv)
        k12, kd = vfun(s11[:, None], s22[None, :], s12)
        k11, _ = vfun(s11, s11, s11)
        k22, _ = vfun(s22, s22, s22)
        t12 = t12 * kd
        s12, s11, s22 = ww * k12 + bb, ww * k11 + bb, ww * k22 + bb
        t12 = s12 + ww * t12
    return s12, t12


def mlp_source(act, depth, w, b, wv=1.0, bv=0.0):
    call = f"{act}(h)" if "(" not in act else act.replace("(", "(h, slope=")
    return (f"input x\nh = dense(x, var={w}, bias={b})\n"
            f"repeat {depth - 1} {{ h = dense({call}, var={w}, bias={b}) }}\n"
            f"y = readout({call}, var={wv}, bias={bv})\n")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return rng.normal(size=(6, 5)), rng.normal(size=(4, 5))


@pytest.mark.parametrize("act", sorted(V))
@pytest.mark.parametrize("depth,w,b", [(1, 1.0, 0.0), (3, 2.0, 0.1), (4, 1.3, 0.5)])
def test_mlp_matches_reference_recursion(data, act, depth, w, b):
    x1, x2 = data
    net = tp.compile_source(mlp_source(act, depth, w, b, 1.7, 0.2))
    got = net.kernels(x1, x2, backend="numpy")
    nngp, ntk = mlp_reference(x1, x2, act, depth, w, b, 1.7, 0.2)
    np.testing.assert_allclose(got["nngp"], nngp, rtol=RTOL, atol=1e-14)
    np.testing.assert_allclose(got["ntk"], ntk, rtol=RTOL, atol=1e-14)


def test_residual_block_matches_fanout_faninsum(data):
    """THEORY 2.5: h <- h + alpha Dense(relu(h)); K += a^2 (w V + b), Theta += a^2 (w V + b
    + w Vdot Theta)."""
    x1, x2 = data
    w, b, alpha, blocks = 1.5, 0.1, 0.7, 3
    src = (f"input x\nh = dense(x, var={w}, bias={b})\n"
           f"repeat {blocks} {{ h = h + {alpha} * dense(relu(h), var={w}, bias={b}) }}\n"
           f"y = readout(relu(h))\n")
    got = tp.compile_source(src).kernels(x1, x2, backend="numpy")
    d = x1.shape[1]
    k12 = w * x1 @ x2.T / d + b
    k11 = w * np.sum(x1 * x1, 1) / d + b
    k22 = w * np.sum(x2 * x2, 1) / d + b
    t12 = k12.copy()
    for _ in range(blocks):
        v12, vd = v_relu(k11[:, None], k22[None, :], k12)
        v11, v22 = k11 / 2, k22 / 2
        t12 = t12 + alpha**2 * (w * v12 + b + w * vd * t12)
        k12, k11, k22 = (k12 + alpha**2 * (w * v12 + b), k11 + alpha**2 * (w * v11 + b),
                         k22 + alpha**2 * (w * v22 + b))
    v12, vd = v_relu(k11[:, None], k22[None, :], k12)
    np.testing.assert_allclose(got["nngp"], v12, rtol=RTOL)
    np.testing.assert_allclose(got["ntk"], v12 + vd * t12, rtol=RTOL)


def test_product_matches_faninprod(data):
    """THEORY 2.7: h = u * erf(g) with independent Dense layers: K = K_u K_g,
    Theta = Theta_u K_g + K_u Theta_g; then a readout of h."""
    x1, x2 = data
    src = ("input x\nu = dense(x, var=1.2, bias=0.3)\ng = erf(dense(x, var=2.0))\n"
           "y = readout(u * g, var=0.8)\n")
    got = tp.compile_source(src).kernels(x1, x2, backend="numpy")
    d = x1.shape[1]
    ku = 1.2 * x1 @ x2.T / d + 0.3
    s12 = 2.0 * x1 @ x2.T / d
    s11, s22 = 2.0 * np.sum(x1 * x1, 1) / d, 2.0 * np.sum(x2 * x2, 1) / d
    kg, kgd = v_erf(s11[:, None], s22[None, :], s12)
    theta_g = s12 * kgd
    nngp_h = ku * kg
    ntk_h = ku * kg + ku * theta_g  # Theta_u = K_u for one Dense
    np.testing.assert_allclose(got["nngp"], 0.8 * nngp_h, rtol=RTOL)
    np.testing.assert_allclose(got["ntk"], 0.8 * nngp_h + 0.8 * ntk_h, rtol=RTOL)


def rnn_reference(x1, x2, sw, su, sb, sv):
    """THEORY 1.5/1.6 (GP4A RNNtheory, TP2 6.2.1): h^t = W s^{t-1} + U x^t + b, s^t = erf(h^t),
    readout of the last state; (M) convention: each weight's NTK term carries its sigma^2."""
    n1, steps, d = x1.shape
    n2 = x2.shape[0]

    def gram(a, b):
        return np.einsum("itd,jrd->ijtr", a, b) / d

    g12, g11, g22 = gram(x1, x2), gram(x1, x1), gram(x2, x2)
    sig12 = np.zeros((n1, n2, steps, steps))
    e12 = np.zeros_like(sig12)  # E[s^t s'^r]
    var1 = np.zeros((n1, steps))
    var2 = np.zeros((n2, steps))
    es1 = np.zeros((n1, steps))
    es2 = np.zeros((n2, steps))
    for t in range(steps):
        var1[:, t] = su * np.einsum("iidd->id", g11[:, :, :, :])[:, t] + sb + (
            sw * es1[:, t - 1] if t else 0)
        var2[:, t] = su * np.einsum("iidd->id", g22[:, :, :, :])[:, t] + sb + (
            sw * es2[:, t - 1] if t else 0)
        es1[:, t] = v_erf(var1[:, t], var1[:, t], var1[:, t])[0]
        es2[:, t] = v_erf(var2[:, t], var2[:, t], var2[:, t])[0]
    for t in range(steps):
        for r in range(steps):
            prev = sw * e12[:, :, t - 1, r - 1] if t and r else 0
            sig12[:, :, t, r] = su * g12[:, :, t, r] + sb + prev
            e12[:, :, t, r] = v_erf(var1[:, t][:, None], var2[:, r][None, :], sig12[:, :, t, r])[0]
    nngp = sv * e12[:, :, -1, -1]
    dh = np.zeros_like(sig12)
    for t in reversed(range(steps)):
        for r in reversed(range(steps)):
            ds = sv if (t == steps - 1 and r == steps - 1) else 0.0
            if t < steps - 1 and r < steps - 1:
                ds = ds + sw * dh[:, :, t + 1, r + 1]
            vd = v_erf(var1[:, t][:, None], var2[:, r][None, :], sig12[:, :, t, r])[1]
            dh[:, :, t, r] = vd * ds
    ntk = nngp.copy()
    for t in range(steps):
        for r in range(steps):
            term = su * g12[:, :, t, r] + sb + (sw * e12[:, :, t - 1, r - 1] if t and r else 0)
            ntk += dh[:, :, t, r] * term
    return nngp, ntk


def test_rnn_weight_sharing_matches_gp4a_ntk4a_recursion():
    rng = np.random.default_rng(3)
    x1, x2 = rng.normal(size=(5, 4, 3)), rng.normal(size=(3, 4, 3))
    src = ("input s[4]\nweight W(var=1.5)\nweight U(var=1.0, bias=0.2)\n"
           "h = erf(dense(s[0], U))\nfor t in 1..3 { h = erf(dense(h, W) + dense(s[t], U)) }\n"
           "y = readout(h, var=0.9)\n")
    got = tp.compile_source(src).kernels(x1, x2, backend="numpy")
    nngp, ntk = rnn_reference(x1, x2, 1.5, 1.0, 0.2, 0.9)
    np.testing.assert_allclose(got["nngp"], nngp, rtol=RTOL)
    np.testing.assert_allclose(got["ntk"], ntk, rtol=RTOL)


def _mc_mean(samples):
    n = samples.shape[0]
    return samples.mean(), samples.std(ddof=1) / np.sqrt(n)


# agreement of backends / with finite networks at their own tolerances, not the
# accuracy probe: its warnings (4-D rules at ~1e-6) are what tests/test_exact.py checks
@pytest.mark.filterwarnings("ignore::tpcompiler.errors.TPWarning")
@pytest.mark.parametrize("program,sampler", [
    ("h = tanh(relu(g) + dense(relu(g), var=1.5))",
     lambda g, g2: np.tanh(np.maximum(g, 0) + g2)),
    ("h = erf(relu(g))", lambda g, g2: __import__("math").erf and _erf(np.maximum(g, 0))),
    ("h = sin(g) * tanh(relu(g))", lambda g, g2: np.sin(g) * np.tanh(np.maximum(g, 0))),
])
def test_beyond_neural_tangents_nngp_matches_limit_law_monte_carlo(program, sampler):
    """Nonlinearities of non-Gaussian vectors (refused by neural-tangents, its issues #192,
    #203): the NNGP against Monte Carlo over the limit law (g, g') ~ N(0, 2 Gram) and an
    independent g2 ~ N(0, 1.5 E[relu(g) relu(g')]) (Cho-Saul, written here). Tolerance: 6
    standard errors of the 400k-sample mean."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 4))
    src = f"input x\ng = dense(x, var=2.0)\n{program}\ny = readout(h)\n"
    got = tp.compile_source(src).nngp(x, backend="numpy")
    gram = 2.0 * x @ x.T / 4
    r = np.array([[v_relu(gram[i, i], gram[j, j], gram[i, j])[0] for j in range(2)]
                  for i in range(2)])
    c2 = 1.5 * r
    m = 400_000
    g = rng.standard_normal((m, 2)) @ np.linalg.cholesky(gram).T
    g2 = rng.standard_normal((m, 2)) @ np.linalg.cholesky(c2).T
    h = sampler(g, g2)
    for i, j in [(0, 0), (0, 1), (1, 1)]:
        mean, se = _mc_mean(h[:, i] * h[:, j])
        assert abs(got[i, j] - mean) <= 6 * se, (i, j, got[i, j], mean, se)


def _erf(x):
    from math import erf
    return np.vectorize(erf)(x)


# --- numerics -------------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["relu", "erf", "abs", "gelu", "tanh", "leaky_relu"])
def test_identical_antipodal_and_zero_inputs(act):
    depth = 50 if act != "tanh" else 6
    net = tp.compile_source(mlp_source(act, depth, 2.0 if act in ("relu", "abs") else 1.5, 0.0))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 4))
    x[1] = x[0]
    x[2] = -x[0]
    x[3] = 0.0
    ks = net.kernels(x, backend="numpy")
    kn = net.kernels(x)
    for kind in ("nngp", "ntk"):
        k = ks[kind]
        assert np.all(np.isfinite(k))
        # identical inputs in different rows: the off-diagonal entry equals the diagonal one
        assert abs(k[0, 1] - k[0, 0]) <= 1e-12 * abs(k[0, 0])
        assert abs(k[0, 1] - k[1, 1]) <= 1e-12 * abs(k[0, 0])
        assert np.all(k[3] == 0.0) if act in ("relu", "erf", "abs", "gelu", "tanh",
                                               "leaky_relu") else True
        np.testing.assert_allclose(kn[kind], k, rtol=1e-12, atol=1e-300)
        assert np.array_equal(kn[kind], kn[kind].T)


def test_identical_inputs_across_x1_x2_exact():
    net = tp.compile_source(mlp_source("relu", 50, 2.0, 0.0))
    rng = np.random.default_rng(4)
    x1 = rng.normal(size=(3, 6))
    x2 = np.concatenate([x1[1:2], -x1[2:3], rng.normal(size=(1, 6))])
    k12 = net.kernels(x1, x2)
    k11 = net.kernels(x1)
    for kind in ("nngp", "ntk"):
        assert abs(k12[kind][1, 0] - k11[kind][1, 1]) <= 1e-12 * k11[kind][1, 1]


def test_depth_100_edge_of_chaos_stays_finite_and_psd():
    net = tp.compile_source(mlp_source("relu", 100, 2.0, 0.0))
    x = np.random.default_rng(5).normal(size=(8, 3))
    for kind, k in net.kernels(x).items():
        assert np.all(np.isfinite(k))
        eig = np.linalg.eigvalsh(k)
        assert eig.min() >= -1e-12 * eig.max(), kind


def test_exp_nngp_and_ntk_with_a_warning():
    """exp's NTK is computed (neural-tangents computes it too), with a TPWarning that the NTK
    theorem's hypotheses are not met; tests/test_ranges.py checks the values."""
    net = tp.compile_source("input x\nh = dense(x)\ny = readout(exp(h))\n")
    x = np.random.default_rng(0).normal(size=(3, 2))
    k = net.nngp(x, backend="numpy")
    q = np.sum(x * x, 1) / 2
    want = np.exp((q[:, None] + q[None, :]) / 2 + x @ x.T / 2)
    np.testing.assert_allclose(k, want, rtol=1e-12)
    with pytest.warns(tp.TPWarning, match="polynomially bounded"):
        ntk = net.ntk(x, backend="numpy")
    np.testing.assert_allclose(ntk, want * (1 + x @ x.T / 2), rtol=1e-12)


def test_kernels_are_symmetric_psd_for_quadrature_programs():
    src = ("input x\nact swish(z) = z * sigmoid(z)\nh = dense(x, var=1.5, bias=0.1)\n"
           "h = swish(dense(tanh(h), var=1.5)) + softplus(h)\ny = readout(h)\n")
    net = tp.compile_source(src)
    x = np.random.default_rng(9).normal(size=(10, 3))
    for kind, k in net.kernels(x).items():
        assert np.array_equal(k, k.T)
        eig = np.linalg.eigvalsh(k)
        assert eig.min() >= -1e-9 * eig.max(), kind
