"""attend(q, k, v): self-attention in the infinite-width limit (issue 18), against
neural-tangents where the two coincide and against the finite-width simulator elsewhere.

neural-tangents: its only attention with a kernel is `stax.GlobalSelfAttention(n_chan_out,
n_chan_key, n_chan_val, n_heads, linear_scaling=True, W_key_std=s, W_query_std=s,
W_value_std=sv, W_out_std=so, b_std=sb, attention_mechanism="SOFTMAX")`: linear_scaling=True
divides the logits by the width and ties the key and query matrices (queries = keys; only
the product W_key_std * W_query_std = s^2 enters). On an input h it is, in the language,

    q = dense(h, var=s^2)                                        # queries = keys
    a = dense(attend(q, q, dense(h, var=sv^2)), var=so^2, bias=sb^2)

(NT's W_value and W_out are the two dense layers; only so^2 sv^2 enters the kernel).
pos_emb_type="SUM" with pos_emb_decay_fn=None (one-hot positions: covariance I between
positions, for every pair of points) and W_pos_emb_std=sp is a second input `pos` whose data
is sqrt(T) I_T at every point (so <pos_p, pos_j>/T = delta_pj), added to h: hp = h +
conv(pos, size=1, var=sp^2); the queries read hp, the values hp (val_pos_emb=True) or h
(False). n_chan_out, n_chan_key, n_chan_val and n_heads do not enter NT's kernel; nor ours
(heads= splits the finite network's width only). Both compute the same closed forms: between
different points the agreement is to rounding (measured <= 1e-15 relative to the kernel's
scale; asserted 1e-13). At a pair of identical points neural-tangents takes the arccos of a
cosine that rounds a few ulps below 1, which moves relu's derivative expectation by ~7e-9 per
layer where tpcompiler takes the exact 1/2 (tests/test_spatial.py): 5e-8 there.
"""

from __future__ import annotations

import numpy as np
import pytest

import tpcompiler as tp
from tpcompiler import ir
from tpcompiler.errors import TPError
from tpcompiler.testing import assert_gradients, assert_limit

import nt_reference as ntr

needs_nt = pytest.mark.skipif(not ntr.available(), reason="neural-tangents not installed")

T, D = 6, 3
OFF, SAME = 1e-13, 5e-8  # relative to the kernel's scale (above)


def onehot(n: int, t: int = T) -> np.ndarray:
    """NT's one-hot positional embeddings as data: <pos_p, pos_j>/t = delta_pj."""
    return np.broadcast_to(np.sqrt(t) * np.eye(t), (n, t, t)).copy()


def attention(qk, vv, oo, bias=0.0, heads=1, pos=0.0, val_pos=False):
    return ("attention", qk, vv, oo, bias, heads, pos, val_pos)


NT_CASES = {
    # name: (source, neural-tangents layers, whether the network reads `pos`)
    "dense_attention_flatten": (f"""
input s[{T}]
h = conv(s, size=1, var=1.0, bias=0.1)
q = dense(h, var=0.7)
a = dense(attend(q, q, dense(h, var=1.3)), var=1.6, bias=0.2)
y = readout(relu(a), var=1.0)
""", (("dense", 1.0, 0.1), attention(0.7, 1.3, 1.6, 0.2), ("act", "relu"), ("flatten",),
      ("dense", 1.0, 0.0)), False),
    "raw_input_heads_gap": (f"""
input s[{T}]
q = conv(s, size=1, var=1.5)
a = dense(attend(q, q, conv(s, size=1, var=1.0), heads=4), var=2.0)
y = readout(gap(erf(a)), var=1.0, bias=0.1)
""", (attention(1.5, 1.0, 2.0, 0.0, 4), ("act", "erf"), ("gap",), ("dense", 1.0, 0.1)), False),
    "positions_in_values": (f"""
input s[{T}]
input pos[{T}]
h = conv(s, size=1, var=1.0, bias=0.1)
hp = h + conv(pos, size=1, var=0.8)
q = dense(hp, var=1.2)
a = dense(attend(q, q, dense(hp, var=1.0)), var=1.5, bias=0.1)
y = readout(gap(relu(a)), var=1.0)
""", (("dense", 1.0, 0.1), attention(1.2, 1.0, 1.5, 0.1, 1, 0.8, True), ("act", "relu"),
      ("gap",), ("dense", 1.0, 0.0)), True),
    "transformer_block": (f"""
input s[{T}]
input pos[{T}]
h = conv(s, size=1, var=1.0)
q = dense(h + conv(pos, size=1, var=0.5), var=1.0)
h = layernorm(h + dense(attend(q, q, dense(h, var=1.0)), var=1.0), eps=1e-12)
h = layernorm(h + dense(relu(dense(h, var=2.0, bias=0.1)), var=1.0), eps=1e-12)
y = readout(gap(h), var=1.0)
""", (("dense", 1.0, 0.0), ("residual", (attention(1.0, 1.0, 1.0, 0.0, 1, 0.5, False),)),
      ("layernorm", 1e-12),
      ("residual", (("dense", 2.0, 0.1), ("act", "relu"), ("dense", 1.0, 0.0))),
      ("layernorm", 1e-12), ("gap",), ("dense", 1.0, 0.0)), True),
}


