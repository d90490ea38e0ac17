"""Spatial programs (conv, avgpool, gap, flatten, layernorm) against neural-tangents.

Tolerances: the NNGP and the NTK between different points agree with neural-tangents to
about 1e-15 (the same closed forms, summed in another order); 1e-11 relative to the kernel's
scale leaves four digits for the order of the sums over positions and layers. At a pair of
identical points neural-tangents takes arccos(k / sqrt(q q)) of a cosine that rounding puts a
few ulps below 1, which moves the ReLU derivative's expectation (pi - theta) / (2 pi) by
theta / (2 pi) ~ sqrt(2 * 4 eps) / (2 pi) ~ 7e-9 per layer, where tpcompiler takes the exact
1/2 (helpers.th snaps the determinant): the NTK's diagonal is compared to 5e-8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tpcompiler as tpc
from tpcompiler.errors import TPError
from tpcompiler.testing import assert_gradients

import nt_reference as ntr

needs_nt = pytest.mark.skipif(not ntr.available(), reason="neural-tangents not installed")

ROOT = Path(__file__).resolve().parent.parent
OFF = 1e-11  # relative to the largest entry (above)
DIAG = 5e-8  # the NTK at identical points (above)


def _check(net, layers, x, x2=None):
    ours = net.kernels(x, x2)
    ref = ntr.cnn_kernels(x, x2, layers)
    other = x if x2 is None else x2
    same = (x.reshape(len(x), 1, -1) == other.reshape(1, len(other), -1)).all(-1)
    for kind in ("nngp", "ntk"):
        scale = np.abs(ref[kind]).max()
        err = np.abs(ours[kind] - ref[kind]) / scale
        assert err[same].max() < (DIAG if kind == "ntk" else OFF), (kind, err[same].max())
        assert err[~same].max() < OFF, (kind, err[~same].max())


def _images(n, h, w, c, seed=0):
    return np.random.default_rng(seed).standard_normal((n, h, w, c))


def conv(var, bias, size=3, padding="same", dims=2):
    return ("conv", var, bias, size, padding, dims)


CASES = {
    # name: (source, neural-tangents layers)
    "gap_pool": ("""
input img[8, 8]
h = conv(img, size=3, var=2.0, bias=0.1)
repeat 2 { h = conv(relu(h), size=3, var=2.0, bias=0.1) }
h = avgpool(relu(h), size=2)
y = readout(gap(h), var=1.0)
""", (conv(2.0, 0.1), ("act", "relu"), conv(2.0, 0.1), ("act", "relu"), conv(2.0, 0.1),
      ("act", "relu"), ("avgpool", 2, 2), ("gap",), ("dense", 1.0, 0.0))),
    "flatten_valid_circular": ("""
input img[7, 7]
h = conv(img, size=3, var=1.5, bias=0.2, padding=valid)
h = conv(erf(h), size=3, var=2.0, padding=circular)
y = readout(relu(h), var=1.3, bias=0.3)
""", (conv(1.5, 0.2, 3, "valid"), ("act", "erf"), conv(2.0, 0.0, 3, "circular"),
      ("act", "relu"), ("flatten",), ("dense", 1.3, 0.3))),
    "pool_then_conv": ("""
input img[8, 8]
h = conv(img, size=2, var=1.7, bias=0.05)
h = avgpool(relu(h), size=2)
h = conv(h, size=3, var=2.0, bias=0.1, padding=circular)
y = readout(gap(erf(h)), var=0.9)
""", (conv(1.7, 0.05, 2), ("act", "relu"), ("avgpool", 2, 2), conv(2.0, 0.1, 3, "circular"),
      ("act", "erf"), ("gap",), ("dense", 0.9, 0.0))),
    "gaussian_pool": ("""
input img[6, 6]
h = avgpool(conv(img, size=3, var=2.0, bias=0.3), size=3)
y = readout(relu(h), var=1.0)
""", (conv(2.0, 0.3), ("avgpool", 3, 2), ("act", "relu"), ("flatten",), ("dense", 1.0, 0.0))),
    "residual": ("""
