"""The Mehler-series path (tpcompiler/series.py) of the Numba backend and NumPy reference.

References, independent of the series: composite Gauss-Legendre on a finite box for single
expectations (cross-checked with mpmath), and the NumPy reference with the series switched off
at doubled quadrature orders (1-D 192, 2-D 64 half-range nodes per half-axis; below 1e-15 at
unit variances, measured against the series and mpmath) for whole networks. Tolerance of the
series itself: its truncation is cut where the Parseval tail bound is below 1e-15 of the
Cauchy-Schwarz scale S_f S_g, and the sum of <= 192 terms adds a few eps of that scale, hence
5e-15 relative to S_f S_g below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

import tpcompiler as tp
from tpcompiler import functions as F
from tpcompiler import quadrature as Q
from tpcompiler import series
from tpcompiler.backends import cache, runner
from tpcompiler.backends import numba as numba_backend
from tpcompiler.backends import numpy as numpy_backend
from tpcompiler.data import prepare

from reference import gauss2, gauss4

z0, z1 = series.Z0, series.Z1


def test_separable_splits_sums_of_products_and_refuses_the_rest():
    t0, t1 = sp.tanh(z0), sp.tanh(z1)
    assert series.separable(t0 * t1) == [(1.0, t0, sp.tanh(z0))]
    parts = series.separable(t0 ** 2 * t1 ** 2 - t0 ** 2 - t1 ** 2)
    assert sorted(parts, key=str) == sorted([(1.0, t0 ** 2, t0 ** 2), (-1.0, t0 ** 2, 1),
                                             (-1.0, 1, t0 ** 2)], key=str)
    assert series.separable(3 * sp.sin(z0) * (t1 + 2)) is not None
    assert series.separable(sp.tanh(z0 + z1)) is None  # couples the coordinates
    assert series.separable(F.Relu(z0) * t1) is None  # a kink: coefficients decay like k^-3/4
    assert series.separable(F.Step(z0) * sp.tanh(z0) * t1) is None


def _table(f, var: float) -> np.ndarray:
    """One point's coefficient block, by the same Python function the backend compiles."""
    d = np.zeros((1, series.WIDTH))
    fw = series.SER_W * f(math.sqrt(var) * series.SER_X)
    series.hermite_project(fw, d, 0, 0)
    return d


def _gl_expect(f, g, a: float, b: float, rho: float) -> float:
    """E[f(u) g(v)], Var u = a, Var v = b, corr rho: u = sqrt(a) z, v = sqrt(b) (rho z +
    sqrt(1 - rho^2) t), z, t ~ N(0, 1) on [-12, 12]^2 (outside: mass < 1e-32) by composite
    Gauss-Legendre, 24 panels of 20 nodes per axis. The integrands are analytic within
    ~pi / (2 sqrt(var)) of the real axis, wider than the panels' half-width 0.5, so each panel
    converges geometrically (below 1e-16 here; agrees with mpmath's adaptive quadrature at 20
    digits to 6e-17 on the tanh and shifted cases, checked when this test was written)."""
    x, w = np.polynomial.legendre.leggauss(20)
    edges = np.arange(-12.0, 12.0, 1.0)
    z = (edges[:, None] + 0.5 + 0.5 * x[None, :]).ravel()
    wz = np.tile(0.5 * w, len(edges)) * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    u = math.sqrt(a) * z[:, None]
    v = math.sqrt(b) * (rho * z[:, None] + math.sqrt(1 - rho * rho) * z[None, :])
    return float(wz @ (f(u) * g(v)) @ wz)


CASES = [
    # (f, g, var u, var v, correlation)
    (np.tanh, np.tanh, 0.8, 1.3, 0.4),
    (lambda x: 1 / (1 + np.exp(-x)), lambda x: np.logaddexp(0, x), 1.0, 0.6, -0.7),
    (np.sin, np.tanh, 1.2, 0.9, 0.95),
    (lambda x: np.tanh(x) ** 2, lambda x: np.tanh(x) ** 2, 1.0, 1.0, 0.99),
    (np.tanh, lambda x: np.tanh(x + 0.5), 1.5, 1.2, -0.97),
]


@pytest.mark.parametrize("case", CASES,
                         ids=["tanh", "sigmoid-softplus", "sin-tanh", "tanh2", "shifted"])
def test_series_matches_an_independent_quadrature(case):
    f, g, a, b, rho = case
    ta, tb = _table(f, a), _table(g, b)
    got = series.hdot(ta, 0, 0, tb, 0, 0, rho)
    want = _gl_expect(f, g, a, b, rho)
    scale = ta[0, 0] * tb[0, 0]
    assert abs(got - want) <= 5e-15 * scale, (got, want)
    # S = sqrt(E[f^2]) (Parseval), against the 1-D rule
    x, w = Q.rule(96)
    assert abs(ta[0, 0] ** 2 - float(np.sum(w * f(math.sqrt(a) * x) ** 2))) <= 1e-14


