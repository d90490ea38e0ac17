"""`tpc check`: the convergence report, its exit status and its plot."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import tpcompiler as tp
from tpcompiler import check_cli
from tpcompiler.cli import main

MLP = """network small_mlp
input x
h = dense(x, var=2.0, bias=0.1)
h = dense(erf(h), var=1.5, bias=0.1)
y = readout(relu(h), var=1.0, bias=0.05)
"""

RNN = """network small_rnn
input s[3]
weight U(var=1.0, bias=0.1)
weight W(var=1.5)
h = tanh(dense(s[0], U))
for t in 1..2 { h = tanh(dense(h, W) + dense(s[t], U)) }
y = readout(h, var=1.0)
"""

FAST = ["--widths", "16,64,256,1024", "--samples", "20", "--seeds", "6", "--points", "5",
        "--backend", "numpy", "--quiet"]


@pytest.fixture
def tp_file(tmp_path):
    def write(text, name="net.tp"):
        p = tmp_path / name
        p.write_text(text)
        return str(p)
    return write


def test_check_passes_and_plots(tp_file, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "conv.png"
    rc = main(["check", tp_file(MLP), *FAST, "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "NNGP hidden: ok" in out and "NTK: ok" in out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip()}
    for w in ("16", "64", "256", "1024"):
        assert w in lines
    slopes = lines["slope"][1:]
    assert -1.0 < float(slopes[0]) < -0.25 and -1.0 < float(slopes[1]) < -0.25
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tpc-")]  # no temp left


def test_check_rnn_with_shared_weights_and_data_file(tp_file, tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(4, 3, 2))
    np.save(tmp_path / "x.npy", x)
    rc = main(["check", tp_file(RNN), *FAST, "--data", str(tmp_path / "x.npy")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "x.npy" in out


def test_check_fails_when_the_error_does_not_shrink(tp_file, monkeypatch, capsys):
    """Limit kernels off by a factor 2 make the error plateau at 0.5: slope ~0 > -0.25, exit 1.
    (The slope rule only sees a wrong limit whose error is not buried under the fluctuations of
    the smallest widths: a 20% error is not caught with widths 16..1024.)"""
    real = tp.CompiledNetwork.kernels

    def wrong(self, *a, **kw):
        return {k: 2.0 * v for k, v in real(self, *a, **kw).items()}

    monkeypatch.setattr(tp.CompiledNetwork, "kernels", wrong)
    rc = main(["check", tp_file(MLP), *FAST])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "NNGP hidden: FAIL" in out and "NTK: FAIL" in out


def test_check_without_matplotlib_names_the_install_line(tp_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc = main(["check", tp_file(MLP), *FAST, "--plot", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "pip install" in err and "matplotlib" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args, msg", [
    (["--widths", "64,abc"], "--widths"),
    (["--widths", "0,64"], "positive"),
    (["--samples", "0"], "--samples"),
    (["--plot", "out.jpg"], "PNG"),
])
def test_check_option_errors(tp_file, args, msg, capsys):
    if "--plot" in args:
        pytest.importorskip("matplotlib")
    rc = main(["check", tp_file(MLP), *FAST, *args])
    assert rc == 2
    assert msg in capsys.readouterr().err


def test_check_sp_compares_only_the_nngp(tp_file, capsys):
    rc = main(["check", tp_file("parametrization sp\n" + MLP.split("\n", 1)[1]), *FAST])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "NTK: not compared" in out and "NNGP hidden: ok" in out


def test_check_width_independent_network_is_exact(tp_file, capsys):
    rc = main(["check", tp_file("input x\ny = readout(x, var=2.0, bias=0.1)\n"), *FAST])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "exact at every width" in out


def test_slope_and_verdict_helpers():
    w = [64, 256, 1024]
    assert check_cli.fit_slope(w, [3 / math.sqrt(n) for n in w]) == pytest.approx(-0.5)
    assert check_cli.fit_slope([64], [0.1]) is None
    assert check_cli.verdict([0.2, 0.2, 0.2], 0.0, -0.25)[0] is False
    assert check_cli.verdict([0.4, 0.2, 0.1], -0.5, -0.25)[0] is True
    assert check_cli.verdict([0.0, 0.0], None, -0.25) == (True, "exact at every width")
    assert check_cli.parse_widths("256, 64") == [64, 256]


def test_monte_carlo_floor_formula():
    """E||mean_s f f^T - K||_F^2 = (||K||_F^2 + tr(K)^2)/S for f ~ N(0, K)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    k = a @ a.T
    chol = np.linalg.cholesky(k)
    samples = 50
    errs = []
    for _ in range(400):
        f = rng.normal(size=(samples, 4)) @ chol.T
        errs.append(np.linalg.norm(f.T @ f / samples - k) ** 2)
    got = math.sqrt(np.mean(errs)) / np.linalg.norm(k)
    assert got == pytest.approx(check_cli.mc_floor(k, samples), rel=0.1)
