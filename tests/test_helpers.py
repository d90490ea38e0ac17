"""Closed-form Gaussian expectations in tpcompiler.helpers against independent quadrature.

References (both independent of the closed forms; accuracies measured against them over
q1, q2 in [1e-3, 10] and rho in [-1, 1], near-singular and exactly +-1 included):

* Smooth integrands (erf, gelu and derivatives, and their products with a linear v):
  2-D Gauss-Hermite on z ~ N(0, I), u = sqrt(q1) z1, v = sqrt(q2) (rho z1 + sqrt(1-rho^2) z2)
  (Cholesky).  Plain GH is not enough here: erf(sqrt(q) z) switches sign over a width
  ~1/sqrt(q), and at q = 10 degree 200 only reaches 1e-6 (erf x erf) and 2e-5 (erf' x erf'),
  degree 300 6e-9 / 2e-7, and numpy's hermegauss overflows above degree ~360.  So the
  degree-200 rule is applied with its nodes scaled by S = 1/2 (weights multiplied by
  S exp((1 - S^2) y^2 / 2), i.e. the GH rule of N(0, S^2) reweighted to N(0, 1)): nodes twice
  as dense, still reaching |z| = 14.  Measured agreement with the closed forms is then
  <= 1e-15 absolute for erf, erf', gelu' and <= 4e-15 for gelu x gelu (values up to ~6).
* Piecewise integrands (relu, step, linear): all are positively homogeneous, so in polar
  coordinates z = r (cos a, sin a) the radial integral is a Gamma function and what is left is
  a 1-D integral over the angle a of a trigonometric polynomial that is smooth between the
  kinks/jumps.  scipy.integrate.quad with the kink angles as breakpoints reaches ~1e-16.
"""

import inspect
import math

import numba
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from numpy.polynomial.hermite_e import hermegauss
from scipy import integrate
from scipy.special import erf, ndtr

from tpcompiler import helpers as H

EPS = 2.220446049250313e-16

# ---------------------------------------------------------------------------------------------
# references


