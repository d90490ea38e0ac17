"""Learning-rate transfer (issue 21, tpcompiler/transfer.py): the optimum's refinement on
synthetic parabolas (exact: a parabola through three points of a parabola is itself), divergent
runs reported, and the theory's directions on a tiny configuration: under muP the optimal
learning rate of SGD does not move with the width (TP V), under SP it shrinks (the hidden and
readout updates grow like eta n: slope near -1). The tolerance of the muP slope is the
verdict's (0.2 plus 2 standard errors of the seeds' spread); SP's must be below -0.2 by more
than 2 standard errors (measured here: muP -0.12 +- 0.06, SP -0.57 +- 0.06 over widths 32 to
256; -0.76 +- 0.13 to 512)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tpcompiler import transfer as T
from tpcompiler.cli import main as tpc_main
from tpcompiler.lowering import lower
from tpcompiler.parse import parse_file, parse_source

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MLP = "input x\nh = dense(x, var=2.0)\nh = dense(relu(h), var=2.0)\ny = readout(relu(h))\n"


@pytest.mark.parametrize("center", [-3.3, -1.0, 0.49, 2.2])
def test_optimum_of_a_parabola_is_its_vertex(center):
    lrs = np.linspace(-6, 4, 11)
    losses = 0.7 * (lrs - center) ** 2 + 0.1
    best, edge = T.optimum(lrs, losses)
    assert best == pytest.approx(center, abs=1e-12) and not edge


def test_optimum_at_the_edge_and_next_to_divergence():
    lrs = np.linspace(-6, 4, 11)
    best, edge = T.optimum(lrs, (lrs + 9.0) ** 2)
    assert best == -6 and edge
    losses = (lrs - 1.2) ** 2
    losses[lrs > 1.5] = np.inf  # diverged right of the best grid point
    best, edge = T.optimum(lrs, losses)
    assert best == 1.0 and not edge
    assert math.isnan(T.optimum(lrs, np.full(11, np.inf))[0])


def test_lr_grid():
    assert T.lr_grid("2^-12..2^2", 15).tolist() == list(np.linspace(-12, 2, 15))
    assert T.lr_grid("0.25..4", 3).tolist() == [-2.0, 0.0, 2.0]
    with pytest.raises(T.TPError):
        T.lr_grid("1..0.5", 5)


@pytest.fixture(scope="module")
def tiny():
    prog = lower(parse_source(MLP))
    task = T.digits_task(prog)
    lrs = np.linspace(-9, 3, 13)
    return {p: T.transfer(prog, task, (32, 64, 128, 256), lrs, steps=30, batch=32, seeds=3,
                          preset=p) for p in ("mup", "sp")}


def test_mup_transfers_and_sp_shifts(tiny):
    slope, se = tiny["mup"].slope()
    assert abs(slope) <= T.SLOPE_TOL + 2 * se and tiny["mup"].verdict() == "transfers"
    slope, se = tiny["sp"].slope()
    assert slope + 2 * se < -T.SLOPE_TOL and tiny["sp"].verdict() == "shifts"


def test_divergent_runs_are_reported(tiny):
    res = tiny["sp"]
    div = [r for r in res.runs if r.diverged]
    assert div and all(math.isinf(r.train_loss) for r in div)
    d = res.to_dict()
    assert d["diverged_runs"] == len(div)
    assert any(r["diverged"] and r["train_loss"] is None for r in d["runs"])
    text = res.text()
    assert "diverged" in text and f"/{13 * 3}" in text


def test_cli_compare_on_the_rnn(tmp_path, capsys):
    plot = tmp_path / "t.png"
    assert tpc_main(["transfer", str(EXAMPLES / "rnn.tp"), "--widths", "16,32", "--lr",
                     "2^-4..2^0", "--points", "3", "--steps", "5", "--seeds", "2",
                     "--compare", "sp,mup", "--format", "json", "--quiet",
                     "--plot", str(plot)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["parametrization"] for r in out["results"]] == ["sp", "mup"]
    assert len(out["results"][0]["runs"]) == 2 * 3 * 2 and plot.stat().st_size > 10_000


def test_cli_errors(tmp_path, capsys):
    path = str(EXAMPLES / "relu_mlp.tp")
    assert tpc_main(["transfer", path, "--lr", "1..2..3"]) == 2
    assert tpc_main(["transfer", path, "--compare", "sp"]) == 2
    assert tpc_main(["transfer", path, "--data", "x.npy"]) == 2
    assert "error" in capsys.readouterr().err
    prog = lower(parse_file(EXAMPLES / "relu_mlp.tp"))
    with pytest.raises(T.TPError, match="agree"):
        T.split_task("x", prog, np.zeros((10, 3)), np.zeros(9), 0)