input img[6, 6]
h = conv(img, size=3, var=1.0, bias=0.1)
repeat 2 { h = h + conv(relu(h), size=3, var=0.5, bias=0.05) }
y = readout(gap(relu(h)), var=1.0, bias=0.2)
""", (conv(1.0, 0.1),
      ("residual", (("act", "relu"), conv(0.5, 0.05))),
      ("residual", (("act", "relu"), conv(0.5, 0.05))),
      ("act", "relu"), ("gap",), ("dense", 1.0, 0.2))),
    "layernorm_gaussian": ("""
input img[6, 6]
h = conv(img, size=3, var=1.5, bias=0.2)
h = conv(relu(layernorm(h, eps=1e-12)), size=3, var=2.0)
y = readout(gap(abs(layernorm(h, eps=1e-12))), var=1.0)
""", (conv(1.5, 0.2), ("layernorm", 1e-12), ("act", "relu"), conv(2.0, 0.0),
      ("layernorm", 1e-12), ("act", "abs"), ("gap",), ("dense", 1.0, 0.0))),
    "product_of_branches": ("""
input img[5, 5]
u = conv(img, size=3, var=1.2, bias=0.1)
g = conv(img, size=3, var=0.8, bias=0.2)
y = readout(gap(u * erf(g)), var=1.0)
""", (("product", (conv(1.2, 0.1),), (conv(0.8, 0.2), ("act", "erf"))), ("gap",),
      ("dense", 1.0, 0.0))),
    "dense_per_position": ("""
input img[4, 4]
h = dense(img, var=2.0, bias=0.1)
h = conv(relu(h), size=3, var=2.0)
h = dense(gelu(h), var=1.5, bias=0.2)
y = readout(relu(h), var=1.0)
""", (("dense", 2.0, 0.1), ("act", "relu"), conv(2.0, 0.0), ("act", "gelu"),
      ("dense", 1.5, 0.2), ("act", "relu"), ("flatten",), ("dense", 1.0, 0.0))),
    "even_filters_valid_then_pool": ("""
input img[5, 5]
h = conv(img, size=2, var=2.0, bias=0.1, padding=valid)
p = avgpool(relu(h), size=2)
h = conv(p, size=2, var=1.5, bias=0.2, padding=valid)
y = readout(gap(erf(h)), var=1.0)
""", (conv(2.0, 0.1, 2, "valid"), ("act", "relu"), ("avgpool", 2, 2), conv(1.5, 0.2, 2, "valid"),
      ("act", "erf"), ("gap",), ("dense", 1.0, 0.0))),
}


@needs_nt
@pytest.mark.parametrize("name", sorted(CASES))
def test_against_neural_tangents(name):
    src, layers = CASES[name]
    net = tpc.compile_source(src)
    grid = net.ir.inputs[0].grid
    x = _images(5, *grid, 3, seed=len(name))
    _check(net, layers, x)
    # a kernel between two sets, one point shared with the first
    x2 = np.concatenate([_images(2, *grid, 3, seed=99), x[:1]])
    _check(net, layers, x[:3], x2)


@needs_nt
def test_sequence_conv_against_neural_tangents():
    net = tpc.compile_source("""