def test_series_refuses_where_the_tail_is_too_large():
    """tanh at variance 30: the coefficients decay too slowly for 192 terms at |rho| ~ 1 (the
    backend then falls back to quadrature), but not at a small correlation."""
    t = _table(np.tanh, 30.0)
    assert math.isnan(series.hdot(t, 0, 0, t, 0, 0, 0.9999))
    assert math.isnan(series.hdot(t, 0, 0, t, 0, 0, -1.0))
    assert not math.isnan(series.hdot(t, 0, 0, t, 0, 0, 0.3))


# --- two vectors per point: the double series of series._vectors ----------------------------


def _table2(f, va: float, vb: float) -> np.ndarray:
    """One point's two-vector table, by the same Python function the backend compiles."""
    d = np.zeros((1, series.WIDTH2))
    fw = np.outer(series.SER_W, series.SER_W) * f(math.sqrt(va) * series.SER_X[:, None],
                                                  math.sqrt(vb) * series.SER_X[None, :])
    series.hermite_project2(fw, d, 0, 0)
    return d


CASES2 = [
    # f, g, Cov(a, a'), Cov(b, b'): 2-D per point, correlations 0.7 / 0.999999, and -0.4 / 0.5
    (lambda a, b: np.tanh(a) * np.tanh(a + b), lambda a, b: np.tanh(a) * np.tanh(a + b),
     [[0.5, 0.7 * math.sqrt(0.5 * 0.6)], [0.7 * math.sqrt(0.5 * 0.6), 0.6]],
     [[0.4, 0.999999 * math.sqrt(0.4 * 0.5)], [0.999999 * math.sqrt(0.4 * 0.5), 0.5]]),
    (lambda a, b: np.tanh(a) ** 2 * np.cos(a + b), lambda a, b: np.tanh(b) * np.tanh(a - b),
     [[0.6, -0.4 * 0.6], [-0.4 * 0.6, 0.6]], [[0.3, 0.5 * 0.3], [0.5 * 0.3, 0.3]]),
]


@pytest.mark.parametrize("case", CASES2, ids=["tanh-product", "mixed"])
def test_two_vector_series_matches_an_independent_quadrature(case):
    """Series tolerance: at these variances the tables' tails past K2 = 96 terms per axis are
    below 1e-15 of the scale (measured against 128 terms) and the reference is within 1e-15,
    so what is left is the rounding of ~10^4 products: 1e-13 of S_f S_g."""
    f, g, ca, cb = case
    ca, cb = np.array(ca), np.array(cb)
    ta, tb = _table2(f, ca[0, 0], cb[0, 0]), _table2(g, ca[1, 1], cb[1, 1])
    ra = ca[0, 1] / math.sqrt(ca[0, 0] * ca[1, 1])
    rb = cb[0, 1] / math.sqrt(cb[0, 0] * cb[1, 1])
    got = series.hdot2(ta, 0, 0, tb, 0, 0, ra, rb)
    want = gauss4(f, g, ca, cb)
    assert abs(got - want) <= 1e-13 * ta[0, 0] * tb[0, 0], (got, want)


def test_two_vector_network_is_psd_with_duplicates_and_warns_where_inexact():
    """tanh(u) tanh(u + w): 4-D integrals of two independent vectors per point, by the double
    series. Nearly collinear, identical and antipodal rows: the kernel stays positive
    semi-definite to rounding (a truncated Mehler series is a PSD kernel, and the diagonal's
    own integrals only add to its diagonal), a repeated row equals the diagonal exactly; at
    variance 5 the series is short of 1e-10 near |rho| = 1, and the probe says so (at
    variance 0.5 it is not: test_two_vector_series_matches_an_independent_quadrature)."""
    X = np.random.default_rng(0).normal(size=(12, 3))
    X[1] = X[0] + 1e-5 * X[2]
    X[5] = X[0]
    X[4] = -X[2]
    net = tp.compile_source("input x\nu = dense(x, var=5.0)\nw = dense(x, var=5.0)\n"
                            "y = readout(tanh(u) * tanh(u + w))\n")
    assert {q.dim for q in net.kernel_program.integrands} >= {4}
    assert any(c.rhos for c in series.plan(net.kernel_program, 0).calls)
    with pytest.warns(tp.TPWarning, match="4-D, Mehler series"):
        K = net.kernels(X)
    with pytest.warns(tp.TPWarning):  # new data: probed again
        K2 = net.kernels(X, X.copy())
    for kind in ("nngp", "ntk"):
        k = K[kind]
        ev = np.linalg.eigvalsh(k)
        assert ev[0] >= -1e-12 * ev[-1], (kind, ev[0] / ev[-1])
        assert k[0, 5] == k[0, 0] and K2[kind][0, 0] == k[0, 0]


def _quadrature_only(m) -> None:
    """The NumPy reference without the series path (every expectation by quadrature)."""
    m.setattr(numpy_backend, "_series_calls", lambda program: {})


def _doubled_reference(monkeypatch, net, x1, x2=None):
    with monkeypatch.context() as m:
        _quadrature_only(m)
        m.setitem(Q.DEFAULT_ORDER, 1, 192)
        m.setitem(Q.DEFAULT_ORDER, 2, 64)
        return net.kernels(x1, x2, backend="numpy")