def _data(net, x: np.ndarray):
    return {"s": x, "pos": onehot(len(x))} if len(net.ir.inputs) == 2 else x


@needs_nt
@pytest.mark.parametrize("name", sorted(NT_CASES))
def test_against_neural_tangents(name):
    """The NumPy reference (the generated code is checked against it below), a square kernel
    and one between two sets with a point in common."""
    src, layers, _ = NT_CASES[name]
    net = tp.compile_source(src)
    rng = np.random.default_rng(len(name))
    x = rng.standard_normal((4, T, D))
    x2 = np.concatenate([rng.standard_normal((2, T, D)), x[:1]])
    for a, b in ((x, None), (x[:3], x2)):
        ours = net.kernels(_data(net, a), None if b is None else _data(net, b),
                           backend="numpy")
        ref = ntr.cnn_kernels(a, b, layers)
        other = a if b is None else b
        same = (a.reshape(len(a), 1, -1) == other.reshape(1, len(other), -1)).all(-1)
        for kind in ("nngp", "ntk"):
            err = np.abs(ours[kind] - ref[kind]) / np.abs(ref[kind]).max()
            assert err[~same].max() < OFF, (kind, err[~same].max())
            assert err[same].max() < SAME, (kind, err[same].max())


def test_generated_code_equals_the_numpy_reference():
    """The fused pair function's attention loops (both sides mixed, one side mixed, uniform
    weights) against the NumPy evaluator."""
    net = tp.compile_source(f"""
input s[{T}]
h = conv(s, size=1, var=1.0, bias=0.1)
q = dense(h, var=1.5)
y = readout(attend(q, q, h) + h + attend(dense(h), dense(h), h), var=1.0)
""")
    x = np.random.default_rng(3).standard_normal((4, T, 2))
    x2 = np.random.default_rng(4).standard_normal((3, T, 2))
    for a, b in ((x, None), (x, x2)):
        fast = net.nngp(a, b)
        ref = net.nngp(a, b, backend="numpy")
        np.testing.assert_allclose(fast, ref, rtol=1e-13, atol=1e-15 * np.abs(ref).max())


def test_independent_queries_and_keys_average_uniformly():
    """E[q_p k_j] = 0 for independent weights: every position takes the plain mean of the
    values, and a Flatten readout of it is the readout of gap(v)."""
    ind = tp.compile_source(f"""
input s[{T}]
h = conv(s, size=1, var=1.0, bias=0.1)
y = readout(attend(dense(h, var=2.0), dense(h, var=2.0), relu(h)), var=1.0)
""")
    gap = tp.compile_source(f"""
input s[{T}]
h = conv(s, size=1, var=1.0, bias=0.1)
y = readout(gap(relu(h)), var=1.0)
""")
    x = np.random.default_rng(5).standard_normal((4, T, 2))
    for kind in ("nngp", "ntk"):
        a = ind.kernels(x, get=kind, backend="numpy")[kind]
        b = gap.kernels(x, get=kind, backend="numpy")[kind]
        np.testing.assert_allclose(a, b, rtol=1e-13)


def test_heads_do_not_change_the_limit():
    src = f"""
input s[{T}]
h = conv(s, size=1, var=1.0)
q = dense(h, var=2.0)
y = readout(relu(attend(q, q, dense(h, var=1.0){{}})), var=1.0)
"""
    x = np.random.default_rng(6).standard_normal((3, T, 2))
    one = tp.compile_source(src.format("")).kernels(x, backend="numpy")
    four = tp.compile_source(src.format(", heads=4")).kernels(x, backend="numpy")
    for kind in one:
        np.testing.assert_array_equal(one[kind], four[kind])


