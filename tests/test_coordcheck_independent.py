"""The coordinate check's predictions (issue 21) against networks written by hand
(tests/independent_nets.py: numpy forward and backward passes, checked by central differences,
no code of tpcompiler's): an RNN with shared weights, a gated product network and a residual
MLP, each also written as a .tp program.

- The change x_1 - x_0 of every layer tells the kernel regime from muP: predicted n^-1/2 under
  NTK and n^0 under muP (coordcheck.predicted_changes), measured on the hand-written networks
  within the check's tolerance 0.25 (its derivation: docs/abc.md, section 9).
- The first-step rules with bounded functions (coordcheck.first_step, growth.py): the SP tanh
  RNN with SGD, whose W pre-activation moves like n^1/2 and output like n^1 (tanh bounds the
  hidden state; the Lipschitz rule predicted 3/2 and 5/2).
- The package's own coordinate check measures the same slopes as the hand-written networks.
"""

from __future__ import annotations

import independent_nets as ind
import numpy as np
import pytest

from tpcompiler import coordcheck as cc
from tpcompiler.lowering import lower
from tpcompiler.parse import parse_source
from tpcompiler.passes.abc import abc_table

SOURCES = {
    "rnn": ("input s[3]\nweight U(var=1.0)\nweight W(var=1.5)\nh = tanh(dense(s[0], U))\n"
            "for t in 1..2 { h = tanh(dense(h, W) + dense(s[t], U)) }\ny = readout(h, var=1.0)\n",
            ("U", "W")),
    "gated": ("input x\nz = dense(x, var=1.0)\n"
              "g = dense(relu(z), var=2.0) * dense(tanh(z), var=1.0)\ny = readout(g, var=1.0)\n",
              ("A", "B", "C")),
    "residual": ("input x\nh = relu(dense(x, var=2.0))\nh = h + relu(dense(h, var=2.0))\n"
                 "h = h + relu(dense(h, var=2.0))\ny = readout(h, var=1.0)\n", ("A", "B", "C")),
}
WIDTHS = (256, 512, 1024, 2048)


def program(arch: str, preset: str):
    src, _ = SOURCES[arch]
    return lower(parse_source(f"parametrization {preset}\n" + src))


def independent_slopes(arch, preset, optimizer="sgd", seeds=2, lr=0.05, what="change"):
    res = ind.measure(arch, preset, optimizer, WIDTHS, steps=1, lr=lr, seeds=seeds)
    _, layers = SOURCES[arch]
    return {name: ind.slopes(res[what][name][1], WIDTHS) for name in (*layers, "out")}


def predicted(arch, preset, optimizer="sgd", first=False):
    prog = program(arch, preset)
    table = abc_table(prog, optimizer)
    names = [L.name for L in cc.layers(prog, table)] + ["out"]
    _, layers = SOURCES[arch]
    pred = cc.first_step(prog, table) if first else (cc.predicted_exponents(prog, table),
                                                       cc.predicted_changes(prog, table))
    return {mine: (pred[0][theirs], pred[1][theirs])
            for mine, theirs in zip((*layers, "out"), names)}


@pytest.mark.parametrize("arch, seeds", [("rnn", 2), ("gated", 2),
                                         pytest.param("residual", 16, marks=pytest.mark.slow)])
def test_change_tells_the_kernel_regime_from_mup(arch, seeds):
    for preset, hidden in (("ntk", -0.5), ("mup", 0.0)):
        got = independent_slopes(arch, preset, seeds=seeds)
        pred = predicted(arch, preset)
        for layer, slope in got.items():
            want = float(pred[layer][1])
            if layer != "out":
                assert want == hidden
            assert abs(slope - want) <= cc.TOLERANCE, (arch, preset, layer, slope, want)


def test_sp_tanh_rnn_first_step():
    got = independent_slopes("rnn", "sp", seeds=2)
    pred = predicted("rnn", "sp", first=True)
    assert pred["W"][1] == 0.5 and pred["out"][1] == 1  # the changes
    for layer in ("W", "out"):
        assert abs(got[layer] - float(pred[layer][1])) <= cc.TOLERANCE, (layer, got)


