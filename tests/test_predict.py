"""Predictions (tpcompiler.predict, net.predict, tpc predict), per-point diagonals and the
scikit-learn kernel.

References: neural-tangents' predict.gradient_descent_mse_ensemble on the same network (its
kernels agree with ours to ~1e-15, so the predictions differ only by the two linear-algebra
paths: eigh vs eigh / Cholesky on matrices of condition number < 1e4 here, so 1e-8 of the scale
leaves a factor > 1e3 to the float64 round-off 1e-16 x cond), and a direct NumPy solve of the
textbook formulas."""

from __future__ import annotations

import numpy as np
import pytest

import tpcompiler as tpc
from tpcompiler import predict
from tpcompiler.cli import main

try:
    import nt_reference as ntr

    needs_nt = pytest.mark.skipif(not ntr.available(), reason="neural-tangents not usable")
except ImportError:  # pragma: no cover
    needs_nt = pytest.mark.skip(reason="neural-tangents not installed")

MLP = """
input x
h = dense(x, var=2.0, bias=0.1)
h = dense(relu(h), var=2.0, bias=0.1)
y = readout(relu(h), var=1.0)
"""
TOL = 1e-8  # relative to the largest entry (module docstring)


@pytest.fixture(scope="module")
def net():
    return tpc.compile_source(MLP)