# --- against the finite-width simulator ------------------------------------------------------

SIMPLE = """
input s[5]
h = conv(s, size=1, var=1.0, bias=0.1)
q = dense(h, var=2.0)
a = attend(q, q, dense(h, var=1.0))
y = readout(relu(dense(a, var=2.0)), var=1.0)
"""

WIDTH, SEEDS = 1024, 16
#: the largest |mean - K| n / scale measured on SIMPLE (96 networks at n = 512, 64 at 1024),
#: itself within 1.4 standard errors of zero: what an O(1/n) bias may be
BIAS = 10.0


def test_kernels_against_the_simulator_at_width_1024():
    """Monte Carlo over SEEDS networks of width 1024. Each network's empirical kernel
    (the NNGP over the readout given its features, its exact NTK) is K + b/n + e with e of
    mean zero and standard deviation O(n^-1/2) (~6 % of the scale here at n = 1024): the mean
    over the seeds has standard error se = std / sqrt(SEEDS), estimated from their spread, so
    (mean - K - b/n) / se is Student-t with SEEDS - 1 degrees of freedom. Over the m = 12
    compared entries (6 of a symmetric 3 x 3 kernel, two kinds) a family-wise false alarm of
    1e-3 puts the bound at t = t_{15}^-1(1 - 1e-3 / (2 m)) ~ 5.3 standard errors, plus the
    bias allowance BIAS / n of the scale."""
    stats = pytest.importorskip("scipy.stats")
    net = tp.compile_source(SIMPLE)
    x = np.random.default_rng(7).standard_normal((3, 5, 2))
    limit = net.kernels(x, backend="numpy")
    runs = [net.simulate(WIDTH, seed=s).kernels(x) for s in range(SEEDS)]
    t = stats.t.ppf(1 - 1e-3 / (2 * 12), SEEDS - 1)
    for kind in ("nngp", "ntk"):
        vals = np.array([r[kind] for r in runs])
        mean, se = vals.mean(0), vals.std(0, ddof=1) / np.sqrt(SEEDS)
        scale = np.abs(limit[kind]).max()
        bound = t * se + BIAS / WIDTH * scale
        assert (np.abs(mean - limit[kind]) <= bound).all(), (kind, mean, limit[kind], se)


def test_errors_fall_with_width_and_a_wrong_limit_is_told():
    """tpc check's rule (err = a n^-1/2 + b, b not significant) on widths 64..1024; the
    kernel of uniform weights (independent queries and keys) as the claimed limit fails it,
    so the check has the power to tell the logits apart."""
    net = tp.compile_source(SIMPLE)
    x = np.random.default_rng(2).standard_normal((4, 5, 2))
    fits = assert_limit(net, x, widths=(64, 256, 1024), seeds=6, backend="numpy")
    for f in fits.values():
        assert f.means[-1] < 0.6 * f.means[0]
    wrong = tp.compile_source(SIMPLE.replace("attend(q, q,", "attend(q, dense(h, var=2.0),"))
    with pytest.raises(AssertionError, match="converge to another limit"):
        assert_limit(net, x, widths=(64, 256, 1024), seeds=6,
                     against=wrong.kernels(x, backend="numpy"))


@pytest.mark.slow
def test_errors_fall_with_width_up_to_4096():
    """The transformer block (positions, heads, residuals, layernorm, MLP) at widths up to
    4096; `tpc check examples/transformer.tp` (widths 64..4096, 4 seeds) measured relative
    errors 0.197 -> 0.026 (NNGP) and 0.218 -> 0.021 (NTK), slopes -0.49 and -0.52, offsets
    0.002 +- 0.008 and -0.001 +- 0.008."""
    src, _, _ = NT_CASES["transformer_block"]
    net = tp.compile_source(src.replace("dense(h, var=1.0)), var=1.0)",
                                        "dense(h, var=1.0), heads=4), var=1.0)"))
    x = _data(net, np.random.default_rng(8).standard_normal((4, T, 2)))
    fits = assert_limit(net, x, widths=(64, 256, 1024, 4096), seeds=6, backend="numpy")
    for f in fits.values():
        assert f.means[-1] < 0.7 * f.means[0]