input s[9]
h = conv(s, size=3, var=2.0, bias=0.1)
h = conv(relu(h), size=5, var=2.0, padding=circular)
y = readout(gap(relu(h)), var=1.0)
""")
    x = np.random.default_rng(3).standard_normal((5, 9, 4))
    _check(net, (conv(2.0, 0.1, 3, "same", 1), ("act", "relu"), conv(2.0, 0.0, 5, "circular", 1),
                 ("act", "relu"), ("gap",), ("dense", 1.0, 0.0)), x)


@pytest.mark.parametrize("name", ["pool_then_conv", "flatten_valid_circular"])
def test_numpy_reference_equals_the_generated_code(name):
    """The fused pair function (full P x P arrays with pooling, the position-diagonal only for
    a Flatten network) against the NumPy reference walking the same statements."""
    net = tpc.compile_source(CASES[name][0])
    x = _images(4, *net.ir.inputs[0].grid, 2, seed=5)
    a = net.kernels(x)
    b = net.kernels(x, backend="numpy")
    for kind in a:
        np.testing.assert_allclose(a[kind], b[kind], rtol=1e-13, atol=0)


def test_identical_zero_and_antipodal_images():
    net = tpc.compile_source(CASES["gap_pool"][0])
    x = _images(3, 8, 8, 1, seed=1)
    data = np.concatenate([x, x[:1], -x[1:2], np.zeros((1, 8, 8, 1))])
    k = net.kernels(data)
    for kind, m in k.items():
        assert np.isfinite(m).all()
        np.testing.assert_array_equal(m, m.T)
        assert m[0, 3] == m[0, 0] and m[3, 3] == m[0, 0]
        assert np.linalg.eigvalsh(m).min() > -1e-12 * np.abs(m).max()
    # without biases a zero image has zero kernels, not NaN
    bare = tpc.compile_source("input img[4, 4]\nh = conv(img, size=3)\n"
                              "y = readout(gap(relu(h)))")
    z = bare.kernels(np.concatenate([np.zeros((1, 4, 4, 2)), _images(2, 4, 4, 2)]))
    for m in z.values():
        assert np.isfinite(m).all() and (m[0] == 0).all()


def test_one_channel_images_may_omit_the_channel_axis():
    net = tpc.compile_source(CASES["gaussian_pool"][0])
    x = _images(3, 6, 6, 1)
    a = net.nngp(x)
    np.testing.assert_array_equal(a, net.nngp(x[..., 0]))


@pytest.mark.parametrize("src, message", [
    ("input img[4, 4]\nh = conv(img, size=5, padding=valid)\ny = readout(gap(h))",
     "larger than the 4 x 4 grid"),
    ("input img[6, 6]\nh = conv(img, size=3)\ny = readout(gap(avgpool(h, size=4)))",
     "does not divide"),
    ("input x\nh = dense(x)\ny = readout(gap(h))", "gap() needs a spatial vector"),
    ("input x\nh = conv(x, size=3)\ny = readout(h)", "conv() needs a spatial vector"),
    ("input img[4, 4]\nh = conv(img, size=3)\nu = avgpool(h, size=2)\ny = readout(gap(h + u))",
     "different grids"),
    ("input img[4, 4]\nh = conv(img, size=3)\nu = avgpool(relu(h), size=2)\n"
     "y = readout(gap(relu(u)))", "non-Gaussian"),
    ("input img[4, 4]\nh = conv(img, size=3, padding=reflect)\ny = readout(gap(h))",
     "padding= is one of"),
    ("input img[4, 4]\nh = conv(img, size=3, stride=2)\ny = readout(gap(h))",
     "no parameter 'stride'"),
    ("input img[4, 4]\nh = layernorm(img)\ny = readout(h)", "apply conv() first"),
    ("input img[4, 4]\ny = readout(img)", "apply conv() first"),
])
def test_errors(src, message):
    with pytest.raises(TPError) as e:
        tpc.compile_source(src).spatial_program  # noqa: B018
    assert message in str(e.value)
    assert "<string>:" in str(e.value)


def test_data_errors():
    net = tpc.compile_source(CASES["gaussian_pool"][0])
    with pytest.raises(TPError, match="declared as 6 x 6"):
        net.nngp(_images(2, 5, 6, 1))
    with pytest.raises(TPError, match=r"needs \(N, 6, 6, C\)"):
        net.nngp(np.zeros((2, 36)))


# --- against the finite-width simulator, where neural-tangents has no counterpart ------------
#
# The mean over SEEDS networks of width WIDTH of the empirical kernels (the NNGP over the
# readout given the features, the exact NTK of each network) has a Monte Carlo standard error
# `se` per entry, estimated from the seeds' spread, and a finite-width bias O(1/n) (measured
# on these programs: below 1.5/n of the kernel's scale at n = 256 .. 4096). An entry fails when
# it is more than 4.5 standard errors plus 3/n of the scale from the limit.

WIDTH, SEEDS = 512, 8

SIMULATED = {
    "layernorm_after_relu": """
