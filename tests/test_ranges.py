"""Values out of float64's range, and exp's NTK.

- Data too large for the kernel program (data.py's bound), non-finite data, integer data,
  unreadable --data files: a TPError before any work; the CLI exits 2 and writes nothing.
- Constants whose products overflow the kernel program (api._check_constants).
- exp's NTK is computed, checked against an independent reference (scipy's dblquad over the
  2-D Gaussian, and neural-tangents when installed), with a TPWarning exactly when exp's
  argument is not bounded above (ranges.ntk_caveats).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from scipy import integrate

import tpcompiler as tp
from tpcompiler import functions as F
from tpcompiler.cli import main
from tpcompiler.data import MAX_INPUT_COVARIANCE
from tpcompiler.passes.abc import kernel_refusals
from tpcompiler.ranges import bounded_above

ROOT = Path(__file__).resolve().parents[1]
RELU = ROOT / "examples" / "relu_mlp.tp"


def _nothing_built(net) -> bool:
    return "rolled_program" not in net.__dict__ and "_module" not in net.__dict__


# --- data -----------------------------------------------------------------------------------


def _at_size(x: np.ndarray, q: float) -> np.ndarray:
    """x rescaled so that its largest <x, x>/d is q."""
    return x * math.sqrt(q / (np.sum(x * x, axis=-1) / x.shape[-1]).max())


def test_the_data_bound_is_var_times_gram_at_most_1e150():
    """<x, x>/d may reach 1e150 / var (var the largest variance of a matrix reading the
    input, at least 1): the kernels are then finite; just above, a TPError names the row."""
    net = tp.compile_source("input x\nh = dense(x, var=2.0)\ny = readout(relu(h))\n")
    x = np.random.default_rng(0).normal(size=(5, 3))
    ok = _at_size(x, 0.99 * MAX_INPUT_COVARIANCE / 2)
    for kind, k in net.kernels(ok).items():
        assert np.all(np.isfinite(k)), kind
    bad = ok.copy()
    bad[3] = ok[np.argmax(np.sum(ok * ok, axis=1))] * 1.02  # the largest row, 4 % larger
    with pytest.raises(tp.TPError, match=r"X is too large for float64 kernels: row 3 .* "
                       r"needs <x, x>/d <= 5e\+149 \(var=2 of a matrix that reads 'x'") as err:
        net.nngp(bad)
    assert "standardise the data" in err.value.hint


def test_huge_data_fails_before_any_work():
    """The issue's reproducer: entries of size 1e160 overflowed with only NumPy's warning and
    a -0.0 diagonal. Now a TPError with a hint, and nothing compiled."""
    net = tp.compile(RELU)
    x = np.random.default_rng(1).normal(size=(4, 3)) * 1e160
    with pytest.raises(tp.TPError, match="beyond float64") as err:
        net.kernels(x)
    assert "standardise" in err.value.hint
    assert _nothing_built(net)


def test_data_bound_per_input_and_sequence_steps():
    src = ("input x\ninput s[2]\nh = dense(x, var=1e40) + dense(s[0]) + dense(s[1])\n"
           "y = readout(relu(h))\n")
    net = tp.compile_source(src)
    rng = np.random.default_rng(2)
    x, s = rng.normal(size=(3, 4)), rng.normal(size=(3, 2, 4))
    # x is read with var=1e40: its bound is 1e110; s keeps 1e150 (var 1)
    with pytest.raises(tp.TPError, match=r"X\['x'\] is too large.* <= 1e\+110"):
        net.nngp({"x": _at_size(x, 1e111), "s": s})
    s_big = s.copy()
    s_big[1, 1] = _at_size(s[1, 1], 1e151)
    with pytest.raises(tp.TPError, match=r"X\['s'\] is too large.*row 1.* <= 1e\+150"):
        net.nngp({"x": x, "s": s_big})
    k = net.nngp({"x": _at_size(x, 1e109), "s": _at_size(s, 1e149)})
    assert np.all(np.isfinite(k))


def test_readout_of_an_input_counts_its_variance():
    net = tp.compile_source("input x\ny = readout(x, var=1e50)\n")
    x = np.random.default_rng(3).normal(size=(2, 3))
    with pytest.raises(tp.TPError, match=r"<= 1e\+100"):
        net.nngp(_at_size(x, 2e100))
    assert np.all(np.isfinite(net.nngp(_at_size(x, 0.5e100))))


@pytest.mark.skipif(np.finfo(np.longdouble).max <= np.finfo(np.float64).max,
                    reason="longdouble is float64 here")
def test_longdouble_beyond_float64():
    x = np.ones((2, 3), dtype=np.longdouble)
    x[1, 2] = np.longdouble("1e400")
    with pytest.raises(tp.TPError, match="values beyond float64's range.*row 1"):
        tp.compile(RELU).nngp(x)


# --- the CLI --------------------------------------------------------------------------------


def _tpc(capsys, *args) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def test_cli_huge_data_exits_2_and_writes_nothing(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(4).normal(size=(4, 5)) * 1e160)
    out = tmp_path / "K.npy"
    rc, err = _tpc(capsys, "kernel", RELU, "--data", tmp_path / "x.npy", "--out", out,
                   "--quiet")
    assert rc == 2 and "too large for float64 kernels" in err and "standardise" in err
    assert "Traceback" not in err and "RuntimeWarning" not in err
    assert not out.exists() and not list(tmp_path.glob(".tpc-*"))


def test_cli_names_the_accepted_formats(tmp_path, capsys):
    (tmp_path / "X.csv").write_text("1,2,3,4,5\n6,7,8,9,10\n")
    (tmp_path / "text.npy").write_text("not numpy\n")
    for name in ("X.csv", "text.npy"):
        rc, err = _tpc(capsys, "kernel", RELU, "--data", tmp_path / name, "--out",
                       tmp_path / "K.npy")
        assert rc == 2, err
        assert f"cannot read {tmp_path / name}: it is not a NumPy .npy or .npz file" in err
        assert "pickle" not in err
        assert "np.save('X.npy', np.loadtxt('X.csv', delimiter=','))" in err
    assert not (tmp_path / "K.npy").exists()


def test_cli_integer_data(tmp_path, capsys):
    x = np.arange(20).reshape(4, 5) % 7 - 3
    np.save(tmp_path / "x.npy", x)
    rc, err = _tpc(capsys, "kernel", RELU, "--data", tmp_path / "x.npy", "--out",
                   tmp_path / "K.npy", "--quiet")
    assert rc == 0, err
    want = tp.compile(RELU).nngp(x.astype(np.float64))
    assert np.array_equal(np.load(tmp_path / "K.npy"), want)


# --- constants ------------------------------------------------------------------------------


def test_slope_1e200_is_a_tperror_before_any_work():
    """The issue's reproducer failed inside Numba: name 'inf' is not defined."""
    with pytest.raises(tp.TPError, match=r"t.tp:3:33: error: slope= is 1e\+200") as err:
        tp.compile_source("input x\ng = dense(x)\ny = readout(leaky_relu(g, slope=1e200))\n",
                          "t.tp")
    assert "^^^^^" in str(err.value)