def test_heads_converge_to_one_heads_limit():
    """Four heads (each a quarter of the width, its own logits and softmax) at finite width
    converge to the kernel of one head."""
    net = tp.compile_source(SIMPLE.replace("dense(h, var=1.0))", "dense(h, var=1.0), heads=4)"))
    x = np.random.default_rng(9).standard_normal((3, 5, 2))
    assert_limit(net, x, widths=(64, 256, 1024), seeds=6, backend="numpy")


def test_the_logits_tangent_vanishes_like_one_over_n():
    """The query matrix feeds only the logits: its part of the simulator's empirical NTK
    (which differentiates through the softmax exactly) is what the limit drops. Measured
    ||G_q G_q^T|| / ||NTK|| = 0.15 / n, 0.14 / n, 0.13 / n at n = 64, 256, 1024."""
    net = tp.compile_source(SIMPLE.replace("relu(dense(a, var=2.0))", "a"))
    att = next(g for g in net.ir.gvars if g.op is ir.Op.ATTEND)
    wq = net.ir.gvar(att.spatial.query.name).param
    x = np.random.default_rng(7).standard_normal((3, 5, 2))
    share = []
    for width in (64, 256, 1024):
        parts = []
        for seed in range(3):
            fn = net.simulate(width, seed=seed)
            g = fn.gradients(x)[wq]
            parts.append(np.linalg.norm(g @ g.T) / np.linalg.norm(fn.ntk(x)))
        share.append(np.mean(parts))
    slope = np.polyfit(np.log([64, 256, 1024]), np.log(share), 1)[0]
    assert -1.2 < slope < -0.8, (share, slope)
    assert share[-1] < 1e-3


def test_simulator_gradients_match_central_differences():
    """The attention's backward pass (values, softmax, logits; two heads; queries and keys
    from one named weight used twice; relu values, layernorm after the residual) against
    central differences of the forward pass: step 1e-6, error O(h^2) plus rounding ~1e-10."""
    net = tp.compile_source("""
input s[4]
input pos[4]
weight Wq(var=1.5)
h = conv(s, size=1, var=1.0, bias=0.1) + conv(pos, size=1, var=0.5)
a = attend(dense(h, Wq), dense(h, Wq), dense(relu(h), var=1.2, bias=0.2), heads=2)
y = readout(gap(tanh(layernorm(h + dense(a, var=1.0)))), var=1.0)
""")
    rng = np.random.default_rng(2)
    x = {"s": rng.standard_normal((2, 4, 2)), "pos": rng.standard_normal((2, 4, 2))}
    fn = net.simulate(16, seed=3)
    grads = assert_gradients(fn, x, seed=2)
    # the NTK is the Gram matrix of these gradients (a weight used twice: both uses summed)
    full = np.concatenate([g.reshape(2, -1) for g in grads.values()], axis=1)
    np.testing.assert_allclose(fn.ntk(x), full @ full.T, rtol=1e-12)


def test_non_gaussian_and_one_sided_mixtures_against_the_simulator():
    """relu values (a non-Gaussian mixture: its mean through layernorm) and the values'
    own vector beside the attention (a covariance mixed on one side only): NNGP only."""
    net = tp.compile_source(f"""
input s[{T}]
h = conv(s, size=1, var=1.0, bias=0.1)
q = dense(h, var=1.5)
y = readout(layernorm(attend(q, q, relu(h)) + h), var=1.0)
""")
    assert "ntk" in net.spatial_program.refused
    x = np.random.default_rng(10).standard_normal((3, T, 2))
    assert_limit(net, x, widths=(64, 256, 1024), seeds=6, kinds=("nngp",), backend="numpy")


# --- errors ----------------------------------------------------------------------------------

ERRORS = [
    ("q = conv(s, size=1)\ny = readout(attend(q, q))", "takes 3 positional arguments",
     (3, 13)),
    ("q = conv(s, size=1)\ny = readout(attend(q, q, q, temp=2))", "no parameter 'temp'",
     (3, 29)),
    ("q = conv(s, size=1)\ny = readout(attend(q, q, q, heads=0))",
     "number of heads must be at least 1", (3, 35)),
    ("q = conv(s, size=1)\ny = readout(attend(q, q, q, heads=1.5))", "must be an integer",
     (3, 35)),
    ("q = conv(s, size=1)\ny = readout(attend(q, q, s))", "its values are a sequence input",
     (3, 26)),
    ("input x\nq = conv(s, size=1)\ny = readout(attend(q, q, dense(x)))",
     "its values are a vector without positions", (4, 26)),
    ("input t[3]\nq = conv(s, size=1)\ny = readout(attend(q, q, conv(t, size=1)))",
     "values have 3 positions, its queries 4", (4, 26)),
    ("q = conv(s, size=1)\ny = readout(gap(relu(attend(q, q, relu(q)))))",
     "attend of a non-Gaussian vector", (3, 17)),
    ("q = conv(s, size=1)\ny = readout(attend(q, q, q, scale=2))", "scale=linear only",
     (3, 35)),
    ("q = conv(s, size=1)\nact f(z) = attend(z, z, z)\ny = readout(f(q))",
     "cannot be used inside an act", (3, 12)),
]