input img[4, 4]
h = conv(img, size=3, var=2.0, bias=0.1)
h = conv(layernorm(relu(h)), size=3, var=1.5, bias=0.1)
y = readout(gap(relu(h)), var=1.0)
""",
    "layernorm_subtracts_the_mean": """
input img[4, 4]
h = conv(img, size=3, var=2.0)
u = layernorm(h + 1.5) * relu(h)
y = readout(gap(u), var=1.0)
""",
    "layernorm_mlp_after_gap": """
input img[4, 4]
h = conv(img, size=2, var=2.0, bias=0.3, padding=valid)
g = gap(relu(h))
u = dense(layernorm(g + dense(g, var=1.0)), var=2.0, bias=0.1)
y = readout(relu(u), var=1.0)
""",
    "pooled_products_flatten": """
input img[4, 4]
u = conv(img, size=3, var=1.0, bias=0.2, padding=circular)
g = conv(img, size=2, var=2.0)
h = avgpool(u * tanh(g), size=2)
y = readout(sin(conv(h, size=2, var=2.0)), var=1.0)
""",
    "sequence_layernorm": """
input s[6]
h = conv(s, size=3, var=2.0, bias=0.1)
y = readout(gap(relu(layernorm(conv(relu(h), size=3, var=2.0)))), var=1.0)
""",
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n == "layernorm_subtracts_the_mean" else n
                                  for n in sorted(SIMULATED)])
def test_against_the_simulator(name):
    net = tpc.compile_source(SIMULATED[name])
    inp = net.ir.inputs[0]
    shape = inp.grid or (inp.length,)
    x = np.random.default_rng(7).standard_normal((3, *shape, 2))
    kinds = net.spatial_program.kinds
    limit = net.kernels(x, get=kinds)
    runs = [net.simulate(WIDTH, seed=s).kernels(x, get=kinds) for s in range(SEEDS)]
    for kind in kinds:
        vals = np.array([r[kind] for r in runs])
        mean, se = vals.mean(0), vals.std(0, ddof=1) / np.sqrt(SEEDS)
        scale = np.abs(limit[kind]).max()
        bound = 4.5 * se + 3.0 / WIDTH * scale
        assert (np.abs(mean - limit[kind]) <= bound).all(), (kind, mean, limit[kind], se)


def test_ntk_refusal_says_why():
    net = tpc.compile_source(SIMULATED["layernorm_subtracts_the_mean"])
    with pytest.raises(TPError, match="layernorm, pooled or attended vector combined"):
        net.ntk(np.zeros((2, 4, 4, 1)))
    shared = tpc.compile_source("input img[4, 4]\nweight W(var=2.0)\nh = conv(img, size=3)\n"
                                "repeat 2 { h = conv(relu(h), W, size=3) }\n"
                                "y = readout(gap(h))")
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 1))
    with pytest.raises(TPError, match="weight used twice"):
        shared.ntk(x)
    assert np.isfinite(shared.nngp(x)).all()  # the NNGP of shared weights is derived


def test_quadrature_probe_warns_above_tol():
    src = "input img[4, 4]\nh = conv(img, size=3, var=2.0)\ny = readout(gap(tanh(h) * h))"
    x = np.random.default_rng(0).standard_normal((3, 4, 4, 1))
    with pytest.warns(tpc.TPWarning, match="raised quadrature orders"):
        tpc.compile_source(src, tol=1e-17).nngp(x)
    tpc.compile_source(src).nngp(x)  # the default tol: met, no warning (filterwarnings=error)


@pytest.mark.parametrize("name", ["layernorm_after_relu", "pooled_products_flatten",
                                  "layernorm_mlp_after_gap", "sequence_layernorm"])
def test_simulator_gradients_match_central_differences(name):
    """The transpose program (conv, pooling and layernorm backward) against central
    differences of the forward pass: step 1e-6 on O(1) parameters, error O(h^2) ~ 1e-12 plus
    rounding ~ 1e-16 / 1e-6: 1e-7 relative leaves a wide margin."""
    net = tpc.compile_source(SIMULATED[name])
    inp = net.ir.inputs[0]
    x = np.random.default_rng(2).standard_normal((2, *(inp.grid or (inp.length,)), 2))
    assert_gradients(net.simulate(16, seed=3), x, entries=3, seed=4)


def test_cpu_only_and_no_latex_yet():
    net = tpc.compile_source(CASES["gaussian_pool"][0])
    with pytest.raises(TPError, match="CPU only"):
        net.nngp(_images(2, 6, 6, 1), device="cuda")
    with pytest.raises(TPError, match="LaTeX of a spatial program"):
        net.latex()


def test_cli_kernel_and_kernel_program(tmp_path, capsys):
    from tpcompiler.cli import main

    example = str(ROOT / "examples" / "cnn_gap.tp")
    np.save(tmp_path / "x.npy", _images(3, 8, 8, 1))
    assert main(["kernel-program", example]) == 0
    assert "conv2[conv 3x3 same 8x8->8x8" in capsys.readouterr().out
    assert main(["kernel", example, "--data", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "k.npy")]) == 0
    k = np.load(tmp_path / "k.npy")
    np.testing.assert_allclose(k, tpc.compile(example).nngp(_images(3, 8, 8, 1)), rtol=1e-15)


def test_coordcheck_refuses_spatial_programs():
    from tpcompiler.coordcheck import AbcNetwork

    net = tpc.compile_source(CASES["gaussian_pool"][0])
    with pytest.raises(TPError, match="does not simulate spatial programs"):
        AbcNetwork(net.ir, 64, {"img": 1})


# --- random CNNs against neural-tangents (hypothesis) ----------------------------------------

ACTS = ("relu", "erf", "abs", "gelu")


@st.composite
def cnn_programs(draw):
    """A random stack: convs (size 1..3, any padding, optional bias), elementwise activations,
    an optional 2 x 2 pooling, then gap or flatten; the .tp text and neural-tangents' layers."""
    side = draw(st.sampled_from((4, 5, 6)))
    grid = [side, side]
    lines, layers = [f"input img[{side}, {side}]"], []
    h = "img"
    for k in range(draw(st.integers(1, 3))):
        size = draw(st.integers(1, 3))
        pad = draw(st.sampled_from(("same", "valid", "circular")))
        if pad == "valid" and grid[0] - size + 1 < 2:
            pad = "same"
        var = draw(st.sampled_from((1.0, 1.5, 2.0)))
        bias = draw(st.sampled_from((0.0, 0.1)))
        lines.append(f"h{k} = conv({h}, size={size}, var={var}, bias={bias}, padding={pad})")
        layers.append(conv(var, bias, size, pad))
        if pad == "valid":
            grid = [g - size + 1 for g in grid]
        act = draw(st.sampled_from(ACTS))
        h = f"{act}(h{k})"
        layers.append(("act", act))
        if draw(st.booleans()) and grid[0] % 2 == 0 and grid[0] > 2:
            lines.append(f"p{k} = avgpool({h}, size=2)")
            layers.append(("avgpool", 2, 2))
            grid = [g // 2 for g in grid]
            h = f"p{k}"
    if draw(st.booleans()):
        lines.append(f"y = readout(gap({h}), var=1.0)")
        layers += [("gap",), ("dense", 1.0, 0.0)]
    else:
        lines.append(f"y = readout({h}, var=1.0)")
        layers += [("flatten",), ("dense", 1.0, 0.0)]
    return "\n".join(lines) + "\n", tuple(layers), side


def _random_cnn(case):
    src, layers, side = case
    net = tpc.compile_source(src)
    _check(net, layers, _images(3, side, side, 2, seed=side))


# each example compiles two Numba modules and a neural-tangents jit (~8 s): a seeded few by
# default, the sweep with the slow tests
@needs_nt
@settings(max_examples=2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(cnn_programs())
def test_random_cnns_against_neural_tangents(case):
    _random_cnn(case)


@pytest.mark.slow
@needs_nt
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cnn_programs())
def test_random_cnns_against_neural_tangents_sweep(case):
    _random_cnn(case)
