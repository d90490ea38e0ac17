"""`tpc check`: the convergence report, the offset gate, --against, and the plot.

Statistical thresholds in these tests come from docs/testing.md's measurements: with the seeds
and widths used here a right limit shows b / se(b) > 4 with probability ~1e-3 (Student t), and
the wrong kernels below sit 13 or more standard errors above zero (400 replicate runs: the
smallest was 5.1). Every run is seeded, so each test has one fixed outcome."""

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

# one hidden layer: its only width-n matrix is the readout, so widths up to 16384 are cheap and
# resolve small offsets (docs/testing.md, "False alarms and resolution")
ONE = """network one_layer
input x
h = dense(x, var=2.0, bias=0.1)
y = readout(relu(h), var=1.0, bias=0.05)
"""

FAST = ["--widths", "16,64,256,1024", "--samples", "20", "--seeds", "6", "--points", "5",
        "--backend", "numpy", "--quiet"]
WIDE = ["--widths", "256,1024,4096,16384", "--samples", "10", "--seeds", "4", "--backend",
        "numpy", "--quiet"]


@pytest.fixture
def tp_file(tmp_path):
    def write(text, name="net.tp"):
        p = tmp_path / name
        p.write_text(text)
        return str(p)
    return write


@pytest.fixture
def one_layer(tmp_path, tp_file):
    """(program path, data path, its compiled kernels) for ONE on 6 points in d = 3."""
    x = np.random.default_rng(0).normal(size=(6, 3))
    np.save(tmp_path / "x.npy", x)
    net = tp.compile_source(ONE)
    return tp_file(ONE, "one.tp"), str(tmp_path / "x.npy"), net.kernels(x, backend="numpy")


def _rows(out: str) -> dict[str, list[str]]:
    return {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip()}


def _offsets(out: str) -> list[tuple[float, float]]:
    """(b, se) per gated column of the 'offset' row: '0.012 +- 0.05  0.003 +- 0.004'."""
    parts = _rows(out)["offset"][1:]
    return [(float(parts[i]), float(parts[i + 2])) for i in range(0, len(parts), 3)]