def test_gated_sp_adam_first_step_adds_exponents_under_the_product():
    """SP + Adam, dense(relu(z)) * dense(tanh(z)): each branch moves like n^1 (the tanh
    branch's input is bounded), their product like n^2, and the readout's own Adam step
    multiplies it by n correlated coordinates: the output moves like n^3 (the Lipschitz rule
    said 2 for everything). At lr 0.1 the updates dominate the init at every width here:
    measured 1.01, 1.00, 3.02."""
    got = independent_slopes("gated", "sp", "adam", lr=0.1)
    pred = predicted("gated", "sp", "adam", first=True)
    assert [pred[k][1] for k in ("B", "C", "out")] == [1, 1, 3]
    for layer in ("A", "B", "C", "out"):
        assert abs(got[layer] - float(pred[layer][1])) <= cc.TOLERANCE, (layer, got)


def test_tanh_rnn_with_a_mup_readout_and_plain_adam_on_w():
    """muP's Adam exponents except c = 0 on W: the W pre-activation is what grows (predicted
    n^1), the output stays flat (predicted n^0: the hidden state is a tanh, |h| <= 1). Measured
    at lr 0.01, widths 512-4096: W 0.71, output 0.06 (at lr 0.001 and widths 256-2048, W 0.96
    with the output still on its way to saturation, 0.86: the asymptote needs lr n >> 1).
    Asserted: the output is within the tolerance of flat, and W grows fastest."""
    from fractions import Fraction as Fr

    half = Fr(1, 2)
    table = {"input": (-half, half, half), "hidden": (0, half, 1), "readout": (half, half, half),
             "W": (0, half, 0)}
    widths = (512, 1024, 2048, 4096)
    res = ind.measure("rnn", table, "adam", widths, steps=1, lr=0.01, seeds=2)
    got = {k: ind.slopes(res["change"][k][1], widths) for k in ("U", "W", "out")}
    src = ("parametrization custom {\n input: a=-1/2, b=1/2, c=1/2\n hidden: a=0, b=1/2, c=1\n"
           " readout: a=1/2, b=1/2, c=1/2\n W: a=0, b=1/2, c=0\n}\n" + SOURCES["rnn"][0])
    prog = lower(parse_source(src))
    _, change = cc.first_step(prog, abc_table(prog, "adam"))
    assert change == {"A0": 0, "A1": 1, "out": 0}
    assert abs(got["out"]) <= cc.TOLERANCE and abs(got["U"]) <= cc.TOLERANCE
    assert got["W"] > 0.5 and got["W"] == max(got.values()), got


def test_the_package_measures_what_the_independent_networks_measure():
    prog = program("rnn", "ntk")
    res = cc.coord_check(prog, WIDTHS, steps=1, lr=0.05, seeds=2)
    mine = res.slopes(1, change=True)
    theirs = independent_slopes("rnn", "ntk")
    for a, b in zip(("A0", "A1", "out"), ("U", "W", "out")):
        assert abs(mine[a] - theirs[b]) <= 0.15, (a, mine, theirs)
    assert res.flags() == []


def test_growth_rules_on_expressions():
    import sympy as sp

    from tpcompiler import growth
    from tpcompiler.functions import Relu, Step

    u, v = sp.symbols("g0 g1", real=True)
    big = {"g0": 1, "g1": 2}
    assert growth.size(u * v, big) == 3  # products add
    assert growth.size(sp.tanh(u) * v, big) == 2  # tanh is bounded
    assert growth.size(Relu(u) + v ** 2, big) == 4
    x0, x1, ch = {"g0": 0, "g1": 0}, {"g0": 1, "g1": 0}, {"g0": 1, "g1": -1}
    assert growth.change(sp.tanh(u), x0, x1, ch) == 0
    assert growth.change(u * v, x0, x1, ch) == 1
    assert growth.change(Step(v), x0, x1, ch) == -1  # a fraction n^-1 of coordinates flips
    assert growth.dsize(sp.tanh(u), u, big) == growth.NONE  # saturated
    assert growth.dsize(sp.tanh(u), u, x0) == 0
    assert np.isclose(float(growth.dsize(u * v, v, big)), 1)


def test_practitioner_table_writes_the_input_constants(capsys):
    from tpcompiler.cli import main

    assert main(["abc", str(cc.__file__).replace("tpcompiler/coordcheck.py",
                                                  "examples/parametrization_mup.tp")]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("A0 ")][-1]  # practitioner
    # the multiplier-free SGD learning rate of muP's input layer is var/d * fan_out, not fan_out
    assert "sqrt(var/d) * sqrt(fan_out)" in row and "var/d * fan_out" in row
