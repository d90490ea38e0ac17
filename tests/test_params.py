"""Params (`param sw = 2.0`): values at call time, one compiled module whatever the values, and
the kernels' exact derivatives in them (passes/tangent.py), with scikit-learn on top.

References, none of them the compiler's own derivative rules:
- values: the same program with the numbers written in as constants (compiled on its own);
- derivatives: central differences of the kernels (NumPy backend, step h = 1e-4 max(1, theta)).
  Their error is h^2 |K'''| / 6 + eps |K| / h; with O(1) variances and depth <= 4 here |K'''|
  stays below 100 |K|, so 1.7e-7 + 2e-12 of the kernel's scale: RTOL_FD = 1e-6 leaves a factor
  5, and a wrong rule is off by O(1);
- the complex step Im K(theta + i h) / h (h = 1e-30: no subtraction, so exact to rounding)
  where the recursion is pure arithmetic (a polynomial network): RTOL_CS = 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest

import tpcompiler as tpc
from tpcompiler.backends import numpy as npb
from tpcompiler.cli import main
from tpcompiler.kernel_program import is_first_point, twin

RTOL_FD = 1e-6
RTOL_CS = 1e-12

MLP = """
param sw = 2.0
param sb = 0.05
input x
h = dense(x, var=sw, bias=sb)
repeat 2 {
    h = dense(relu(h), var=sw, bias=sb)
}
y = readout(relu(h), var=1.0)
"""

# programs with params, each with the constructs whose derivative rules it exercises
GRAD_CASES = {
    "relu_mlp": MLP,  # arc-cosine closed forms, a rolled loop
    "erf_readout_bias": """
param sw = 1.5
param sb = 0.1
input x
h = erf(dense(x, var=sw, bias=sb))
h = erf(dense(h, var=2 * sw - 1, bias=sb))
y = readout(h, var=1.0, bias=sb ** 2)
""",
    "residual": """
param sw = 2.0
param sb = 0.05
param so = 1.0
input x
h = dense(x, var=1.0, bias=sb)
repeat 2 {
    h = h + 0.5 * dense(relu(h), var=sw, bias=sb)
}
y = readout(relu(h), var=so)
""",
    "layernorm": """
param sw = 2.0
param sb = 0.1
input x
h = dense(x, var=sw, bias=sb)
h = dense(layernorm(relu(h)), var=sw, bias=sb)
y = readout(relu(layernorm(h, eps=1e-5)), var=1.0)
""",
    "leaky_abrelu": """
param sw = 2.0
input x
h = leaky_relu(dense(x, var=sw, bias=0.01), slope=0.1)
h = abrelu(dense(h, var=sw), a=-0.5, b=1.0)
y = readout(h, var=1.0)
""",
    "gelu": """
param sw = 1.5
param sb = 0.1
input x
h = gelu(dense(x, var=sw, bias=sb))
y = readout(gelu(dense(h, var=sw, bias=sb)), var=1.0)
""",
    # quadratures of smooth integrands (Price's theorem) and the step closed forms
    "gauss_step": """
param sw = 1.0
param sb = 0.2
input x
h = exp(-dense(x, var=sw, bias=sb) ** 2)
h = step(dense(h, var=sw))
y = readout(h * 1.0, var=1.0)
""",
    "rnn_shared": """
