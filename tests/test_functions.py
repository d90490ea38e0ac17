"""The registry of nonlinearities (tpcompiler/functions.py): every primitive is known to every
stage (the printer and generated code, the NumPy reference, the simulator, quadrature's kink
splitting, LaTeX), and every builtin of the language means what its formula says, checked
against formulas written here with NumPy and scipy, not taken from the registry."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
from scipy import special

import tpcompiler as tp
from tpcompiler import functions as F
from tpcompiler import quadrature as Q
from tpcompiler.backends import cache
from tpcompiler.backends.numpy import evaluate_expr
from tpcompiler.backends.printer import KernelPrinter, runtime_lines

from reference import gauss2

#: the formula of every builtin, with the keyword values the test passes
INDEPENDENT = {
    "identity": (lambda z: z, {}),
    "relu": (lambda z: np.maximum(z, 0.0), {}),
    "leaky_relu": (lambda z: np.where(z > 0, z, 0.2 * z), {"slope": sp.Rational(1, 5)}),
    "abrelu": (lambda z: np.where(z > 0, 2.0 * z, -0.5 * z),
               {"a": sp.Rational(-1, 2), "b": sp.Integer(2)}),
    "abs": (np.abs, {}),
    "step": (lambda z: (z > 0).astype(float), {}),
    "sign": (np.sign, {}),
    "erf": (special.erf, {}),
    "tanh": (np.tanh, {}),
    "sigmoid": (special.expit, {}),
    "gelu": (lambda z: z * special.ndtr(z), {}),
    "softplus": (lambda z: np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0.0), {}),
    "sin": (np.sin, {}),
    "cos": (np.cos, {}),
    "exp": (np.exp, {}),
    "silu": (lambda z: z * special.expit(z), {}),
    "hardtanh": (lambda z: np.clip(z, -1.0, 1.0), {}),
    "relu6": (lambda z: np.clip(z, 0.0, 6.0), {}),
    "mish": (lambda z: z * np.tanh(np.logaddexp(0.0, z)), {}),
    "softsign": (lambda z: z / (1.0 + np.abs(z)), {}),
}
Z = np.array([-7.0, -6.0, -2.5, -1.0, -0.3, 0.0, 1e-9, 0.7, 1.0, 3.0, 6.0, 8.5])
z = sp.Symbol("z", real=True)


def _builtin(name: str) -> sp.Expr:
    params, fn = F.BUILTINS[name]
    given = INDEPENDENT[name][1]
    return fn(z, **{k: given.get(k, v) for k, v in params.items()})


def test_every_builtin_has_an_independent_formula():
    assert set(INDEPENDENT) == set(F.BUILTINS)


@pytest.mark.parametrize("name", sorted(F.BUILTINS))
def test_builtin_values_match_their_formula(name):
    """Through the reference evaluator (the registry's NumPy implementations), at kinks,
    jumps and 0 included: to a few ulps."""
    got = np.asarray(evaluate_expr(_builtin(name), {"z": Z}), dtype=float)
    want = INDEPENDENT[name][0](Z)
    np.testing.assert_allclose(got, want, rtol=4e-15, atol=4e-16)


@pytest.mark.parametrize("cls", F.PRIMITIVES, ids=lambda c: c.__name__)
def test_primitive_is_known_to_every_stage(cls):
    args = (z,) if 1 in cls.nargs else (z, sp.Rational(-1, 2), sp.Integer(2))
    e = cls(*args)
    # the NumPy reference and the simulator's evaluator: the registry's implementation
    assert F.numpy_function(cls) is cls.numpy
    ref = np.asarray(cls.numpy(Z, *[float(a) for a in args[1:]]), dtype=float)
    # generated code: the printer names it, and its scalar runtime function (compiled by
    # Numba, as in every module) agrees with the NumPy implementation
    src = KernelPrinter().doprint(e)
    name = cls.runtime_name()
    assert src.startswith(name + "(")
    if cls.scalar is not None:
        body = runtime_lines([f"    return {src}"], "@njit(cache=True)")
        module = cache.load_module("import math\nfrom numba import njit\n\n"
                                   + "\n".join(body) + "\n")
        fn = getattr(module, name)
        got = np.array([fn(float(v), *[float(a) for a in args[1:]]) for v in Z])
        np.testing.assert_allclose(got, ref, rtol=4e-15, atol=4e-16)
    # quadrature splits at its kink, and integrates each side as the branch given
    if cls.branches:
        assert cls in Q.KINKED
        for side, pts in ((0, Z[Z < 0]), (1, Z[Z > 0])):
            branch = cls.branches[side](*args)
            vals = np.broadcast_to(np.asarray(evaluate_expr(branch, {"z": pts}), float),
                                   pts.shape)
            np.testing.assert_allclose(vals, ref[np.isin(Z, pts)], rtol=4e-15)
    else:
        assert cls not in Q.KINKED
    # LaTeX: its own name, not sympy's rendering of the class name
    assert cls.latex_name in sp.latex(e) and cls.__name__ not in sp.latex(e)


@pytest.mark.parametrize("cls", F.PRIMITIVES, ids=lambda c: c.__name__)
def test_primitive_derivative_matches_central_differences(cls):
    """fdiff (the NTK's backward program) against central differences of the NumPy
    implementation, away from kinks (step and sign: 0 there, the a.e. derivative)."""
    args = (z,) if 1 in cls.nargs else (z, sp.Rational(-1, 2), sp.Integer(2))
    d = sp.diff(cls(*args), z)
    pts = Z[np.abs(Z) > 1e-3]
    got = np.broadcast_to(np.asarray(evaluate_expr(d, {"z": pts}), float), pts.shape)
    h = 1e-6
    extra = [float(a) for a in args[1:]]
    fd = (cls.numpy(pts + h, *extra) - cls.numpy(pts - h, *extra)) / (2 * h)
    # central differences: truncation h^2 f''' / 6 and rounding eps |f| / h, both ~1e-9 here
    np.testing.assert_allclose(got, fd, rtol=1e-7, atol=1e-8)


#: the kinks of the compositions, for the reference quadrature
KINKS = {"silu": (), "hardtanh": (-1.0, 1.0), "relu6": (0.0, 6.0), "mish": (), "softsign": (0.0,)}


@pytest.mark.parametrize("name", sorted(KINKS))
def test_new_builtins_kernel_and_simulator(name):
    """Each composition's one-layer NNGP (the reference backend: the registry's pieces through
    the kernel program and its quadrature rules) against nested scipy quadrature of the
    formula written here (tests/reference.py, 1e-13 requested: tol 1e-10 of the scale); and
    the simulator's finite network is the formula applied by hand to its own weights."""
    src = f"input x\nh = dense(x, var=2.0, bias=0.1)\ny = readout({name}(h))\n"
    net = tp.compile_source(src)
    X = np.array([[1.5, -0.3, 0.8], [0.4, 1.1, -2.0]])
    K = net.kernels(X, get=("nngp",), backend="numpy")["nngp"]
    cov = 2.0 * X @ X.T / 3 + 0.1
    phi = INDEPENDENT[name][0]
    f = lambda u, v: float(phi(np.float64(u)) * phi(np.float64(v)))  # noqa: E731
    ref = np.array([[gauss2(f, cov[np.ix_([i, j], [i, j])], KINKS[name]) for j in range(2)]
                    for i in range(2)])
    assert np.max(np.abs(K - ref)) <= 1e-10 * np.max(np.diag(ref))
    fn = net.simulate(width=7, seed=1)
    out = fn(X)
    w, v = fn.params["A0"], fn.params["A1"]
    h = X @ (fn.scales["A0"].mult * w).T + fn.params["B0"] * fn.scales["B0"].mult
    np.testing.assert_allclose(out, phi(h) @ (fn.scales["A1"].mult * v), rtol=1e-12,
                               atol=1e-14)
