"""The Python API: compile, kernels on user data, data validation, and the Numba backend against
the NumPy reference on every example."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tpcompiler as tp
from tpcompiler.ir import Program

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.tp"))

TWO_INPUTS = """\
network two_inputs
input x
input z
h = dense(x, var=2.0, bias=0.1) + dense(z)
y = readout(relu(h), var=1.0)
"""


def data_for(net, n: int, seed: int, d: int = 3):
    """Random data of the right shape for every input of `net` (a dict if it has several).
    One d for all: inputs read by one weight must share it."""
    rng = np.random.default_rng(seed)
    arrays = {i.name: rng.normal(size=(n, d) if i.length is None and not i.grid else
                                 (n, *(i.grid or (i.length,)), d))
              for i in net.ir.inputs}
    return arrays if len(arrays) > 1 else next(iter(arrays.values()))


def take(x, rows):
    """Rows of one data set (an array or a dict of arrays)."""
    if isinstance(x, dict):
        return {k: v[rows] for k, v in x.items()}
    return x[rows]


def assert_close(a, b, rtol=1e-12):
    scale = np.max(np.abs(b)) if b.size else 1.0
    err = np.max(np.abs(a - b)) if b.size else 0.0
    assert err <= rtol * max(scale, 1e-300), (err, scale)


@pytest.fixture(scope="module")
def relu():
    return tp.compile(ROOT / "examples" / "relu_mlp.tp")


@pytest.fixture(scope="module")
def rnn():
    return tp.compile(ROOT / "examples" / "rnn.tp")


@pytest.fixture(scope="module")
def two():
    return tp.compile_source(TWO_INPUTS)


# --- the documented calls ------------------------------------------------------------------


def test_readme_calls(relu):
    x = np.random.default_rng(0).normal(size=(6, 4))
    k = relu.nngp(x)
    assert k.shape == (6, 6) and k.dtype == np.float64
    k12 = relu.ntk(x[:2], x[2:])
    assert k12.shape == (2, 4)
    both = relu.kernels(x[:2], x[2:], get=("nngp", "ntk"))
    assert set(both) == {"nngp", "ntk"}
    assert np.array_equal(both["ntk"], k12)
    assert np.array_equal(both["nngp"], relu.nngp(x[:2], x[2:]))
    assert np.array_equal(relu.kernels(x, get="nngp")["nngp"], k)
    assert r"\mathrm{NNGP}" in relu.latex()
    assert isinstance(relu.ir, Program) and "program relu_mlp" in relu.ir.text()
    assert "relu_mlp" in repr(relu)


def test_compile_source_equals_compile(relu):
    text = (ROOT / "examples" / "relu_mlp.tp").read_text()
    assert tp.compile_source(text).ir.digest() == relu.ir.digest()


def test_sequence_input(rnn):
    x = data_for(rnn, 5, seed=1)
    assert x.shape == (5, 4, 3)
    k = rnn.nngp(x)
    assert k.shape == (5, 5)
    assert_close(rnn.nngp(x[:2], x[2:]), k[:2, 2:])


def test_several_inputs_take_a_dict(two):
    x = data_for(two, 5, seed=2)
    assert set(x) == {"x", "z"}
    k = two.kernels(x, get=("nngp", "ntk"))
    assert k["nngp"].shape == (5, 5)
    k12 = two.ntk(take(x, slice(0, 2)), take(x, slice(2, 5)))
    assert_close(k12, k["ntk"][:2, 2:], rtol=1e-12)
    # each input matters: changing z alone changes the kernel
    x2 = dict(x, z=x["z"] + 1.0)
    assert not np.allclose(two.nngp(x2), k["nngp"])
    ref = two.kernels(x, get=("nngp", "ntk"), backend="numpy")
    for kind in ref:
        assert_close(k[kind], ref[kind])


def test_float32_is_computed_in_float64(relu):
    x32 = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    x64 = x32.astype(np.float64)  # the same values, exactly
    k32, k64 = relu.nngp(x32), relu.nngp(x64)
    assert k32.dtype == np.float64
    assert_close(k32, k64, rtol=1e-12)
    out = relu.ntk(x64, dtype=np.float32)
    assert out.dtype == np.float32
    assert np.array_equal(out, relu.ntk(x64).astype(np.float32))


def test_integer_arrays_are_cast_to_float64(relu):
    """Integer data are numbers like a list of ints: computed exactly as their float64 copy."""
    x = np.arange(12).reshape(4, 3) % 5 - 2
    for arr in (x, x.astype(np.int8), (x + 2).astype(np.uint16), x.tolist()):
        want = relu.kernels(np.asarray(arr, dtype=np.float64))
        got = relu.kernels(arr)
        for kind in want:
            assert got[kind].dtype == np.float64
            assert np.array_equal(got[kind], want[kind])


def test_list_and_non_contiguous_input(relu):
    x = np.random.default_rng(4).normal(size=(4, 6))
    view = x[:, ::2]  # not C-contiguous
    assert np.array_equal(relu.nngp(view), relu.nngp(np.ascontiguousarray(view)))
    assert np.array_equal(relu.nngp(view.tolist()), relu.nngp(view))


def test_progress_callback(relu):
    calls = []
    x = np.random.default_rng(5).normal(size=(20, 3))
    relu.nngp(x, progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# --- bad data: a TPError before any compilation work -------------------------------------

X = np.random.default_rng(6).normal(size=(4, 3))
NAN = X.copy()
NAN[2, 1] = np.nan
INF = X.copy()
INF[1, 0] = -np.inf

BAD_CALLS = {
    "1-d": (dict(x1=X[0]), "shape"),
    "3-d": (dict(x1=X[None]), "shape"),
    "nan": (dict(x1=NAN), "NaN or infinity"),
    "inf": (dict(x1=INF), "NaN or infinity"),
    "inf-in-x2": (dict(x1=X, x2=INF), "X2 contains NaN or infinity"),
    "d-mismatch": (dict(x1=X, x2=X[:, :2]), "dimension"),
    "no-points": (dict(x1=X[:0]), "empty"),
    "no-features": (dict(x1=X[:, :0]), "empty"),
    "bool": (dict(x1=X > 0), "real numbers"),
    "complex": (dict(x1=X.astype(complex)), "real numbers"),
    "strings": (dict(x1=np.array([["a", "b"]])), "real numbers"),
    "huge": (dict(x1=X * 1e160), "too large for float64 kernels"),
    "huge-in-x2": (dict(x1=X, x2=X * 1e80), "X2 is too large for float64"),
    "ragged": (dict(x1=[[1.0, 2.0], [3.0]]), "not an array"),
    "dict-extra": (dict(x1={"x": X, "w": X}), "'w' is not an input"),
    "dict-missing": (dict(x1={"w": X}), "no data for input 'x'"),
    "kind": (dict(x1=X, get="nngpp"), "unknown kernel"),
    "backend": (dict(x1=X, backend="cuda-ish"), "unknown backend"),
    "dtype-int": (dict(x1=X, dtype=np.int64), "floating-point"),
    "dtype-junk": (dict(x1=X, dtype="not-a-dtype"), "dtype"),
}


def _fresh_net(source=(ROOT / "examples" / "relu_mlp.tp").read_text()):
    return tp.compile_source(source)


def _assert_nothing_built(net, cache):
    assert "rolled_program" not in net.__dict__
    assert "_module" not in net.__dict__
    assert not list(cache.glob("k_*.py")), "a kernel module was generated"


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_data_fails_before_compiling(case, backend, tmp_path, monkeypatch):
    monkeypatch.setenv("TPC_CACHE_DIR", str(tmp_path))
    kw, match = BAD_CALLS[case]
    kw = dict(kw)
    kw.setdefault("backend", backend)
    net = _fresh_net()
    with pytest.raises(tp.TPError, match=match):
        net.kernels(**kw)
    _assert_nothing_built(net, tmp_path)


SEQ_BAD = {
    "flat": (np.zeros((3, 5)), r"needs \(N, 4, d\)"),
    "steps": (np.zeros((3, 5, 2)), "5 steps"),
}


@pytest.mark.parametrize("case", list(SEQ_BAD))
def test_bad_sequence_data(case, tmp_path, monkeypatch):
    monkeypatch.setenv("TPC_CACHE_DIR", str(tmp_path))
    net = _fresh_net((ROOT / "examples" / "rnn.tp").read_text())
    x, match = SEQ_BAD[case]
    with pytest.raises(tp.TPError, match=match):
        net.nngp(x)
    _assert_nothing_built(net, tmp_path)


def test_several_inputs_bad_data(tmp_path, monkeypatch):
    monkeypatch.setenv("TPC_CACHE_DIR", str(tmp_path))
    net = tp.compile_source(TWO_INPUTS)
    cases = [
        (X, "pass a dict"),
        ({"x": X}, "no data for input 'z'"),
        ({"x": X, "z": X[:3]}, "different numbers of points"),
        ({"x": X, "z": NAN}, r"X\['z'\] contains NaN"),
    ]
    for data, match in cases:
        with pytest.raises(tp.TPError, match=match):
            net.nngp(data)
    with pytest.raises(tp.TPError, match="dimension of input 'z'"):
        net.nngp({"x": X, "z": X}, {"x": X, "z": X[:, :2]})
    _assert_nothing_built(net, tmp_path)


# --- every example: Numba equals the NumPy reference ------------------------------------


def _available(net):
    """The kinds a network computes; asking for a refused one says why (with both backends)."""
    x = data_for(net, 2, seed=0)
    kp = net.recursion
    for kind in set(("nngp", "ntk")) - set(kp.kinds):
        reason = kp.refused.get(kind)
        assert reason, f"{kind} is neither computed nor refused with a reason"
        for backend in ("numpy", "numba"):
            with pytest.raises(tp.TPError, match="not available") as err:
                net.kernels(x, get=kind, backend=backend)
            assert reason in str(err.value)
        preset = net.ir.parametrization.preset
        if preset != "ntk":
            assert f"parametrization {preset}" in reason
    return kp.kinds


#: the examples whose Numba compile takes 15-20 s: their rules (user acts through the Mehler
#: series, nested nonlinearities through 3-D quadrature) have default cases in test_series.py
#: and test_quadrature.py, so the whole example runs under -m slow
# compile-heavy (each > 20 s on 2 cores); the CNN examples' generated code is checked
# against the NumPy reference in tests/test_spatial.py
HEAVY_EXAMPLES = {"user_act", "nested_nonlin", "cnn_gap", "conv1d", "cnn_flatten", "transformer",
                  "diagnose_tanh"}


# (batchnorm's kernels are those of one batch: tests/test_batchnorm.py compares its backends;
# programs of reports have limits, not kernels: tests/test_limits.py)
PAIRWISE = [p for p in EXAMPLES if not tp.compile(p).ir.batched
            and tp.compile(p).ir.readout is not None]


# agreement of backends / with finite networks at their own tolerances, not the
# accuracy probe: its warnings (4-D rules at ~1e-6) are what tests/test_exact.py checks
@pytest.mark.filterwarnings("ignore::tpcompiler.errors.TPWarning")
@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow)
                                  if p.stem in HEAVY_EXAMPLES else p for p in PAIRWISE],
                         ids=[p.stem for p in PAIRWISE])
def test_example_numba_equals_reference(path):
    net = tp.compile(path)
    kinds = _available(net)
    if not kinds:
        pytest.skip(f"{path.name}: every kernel is refused (checked above)")
    x1 = data_for(net, 7, seed=1)
    x2 = data_for(net, 4, seed=2)
    if isinstance(x1, dict):
        for v in x1.values():
            v[5] = v[2]  # a repeated point
    else:
        x1[5] = x1[2]
    fast = net.kernels(x1, get=kinds)
    ref = net.kernels(x1, get=kinds, backend="numpy")
    fast12 = net.kernels(x1, x2, get=kinds)
    ref12 = net.kernels(x1, x2, get=kinds, backend="numpy")
    closed = not net.recursion.integrands  # no quadrature: identical points are exact
    for kind in kinds:
        k = fast[kind]
        assert k.shape == (7, 7) and fast12[kind].shape == (7, 4)
        assert np.array_equal(k, k.T), "not symmetric"
        assert np.all(np.diag(k) > 0)
        assert_close(k, ref[kind])
        assert_close(fast12[kind], ref12[kind])
        # the diagonal is the per-point value, whatever else is in the batch
        assert np.array_equal(np.diag(k)[2:4], np.diag(net.kernels(take(x1, slice(2, 4)),
                                                                   get=kind)[kind]))
        if closed:
            assert_close(k[2, 5], k[2, 2], rtol=1e-13)
            assert_close(net.kernels(x1, take(x1, slice(2, 3)), get=kind)[kind][2, 0],
                         k[2, 2], rtol=1e-13)