def _scaled_gh(n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    y, w = hermegauss(n)
    z = scale * y
    wz = w * scale * np.exp((1.0 - scale * scale) * y * y / 2.0) / math.sqrt(2.0 * math.pi)
    keep = wz > 0.0  # the outermost weights underflow; dropping them changes nothing
    return z[keep], wz[keep]


_Z, _W = _scaled_gh(200, 0.5)
_Z1, _Z2 = np.meshgrid(_Z, _Z, indexing="ij")
_W2 = np.outer(_W, _W)


def _chol(q1: float, q2: float, rho: float) -> tuple[float, float, float]:
    """u = a z1, v = b z1 + c z2; (1 - rho)(1 + rho) keeps c accurate near |rho| = 1."""
    return math.sqrt(q1), rho * math.sqrt(q2), math.sqrt(q2) * math.sqrt((1 - rho) * (1 + rho))


def gh_ref(f, g, q1: float, q2: float, rho: float) -> float:
    """E[f(u) g(v)] by 2-D (scaled) Gauss-Hermite."""
    a, b, c = _chol(q1, q2, rho)
    return float(np.sum(_W2 * f(a * _Z1) * g(b * _Z1 + c * _Z2)))


def gh_ref1(f, q: float) -> float:
    """E[f(u)], u ~ N(0, q), by 1-D (scaled) Gauss-Hermite."""
    return float(np.sum(_W * f(math.sqrt(q) * _Z)))


def polar_ref(f, g, degree: int, q1: float, q2: float, rho: float) -> float:
    """E[f(u) g(v)] for f, g positively homogeneous of total degree `degree`, via polar coords.

    E = M_n / (2 pi) * int_0^{2 pi} f(a cos t) g(b cos t + c sin t) dt with
    M_n = int_0^inf r^(n+1) exp(-r^2/2) dr = 2^(n/2) Gamma(n/2 + 1).
    """
    a, b, c = _chol(q1, q2, rho)
    radial = 2.0 ** (degree / 2) * math.gamma(degree / 2 + 1) / (2.0 * math.pi)
    # kinks where u = 0 (t = pi/2, 3pi/2) and where v = 0 (t perpendicular to (b, c))
    t_v = math.atan2(c, b) + math.pi / 2
    pts = sorted({(p % (2 * math.pi)) for p in (math.pi / 2, 1.5 * math.pi, t_v, t_v + math.pi)})
    pts = [p for p in pts if 1e-14 < p < 2 * math.pi - 1e-14]

    def integrand(t: float) -> float:
        return f(a * math.cos(t)) * g(b * math.cos(t) + c * math.sin(t))

    # full_output silences QUADPACK's "roundoff detected" warning, which only means it could
    # not certify 1e-14; the returned error estimate is checked instead
    val, err, *_ = integrate.quad(
        integrand,
        0.0,
        2 * math.pi,
        points=pts,
        epsabs=1e-17,
        epsrel=2e-14,
        limit=200,
        full_output=1,
    )
    assert err <= 1e-10 * (1.0 + abs(val))
    return radial * val


def relu(x):
    return max(x, 0.0)


def step(x):
    return 1.0 if x > 0 else 0.0


def lin(x):
    return x


def _phi(x):
    return np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def gelu(x):
    return x * ndtr(x)


def dgelu(x):
    return ndtr(x) + x * _phi(x)


def gauss(x):
    return np.exp(-x * x)


# ---------------------------------------------------------------------------------------------
# strategies

qs = st.floats(1e-3, 10.0)
near_one = st.builds(
    lambda sign, e: sign * (1.0 - 10.0**-e), st.sampled_from([-1.0, 1.0]), st.floats(1.0, 12.0)
)
rhos = st.one_of(st.floats(-1.0, 1.0), st.sampled_from([-1.0, 0.0, 1.0]), near_one)
EDGES = [(10.0, 10.0, 1.0), (10.0, 1e-3, -1.0), (1e-3, 10.0, 1 - 1e-12), (3.0, 0.2, -1 + 1e-12)]


def cov_examples(fn):
    for q1, q2, rho in EDGES:
        fn = example(q1=q1, q2=q2, rho=rho)(fn)
    return fn


def kk(q1: float, q2: float, rho: float) -> float:
    return rho * math.sqrt(q1 * q2)


def call(name: str, q1: float, q2: float, k: float) -> float:
    """Call a helper with the part of (q1, q2, k) its signature takes."""
    fn = H.HELPERS[name]
    params = tuple(inspect.signature(fn).parameters)
    return fn(*(_full(q1, q2, k)[p] for p in params))


def _full(q1: float, q2: float, k: float) -> dict:
    """Every argument a helper may take; r and t are the shared arc-cosine pieces."""
    r = H.rootdet(q1, q2, k)
    x = min(1.0, abs(k) / math.sqrt(q1 * q2)) if q1 > 0 and q2 > 0 else 0.0
    lo, hi = min(r, abs(k)), max(r, abs(k))  # atan_unit's ratio lo / hi
    # the derivatives' direction (dq1, dq2, dk): the scaling of both points, which keeps
    # parallel inputs parallel (a derivative exists along it everywhere)
    return {"q1": q1, "q2": q2, "k": k, "q": q1, "r": r, "t": H.angle(q1, q2, r, k), "x": x,
            "lo": lo, "hi": hi if hi > 0 else 1.0, "dq1": q1, "dq2": q2, "dk": k, "dq": q1}


def sin_theta(rho: float) -> float:
    return math.sqrt((1 - rho) * (1 + rho))


FAST = settings(deadline=None, max_examples=60)

# ---------------------------------------------------------------------------------------------
# piecewise helpers vs the polar reference


@FAST
@given(q1=qs, q2=qs, rho=rhos)
@cov_examples
def test_relu_relu(q1, q2, rho):
    ref = polar_ref(relu, relu, 2, q1, q2, rho)
    # The reference reaches ~1e-16 * sqrt(q1 q2); the closed form is flat in theta at both
    # ends (d/dtheta ~ (pi - theta) sin theta), so rounding of k and the snap of s cost
    # nothing measurable: observed error < 3e-16 * sqrt(q1 q2).
    assert abs(H.relu_relu(q1, q2, kk(q1, q2, rho)) - ref) <= 2e-15 * math.sqrt(q1 * q2)


@FAST
@given(q1=qs, q2=qs, rho=rhos)
@cov_examples
def test_step_step(q1, q2, rho):
    ref = polar_ref(step, step, 0, q1, q2, rho)
    # step_step = (pi - theta) / (2 pi) has slope 1/(2 pi) in theta, and theta itself is
    # ill-conditioned at |rho| -> 1: a rounding error of a few eps * q1 q2 in s = q1 q2 - k^2
    # (k is rounded on the way in) moves theta by ~eps / sin(theta) (measured: <= 1.01 eps /
    # sin(theta) for sin(theta) > 1e-7), and the snap below s = 8 eps q1 q2 moves it by up to
    # theta <= sqrt(8 eps) + noise ~ 4.4e-8 (measured: <= 9 eps / sin(theta) just above the
    # snap threshold).  That is inherent to passing k in float64 -- the reference gets rho
    # exactly -- so the tolerance follows it; away from |rho| = 1 the error is < 2e-14.
    dtheta = min(5e-8, 10 * EPS / max(sin_theta(rho), 1e-300))
    assert abs(H.step_step(q1, q2, kk(q1, q2, rho)) - ref) <= 1e-14 + dtheta / (2 * math.pi)


@FAST
@given(q1=qs, q2=qs, rho=rhos)
@cov_examples
def test_relu_step(q1, q2, rho):
    ref = polar_ref(relu, step, 1, q1, q2, rho)
    # depends on cos(theta) = k / sqrt(q1 q2) only, which is well conditioned (~2 eps)
    assert abs(H.relu_step(q1, q2, kk(q1, q2, rho)) - ref) <= 1e-15 * math.sqrt(q1)


@FAST
@given(q1=qs, q2=qs, rho=rhos)
@cov_examples
def test_lin_step(q1, q2, rho):
    ref = polar_ref(lin, step, 1, q1, q2, rho)
    assert abs(H.lin_step(q2, kk(q1, q2, rho)) - ref) <= 1e-15 * math.sqrt(q1)


@FAST
@given(q=qs)
def test_relu_mean(q):
    ref = integrate.quad(
        lambda x: x * math.exp(-x * x / (2 * q)) / math.sqrt(2 * math.pi * q),
        0.0,
        math.inf,
        epsabs=0.0,
        epsrel=2e-14,
    )[0]
    assert abs(H.relu_mean(q) - ref) <= 1e-15 * math.sqrt(q)


# ---------------------------------------------------------------------------------------------
# smooth helpers vs scaled Gauss-Hermite

# measured GH-vs-closed-form worst case is ~4e-15 absolute at q = 10 (values up to ~6), so
# 2e-14 absolute plus 2e-15 relative leaves a margin without hiding any formula error
SMOOTH_ATOL, SMOOTH_RTOL = 2e-14, 2e-15


def _close(got: float, ref: float) -> bool:
    return abs(got - ref) <= SMOOTH_ATOL + SMOOTH_RTOL * abs(ref)


@pytest.mark.parametrize(
    "name, f, g",
    [
        ("erf_erf", erf, erf),
        ("gauss_gauss", gauss, gauss),
        ("gelu_gelu", gelu, gelu),
        ("dgelu_dgelu", dgelu, dgelu),
        ("gelu_lin", gelu, lin),
        ("erf_lin", erf, lin),
    ],
)
@settings(deadline=None, max_examples=40)
@given(q1=qs, q2=qs, rho=rhos)
@cov_examples
def test_smooth(name, f, g, q1, q2, rho):
    got = H.HELPERS[name](q1, q2, kk(q1, q2, rho))
    ref = gh_ref(f, g, q1, q2, rho)
    assert _close(got, ref), (got, ref, got - ref)


@FAST
@given(q=qs)
def test_gelu_mean(q):
    assert _close(H.gelu_mean(q), gh_ref1(gelu, q))


# ---------------------------------------------------------------------------------------------
# exactness and degenerate inputs


@settings(deadline=None, max_examples=200)
@given(q=st.floats(1e-150, 1e150))  # q * q must neither overflow nor underflow
def test_identical_and_antipodal_exact(q):
    assert H.th(q, q, q) == 0.0
    assert H.th(q, q, -q) == math.pi
    assert H.step_step(q, q, q) == 0.5
    assert H.step_step(q, q, -q) == 0.0
    assert abs(H.relu_relu(q, q, q) - q / 2) <= 1e-15 * q
    assert abs(H.relu_relu(q, q, -q)) <= 1e-15 * q
    # relu_step(q, q, q) = E[relu(u) step(u)] = E[relu(u)]
    assert abs(H.relu_step(q, q, q) - H.relu_mean(q)) <= 1e-15 * math.sqrt(q)
    assert H.relu_step(q, q, -q) == 0.0


def test_identical_exact_values():
    for q in (1e-3, 0.1, 1.0, 2.0, 3.7, 10.0):
        assert H.relu_relu(q, q, q) == q / 2
        assert H.step_step(q, q, q) == 0.5
        assert H.relu_relu(q, q, -q) == 0.0


@settings(deadline=None, max_examples=100)
@given(q1=qs, q2=qs, sign=st.sampled_from([-1.0, 1.0]), ulps=st.integers(0, 16))
def test_k_rounded_past_boundary_is_not_nan(q1, q2, sign, ulps):
    k = sign * math.sqrt(q1 * q2) * (1.0 + ulps * EPS)
    assert H.th(q1, q2, k) == (0.0 if sign > 0 else math.pi)
    for name in H.HELPER_SOURCE_ORDER:
        assert math.isfinite(call(name, q1, q2, k)), name


@pytest.mark.parametrize("q1, q2", [(0.0, 0.0), (0.0, 2.0), (2.0, 0.0)])
def test_zero_norm(q1, q2):
    assert H.th(q1, q2, 0.0) == math.pi / 2
    assert H.angle(q1, q2, H.rootdet(q1, q2, 0.0), 0.0) == math.pi / 2
    assert H.relu_relu(q1, q2, 0.0) == 0.0
    # a zero variance is a point mass at 0, where the language's step(x) = [x > 0] is 0: the
    # network's unit is exactly 0 there (not the 1/4 of an angle pi/2 convention)
    assert H.step_step(q1, q2, 0.0) == 0.0
    assert H.step_step_q(q1, q2, math.pi / 2) == 0.0
    assert H.step_mean(q1 * q2) == 0.0
    assert H.relu_step(q1, q2, 0.0) == 0.0
    for name in H.HELPER_SOURCE_ORDER:
        assert math.isfinite(call(name, q1, q2, 0.0)), name


@pytest.mark.parametrize("rho", [-1.0, -0.3, 0.0, 0.7, 1.0, 1 - 1e-13])
def test_shared_angle_forms_equal_the_direct_ones(rho):
    q1, q2 = 1.7, 0.4
    k = kk(q1, q2, rho)
    r = H.rootdet(q1, q2, k)
    t = H.angle(q1, q2, r, k)
    assert t == H.th(q1, q2, k)
    assert H.relu_relu_rt(r, t, k) == pytest.approx(H.relu_relu(q1, q2, k), rel=1e-15, abs=1e-300)
    assert H.step_step_t(t) == H.step_step(q1, q2, k)


def test_branch_free_atan2_matches_math_atan2():
    rng = np.random.default_rng(0)
    theta = np.concatenate([rng.uniform(0, np.pi, 200_000), [0.0, np.pi, np.pi / 2, np.pi / 4,
                                                             3 * np.pi / 4, 1e-300, np.pi - 1e-9]])
    scale = 10.0 ** rng.uniform(-150, 150, theta.size)
    r, k = np.sin(theta) * scale, np.cos(theta) * scale
    r[-6] = 0.0
    k[-6] = 1.0
    r[-5] = 0.0
    k[-5] = -2.0
    for ri, ki in zip(r.tolist(), k.tolist()):
        got, want = H.atan2_pos(ri, ki), math.atan2(ri, ki)
        assert abs(got - want) <= 4.5e-16 * max(1.0, abs(want)), (ri, ki, got, want)
    assert H.atan2_pos(0.0, 3.0) == 0.0
    assert H.atan2_pos(0.0, -3.0) == math.pi
    assert H.atan2_pos(1.0, 0.0) == math.pi / 2
    assert H.atan2_pos(0.0, 0.0) == 0.0


def test_closed_form_constants():
    # hand-checkable values: at rho = 0 the product factorises into the means
    assert H.relu_relu(2.0, 3.0, 0.0) == pytest.approx(H.relu_mean(2.0) * H.relu_mean(3.0))
    assert H.gelu_gelu(2.0, 3.0, 0.0) == pytest.approx(H.gelu_mean(2.0) * H.gelu_mean(3.0))
    assert H.relu_step(1.0, 1.0, 0.0) == pytest.approx(H.relu_mean(1.0) / 2)
    assert H.erf_erf(1.0, 1.0, 0.0) == 0.0


# ---------------------------------------------------------------------------------------------
# compiled-source contract


def test_registry():
    assert tuple(H.HELPERS) == H.HELPER_SOURCE_ORDER
    for name, fn in H.HELPERS.items():
        assert fn.__name__ == name
        assert fn.__doc__ and "\n" not in fn.__doc__.strip()


def test_sources_are_self_contained():
    """Bodies may name only math, min/max and helpers defined earlier in the order."""
    allowed = set(dir(math)) | {"math", "min", "max", "abs"}
    for name in H.HELPER_SOURCE_ORDER:
        fn = H.HELPERS[name]
        assert not fn.__code__.co_freevars, name
        assert set(fn.__code__.co_names) <= allowed, (name, set(fn.__code__.co_names) - allowed)
        allowed.add(name)


@pytest.fixture(scope="module")
def jitted():
    """Compile the helpers the way the numba backend does: sources copied in order, @njit."""
    ns = {"math": math, "njit": numba.njit}
    for name in H.HELPER_SOURCE_ORDER:
        exec("@njit(cache=False)\n" + inspect.getsource(H.HELPERS[name]), ns)
    return ns


def test_numba_matches_python(jitted):
    rng = np.random.default_rng(12345)
    q1s = rng.uniform(0.0, 10.0, 50)
    q2s = rng.uniform(0.0, 10.0, 50)
    rhos_ = np.concatenate([rng.uniform(-1, 1, 44), [-1.0, 1.0, 0.0, 1 - 1e-12, -1 + 1e-12, 1.0]])
    q1s[:3] = 0.0
    q2s[3:6] = 0.0
    for name in H.HELPER_SOURCE_ORDER:
        params = tuple(inspect.signature(H.HELPERS[name]).parameters)
        for q1, q2, rho in zip(q1s.tolist(), q2s.tolist(), rhos_.tolist(), strict=True):
            full = _full(q1, q2, kk(q1, q2, rho))
            args = tuple(full[p] for p in params)
            a, b = H.HELPERS[name](*args), jitted[name](*args)
            # bitwise identical here (same libm, no fastmath), but a different LLVM could
            # reorder or contract: allow a few ulps
            assert abs(a - b) <= 4 * EPS * max(abs(a), 1e-300), (name, args, a, b)


def test_direct_njit_of_leaf_helpers():
    """Helpers that call no other helper can also be jitted from the function object."""
    nb_det = numba.njit(H.snapped_det)
    for q1, q2, k in [(1.0, 2.0, 0.3), (2.0, 2.0, 2.0), (2.0, 2.0, -2.0), (1.0, 1.0, 1.0 + EPS)]:
        assert nb_det(q1, q2, k) == H.snapped_det(q1, q2, k)
    assert numba.njit(H.erf_lin)(0.5, 1.0, 0.3) == H.erf_lin(0.5, 1.0, 0.3)


# ---------------------------------------------------------------------------------------------
# derivatives (passes/tangent.py): each *_d helper is the directional derivative of its helper


#: helper -> its directional derivative at (q1, q2, k) along (dq1, dq2, dk), from the *_d
#: helpers of helpers.py
_DERIVATIVES = {
    "relu_relu": lambda q1, q2, k, a, b, c: H.step_step(q1, q2, k) * c + H.relu_relu_dq(
        q1, q2, H.rootdet(q1, q2, k), a, b),
    "step_step": lambda q1, q2, k, a, b, c: H.step_step_d(q1, q2, H.rootdet(q1, q2, k), k,
                                                          a, b, c),
    "relu_step": lambda q1, q2, k, a, b, c: H.relu_step_d(q1, q2, k, a, b, c),
    "lin_step": lambda q1, q2, k, a, b, c: H.lin_step_d(q2, k, b, c),
    "relu_mean": lambda q1, q2, k, a, b, c: H.relu_mean_d(q1, a),
}


#: the helpers that take part of (q1, q2, k), as functions of all three
_FEWER_ARGS = {"relu_mean": lambda q1, q2, k: H.relu_mean(q1),
               "lin_step": lambda q1, q2, k: H.lin_step(q2, k)}


@settings(deadline=None, max_examples=60)
@given(q1=st.floats(0.05, 10.0), q2=st.floats(0.05, 10.0), rho=st.floats(-0.95, 0.95),
       direction=st.tuples(*[st.floats(-1.0, 1.0)] * 3))
def test_derivative_helpers_against_central_differences(q1, q2, rho, direction):
    """Central differences of each helper along the direction, step h = 1e-5 (of the
    variances' scale): error h^2 |f'''| / 6 with |f'''| <= ~1e2 on this box (|rho| <= 0.95
    keeps the angle's derivatives bounded, q >= 0.05 the square roots'), plus rounding
    1e-16 / h: 1e-7 is safe, and a wrong rule is off by O(1)."""
    k = kk(q1, q2, rho)
    a, b, c = (x * s for x, s in zip(direction, (q1, q2, math.sqrt(q1 * q2))))
    h = 1e-5
    for name, deriv in _DERIVATIVES.items():
        f = getattr(H, name)
        if name in _FEWER_ARGS:
            f = _FEWER_ARGS[name]
        fd = (f(q1 + h * a, q2 + h * b, k + h * c) - f(q1 - h * a, q2 - h * b, k - h * c)) / (
            2 * h)
        got = deriv(q1, q2, k, a, b, c)
        assert abs(got - fd) <= 1e-7 * max(1.0, abs(fd)), (name, got, fd)


def test_step_step_derivative_at_parallel_inputs():
    # identical inputs scaled together stay identical: the angle stays 0
    assert H.step_step_d(2.0, 2.0, 0.0, 2.0, 1.0, 1.0, 1.0) == 0.0
    # antipodal inputs moved apart (a bias variance added): the angle leaves pi like a sqrt
    assert H.step_step_d(2.0, 2.0, 0.0, -2.0, 1.0, 1.0, 1.0) == math.inf
    # a zero variance stays zero (a zero input without bias): 0, as the helper's value
    assert H.step_step_d(0.0, 2.0, 0.0, 0.0, 0.0, 1.0, 0.0) == 0.0
    assert H.relu_relu_dq(0.0, 2.0, 0.0, 0.0, 1.0) == 0.0