param su = 1.0
param sw = 1.5
param sb = 0.1
input s[2]
weight U(var=su, bias=sb)
weight W(var=sw)
h = tanh(dense(s[0], U))
h = tanh(dense(h, W) + dense(s[1], U))
y = readout(h, var=1.0)
""",
}


def _data(src: str, n: int = 5, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2, 3) if "s[2]" in src else (n, 4))
    x[3] = x[1]  # a point given twice
    x[4] = -x[2]  # and an antipodal pair
    return x


@pytest.fixture(scope="module")
def mlp():
    return tpc.compile_source(MLP)


# --- values ----------------------------------------------------------------------------------


def test_params_listed_with_defaults(mlp):
    assert mlp.params == {"sw": 2.0, "sb": 0.05}
    assert "param theta0 [sw]" in mlp.ir.text()
    assert tpc.compile_source("input x\ny = readout(relu(dense(x)))").params == {}


@pytest.mark.parametrize("act", ["relu", "tanh"])  # closed forms; Mehler series of quad2
@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_values_match_the_program_with_constants(backend, act):
    src = MLP.replace("relu", act)
    net = tpc.compile_source(src)
    x = _data(MLP)
    for values in (None, {"sw": 1.3}, {"sw": 0.5, "sb": 0.0}):
        sw, sb = {**net.params, **(values or {})}.values()
        const = tpc.compile_source(src.replace("param sw = 2.0", f"const sw = {sw!r}")
                                   .replace("param sb = 0.05", f"const sb = {sb!r}"))
        # the constants' program on the NumPy evaluator (numba agrees with it to ~1e-15 on
        # both programs, tests/test_api.py): no compilation per value
        want = const.kernels(x, backend="numpy")
        got = net.kernels(x, params=values, backend=backend)
        for kind in want:
            scale = np.abs(want[kind]).max()
            assert np.abs(got[kind] - want[kind]).max() <= 1e-14 * scale
        diag = net.kernels(x, params=values, diagonal=True, backend=backend)
        assert np.allclose(diag["ntk"], np.diag(want["ntk"]), rtol=1e-14, atol=0)


def test_one_module_whatever_the_values(tmp_path, monkeypatch):
    monkeypatch.setenv("TPC_CACHE_DIR", str(tmp_path))
    net = tpc.compile_source(MLP)
    x = _data(MLP)
    net.kernels(x)
    before = sorted(p.name for p in tmp_path.rglob("*.py"))
    for sw in (0.5, 1.0, 3.0):
        tpc.compile_source(MLP).kernels(x, params={"sw": sw})
    assert sorted(p.name for p in tmp_path.rglob("*.py")) == before and len(before) == 1


@pytest.mark.parametrize("values, message", [
    ({"sq": 1.0}, "'sq' is not a param"),
    ({"sw": -1.0}, "a variance must be >= 0"),
    ({"sw": float("nan")}, "not a finite number"),
    ({"sw": "big"}, "not a number"),
])
def test_bad_values(mlp, values, message):
    with pytest.raises(tpc.TPError, match=message):
        mlp.kernels(_data(MLP), params=values)


@pytest.mark.parametrize("line, message", [
    ("repeat sw { h = dense(relu(h)) }", "a param's value is known only at call time"),
    ("h = sw * dense(relu(h))", "cannot combine a param with a vector"),
    ("act f(z) = sw * z\nh = f(h)", "cannot use a param"),
    ("h = dense(h, var=1 / sw)", "division by a param"),
    ("h = layernorm(h, eps=sw)", "known only at call time"),
    ("h = dense(h, var=sw - 3)", "must be >= 0; with the params' defaults it is -1"),
    ("param sw = 1.0", "already defined"),
])
def test_misuse_is_a_located_error(line, message):
    src = f"param sw = 2.0\ninput x\nh = dense(x)\n{line}\ny = readout(relu(h))\n"
    with pytest.raises(tpc.TPError, match=message) as err:
        tpc.compile_source(src, path="bad.tp")
    assert "bad.tp:4:" in str(err.value) and "^" in str(err.value)


def test_spatial_program_with_params():
    src = """