def test_constants_multiplying_beyond_float64_fail_before_code_generation():
    """Each constant is within 1e100, but the NNGP needs var * c^2 * E[u^10]^3 ~ 8e308."""
    net = tp.compile_source("input x\nu = dense(x)\nv = dense(x)\nw = dense(x)\n"
                            "y = readout(1e100 * u ** 5 * v ** 5 * w ** 5, var=1e100)\n", "t.tp")
    with pytest.raises(tp.TPError, match=r"t.tp:5:5: error: the kernel program needs a "
                       r"constant of about 1e309 in NNGP, beyond float64") as err:
        net.nngp(np.ones((2, 3)))
    assert "make the variances and coefficients smaller" in err.value.hint
    assert "_module" not in net.__dict__


# --- exp: bounded above or not --------------------------------------------------------------

G0, G1, G2 = sp.symbols("g0 g1 g2", real=True)


@pytest.mark.parametrize("expr,bounded", [
    (-G0 ** 2, True),
    (-(3 * G0 + 1) ** 2, True),
    (-G0 ** 2 + G0, True),  # a quadratic form whose linear part lies in its range
    (-G0 ** 2 - 2 * G0 * G1 - G1 ** 2 + 3, True),
    (-(G0 - G1) ** 2 + sp.tanh(G2), True),
    (-G0 ** 2 + G0 + sp.tanh(G1), True),
    (sp.tanh(G0), True),
    (-F.Relu(G0), True),
    (-F.AbsF(G0), True),
    (-sp.exp(G0), True),
    (-G0 ** 4, True),
    (F.ABRelu(G0, 1, -1), True),  # min(z, 0) - max(z, 0) = -|z|
    (G0, False),
    (G0 / 2 + 1, False),
    (-G0 ** 2 + G1, False),
    (-G0 ** 2 + G0 * G1, False),  # indefinite
    (G0 ** 2, False),
    (F.Relu(G0), False),
    (F.Gelu(G0), False),
    (F.ABRelu(G0, -1, 1), False),
])
def test_bounded_above(expr, bounded):
    assert bounded_above(expr) is bounded


