"""The coordinate check (tpcompiler.coordcheck, `tpc coordcheck`; docs/abc.md "Coordinate check").

Tolerance: a fitted width exponent must be within 0.25 of the prediction (coordcheck.TOLERANCE).
The fits use widths 64..1024 (4 octaves): at these widths the neglected lower-order terms (the
Theta(1) init value next to a growing update, n^-1/2 fluctuations of one random network, the
per-width draw of the initial output) move a fitted slope by ~0.1-0.2 (measured over seeds), while
the exponents to be told apart differ by >= 1/2 (muP 0 against SP 1/2, 1, 2). Seeds are fixed,
so the results are deterministic.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction as F

import numpy as np
import pytest

from tpcompiler import coordcheck as cc
from tpcompiler import simulate
from tpcompiler.cli import main as tpc_main
from tpcompiler.lowering import lower
from tpcompiler.parametrization import scales
from tpcompiler.parse import parse_source
from tpcompiler.passes.abc import abc_table

HERE = os.path.dirname(os.path.abspath(__file__))
RELU_MLP = os.path.join(HERE, "..", "examples", "relu_mlp.tp")
WIDTHS = (64, 128, 256, 512, 1024)


def relu_mlp_source(preset: str) -> str:
    with open(RELU_MLP) as fh:
        src = fh.read()
    assert "parametrization ntk\n" in src
    return src.replace("parametrization ntk\n", f"parametrization {preset}\n")


def relu_mlp(preset: str):
    return lower(parse_source(relu_mlp_source(preset), "relu_mlp.tp"))


# a program with every kind of tensor: input matrix, width-n biases, a shared weight used twice,
# a product of vectors, a readout bias; tanh so that finite differences are smooth
GRAD_SRC = """parametrization {preset}
input x
weight V(var=1.5, bias=0.2)
h = tanh(dense(x, var=2.0, bias=0.1))
h = tanh(dense(h, V))
u = tanh(dense(h, V))
y = readout(h * u + h, var=1.0, bias=0.3)
"""


# --- the parametrization ----------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["ntk", "sp"])
def test_scales_are_the_textbook_ones(preset):
    """ntk: N(0, 1) entries times sqrt(var / fan-in); sp: N(0, var / fan-in) entries, no
    multiplier (the simulator and the coordinate check share parametrization.scales)."""
    prog = relu_mlp(preset)
    for n in (16, 300):
        got = scales(prog, n, {"x": 5})
        assert got == simulate._scales(prog, n, {"x": 5})
        for m in prog.matrices:
            fan = 5 if m.fan_in else n
            k = math.sqrt(float(m.var) / fan)
            want = (1.0, k) if preset == "ntk" else (k, 1.0)
            assert (got[m.name].std, got[m.name].mult) == want, m.name
            assert got[m.name].fan_in == fan
        for b in prog.biases:
            k = math.sqrt(float(b.var))
            assert (got[b.name].std, got[b.name].mult) == ((1.0, k) if preset == "ntk" else
                                                         (k, 1.0))


def test_network_matches_the_simulator_and_mup_scales():
    prog = relu_mlp("ntk")
    x = np.random.default_rng(1).standard_normal((3, 5))
    net = cc.AbcNetwork(prog, 32, {"x": 5}, seed=4)
    np.testing.assert_allclose(net(x), simulate.FiniteNetwork(prog, 32, 4)(x), rtol=1e-12)
    mup = relu_mlp("mup")
    sc = scales(mup, 100, {"x": 5})
    # input a=-1/2, b=1/2: multiplier sqrt(n) sqrt(var/d), init n^-1/2; readout a=b=1/2
    assert sc["A0"].mult == pytest.approx(10 * math.sqrt(2 / 5)) and sc["A0"].std == 0.1
    assert sc["A3"].mult == pytest.approx(0.1) and sc["A3"].std == pytest.approx(0.1)
    assert sc["B0"].mult == pytest.approx(10 * math.sqrt(0.05))


# --- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["mup", "sp"])
def test_batch_gradient_matches_finite_differences(preset):
    prog = lower(parse_source(GRAD_SRC.format(preset=preset), "g.tp"))
    net = cc.AbcNetwork(prog, 8, {"x": 3}, seed=2)
    data, y = cc.batch_data(prog, 4, seed=3, dim=3)
    _, grads = net.loss_gradients(data, y)
    rng = np.random.default_rng(0)
    checked = 0
    for name, g in grads.items():
        p = net.param(name)
        assert g.shape == p.shape, name
        for _ in range(3):
            idx = tuple(int(rng.integers(s)) for s in p.shape)
            old = float(p[idx])
            h = 1e-6 * max(1.0, abs(old))
            p[idx] = old + h
            up = net.loss(data, y)
            p[idx] = old - h
            down = net.loss(data, y)
            p[idx] = old
            fd = (up - down) / (2 * h)
            assert g[idx] == pytest.approx(fd, rel=1e-5, abs=1e-8), (name, idx)
            checked += 1
    assert checked == 3 * len(net.scales)


def test_sgd_and_adam_steps_use_the_learning_rate_exponents():
    prog = relu_mlp("mup")
    data, y = cc.batch_data(prog, 4, seed=0, dim=5)
    n = 64
    for opt in ("sgd", "adam"):
        table = abc_table(prog, opt)
        net = cc.AbcNetwork(prog, n, {"x": 5}, seed=1, optimizer=opt, table=table)
        before = {k: v.copy() for k, v in net.params.items()}
        _, grads = net.loss_gradients(data, y)
        net.step(data, y, 0.1)
        for row in table.rows:
            delta = net.param(row.name) - before[row.name]
            eta = 0.1 * n ** -float(row.c)
            g = grads[row.name]
            if opt == "sgd":
                np.testing.assert_allclose(delta, -eta * g, rtol=1e-10, atol=1e-300)
            else:  # first Adam step: -eta sign(g) (up to eps)
                big = np.abs(g) > 1e-3
                np.testing.assert_allclose(delta[big], -eta * np.sign(g[big]), rtol=1e-4)


# --- predictions -------------------------------------------------------------------------------


def test_predictions_for_relu_mlp():
    zero = {"A0": F(0), "A1": F(0), "A2": F(0), "out": F(0)}
    for preset in ("mup", "ntk", "mf"):
        for opt in ("sgd", "adam"):
            prog = relu_mlp(preset)
            t = abc_table(prog, opt)
            assert cc.predicted_exponents(prog, t) == zero
            assert cc.first_step_exponents(prog, t) == zero
    prog = relu_mlp("sp")
    t = abc_table(prog, "sgd")
    # steady state (r_l): input r_1 = 0, hidden r_l = -1; output 1 - (a_R + b_R + r) = 3/2
    assert cc.predicted_exponents(prog, t) == {"A0": 0, "A1": 1, "A2": 1, "out": F(3, 2)}
    # first step: gradients n^-1/2 at init; Delta g = n^1/2 (A1), n^1 (A2), f_1 ~ n^2
    assert cc.first_step_exponents(prog, t) == {"A0": 0, "A1": F(1, 2), "A2": 1, "out": 2}
    assert cc.first_step_exponents(prog, abc_table(prog, "adam")) == {
        "A0": 0, "A1": 1, "A2": 2, "out": 3}


# --- the coordinate check ----------------------------------------------------------------------


def test_mup_is_flat():
    res = cc.coord_check(relu_mlp("mup"), WIDTHS, steps=3, optimizer="sgd", lr=0.1, batch=8,
                         seed=0, seeds=2)
    assert res.judged == 3
    slopes = res.slopes()
    for k in ("A0", "A1", "A2", "out"):
        assert abs(slopes[k]) <= cc.TOLERANCE, (k, slopes)
    assert res.flags() == []
    # at init the muP output vanishes like n^-1/2 (a_R + b_R = 1)
    assert res.slopes(0)["out"] == pytest.approx(-0.5, abs=cc.TOLERANCE)


def test_sp_grows_as_predicted():
    res = cc.coord_check(relu_mlp("sp"), WIDTHS, steps=1, optimizer="sgd", lr=1.0, batch=8,
                         seed=0, seeds=4)
    assert res.judged == 1  # unstable: judged at the first step
    slopes = res.slopes(1)
    want = {"A0": 0.0, "A1": 0.5, "A2": 1.0, "out": 2.0}
    for k, p in want.items():
        assert res.predicted[k] == p
        assert abs(slopes[k] - p) <= cc.TOLERANCE, (k, slopes)
    assert res.flags() == []
    # and clearly not flat: the hidden layers and the output grow
    assert slopes["A2"] > 0.5 and slopes["out"] > 1.5


def test_cli_prints_the_table_and_plots(tmp_path, capsys, monkeypatch):
    src = tmp_path / "mup.tp"
    src.write_text(relu_mlp_source("mup"))
    png = tmp_path / "cc.png"
    argv = ["coordcheck", str(src), "--widths", "64,128,256,512", "--steps", "2",
            "--batch", "4", "--plot", str(png)]
    assert tpc_main(argv) == 0
    out = capsys.readouterr().out
    for word in ("coordinate check", "A0", "A2", "output f", "predicted", "tolerance 0.25",
                 "all layers agree"):
        assert word in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".png"] == ["cc.png"]

    # a disagreeing prediction: exit 1 and the layer is flagged
    monkeypatch.setattr(cc, "predicted_exponents",
                        lambda prog, table: {"A0": F(0), "A1": F(1), "A2": F(0), "out": F(0)})
    assert tpc_main(argv[:-2]) == 1
    out = capsys.readouterr().out
    assert "DISAGREES" in out and "disagree with the abc table: A1" in out


def test_bad_arguments():
    with pytest.raises(cc.TPError):
        cc.coord_check(relu_mlp("mup"), [64], steps=1)
    with pytest.raises(cc.TPError):
        cc.coord_check(relu_mlp("mup"), [64, 128], steps=1, optimizer="rmsprop")
