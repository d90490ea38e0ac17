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