def _gauss2(f, q1: float, q2: float, c: float) -> float:
    """E f(u, v) for (u, v) ~ N(0, [[q1, c], [c, q2]]) by scipy's dblquad over standard normals
    (independent of the package's rules)."""
    l11 = math.sqrt(q1)
    l21 = c / l11
    l22 = math.sqrt(max(q2 - l21 * l21, 0.0))
    phi = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    val, err = integrate.dblquad(lambda s, t: f(l11 * t, l21 * t + l22 * s) * phi(t) * phi(s),
                                 -12, 12, -12, 12, epsabs=1e-13, epsrel=1e-12)
    return val


EXP_CASES = {
    # source, var of dense(x), phi, phi'
    "exp": ("input x\ny = readout(exp(dense(x, var=0.5)))\n", 0.5, math.exp, math.exp),
    # a variance where a quadrature rule of exp(u) exp(v) is far from 1e-10 (closed form now:
    # E[exp(u + v)] = exp(Var(u + v) / 2))
    "exp, var 3": ("input x\ny = readout(exp(dense(x, var=3.0)))\n", 3.0, math.exp, math.exp),
    "exp(-g^2)": ("input x\ny = readout(exp(-dense(x) ** 2))\n", 1.0,
                  lambda u: math.exp(-u * u), lambda u: -2 * u * math.exp(-u * u)),
    "exp(-(ag+b)^2)": ("input x\ny = readout(exp(-(0.8 * dense(x, var=1.5) + 0.3) ** 2), "
                       "var=1.2)\n", 1.5, lambda u: math.exp(-(0.8 * u + 0.3) ** 2),
                       lambda u: -1.6 * (0.8 * u + 0.3) * math.exp(-(0.8 * u + 0.3) ** 2)),
}


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("case", list(EXP_CASES))
def test_exp_ntk_against_dblquad(case, backend):
    """One hidden layer, neural-tangents' NTK parametrization (docs/theory.md):
    NNGP = v_r E[phi(u) phi(v)],  NTK = NNGP + v_r E[phi'(u) phi'(v)] v <x, x'>/d,
    (u, v) ~ N(0, v G), G the Gram matrix <x, x'>/d."""
    src, var, phi, dphi = EXP_CASES[case]
    v_r = 1.2 if "var=1.2" in src else 1.0
    net = tp.compile_source(src)
    x = np.random.default_rng(3).normal(size=(3, 4)) * 0.8
    gram = x @ x.T / x.shape[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        k = net.kernels(x, backend=backend)
    told = [w for w in caught if issubclass(w.category, tp.TPWarning)]
    unbounded = case.startswith("exp") and "-" not in case
    assert len(told) == (1 if unbounded else 0), [str(w.message) for w in caught]
    if unbounded:  # exp of a linear form: closed forms, no integral
        assert not net.kernel_program.integrands
    for i, j in [(0, 0), (0, 1), (1, 2), (2, 2)]:
        q1, q2, c = var * gram[i, i], var * gram[j, j], var * gram[i, j]
        nngp = v_r * _gauss2(lambda a, b: phi(a) * phi(b), q1, q2, c)
        ntk = nngp + v_r * _gauss2(lambda a, b: dphi(a) * dphi(b), q1, q2, c) * c
        assert k["nngp"][i, j] == pytest.approx(nngp, rel=1e-10), (i, j)
        assert k["ntk"][i, j] == pytest.approx(ntk, rel=1e-10), (i, j)


def test_exp_ntk_warns_once_per_network_and_only_for_the_ntk():
    net = tp.compile_source("input x\nh = dense(x)\ny = readout(exp(0.5 * h))\n", "t.tp")
    x = np.random.default_rng(5).normal(size=(3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.nngp(x)  # the NNGP is covered (NETSOR allows exp of a Gaussian): no warning
    with pytest.warns(tp.TPWarning) as caught:
        net.ntk(x)
    (w,) = caught
    text = str(w.message)
    assert text.startswith("t.tp:3:5: the NTK goes through exp(g0/2) (g0 is dense() at line 2)")
    assert "not polynomially bounded" in text and "TP II, Cor. 7.3" in text
    assert "y = readout(exp(0.5 * h))" in text and "exp(-h ** 2)" in text
    assert w.filename == __file__  # points at the caller, not into the package
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.ntk(x)
        net.kernels(x, backend="numpy")


def test_exp_inside_a_deeper_network_names_each_unbounded_exp():
    src = ("input x\nh = dense(x)\nact bump(z) = exp(-z ** 2 + z)\n"
           "h = exp(dense(tanh(h))) + bump(h) + exp(tanh(h))\ny = readout(exp(0.5 * dense(h)))\n")
    net = tp.compile_source(src, "t.tp")
    with pytest.warns(tp.TPWarning) as caught:
        k = net.ntk(np.random.default_rng(6).normal(size=(3, 2)) * 0.3, backend="numpy")
    assert np.all(np.isfinite(k))
    # the exp caveats (the accuracy probe may add its own warning about this program's 3-D
    # integrals: not what is tested here)
    texts = sorted(str(w.message).split(" here,")[0] for w in caught
                   if "polynomially bounded" in str(w.message))
    assert texts == ["t.tp:5:23: the NTK goes through exp(g1) (g1 is dense() at line 4)",
                     "t.tp:5:5: the NTK goes through exp(g2/2) (g2 is dense() at line 5)"]


def test_exp_ntk_agrees_with_neural_tangents():
    ntr = pytest.importorskip("nt_reference")
    if not ntr.available():
        pytest.skip("neural-tangents not installed")
    rng = np.random.default_rng(2024)
    x1, x2 = rng.normal(size=(5, 6)), rng.normal(size=(4, 6))
    for depth in (1, 2):
        src = ("input x\nh = dense(x, var=1.0, bias=0.1)\n"
               f"repeat {depth - 1} {{ h = dense(exp(0.5 * h), var=1.0, bias=0.1) }}\n"
               "y = readout(exp(0.5 * h))\n")
        with pytest.warns(tp.TPWarning, match="polynomially bounded"):
            got = tp.compile_source(src).kernels(x1, x2, backend="numpy")
        want = ntr.mlp_kernels(x1, x2, depth=depth, act="exp", w_var=1.0, b_var=0.1,
                               act_params={"b": 0.5})
        for kind in ("nngp", "ntk"):
            np.testing.assert_allclose(got[kind], want[kind], rtol=1e-10, err_msg=kind)


def test_abc_tables_do_not_refuse_exp():
    """kernel_refusals judges the parametrization only: exp changes nothing there, and a
    parametrization that refuses the NTK still does (before any exp warning)."""
    src = "input x\ny = readout(exp(dense(x)))\n"
    assert kernel_refusals(tp.compile_source(src).ir) == {"nngp": None, "ntk": None}
    net = tp.compile_source("parametrization sp\n" + src)
    assert kernel_refusals(net.ir)["ntk"] is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(tp.TPError, match="NTK of this network is not available"):
            net.ntk(np.ones((2, 3)))