def _data(n=14, m=5, d=3, k=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.standard_normal((n, k)), rng.standard_normal((m, d))


def _close(a, b, tol=TOL):
    scale = max(np.abs(b).max(), 1e-300)
    assert np.abs(a - b).max() <= tol * scale, np.abs(a - b).max() / scale


@needs_nt
@pytest.mark.parametrize("kind", ["nngp", "ntk"])
@pytest.mark.parametrize("t, lr, reg", [(None, 1.0, 0.0), (None, 1.0, 1e-2), (0.3, 0.5, 0.0),
                                        (25.0, 2.0, 1e-3)])
def test_against_neural_tangents(net, kind, t, lr, reg):
    """The prediction algebra on neural-tangents' own kernels (NT's NTK at identical points
    carries its arccos error, ~1e-8: fed the same matrices, the two agree to round-off), and
    the NNGP end to end (our kernels, which agree with NT's to 1e-15)."""
    xtr, y, xte = _data()
    mean, cov = ntr.mlp_predict(xtr, y, xte, t=t, get=kind, learning_rate=lr, diag_reg=reg,
                                depth=2, act="relu", w_var=2.0, b_var=0.1)
    kw = dict(depth=2, act="relu", w_var=2.0, b_var=0.1)
    kd, ktd, kt = (ntr.mlp_kernels(xtr, None, **kw), ntr.mlp_kernels(xte, xtr, **kw),
                   ntr.mlp_kernels(xte, None, **kw))
    if kind == "ntk":
        ours = predict.ntk_flow(kd["ntk"], ktd["ntk"], y, kd["nngp"], ktd["nngp"], kt["nngp"],
                                t=t, learning_rate=lr, diag_reg=reg)
    elif t is None:  # NT's t=None with get="nngp" is the GP posterior
        ours = predict.gp_posterior(kd["nngp"], ktd["nngp"], y, kt["nngp"], diag_reg=reg)
    else:
        ours = predict.nngp_flow(kd["nngp"], ktd["nngp"], y, kt["nngp"], t=t,
                                 learning_rate=lr, diag_reg=reg)
    _close(ours.mean, mean, 1e-10)
    _close(ours.covariance, cov, 1e-10)
    if kind == "nngp":
        end = net.predict(xtr, y, xte, kind=kind, t=t, learning_rate=lr, diag_reg=reg,
                          covariance=True)
        _close(end.mean, mean)
        _close(end.covariance, cov)
    var = net.predict(xtr, y, xte, kind=kind, t=t, learning_rate=lr, diag_reg=reg,
                      variance=True)
    full = net.predict(xtr, y, xte, kind=kind, t=t, learning_rate=lr, diag_reg=reg,
                       covariance=True)
    _close(var.variance, np.diagonal(full.covariance), 1e-12)
    assert var.covariance is None


def test_gp_posterior_against_a_direct_solve(net):
    xtr, y, xte = _data(seed=1)
    k = net.kernels(np.concatenate([xtr, xte]), get="nngp")["nngp"]
    n = len(xtr)
    kd, ktd, kt = k[:n, :n], k[n:, :n], k[n:, n:]
    noise = 0.05
    a = kd + noise * np.eye(n)
    want_mean = ktd @ np.linalg.solve(a, y)
    want_cov = kt - ktd @ np.linalg.solve(a, ktd.T)
    got = predict.gp_posterior(kd, ktd, y, kt, diag_reg=noise, absolute=True)
    _close(got.mean, want_mean)
    _close(got.covariance, want_cov)
    rel = predict.gp_posterior(kd, ktd, y, kt, diag_reg=noise / np.trace(kd) * n)
    _close(rel.mean, want_mean)


def test_ntk_flow_against_a_direct_formula(net):
    """Lee et al. 2019 eqs. 15-16 written out with scipy-free NumPy: matrix exponential by
    eigh of the symmetric NTK, inverse by solve."""
    xtr, y, xte = _data(seed=2)
    x = np.concatenate([xtr, xte])
    ks = net.kernels(x)
    n = len(xtr)
    th, k = ks["ntk"], ks["nngp"]
    t, lr = 3.0, 0.7
    lam, v = np.linalg.eigh(th[:n, :n])
    decay = v @ np.diag(np.exp(-lam * t * lr / y.size)) @ v.T
    tmat = th[n:, :n] @ np.linalg.solve(th[:n, :n], np.eye(n) - decay)
    want_mean = tmat @ y
    want_cov = (k[n:, n:] + tmat @ k[:n, :n] @ tmat.T - tmat @ k[:n, n:] - k[n:, :n] @ tmat.T)
    got = predict.ntk_flow(th[:n, :n], th[n:, :n], y, k[:n, :n], k[n:, :n], k[n:, n:], t=t,
                           learning_rate=lr)
    _close(got.mean, want_mean)
    _close(got.covariance, want_cov)


def test_time_zero_is_the_prior_and_long_times_the_end_of_training(net):
    xtr, y, xte = _data(seed=3)
    start = net.predict(xtr, y, xte, t=0.0, covariance=True)
    assert np.array_equal(start.mean, np.zeros_like(start.mean))
    _close(start.covariance, net.kernels(xte, get="nngp")["nngp"], 1e-15)
    end = net.predict(xtr, y, xte, covariance=True)
    late = net.predict(xtr, y, xte, t=1e9, covariance=True)
    _close(late.mean, end.mean)
    _close(late.covariance, end.covariance)


def test_singular_train_kernels_give_finite_answers(net):
    """A training point given twice makes the train kernel singular (diag_reg=0): a division by
    its eigenvalues gives inf/NaN. Gradient flow never moves the null direction, so the answer
    is the one of the point given once."""
    xtr, y, xte = _data(n=8, seed=4)
    twice_x = np.concatenate([xtr, xtr[:1]])
    twice_y = np.concatenate([y, y[:1]])
    for kind in ("nngp", "ntk"):
        for t in (None, 2.0):
            once = net.predict(xtr, y, xte, kind=kind, t=t, covariance=True)
            dup = net.predict(twice_x, twice_y, xte, kind=kind, t=t, covariance=True)
            assert np.isfinite(dup.mean).all() and np.isfinite(dup.covariance).all()
            if t is None:
                _close(dup.mean, once.mean, 1e-6)
    # an all-zero kernel: nothing is learned, nothing divides by zero
    zero = predict.ntk_flow(np.zeros((3, 3)), np.zeros((2, 3)), np.ones(3))
    assert np.array_equal(zero.mean, np.zeros(2))


@pytest.mark.parametrize("call, message", [
    (lambda n, x, y, t: n.predict(x, y[:3], t), "labels have shape"),
    (lambda n, x, y, t: n.predict(x, y, t, kind="gp"), "kind must be"),
    (lambda n, x, y, t: n.predict(x, y, t, t=-1.0), "t must be >= 0"),
    (lambda n, x, y, t: n.predict(x, y, t, diag_reg=-0.1), "diag_reg must be"),
    (lambda n, x, y, t: n.predict(x, y * np.nan, t), "NaN"),
    (lambda n, x, y, t: n.kernels(x, t, diagonal=True), "pass no x2"),
])
def test_prediction_errors(net, call, message):
    xtr, y, xte = _data(n=6)
    with pytest.raises(tpc.TPError, match=message):
        call(net, xtr, y, xte)


DIAGONAL_CASES = {
    "relu_mlp": "examples/relu_mlp.tp",
    "rnn": "examples/rnn.tp",
    "layernorm": "examples/layernorm.tp",
    # quadratures (Mehler series and rules) and a small CNN with pooling: the per-point stages
    # of the other backends
    "tanh": "input x\nh = tanh(dense(x, var=1.5, bias=0.1))\ny = readout(h)\n",
    "cnn": "input img[4, 4]\nh = conv(img, size=2, var=2.0, bias=0.1)\n"
           "y = readout(gap(avgpool(relu(h), size=2)))\n",
}


@pytest.mark.parametrize("case", sorted(DIAGONAL_CASES))
def test_diagonal_is_the_kernels_diagonal(case):
    text = DIAGONAL_CASES[case]
    net = tpc.compile(text) if text.endswith(".tp") else tpc.compile_source(text)
    inp = net.ir.inputs[0]
    x = np.random.default_rng(5).standard_normal((6, *inp.axes, 3))
    x[3] = 0.0  # a zero input
    x[4] = -x[2]  # an antipodal pair
    for backend in ("numba", "numpy"):
        full = net.kernels(x, backend=backend)
        diag = net.kernels(x, diagonal=True, backend=backend)
        for kind in full:
            assert diag[kind].shape == (6,)
            assert np.array_equal(diag[kind], np.diagonal(full[kind])), (backend, kind)


def test_users_data_types(net):
    """Integers, float32 and (when pandas is installed) DataFrames are converted to float64."""
    xi = np.arange(12).reshape(4, 3) - 5
    k64 = net.kernels(xi.astype(np.float64))["nngp"]
    assert np.array_equal(net.kernels(xi)["nngp"], k64)
    x32 = np.random.default_rng(6).standard_normal((4, 3)).astype(np.float32)
    assert np.array_equal(net.kernels(x32)["nngp"], net.kernels(x32.astype(np.float64))["nngp"])
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(xi, columns=["a", "b", "c"])
    assert np.array_equal(net.kernels(df)["nngp"], k64)


def test_cli_predict(tmp_path, net, capsys):
    xtr, y, xte = _data(seed=7)
    for name, arr in (("xtr", xtr), ("y", y), ("xte", xte)):
        np.save(tmp_path / f"{name}.npy", arr)
    path = tmp_path / "mlp.tp"
    path.write_text(MLP)
    out = tmp_path / "pred.npz"
    args = ["predict", str(path), "--train", str(tmp_path / "xtr.npy"), "--labels",
            str(tmp_path / "y.npy"), "--test", str(tmp_path / "xte.npy"), "--out", str(out)]
    assert main([*args, "--variance", "--time", "4", "--learning-rate", "0.5"]) == 0
    want = net.predict(xtr, y, xte, t=4.0, learning_rate=0.5, variance=True)
    with np.load(out) as z:
        assert np.array_equal(z["mean"], want.mean)
        assert np.array_equal(z["variance"], want.variance)
    assert main(args) == 2 and "exists" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.save(tmp_path / "y3.npy", y[:3])
    assert main([*args[:5], str(tmp_path / "y3.npy"), *args[6:-1], str(bad)]) == 2
    assert "labels have shape" in capsys.readouterr().err and not bad.exists()
    assert main([*args[:-1], str(tmp_path / "pred.npy")]) == 2
    assert ".npz" in capsys.readouterr().err


# --- scikit-learn (a test extra: tests/ always have it) ---------------------------------------


def test_sklearn_kernel_in_a_gaussian_process(net):
    import pickle

    from sklearn.base import clone
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import WhiteKernel

    from tpcompiler.sklearn import TPKernel, gram

    xtr, y, xte = _data(n=30, k=1, seed=8)
    y = np.sin(xtr[:, 0]) + 0.1 * y[:, 0]
    kern = TPKernel(net) + WhiteKernel(noise_level=0.1)
    gp = GaussianProcessRegressor(kernel=kern, random_state=0).fit(xtr, y)
    noise = gp.kernel_.k2.noise_level
    assert noise != 0.1  # the white noise was learned by marginal likelihood
    k = net.kernels(xtr, get="nngp")["nngp"]
    kt = net.kernels(xte, xtr, get="nngp")["nngp"]
    want = predict.gp_posterior(k, kt, y, diag_reg=noise, absolute=True).mean
    _close(gp.predict(xte), want)
    tk = TPKernel(net, "ntk")
    assert np.array_equal(tk.diag(xte), np.diagonal(tk(xte)))
    value, grad = tk(xtr, eval_gradient=True)
    assert grad.shape == (30, 30, 0) and np.array_equal(value, gram(net, xtr, kind="ntk"))
    assert clone(tk) == tk and pickle.loads(pickle.dumps(tk)) == tk
    assert not tk.is_stationary()


def test_sklearn_precomputed_svc_and_image_rows():
    from sklearn.svm import SVC

    from tpcompiler.sklearn import TPKernel, gram

    net = tpc.compile_source(DIAGONAL_CASES["cnn"])
    h, w = net.ir.inputs[0].grid
    rng = np.random.default_rng(9)
    x = rng.standard_normal((12, h * w * 2))  # rows: flattened (H, W, 2) images
    labels = np.arange(12) % 2
    svc = SVC(kernel="precomputed").fit(gram(net, x), labels)
    assert svc.predict(gram(net, x[:3], x)).shape == (3,)
    images = x.reshape(12, h, w, 2)
    assert np.array_equal(TPKernel(net)(x), net.kernels(images, get="nngp")["nngp"])
    with pytest.raises(tpc.TPError, match="do not split"):
        gram(net, x[:, :-1])


# checks that do not apply here (array API, pandas input without pandas) say so by warning
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_sklearn_estimator_checks(net):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.utils.estimator_checks import check_estimator

    from tpcompiler.sklearn import TPKernel

    res = check_estimator(GaussianProcessRegressor(kernel=TPKernel(net)), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])) for r in res if r["status"] == "failed"]
    assert not failed, failed