def test_check_passes_and_plots(tp_file, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "conv.png"
    rc = main(["check", tp_file(MLP), *FAST, "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "NNGP hidden: ok" in out and "NTK: ok" in out
    rows = _rows(out)
    for w in ("16", "64", "256", "1024"):
        assert w in rows
    slopes = rows["slope"][1:]
    assert -1.0 < float(slopes[0]) < -0.25 and -1.0 < float(slopes[1]) < -0.25
    for b, se in _offsets(out):
        assert abs(b) < 4 * se  # a right limit: no significant offset either way
    assert "false alarm" in out and "20 degrees of freedom" in out  # 4 widths x (6 - 1)
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


def test_check_fails_when_the_limit_is_off_by_a_factor_2(tp_file, monkeypatch, capsys):
    """Limit kernels doubled: the error levels off at 0.5, an offset of many standard errors."""
    real = tp.CompiledNetwork.kernels

    def wrong(self, *a, **kw):
        return {k: 2.0 * v for k, v in real(self, *a, **kw).items()}

    monkeypatch.setattr(tp.CompiledNetwork, "kernels", wrong)
    rc = main(["check", tp_file(MLP), *FAST])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "NNGP hidden: FAIL" in out and "NTK: FAIL" in out
    assert "converge to another limit" in out
    for b, _ in _offsets(out):
        assert b == pytest.approx(0.5, abs=0.1)


def test_against_the_compiled_kernels_written_by_tpc_kernel_passes(one_layer, tmp_path, capsys):
    prog, data, _ = one_layer
    k = tmp_path / "K.npz"
    assert main(["kernel", prog, "--data", data, "--kind", "both", "--out", str(k),
                 "--quiet"]) == 0
    rc = main(["check", prog, "--data", data, "--against", str(k), *WIDE])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"against the kernels of {k}" in out
    assert "NNGP hidden: ok" in out and "NTK: ok" in out


@pytest.mark.parametrize("how", ["scaled by 1.1", "bias variance 0.3 instead of 0.1"])
def test_against_a_wrong_kernel_fails(one_layer, tmp_path, capsys, how):
    """The offsets are 0.09 (scaled) and 0.12-0.13 (bias): measured 5-75 se over 400 runs."""
    prog, data, right = one_layer
    if how.startswith("scaled"):
        wrong = {k: 1.1 * v for k, v in right.items()}
    else:
        other = tp.compile_source(ONE.replace("bias=0.1", "bias=0.3"))
        wrong = other.kernels(np.load(data), backend="numpy")
    np.savez(tmp_path / "wrong.npz", **wrong)
    rc = main(["check", prog, "--data", data, "--against", str(tmp_path / "wrong.npz"), *WIDE])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "NNGP hidden: FAIL" in out and "NTK: FAIL" in out
    want = {k: np.linalg.norm(wrong[k] - right[k]) / np.linalg.norm(wrong[k]) for k in right}
    for (b, se), kind in zip(_offsets(out), ("nngp", "ntk")):
        # b estimates the level of the plateau from below (docs/testing.md)
        assert 4 * se < b <= want[kind] * 1.1, (b, se, want[kind])


def test_offset_gate_catches_what_the_slope_rule_passed(one_layer, tmp_path, capsys):
    """The reason for the gate: kernels 5 % too large, widths from 16. The error of width 16 is
    ~0.4, so the fitted slope is steep (the old rule, slope <= -0.25, passed), but the error
    levels off at ~0.05 and the offset is >10 se (measured over 300 runs: NNGP failed in 99.7 %,
    NTK in all; NNGP slope median -0.33)."""
    prog, data, right = one_layer
    np.savez(tmp_path / "k105.npz", **{k: 1.05 * v for k, v in right.items()})
    rc = main(["check", prog, "--data", data, "--against", str(tmp_path / "k105.npz"),
               "--widths", "16,64,256,1024,4096,16384", "--seeds", "8", "--samples", "10",
               "--backend", "numpy", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "NNGP hidden: FAIL" in out and "NTK: FAIL" in out
    assert float(_rows(out)["slope"][1]) < -0.25  # what the old gate looked at
    rc = main(["check", prog, "--data", data, "--against", str(tmp_path / "k105.npz"),
               "--widths", "16,64,256,1024,4096,16384", "--seeds", "8", "--samples", "10",
               "--backend", "numpy", "--quiet", "--min-offset", "0.5"])
    assert rc == 0  # the floor is part of the rule
    capsys.readouterr()


def test_against_with_only_an_ntk_compares_only_the_ntk(one_layer, tmp_path, capsys):
    prog, data, right = one_layer
    np.savez(tmp_path / "t.npz", ntk=right["ntk"], labels=np.arange(6))
    rc = main(["check", prog, "--data", data, "--against", str(tmp_path / "t.npz"), *WIDE])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "NNGP: not compared: not in the kernel file" in out
    assert "NTK: ok" in out and "NNGP hidden:" not in out and "NNGP MC" not in out


def _against_error(tmp_path, prog, data, capsys, arrays=None, raw=None, extra=()):
    path = tmp_path / "bad.npz"
    if arrays is not None:
        np.savez(path, **arrays)
    elif raw is not None:
        path = tmp_path / raw[0]
        raw[1](path)
    args = ["check", prog, *FAST, "--against", str(path)]
    if data is not None:
        args += ["--data", data]
    rc = main([*args, *extra])
    return rc, capsys.readouterr().err


def test_against_errors(one_layer, tmp_path, capsys):
    prog, data, right = one_layer
    cases = [
        (dict(data=None, arrays=right), "--against needs --data"),
        (dict(data=data, raw=("missing.npz", lambda p: None)), "no such file"),
        (dict(data=data, arrays={"nngp": right["nngp"][:5, :5]}), "must be (6, 6)"),
        (dict(data=data, arrays={"nngp": right["nngp"][0]}), "has shape (6,)"),
        (dict(data=data, arrays={"kernel": right["nngp"]}), "no array named 'nngp' or 'ntk'"),
        (dict(data=data, arrays={"ntk": np.where(np.eye(6) > 0, np.nan, right["ntk"])}),
         "NaN"),
        (dict(data=data, arrays={"nngp": right["nngp"] + 0j}), "a kernel is real"),
        (dict(data=data, raw=("k.npy", lambda p: np.save(p, right["nngp"]))), "single array"),
        (dict(data=data, raw=("junk.npz", lambda p: p.write_bytes(b"not a zip"))),
         "cannot read"),
    ]
    for kw, msg in cases:
        rc, err = _against_error(tmp_path, prog, kw.pop("data"), capsys, **kw)
        assert rc == 2 and msg in err, (msg, err)


def test_against_an_ntk_under_sp_is_an_error(tp_file, one_layer, tmp_path, capsys):
    _, data, right = one_layer
    prog = tp_file("parametrization sp\n" + ONE.split("\n", 1)[1], "sp.tp")
    np.savez(tmp_path / "k.npz", **right)
    rc = main(["check", prog, "--data", data, "--against", str(tmp_path / "k.npz"), *WIDE])
    assert rc == 2 and "parametrization sp" in capsys.readouterr().err


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
    (["--widths", "64"], "at least two widths"),
    (["--samples", "0"], "--samples"),
    (["--seeds", "1"], "--seeds must be at least 2"),
    (["--z", "0"], "--z"),
    (["--min-offset", "-1"], "--min-offset"),
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


def test_max_slope_is_an_optional_extra_gate(tp_file, capsys):
    rc = main(["check", tp_file(MLP), *FAST, "--max-slope", "-0.9"])
    out = capsys.readouterr().out
    assert rc == 1 and "slope" in out and "> -0.9" in out


def test_normalized_metric_sees_every_row(one_layer, tmp_path, capsys):
    """A limit wrong only on an ordinary row, next to a row of size 1e4: invisible to the
    Frobenius error (the ordinary rows weigh ~1e-8 of the large one), a plain offset of the
    normalized one."""
    prog, data, _ = one_layer
    x = np.load(data)
    x[0] *= 1e4
    np.save(tmp_path / "xl.npy", x)
    right = tp.compile_source(ONE).kernels(x, backend="numpy")
    wrong = {k: v.copy() for k, v in right.items()}
    for v in wrong.values():
        v[1, :] *= 1.5
        v[:, 1] *= 1.5
    np.savez(tmp_path / "w.npz", **wrong)
    common = ["check", prog, "--data", str(tmp_path / "xl.npy"), "--against",
              str(tmp_path / "w.npz"), *WIDE]
    assert main(common) == 0, capsys.readouterr().out
    assert main([*common, "--metric", "normalized"]) == 1
    out = capsys.readouterr().out
    assert "NNGP hidden: FAIL" in out and "NTK: FAIL" in out


# --- the pieces ----------------------------------------------------------------------------------


def test_slope_and_widths_helpers():
    w = [64, 256, 1024]
    assert check_cli.fit_slope(w, [3 / math.sqrt(n) for n in w]) == pytest.approx(-0.5)
    assert check_cli.fit_slope([64], [0.1]) is None
    assert check_cli.parse_widths("256, 64") == [64, 256]


def test_fit_offset_recovers_a_and_b_and_its_standard_error_is_calibrated():
    """Synthetic errors a n^-1/2 + b + sigma n^-1/2 eps, eps ~ N(0, 1): the fit is unbiased and
    the spread of b over 4000 replicates matches the reported se(b). Tolerances: 4000 replicates
    give the mean of b to ~se/63 and the standard deviation of b to ~1.1 % (one sigma); the
    median of the reported se (an estimate with 9 degrees of freedom) sits ~3 % below the true
    one (the median of chi_9 / 3), so 8 % covers both."""
    rng = np.random.default_rng(1)
    widths = np.array([64, 256, 1024])
    a, b, sigma, seeds = 3.0, 0.02, 1.5, 4
    bs, ses = [], []
    for _ in range(4000):
        eps = rng.standard_normal((3, seeds))
        errs = (a + sigma * eps) / np.sqrt(widths)[:, None] + b
        f = check_cli.fit_offset(widths, errs)
        bs.append(f.b)
        ses.append(f.se_b)
    se_true = np.std(bs)
    assert np.mean(bs) == pytest.approx(b, abs=4 * se_true / math.sqrt(4000))
    assert np.median(ses) == pytest.approx(se_true, rel=0.08)
    # the closed form: se(b) = sigma / sqrt(S) * sqrt([(X^T diag(n) X)^-1]_bb) = 1.85 sigma /
    # sqrt(S n_max) for these widths
    assert se_true == pytest.approx(1.85 * sigma / math.sqrt(seeds * 1024), rel=0.05)


def test_fit_offset_exact_data():
    widths = [64, 256, 1024, 4096]
    errs = np.array([[2 / math.sqrt(n) + 0.1] * 3 for n in widths])
    f = check_cli.fit_offset(widths, errs)
    assert f.a == pytest.approx(2, rel=1e-12) and f.b == pytest.approx(0.1, rel=1e-12)
    assert f.se_b < 1e-15 and f.t > 1e12 and f.dof == 8  # no spread: only rounding
    with pytest.raises(tp.TPError, match="two widths and two seeds"):
        check_cli.fit_offset([64], [[0.1, 0.2]])


def _fit(b, se, means=(0.3, 0.2, 0.1), slope=-0.5):
    return check_cli.OffsetFit(widths=(64, 256, 1024), means=means, sems=(0.01,) * 3, a=1.0,
                               b=b, se_b=se, sigma=1.0, dof=9, slope=slope, worst=max(means))


def test_judge():
    assert check_cli.judge(_fit(0.05, 0.01))[0] is False  # 5 se, above the floor
    assert check_cli.judge(_fit(0.03, 0.01))[0] is True  # 3 se
    ok, why = check_cli.judge(_fit(0.005, 0.0001))  # 50 se but below 0.01
    assert ok and "below 0.01" in why
    assert check_cli.judge(_fit(0.005, 0.0001), min_offset=0.001)[0] is False
    assert check_cli.judge(_fit(0.05, 0.01), z=6)[0] is True
    assert check_cli.judge(_fit(-0.5, 0.01))[0] is True  # below zero is not a plateau
    assert check_cli.judge(_fit(0.0, 0.0, means=(0.0, 0.0, 0.0))) == (True, "exact at every width")
    assert check_cli.judge(_fit(0.0, 0.01, means=(0.3, math.nan, 0.1)))[0] is False
    assert check_cli.judge(_fit(0.0, 0.01, slope=-0.1), max_slope=-0.25)[0] is False


def test_t_tail_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for nu in (1, 2, 3, 9, 12, 15, 42):
        for t in (-1.0, 0.0, 0.7, 2.0, 4.0, 8.0):
            assert check_cli.t_tail(t, nu) == pytest.approx(stats.t.sf(t, nu), rel=1e-9,
                                                            abs=1e-15)


def test_normalized_error_ignores_row_scales():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    k = a @ a.T
    d = np.diag([1e-8, 1.0, 1e8, 3.0])
    noisy = k + 0.01 * np.eye(4)
    assert check_cli.rel_error(d @ noisy @ d, d @ k @ d, "normalized") == pytest.approx(
        check_cli.rel_error(noisy, k, "normalized"), rel=1e-9)
    # a zero row of the limit is scaled like a typical row, so a finite value there shows
    z = k.copy()
    z[0, :] = z[:, 0] = 0
    bumped = z.copy()
    bumped[0, 0] = 0.1 * np.mean(np.diag(z)[1:])
    assert check_cli.rel_error(bumped, z, "normalized") > 0.01


def test_monte_carlo_noise_level_formula():
    """E||mean_s f f^T - K||_F^2 = (||K||_F^2 + tr(K)^2)/S for f ~ N(0, K); single estimates
    fall on both sides of its square root (it is not a floor). 400 replicates estimate a mean
    square to ~7 % (its relative spread is ~1.4/sqrt(400)): rel=0.2 on the root is ~6 sigma."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    k = a @ a.T
    chol = np.linalg.cholesky(k)
    samples = 50
    errs = []
    for _ in range(400):
        f = rng.normal(size=(samples, 4)) @ chol.T
        errs.append(np.linalg.norm(f.T @ f / samples - k) / np.linalg.norm(k))
    level = check_cli.mc_noise_level(k, samples)
    assert math.sqrt(np.mean(np.square(errs))) == pytest.approx(level, rel=0.2)
    below = np.mean(np.array(errs) < level)
    assert 0.3 < below < 0.9


def test_run_check_from_python_and_the_figure(tmp_path):
    """The Python entry point returns the fits the gate uses; the figure draws, per gated
    kernel, the fitted curve a n^-1/2 + b and the level b, and labels the MC line as noise."""
    pytest.importorskip("matplotlib")
    net = tp.compile_source(ONE)
    x = np.random.default_rng(0).normal(size=(5, 3))
    right = net.kernels(x, backend="numpy")
    res = check_cli.run_check(net, x, [256, 1024, 4096], samples=5, seeds=3, backend="numpy",
                              against={k: 1.2 * v for k, v in right.items()})
    fits = res["fits"]
    assert set(fits) == {"hidden", "ntk"} and res["errors"]["hidden"].shape == (3, 3)
    assert all(check_cli.judge(f)[0] is False for f in fits.values())
    curves = {"NTK (slope -0.1)": (fits["ntk"].means, fits["ntk"].sems, {"marker": "s"},
                                   fits["ntk"])}
    fig = check_cli.convergence_figure("t", [256, 1024, 4096], curves, res["noise"], 5)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    fit_line = next(ln for lab, ln in lines.items() if lab.startswith("NTK: fit"))
    xs, ys = fit_line.get_data()
    assert np.allclose(ys, fits["ntk"].a / np.sqrt(xs) + fits["ntk"].b)
    level = next(ln for lab, ln in lines.items() if lab.startswith("NTK: offset b"))
    assert np.allclose(level.get_ydata(), fits["ntk"].b)
    noise = next(lab for lab in lines if lab.startswith("Monte Carlo noise level"))
    assert "floor" not in noise
    check_cli.save_plot(tmp_path / "f.png", fig)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