NETS = {
    "tanh_mlp": "input x\nh = dense(x, var=1.5, bias=0.05)\n"
                "repeat 2 { h = dense(tanh(h), var=1.5, bias=0.05) }\n"
                "y = readout(tanh(h), var=1.0)\n",
    "sigmoid_softplus": "input x\nh = sigmoid(dense(x, var=2.0, bias=0.1))\n"
                        "h = softplus(dense(h, var=1.0))\ny = readout(h)\n",
    "erf_erf_rnn": "input s[2]\nweight W(var=1.0)\nweight U(var=1.0, bias=0.1)\n"
                   "h = erf(dense(s[0], U))\n"
                   "for t in 1..1 { h = erf(dense(h, W) + dense(s[t], U)) }\n"
                   "y = readout(erf(h), var=1.0, bias=0.05)\n",
    "user_act": "act f(z) = sin(z) * tanh(z) + z\ninput x\nh = f(dense(x, var=1.2))\n"
                "y = readout(f(dense(h, var=1.0)))\n",
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in ("user_act", "tanh_mlp", "sigmoid_softplus") else n
                                  for n in NETS])  # 25-50 s of compile each on 2 cores
def test_networks_match_the_reference_at_doubled_orders(name, monkeypatch):
    net = tp.compile_source(NETS[name])
    assert series.plan(net.kernel_program, 0).calls, "the series path is not used"
    shape = (2, 3) if "rnn" in name else (4,)
    rng = np.random.default_rng(3)
    # unit mean square per input vector (the usual normalisation): layer variances ~1-2, where
    # 192 terms reach 1e-15 for |rho| <= ~0.95; larger |rho| (the identical pair) falls back
    # to the quadrature, whose 1e-14 error at these variances is below the tolerance as well
    x1 = rng.normal(size=(6, *shape))
    x1 /= np.sqrt(np.mean(x1 ** 2, axis=-1, keepdims=True))
    x1[3] = x1[1]  # identical
    x1[4] = -x1[2]  # antipodal
    x1[5] = 0.0  # zero input
    x2 = rng.normal(size=(3, *shape))
    x2 /= np.sqrt(np.mean(x2 ** 2, axis=-1, keepdims=True))
    for a, b in [(x1, None), (x1, x2)]:
        got = net.kernels(a, b)
        want = _doubled_reference(monkeypatch, net, a, b)
        for kind in want:
            scale = np.abs(want[kind]).max()
            assert np.abs(got[kind] - want[kind]).max() <= 1e-12 * scale, kind
            if b is None:
                assert np.array_equal(got[kind], got[kind].T)
                assert np.linalg.eigvalsh(got[kind]).min() >= -1e-12 * scale


def test_large_variance_falls_back_to_the_careful_rule():
    """Near-duplicate points at a large variance: the series is not accurate enough there, and
    those pairs take the careful split rule (quadrature.careful_rows), checked against scipy's
    nested adaptive quadrature (tests/reference.py); the tensor rule of the all-quadrature
    module is off by ~1e-9 there (its documented error at variance 20). Other pairs take the
    series."""
    net = tp.compile_source("input x\nh = dense(x, var=20.0)\ny = readout(tanh(h))\n")
    kp = net.kernel_program
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5))
    x[1] = x[0] + 1e-6 * rng.normal(size=5)  # rho ~ 1 - 1e-13: not snapped to 1 (series.UNIT)
    data = prepare(net.ir, x, "X")
    plain = runner.run(cache.load_module(numba_backend.render(kp, use_series=False)), kp,
                              data, None)
    got = net.kernels(x)
    cov = 20.0 * x @ x.T / x.shape[1]
    c = cov[np.ix_([0, 1], [0, 1])]
    want = gauss2(lambda u, v: math.tanh(u) * math.tanh(v), c, ())
    assert abs(got["nngp"][0, 1] - want) <= 1e-12  # scipy's tolerance is 1e-13
    assert abs(plain["nngp"][0, 1] - want) > abs(got["nngp"][0, 1] - want)
    far = np.abs(got["nngp"][2, 3] - plain["nngp"][2, 3])
    assert far != 0.0 and far <= 1e-7 * np.abs(plain["nngp"]).max()  # quadrature error, var 20


def test_the_quadrature_only_module_equals_the_quadrature_only_reference(monkeypatch):
    """use_series=False (every 2-D expectation by the quadrature rule) renders the reference's
    algorithm: equal to rounding."""
    net = tp.compile_source(NETS["tanh_mlp"])
    kp = net.kernel_program
    module = cache.load_module(numba_backend.render(kp, use_series=False))
    x = np.random.default_rng(5).normal(size=(5, 4))
    x[3] = x[1]
    got = runner.run(module, kp, prepare(net.ir, x, "X"), None)
    with monkeypatch.context() as m:
        _quadrature_only(m)
        want = net.kernels(x, backend="numpy")
    for kind in want:
        assert np.abs(got[kind] - want[kind]).max() <= 1e-12 * np.abs(want[kind]).max()