@pytest.mark.parametrize("body, message, at", ERRORS, ids=[e[1] for e in ERRORS])
def test_errors_point_at_the_source(body, message, at):
    with pytest.raises(TPError, match=message) as info:
        tp.compile_source("input s[4]\n" + body, path="t.tp")
    err = info.value
    assert (err.span.line, err.span.column) == at
    text = str(err)
    assert text.startswith(f"t.tp:{at[0]}:{at[1]}: error: ")
    assert "^" in text.split("\n")[2]


@pytest.mark.parametrize("scale", ["sqrt", "1/sqrt(n)"])
def test_sqrt_scaling_is_refused_with_the_reason(scale):
    with pytest.raises(TPError, match="no deterministic infinite-width limit") as info:
        tp.compile_source(f"input s[4]\nq = conv(s, size=1)\n"
                          f"y = readout(attend(q, q, q, scale={scale}))")
    assert "logits stay random" in str(info.value)
    assert "scale=linear" in info.value.hint
    # the default, written out, is accepted
    tp.compile_source("input s[4]\nq = conv(s, size=1)\ny = readout(attend(q, q, q, "
                      "scale=linear))")


def test_ntk_refused_where_an_attended_vector_meets_its_values():
    net = tp.compile_source("input s[4]\nh = conv(s, size=1)\n"
                            "y = readout(attend(h, h, h) + h)")
    x = np.random.default_rng(0).standard_normal((2, 4, 1))
    with pytest.raises(TPError, match="attended vector combined with a vector it is made of"):
        net.ntk(x, backend="numpy")
    assert np.isfinite(net.nngp(x, backend="numpy")).all()


def test_a_weight_used_only_in_the_logits_is_not_a_second_use():
    """The named weight of tied queries and keys is used twice, both times in the logits,
    whose tangent drops out: the NTK is derived (and equals that of one shared vector)."""
    shared = tp.compile_source("input s[4]\nweight W(var=2.0)\nh = conv(s, size=1)\n"
                               "y = readout(attend(dense(h, W), dense(h, W), dense(h)))")
    one = tp.compile_source("input s[4]\nh = conv(s, size=1)\nq = dense(h, var=2.0)\n"
                            "y = readout(attend(q, q, dense(h)))")
    x = np.random.default_rng(1).standard_normal((3, 4, 2))
    a = shared.kernels(x, backend="numpy")
    b = one.kernels(x, backend="numpy")
    for kind in ("nngp", "ntk"):
        np.testing.assert_allclose(a[kind], b[kind], rtol=1e-14)


# --- views and the command line --------------------------------------------------------------

def test_kernel_program_latex_and_cli(tmp_path, capsys):
    from tpcompiler.cli import main

    path = tmp_path / "att.tp"
    path.write_text(f"input s[{T}]\ninput pos[{T}]\nq = conv(s, size=1) + conv(pos, size=1)\n"
                    "y = readout(attend(q, q, q))\n")
    assert main(["kernel-program", str(path)]) == 0
    out = capsys.readouterr().out
    assert "attw1[attend[q=" in out and "att2[attend[q=" in out
    net = tp.compile(path)
    with pytest.raises(TPError, match="LaTeX of a spatial program"):
        net.latex()
    x = {"s": np.random.default_rng(0).standard_normal((3, T, 2)), "pos": onehot(3)}
    np.savez(tmp_path / "x.npz", **x)
    assert main(["kernel", str(path), "--data", str(tmp_path / "x.npz"), "--kind", "both",
                 "--out", str(tmp_path / "k.npz")]) == 0
    with np.load(tmp_path / "k.npz") as k:
        np.testing.assert_allclose(k["ntk"], net.ntk(x), rtol=1e-13)