param sw = 2.0
input img[4, 4]
h = conv(img, size=3, var=sw, bias=0.1)
y = readout(gap(relu(h)), var=1.0)
"""
    x = np.random.default_rng(2).standard_normal((3, 4, 4, 2))
    got = tpc.compile_source(src).kernels(x, params={"sw": 1.25})
    want = tpc.compile_source(src.replace("param sw = 2.0", "const sw = 1.25")).kernels(x)
    for kind in want:
        assert np.abs(got[kind] - want[kind]).max() <= 1e-14 * np.abs(want[kind]).max()


def test_cli_param(tmp_path, mlp, capsys):
    f = tmp_path / "mlp.tp"
    f.write_text(MLP)
    x = _data(MLP)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "k.npy"
    assert main(["kernel", str(f), "--data", str(tmp_path / "x.npy"), "--out", str(out),
                 "--param", "sw=1.5", "--quiet"]) == 0
    assert np.array_equal(np.load(out), mlp.kernels(x, get="nngp", params={"sw": 1.5})["nngp"])
    assert main(["kernel", str(f), "--data", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "bad.npy"), "--param", "sw=-2"]) == 2
    assert "a variance must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad.npy").exists()


def test_predict_with_params(mlp):
    x = _data(MLP, n=8)
    y = np.sin(x[:, 0])
    const = tpc.compile_source(MLP.replace("param sw = 2.0", "const sw = 1.5")
                               .replace("param sb = 0.05", "const sb = 0.05"))
    got = mlp.predict(x, y, x[:3] * 0.5, kind="nngp", diag_reg=1e-3, params={"sw": 1.5})
    want = const.predict(x, y, x[:3] * 0.5, kind="nngp", diag_reg=1e-3)
    assert np.allclose(got.mean, want.mean, rtol=1e-12, atol=1e-12)


# --- derivatives ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_derivatives_against_central_differences(case):
    src = GRAD_CASES[case]
    net = tpc.compile_source(src)
    x = _data(src)
    backend = "numba" if case == "relu_mlp" else "numpy"  # the NumPy path compiles nothing
    got = net.kernels(x, grad=True, backend=backend)
    for m, (name, value) in enumerate(net.params.items()):
        h = 1e-4 * max(1.0, abs(value))
        up = net.kernels(x, params={name: value + h}, backend="numpy")
        down = net.kernels(x, params={name: value - h}, backend="numpy")
        for kind in ("nngp", "ntk"):
            fd = (up[kind] - down[kind]) / (2 * h)
            scale = max(np.abs(fd).max(), np.abs(got[kind]).max() * 1e-3)
            err = np.abs(got[kind + "_grad"][..., m] - fd).max() / scale
            assert err <= RTOL_FD, (name, kind, err)
    assert got["nngp_grad"].shape == (5, 5, len(net.params))


def test_derivatives_numba_equal_numpy_and_diagonal(mlp):
    x = _data(MLP)
    a = mlp.kernels(x, grad=True)
    b = mlp.kernels(x, grad=True, backend="numpy")
    d = mlp.kernels(x, grad=True, diagonal=True)
    for kind in ("ntk_grad", "nngp_grad"):
        assert np.abs(a[kind] - b[kind]).max() <= 1e-13 * np.abs(b[kind]).max()
        assert np.allclose(d[kind], np.diagonal(a[kind]).T, rtol=1e-14, atol=0)
    cross = mlp.kernels(x[:2], x, grad=True, params={"sb": 0.3})
    full = mlp.kernels(x, grad=True, params={"sb": 0.3})
    assert np.allclose(cross["ntk_grad"], full["ntk_grad"][:2], rtol=1e-13, atol=0)


@pytest.mark.parametrize("act", ["relu", "erf", "gelu"])
def test_derivatives_against_autodiff_of_neural_tangents(act):
    """JAX's forward-mode derivative of neural-tangents' kernel_fn in (W_std^2, b_std^2, the
    readout's W_std^2): its closed forms, differentiated by JAX, not by our rules. Both are
    float64 evaluations of the same formulas: 1e-13 of the scale (measured 4e-16)."""
    ntr = pytest.importorskip("nt_reference")
    if not ntr.available():
        pytest.skip("neural-tangents not usable")
    jax, jnp, stax = ntr._nt()  # float64 on (nt_reference)
    src = f"""
param sw = 1.7
param sb = 0.3
param so = 0.8
input x
h = dense(x, var=sw, bias=sb)
h = dense({act}(h), var=sw, bias=sb)
y = readout({act}(h), var=so)
"""
    x = np.random.default_rng(3).standard_normal((6, 5))
    x[4] = x[1]  # identical points: the diagonal's derivative off the diagonal too
    ours = tpc.compile_source(src).kernels(x, grad=True)
    layer = {"relu": stax.Relu, "erf": stax.Erf,
             "gelu": lambda: stax.Gelu(approximate=False)}[act]

    def kernel(theta, kind):
        sw, sb, so = theta
        _, _, fn = stax.serial(stax.Dense(1, W_std=jnp.sqrt(sw), b_std=jnp.sqrt(sb)), layer(),
                               stax.Dense(1, W_std=jnp.sqrt(sw), b_std=jnp.sqrt(sb)), layer(),
                               stax.Dense(1, W_std=jnp.sqrt(so), b_std=0.0))
        return fn(x, None, kind)

    theta = jnp.array([1.7, 0.3, 0.8])
    for kind in ("nngp", "ntk"):
        want = np.array(jax.jacfwd(lambda t, kind=kind: kernel(t, kind))(theta))
        got = ours[kind + "_grad"]
        # the identical pair (1, 4): K(x1, x4) = K(x1, x1) at every theta, so its derivative
        # is the diagonal's (neural-tangents' arccos has an infinite derivative at cos = 1:
        # JAX gives no number there for relu)
        assert np.array_equal(got[1, 4], got[1, 1]) and np.array_equal(got[4, 1], got[1, 1])
        want[[1, 4], [4, 1]] = want[1, 1]
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= 1e-13, (kind, err)


def _complex_kernels(kp, x: np.ndarray, theta: dict) -> dict:
    """The straight-line kernel program evaluated pair by pair on complex params (the
    NumPy evaluator's arithmetic; every value of a polynomial recursion is a polynomial)."""
    kp = kp.unrolled()
    n = len(x)
    out = {k: np.zeros((n, n), dtype=complex) for k in kp.outputs}
    per = []
    for i in range(n):
        env = dict(theta)
        for g in kp.diag_gram:
            env[g.symbol.name] = x[i] @ x[i] / x.shape[1]
        for s, e in kp.diag:
            env[s.name] = npb.evaluate_expr(e, env)
        per.append(env)
    for i in range(n):
        for j in range(n):
            env = dict(per[i])
            env.update({twin(s).name: per[j][s.name] for s, _ in kp.diag
                        if is_first_point(s)})
            for g in kp.cross_gram:
                env[g.symbol.name] = x[i] @ x[j] / x.shape[1]
            for s, e in kp.cross:
                env[s.name] = npb.evaluate_expr(e, env)
            for kind, (_, c) in kp.outputs.items():
                out[kind][i, j] = npb.evaluate_expr(c, env)
    return out


def test_derivatives_against_the_complex_step():
    src = """
param sw = 1.5
param sb = 0.3
act quad(z) = z ** 2 + 0.5 * z
input x
h = quad(dense(x, var=sw, bias=sb))
h = quad(dense(h, var=0.5 * sw))
y = readout(h, var=1.0, bias=sb)
"""
    net = tpc.compile_source(src)
    x = np.random.default_rng(5).standard_normal((4, 3)) * 0.5
    got = net.kernels(x, grad=True)
    hstep = 1e-30
    for m, (name, value) in enumerate(net.params.items()):
        theta = {f"theta{k}": complex(v) for k, v in enumerate(net.params.values())}
        theta[f"theta{m}"] += 1j * hstep
        cs = _complex_kernels(net.kernel_program, x, theta)
        for kind in ("nngp", "ntk"):
            want = cs[kind].imag / hstep
            assert np.allclose(cs[kind].real, got[kind], rtol=1e-13, atol=0)
            err = np.abs(got[kind + "_grad"][..., m] - want).max() / np.abs(want).max()
            assert err <= RTOL_CS, (name, kind, err)


def test_derivatives_refused_with_a_reason():
    kinked = tpc.compile_source("""
param sw = 2.0
act quad_relu(z) = relu(z) ** 2 + 0.5 * z
input x
y = readout(quad_relu(dense(x, var=sw, bias=0.1)), var=1.0)
""")
    x = _data(MLP)
    with pytest.raises(tpc.TPError, match="Dirac delta"):
        kinked.kernels(x, grad=True)
    kinked.kernels(x, params={"sw": 1.0})  # the kernels themselves are fine
    with pytest.raises(tpc.TPError, match="no params"):
        tpc.compile_source("input x\ny = readout(relu(dense(x)))").kernels(x, grad=True)
    cnn = tpc.compile_source("param sw = 2.0\ninput img[3, 3]\n"
                             "y = readout(gap(relu(conv(img, size=3, var=sw))))")
    with pytest.raises(tpc.TPError, match="positions"):
        cnn.kernels(np.ones((2, 3, 3, 1)), grad=True)


def test_derivatives_at_zero_inputs_and_where_they_do_not_exist(mlp):
    x = _data(MLP)[:4]
    x[0] = 0.0
    got = mlp.kernels(x, grad=True, params={"sb": 0.0})
    assert all(np.isfinite(v).all() for v in got.values())
    # a zero input without bias stays a zero covariance whatever sw: its row's derivative in
    # sw is the readout's alone (0 here: no readout bias)
    assert np.all(got["nngp_grad"][0, :, 0] == 0.0)
    # antipodal inputs without bias: their angle is pi at sb = 0 and moves like sqrt(sb)
    with pytest.raises(tpc.TPError, match="derivative of the .* in sb does not exist"):
        mlp.kernels(_data(MLP), grad=True, params={"sb": 0.0})


# --- scikit-learn ----------------------------------------------------------------------------


def test_sklearn_hyperparameters_are_the_params(mlp):
    from sklearn.base import clone
    from sklearn.gaussian_process.kernels import _approx_fprime

    from tpcompiler.sklearn import TPKernel

    k = TPKernel(mlp, sw=1.2)
    assert [h.name for h in k.hyperparameters] == ["sw", "sb"]
    assert np.allclose(k.theta, np.log([1.2, 0.05]))
    assert clone(k) == k and k.get_params()["sw"] == 1.2
    x = _data(MLP)
    value, grad = k(x, eval_gradient=True)
    assert np.array_equal(value, mlp.kernels(x, get="nngp", params={"sw": 1.2})["nngp"])
    num = _approx_fprime(k.theta, lambda t: k.clone_with_theta(t)(x), 1e-6)
    assert np.abs(grad - num).max() <= 1e-5 * np.abs(value).max()  # forward difference, h=1e-6
    fixed = TPKernel(mlp, fixed=("sb",))
    assert fixed(x, eval_gradient=True)[1].shape == (5, 5, 1)
    with pytest.raises(tpc.TPError, match="not params"):
        TPKernel(mlp, fixed=("sq",))(x)
    with pytest.raises(tpc.TPError, match="not params"):
        TPKernel(mlp, sq=1.0)


def test_gp_learns_the_variances_by_marginal_likelihood(mlp):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import WhiteKernel

    from tpcompiler.sklearn import TPKernel

    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4))
    truth = {"sw": 0.7, "sb": 1.5}
    k = mlp.kernels(x, get="nngp", params=truth)["nngp"]
    y = np.linalg.cholesky(k + 1e-4 * np.eye(60)) @ rng.standard_normal(60)
    gp = GaussianProcessRegressor(TPKernel(mlp) + WhiteKernel(1e-2, (1e-6, 1.0)),
                                  random_state=0).fit(x, y)
    learned = gp.kernel_.k1
    at_truth = gp.log_marginal_likelihood(np.log([truth["sw"], truth["sb"], 1e-4]))
    # the optimiser, started at the defaults (2.0, 0.05), climbs at least as high as the truth
    assert gp.log_marginal_likelihood_value_ >= at_truth - 1e-6
    assert abs(np.log(learned.sw / truth["sw"])) < 0.5 and abs(np.log(learned.sb / 1.5)) < 0.5


# ~30 s (every check fits a GP whose optimiser evaluates the kernel and its derivatives tens of
# times): the default suite runs the checks on a kernel without hyperparameters
# (test_predict.py) and the marginal-likelihood fit above
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_sklearn_estimator_checks_with_hyperparameters(mlp):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.utils.estimator_checks import check_estimator

    from tpcompiler.sklearn import TPKernel

    res = check_estimator(GaussianProcessRegressor(kernel=TPKernel(mlp)), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])) for r in res if r["status"] == "failed"]
    assert not failed, failed
