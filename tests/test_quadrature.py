"""The quadrature rules (tpcompiler/quadrature.py) against independent references.

References: 1-D integrals by mpmath.quad (30 digits, split at the kink); 2-D integrals by
scipy.integrate.quad nested in polar coordinates (angle outside, split at the kink rays; radius
inside), to ~1e-14; 3-D/4-D smooth integrals by products of 1-D references (block-diagonal
covariances) and by the rule at doubled orders; the 4-D product rule by Monte Carlo (6 standard
errors). Tolerances are the accuracies claimed in quadrature.py's docstring.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import sympy as sp
from scipy import integrate

import tpcompiler as tp
from tpcompiler import functions as F
from tpcompiler import quadrature as Q
from tpcompiler.backends.numpy import evaluate_expr, expectation
from tpcompiler.kernel_program import Integrand

Z = [sp.Symbol(f"z{i}", real=True) for i in range(4)]
z0, z1, z2, z3 = Z


def rule_value(expr, cov, independent=()):
    """E[expr] by the rule plan() picks; `independent`: index pairs whose covariance is a
    structural zero (as kernels.Builder passes them: sympy zeros)."""
    cov = np.asarray(cov, dtype=np.float64)
    k = len(cov)
    zero = {frozenset(p) for p in independent}
    pattern = [[sp.S.Zero if frozenset((i, j)) in zero else sp.Symbol(f"c{i}{j}")
                for j in range(k)] for i in range(k)]
    itg = Integrand("T", k, expr, *Q.plan(expr, pattern))
    return float(expectation(itg, cov)), itg


def mp_reference(fn, var):
    """E[fn(sqrt(var) t)], t ~ N(0, 1), by mpmath (fn on mpf)."""
    with mp.workdps(30):
        s = mp.sqrt(var)
        return float(mp.quad(lambda t: fn(s * t) * mp.exp(-t * t / 2), [-mp.inf, -4, 0, 4, mp.inf])
                     / mp.sqrt(2 * mp.pi))


def polar_reference(fn, cov, forms=((1, 0), (0, 1)), eps=1e-13):
    """E[fn(u, v)] by scipy's adaptive quad in polar coordinates, split at the kink rays."""
    l00 = math.sqrt(cov[0][0])
    l10 = cov[1][0] / l00
    l11 = math.sqrt(cov[1][1] - l10 * l10)
    ang = []
    for a0, a1 in forms:
        t = math.atan2(a0 * l00 + a1 * l10, -a1 * l11) % (2 * math.pi)
        ang += [t, (t + math.pi) % (2 * math.pi)]
    ang = sorted(ang) + [min(ang) + 2 * math.pi]

    def inner(t):
        c, s = math.cos(t), math.sin(t)

        def g(r):
            return r * math.exp(-r * r / 2) * fn(l00 * r * c, l10 * r * c + l11 * r * s)

        return integrate.quad(g, 0, math.inf, epsabs=eps, epsrel=eps, limit=200)[0]

    return sum(integrate.quad(inner, a, b, epsabs=eps, epsrel=eps, limit=200)[0]
               for a, b in zip(ang[:-1], ang[1:])) / (2 * math.pi)


def relu(x):
    return max(x, 0.0)


def step(x):
    return 1.0 if x > 0 else 0.0


# --- the one-dimensional rules -------------------------------------------------------------


@pytest.mark.parametrize("maker,moment", [(Q.half_rule, Q._half_moment),
                                          (Q.rayleigh_rule, Q._rayleigh_moment)])
def test_gauss_rules_integrate_polynomials_exactly(maker, moment):
    for n in (6, 12, 20, 32):
        r, w = maker(n)
        assert np.all(r > 0) and np.all(w > 0) and np.all(np.diff(r) > 0)
        for j in range(2 * n):
            exact = float(moment(j))
            assert abs(np.sum(w * r**j) - exact) <= 2e-14 * exact, (n, j)


def _named_orders() -> dict[str, set[int]]:
    from tpcompiler import series

    half = {*Q.DEFAULT_ORDER.values(), *Q.PER_POINT_ORDER.values(), *Q.PRODUCT_ORDER.values(),
            *Q.BOOSTED["tensor"].values(), *Q.BOOSTED["product"].values(), series.NODE_ORDER,
            series.BOOST_NODE_ORDER}
    rayleigh = {r for _, r in (*Q.POLAR_ORDER.values(), *Q.BOOSTED["polar"].values())}
    return {"half": half, "rayleigh": rayleigh}


def test_shipped_rules_cover_every_order_the_package_names():
    """gauss_rules.npz holds every order the rules' constants name (else an import or a first
    kernel would pay ~0.2 s of mpmath per rule), and nothing else."""
    stored = Q._stored()
    for kind, orders in _named_orders().items():
        assert orders <= set(Q.STORED_ORDERS[kind]), (kind, orders - set(Q.STORED_ORDERS[kind]))
        assert {f"{kind}_{n}" for n in Q.STORED_ORDERS[kind]} <= set(stored)
    assert len(stored) == sum(len(v) for v in Q.STORED_ORDERS.values())


@pytest.mark.parametrize("kind,n", [("half", 7), ("half", 32), ("rayleigh", 12)])
def test_shipped_rules_are_the_computed_ones(kind, n):
    """The file is what `python -m tpcompiler.quadrature` computes (bit for bit: the same
    float64 roundings of 40-digit nodes); every order in test_all_shipped_rules (slow)."""
    np.testing.assert_array_equal(np.stack(Q.compute_rule(kind, n)), Q._stored()[f"{kind}_{n}"])


@pytest.mark.slow
def test_all_shipped_rules_are_the_computed_ones():
    for kind, orders in Q.STORED_ORDERS.items():
        for n in orders:
            np.testing.assert_array_equal(np.stack(Q.compute_rule(kind, n)),
                                          Q._stored()[f"{kind}_{n}"], err_msg=f"{kind}_{n}")


def test_split_line_rule_is_a_probability_rule():
    x, w = Q.rule(32)
    assert abs(w.sum() - 1) < 1e-15 and abs(w @ x) < 1e-15 and abs(w @ x**2 - 1) < 1e-14
    assert abs(w @ x**4 - 3) < 1e-13


ONE_D = {
    "tanh^2": (sp.tanh(z0) ** 2, lambda t: mp.tanh(t) ** 2),
    "tanh(z+1)": (sp.tanh(z0 + 1), lambda t: mp.tanh(t + 1)),
    "sigmoid^2": (F.Sigmoid(z0) ** 2, lambda t: 1 / (1 + mp.exp(-t)) ** 2),
    "softplus^2": (F.Softplus(z0) ** 2, lambda t: mp.log(1 + mp.exp(t)) ** 2),
    "sin*tanh": (sp.sin(z0) * sp.tanh(z0), lambda t: mp.sin(t) * mp.tanh(t)),
    "tanh^4-2tanh^2": (sp.tanh(z0) ** 4 - 2 * sp.tanh(z0) ** 2,
                       lambda t: mp.tanh(t) ** 4 - 2 * mp.tanh(t) ** 2),
    "tanh(relu)^2": (sp.tanh(F.Relu(z0)) ** 2, lambda t: mp.tanh(max(t, 0)) ** 2),
    "step*tanh^2": (F.Step(z0) * sp.tanh(z0) ** 2, lambda t: (t > 0) * mp.tanh(t) ** 2),
    "sin*tanh(relu)": (sp.sin(z0) * sp.tanh(F.Relu(z0)), lambda t: mp.sin(t) * mp.tanh(max(t, 0))),
}
#: the docstring's 1-D claims by variance
ONE_D_TOL = {0.1: 1e-15, 1.0: 1e-14, 3.0: 2e-11, 10.0: 2e-8}


@pytest.mark.parametrize("var", sorted(ONE_D_TOL))
def test_one_dimensional_rule_matches_mpmath(var):
    for name, (expr, fn) in ONE_D.items():
        got, _ = rule_value(expr, [[var]])
        want = mp_reference(fn, var)
        assert abs(got - want) <= ONE_D_TOL[var], (name, var, got, want)


def test_shifted_tanh_is_the_hard_case_as_documented():
    expr, fn = sp.tanh(z0 + 3) ** 2, lambda t: mp.tanh(t + 3) ** 2
    for var, tol in [(1.0, 1e-11), (3.0, 1e-7), (10.0, 4e-5)]:
        got, _ = rule_value(expr, [[var]])
        assert abs(got - mp_reference(fn, var)) <= tol, var


# --- two dimensions --------------------------------------------------------------------------

COVS_2D = {  # name: (covariance, tensor tolerance, polar tolerance)
    "unit": ([[1.0, 0.5], [0.5, 1.0]], 1e-11, 1e-11),
    "1/1.5": ([[1.0, 0.6], [0.6, 1.5]], 1e-11, 1e-11),
    "0.999": ([[2.0, 1.998], [1.998, 2.0]], 5e-10, 5e-10),
    "5/4": ([[5.0, -3.0], [-3.0, 4.0]], 2e-10, 1e-11),
    "10": ([[10.0, 9.0], [9.0, 10.0]], 4e-8, 5e-7),
}
SMOOTH_2D = [
    (sp.tanh(z0) * sp.tanh(z1), lambda u, v: math.tanh(u) * math.tanh(v)),
    (sp.tanh(z0 + sp.Rational(7, 10)) ** 2 * sp.tanh(z1 - sp.Rational(3, 10)) ** 2,
     lambda u, v: math.tanh(u + 0.7) ** 2 * math.tanh(v - 0.3) ** 2),
    (sp.tanh(z0 + z1) ** 2, lambda u, v: math.tanh(u + v) ** 2),
    # one kink coordinate, correlated with the other: the tensor rule with z0 first
    (sp.tanh(z1 + F.Relu(z0)) * sp.tanh(z1), lambda u, v: math.tanh(v + relu(u)) * math.tanh(v)),
]
KINKED_2D = [
    (sp.tanh(F.Relu(z0)) * sp.tanh(F.Relu(z1)),
     lambda u, v: math.tanh(relu(u)) * math.tanh(relu(v))),
    (F.Step(z0) * F.Step(z1) * sp.tanh(z0) ** 2 * sp.tanh(z1) ** 2,
     lambda u, v: step(u) * step(v) * math.tanh(u) ** 2 * math.tanh(v) ** 2),
    (F.Erf(F.Relu(z0)) * F.Erf(F.Relu(z1)), lambda u, v: math.erf(relu(u)) * math.erf(relu(v))),
]


@pytest.mark.parametrize("cname", list(COVS_2D))
def test_two_dimensional_rules_match_scipy(cname):
    cov, tol_tensor, tol_polar = COVS_2D[cname]
    for expr, fn in SMOOTH_2D:
        got, itg = rule_value(expr, cov)
        assert not itg.kinked
        want = polar_reference(fn, cov)
        assert abs(got - want) <= tol_tensor, (cname, expr, got, want)
    for expr, fn in KINKED_2D:
        got, itg = rule_value(expr, cov)
        assert itg.kinked == (0, 1) and len(itg.kink_forms) == 2
        want = polar_reference(fn, cov)
        assert abs(got - want) <= tol_polar, (cname, expr, got, want)


def test_polar_rule_with_one_oblique_kink_line():
    expr = F.AbsF(z0 - 2 * z1) * sp.tanh(z0 + sp.Rational(1, 2))
    cov = [[1.2, 0.4], [0.4, 0.9]]
    got, itg = rule_value(expr, cov)
    # the kink line, and the line where tanh's argument has its linear part (a soft kink at
    # large radius)
    assert itg.kinked == (0, 1) and itg.kink_forms == ((1.0, -2.0), (1.0, 0.0))
    want = polar_reference(lambda u, v: abs(u - 2 * v) * math.tanh(u + 0.5), cov, ((1, -2),))
    assert abs(got - want) <= 1e-11


def test_gauss_hermite_would_not_do():
    """The reason for the kink-aware rules: full-line Gauss-Hermite at 48^2 nodes is off by 1e-3
    on tanh(relu(u)) tanh(relu(v))."""
    x, w = np.polynomial.hermite_e.hermegauss(48)
    w = w / w.sum()
    cov = COVS_2D["1/1.5"][0]
    low = np.linalg.cholesky(cov)
    u = low[0, 0] * x[:, None] + 0 * x[None, :]
    v = low[1, 0] * x[:, None] + low[1, 1] * x[None, :]
    gh = np.sum(np.outer(w, w) * np.tanh(np.maximum(u, 0)) * np.tanh(np.maximum(v, 0)))
    want = polar_reference(lambda a, b: math.tanh(relu(a)) * math.tanh(relu(b)), cov)
    got, _ = rule_value(KINKED_2D[0][0], cov)
    assert abs(gh - want) > 1e-4 and abs(got - want) < 1e-11


# --- three and four dimensions ---------------------------------------------------------------


def _cov(k, scale, rho, independent=()):
    c = np.full((k, k), rho) + (1 - rho) * np.eye(k)
    d = np.sqrt(np.linspace(0.6, 1.4, k) * scale)
    c = c * np.outer(d, d)
    for i, j in independent:
        c[i, j] = c[j, i] = 0.0
    return c


def _doubled(fun):
    """fun() with every order doubled (the self-reference for the 3-D/4-D claims)."""
    saved = dict(Q.DEFAULT_ORDER), dict(Q.POLAR_ORDER), dict(Q.PRODUCT_ORDER)
    Q.DEFAULT_ORDER.update({3: 24, 4: 14})
    Q.POLAR_ORDER.update({1: (32, 32), 2: (32, 32)})
    Q.PRODUCT_ORDER.update({1: 40, 2: 24})
    try:
        return fun()
    finally:
        for table, old in zip((Q.DEFAULT_ORDER, Q.POLAR_ORDER, Q.PRODUCT_ORDER), saved):
            table.clear()
            table.update(old)


def test_three_and_four_dimensional_tensor_rules_on_independent_blocks():
    """Block-diagonal covariances (not structurally: the rule sees one correlated block): the
    exact value is a product of 1-D integrals."""
    a = mp_reference(lambda t: mp.tanh(t + 0.5) ** 2, 1.2)
    b = polar_reference(lambda u, v: math.tanh(u) * math.tanh(v), [[0.8, 0.5], [0.5, 1.1]])
    cov3 = [[0.8, 0.5, 0.0], [0.5, 1.1, 0.0], [0.0, 0.0, 1.2]]
    got3, _ = rule_value(sp.tanh(z0) * sp.tanh(z1) * sp.tanh(z2 + sp.S.Half) ** 2, cov3)
    assert abs(got3 - a * b) <= 5e-7
    c = mp_reference(lambda t: 1 / (1 + mp.exp(-t)), 0.7)
    cov4 = np.zeros((4, 4))
    cov4[:3, :3] = cov3
    cov4[3, 3] = 0.7
    got4, _ = rule_value(sp.tanh(z0) * sp.tanh(z1) * sp.tanh(z2 + sp.S.Half) ** 2
                         * F.Sigmoid(z3), cov4)
    assert abs(got4 - a * b * c) <= 2e-5  # the 1-D factor tanh(z + 1/2)^2 alone: 7e-5 at n = 7


@pytest.mark.parametrize("expr,k,cases", [
    (sp.tanh(z0) * sp.tanh(z1) * sp.tanh(z2 + sp.S.Half), 3,
     [(1, 0.5, 2e-10), (1, 0.9, 2e-8), (3, 0.5, 5e-9), (10, 0.5, 1e-6)]),
    (sp.tanh(z0 + z2) * sp.tanh(z1 + z3), 4,
     [(1, 0.5, 1e-6), (1, 0.9, 3e-4), (3, 0.5, 1e-4), (10, 0.5, 1e-3)]),
    (F.Sigmoid(z0 + z2) * F.Sigmoid(z1 + z3) * sp.tanh(z2) * sp.tanh(z3), 4,
     [(1, 0.5, 1e-7), (1, 0.9, 2e-6), (3, 0.5, 1e-6), (10, 0.5, 1e-5)]),
])
def test_three_and_four_dimensional_tensor_claims(expr, k, cases):
    for scale, rho, tol in cases:
        cov = _cov(k, scale, rho)
        got, _ = rule_value(expr, cov)
        ref, _ = _doubled(lambda: rule_value(expr, cov))
        assert abs(got - ref) <= tol, (scale, rho, got, ref)


PRODUCT_4D = (sp.tanh(F.Relu(z0) + z2) * sp.tanh(F.Relu(z1) + z3))
INDEP_4D = [(0, 2), (0, 3), (1, 2), (1, 3)]


def test_product_rule_claims():
    cases3 = [(1, 0.5, 1e-8), (3, 0.5, 1e-6), (10, 0.5, 1e-4)]
    expr3 = sp.tanh(F.Relu(z0) + z2) * sp.tanh(F.Relu(z1) + z2)
    for scale, rho, tol in cases3:
        cov = _cov(3, scale, rho, [(0, 2), (1, 2)])
        got, itg = rule_value(expr3, cov, [(0, 2), (1, 2)])
        assert itg.kinked == (0, 1) and itg.pivot == (2,)
        ref, _ = _doubled(lambda: rule_value(expr3, cov, [(0, 2), (1, 2)]))
        assert abs(got - ref) <= tol, (scale, got, ref)
    for scale, rho, tol in [(1, 0.5, 5e-6), (3, 0.5, 5e-5), (10, 0.5, 5e-4)]:
        cov = _cov(4, scale, rho, INDEP_4D)
        got, itg = rule_value(PRODUCT_4D, cov, INDEP_4D)
        assert itg.kinked == (0, 1) and itg.pivot == (2, 3)
        ref, _ = _doubled(lambda: rule_value(PRODUCT_4D, cov, INDEP_4D))
        assert abs(got - ref) <= tol, (scale, got, ref)
    # conditional products: the smooth coordinates correlated with the kinked pair
    ntk_like = (F.Step(z0) * F.Step(z1) * sp.tanh(z2 + F.Relu(z0)) ** 2
                * sp.tanh(z3 + F.Relu(z1)) ** 2)
    for expr in (PRODUCT_4D, ntk_like):
        for scale, rho, tol in [(1, 0.5, 1e-6), (1, 0.9, 5e-6), (3, 0.5, 1e-4)]:
            cov = _cov(4, scale, rho)
            got, itg = rule_value(expr, cov)
            assert itg.kinked == (0, 1) and itg.pivot == (2, 3)
            ref, _ = _doubled(lambda: rule_value(expr, cov))
            assert abs(got - ref) <= tol, (expr, scale, rho, got, ref)


@pytest.mark.parametrize("independent", [INDEP_4D, ()])
def test_product_rule_matches_monte_carlo(independent):
    cov = _cov(4, 2.0, 0.6, independent)
    got, itg = rule_value(PRODUCT_4D, cov, independent)
    assert itg.kinked == (0, 1)
    rng = np.random.default_rng(5)
    m = 1_000_000
    z = rng.standard_normal((m, 4)) @ np.linalg.cholesky(cov).T
    h = np.tanh(np.maximum(z[:, 0], 0) + z[:, 2]) * np.tanh(np.maximum(z[:, 1], 0) + z[:, 3])
    mean, se = h.mean(), h.std(ddof=1) / np.sqrt(m)
    assert abs(got - mean) <= 6 * se, (got, mean, se)


def test_vanishing_wedges_are_found_and_skipping_them_changes_nothing(monkeypatch):
    forms = ((0.0, 1.0), (1.0, 0.0))  # code bit 0: z1 > 0, bit 1: z0 > 0
    e = F.Step(z0) * F.Step(z1) * sp.tanh(z0 + z1)
    assert Q.vanishing_arcs(e, (0, 1), forms) == (0, 1, 2)
    assert Q.vanishing_arcs(F.Relu(-z0) * F.Step(z1) * sp.cos(z0), (0, 1), forms) == (0, 2, 3)
    assert Q.vanishing_arcs(F.Relu(z0) * F.Relu(z1) + 1, (0, 1), forms) == ()
    assert Q.vanishing_arcs(F.Sign(z0) * F.AbsF(z1), (0, 1), forms) == ()
    import tpcompiler.backends.numpy as reference

    for expr in (e, PRODUCT_4D * F.Step(z1)):
        k = 4 if expr.has(z2) else 2
        cov = _cov(k, 1.5, 0.4)
        got, itg = rule_value(expr, cov)
        assert Q.vanishing_arcs(itg.expr, itg.kinked, itg.kink_forms)
        with monkeypatch.context() as m:
            m.setattr(reference, "vanishing_arcs", lambda *args: ())
            full = float(expectation(itg, cov))
        assert abs(got - full) <= 1e-15, (got, full)


# --- degenerate covariances ------------------------------------------------------------------


def test_identical_points_give_the_one_dimensional_value():
    """z0 == z1 exactly (a rank-1 covariance): the polar rule's kink lines coincide; the value
    is finite and equals the 1-D rule's E[f(u) f(u)]."""
    for var, tol in [(0.5, 1e-12), (2.0, 5e-10), (6.0, 1e-8)]:
        got, itg = rule_value(sp.tanh(F.Relu(z0)) * sp.tanh(F.Relu(z1)), [[var, var], [var, var]])
        assert itg.kinked
        one, _ = rule_value(sp.tanh(F.Relu(z0)) ** 2, [[var]])
        assert np.isfinite(got) and abs(got - one) <= tol, (var, got, one)
    # the 4-D product with identical points in both blocks
    s, t = 1.3, 0.8
    cov = [[s, s, 0, 0], [s, s, 0, 0], [0, 0, t, t], [0, 0, t, t]]
    got, _ = rule_value(PRODUCT_4D, cov, INDEP_4D)
    one, _ = rule_value(sp.tanh(F.Relu(z0) + z1) ** 2, [[s, 0], [0, t]], [(0, 1)])
    assert abs(got - one) <= 5e-6, (got, one)
    # smooth: identical points agree with the 1-D rule to rounding (shared order)
    got, _ = rule_value(sp.tanh(z0) * sp.tanh(z1), [[1.5, 1.5], [1.5, 1.5]])
    one, _ = rule_value(sp.tanh(z0) ** 2, [[1.5]])
    assert abs(got - one) <= 1e-15


def test_zero_covariance_gives_the_value_at_zero():
    for expr in (sp.tanh(F.Relu(z0)) * sp.tanh(F.Relu(z1)) + 1, PRODUCT_4D + sp.cos(z2)):
        k = 4 if expr.has(z2) else 2
        got, _ = rule_value(expr, np.zeros((k, k)), INDEP_4D if k == 4 else ())
        at_zero = evaluate_expr(expr, {z.name: np.zeros(1) for z in Z})
        assert got == pytest.approx(float(np.squeeze(at_zero)), abs=1e-15)


# --- the compile-time plan -------------------------------------------------------------------


def _pattern(k, independent=()):
    zero = {frozenset(p) for p in independent}
    return [[sp.S.Zero if frozenset((i, j)) in zero else sp.Symbol("c") for j in range(k)]
            for i in range(k)]


def test_plan_choices():
    natural2 = ((0, 1), (), (), ())
    # smooth, or nested kinks: the tensor rule in order
    assert Q.plan(sp.tanh(z0) * sp.tanh(z1), _pattern(2)) == natural2
    # kinks off the origin: the split rule, every kink a row (r, c) of {r . z + c = 0}
    assert Q.plan(F.Relu(z0 + 1) * sp.tanh(z1), _pattern(2)) == \
        ((0, 1), (), (), ((1.0, 0.0, 1.0),))
    assert Q.plan(F.Step(z0 - z1 / 2 - 1) * F.Relu(z1), _pattern(2)) == \
        ((0, 1), (), (), ((0.0, 1.0, 0.0), (1.0, -0.5, -1.0)))
    # ... in at most MAX_SPLIT_DIM coordinates; beyond, the tensor rule (the probe measures it)
    assert Q.plan(F.Relu(z0 + 1) * sp.tanh(z1 + z2), _pattern(3)) == \
        ((0, 1, 2), (), (), ())
    assert Q.plan(F.Relu(z1 + F.Relu(z0)), _pattern(2)) == natural2
    # one kink coordinate: first in the factorisation, whatever its correlations
    assert Q.plan(sp.tanh(z0 + F.Relu(z1)), _pattern(2)) == ((1, 0), (), (), ())
    assert Q.plan(F.Step(z2) * F.Relu(-2 * z2) * sp.tanh(z0 + z1), _pattern(3)) == \
        ((2, 0, 1), (), (), ())
    # two kink lines on two coordinates: polar, times the independent rest
    assert Q.plan(F.Relu(z0) * F.Relu(z1), _pattern(2)) == \
        ((), (0, 1), ((0.0, 1.0), (1.0, 0.0)), ())
    assert Q.plan(PRODUCT_4D, _pattern(4, INDEP_4D)) == \
        ((2, 3), (0, 1), ((0.0, 1.0), (1.0, 0.0)), ())
    # ... also when the rest is correlated with them (a conditional product)
    assert Q.plan(PRODUCT_4D, _pattern(4)) == ((2, 3), (0, 1), ((0.0, 1.0), (1.0, 0.0)), ())
    # three kinked coordinates in one correlated group: the tensor rule (fallback)
    assert Q.plan(F.Relu(z0) * F.Relu(z1) * F.Step(z2) * sp.tanh(z3), _pattern(4)) == \
        ((0, 1, 2, 3), (), (), ())
    # two uncorrelated kinked coordinates: both on axes of the tensor rule, first
    assert Q.plan(F.Relu(z1) * F.Relu(z3) * sp.tanh(z0 + z2), _pattern(4, [(1, 3)])) == \
        ((1, 3, 0, 2), (), (), ())
    # a polar pair and an uncorrelated kink coordinate
    assert Q.plan(F.Relu(z1) * F.Relu(z2) * F.Sign(z3) * sp.tanh(z0),
                  _pattern(4, [(1, 3), (2, 3)])) == ((3, 0), (1, 2), ((0.0, 1.0), (1.0, 0.0)), ())
    # an oblique kink line in 2-D; parallel forms count once
    assert Q.plan(F.AbsF(z0 - z1) * F.Step(2 * z1 - 2 * z0) * sp.tanh(z0), _pattern(2)) == \
        ((), (0, 1), ((1.0, -1.0), (1.0, 0.0)), ())
    assert Q.plan(F.ABRelu(z0, sp.Rational(1, 10), 1) * F.Relu(z1), _pattern(2))[1] == (0, 1)


# --- the backends agree, through the API -----------------------------------------------------

PROGRAMS = [
    # 4-D polar x 2-D products (NNGP and NTK), 2-D tensor with the kink coordinate first
    "input x\ng = dense(x, var=2.0)\nh = tanh(relu(g) + dense(relu(g), var=1.5))\n"
    "y = readout(h)\n",
    # 2-D polar alone, 1-D kinked
    "input x\ng = dense(x, var=2.0, bias=0.1)\nh = sin(g) * tanh(relu(g))\ny = readout(h)\n",
    # the smooth G-var first in the program; the cross integral a conditional product (all
    # four coordinates correlated). NNGP only (sp: the NTK is refused): fewer integrands to
    # compile
    "parametrization sp\ninput s[2]\nweight W(var=2.0)\n"
    "h = tanh(dense(s[1], W) + relu(dense(s[0], W)))\ny = readout(h)\n",
]


# agreement of backends / with finite networks at their own tolerances, not the
# accuracy probe: its warnings (4-D rules at ~1e-6) are what tests/test_exact.py checks
@pytest.mark.filterwarnings("ignore::tpcompiler.errors.TPWarning")
# the first compiles for ~40 s on 2 cores: with the slow tests
@pytest.mark.parametrize("src", [pytest.param(PROGRAMS[0], marks=pytest.mark.slow),
                                 *PROGRAMS[1:]])
def test_numba_equals_numpy_on_kinked_programs(src):
    net = tp.compile_source(src)
    rules = {q.rule.split(" ")[0] for q in net.kernel_program.integrands}
    assert rules <= {"polar", "tensor"}
    shape = (2, 3) if "s[2]" in src else (3,)
    rng = np.random.default_rng(7)
    x1 = rng.normal(size=(4, *shape))
    x1[2] = x1[0]  # identical points
    x1[3] = 0.0  # the origin
    x2 = rng.normal(size=(2, *shape))
    x2[0] = x1[1]
    kinds = net.kernel_program.kinds
    for a, b in [(x1, None), (x1, x2)]:
        got = net.kernels(a, b, get=kinds)
        want = net.kernels(a, b, get=kinds, backend="numpy")
        for kind in want:
            scale = np.max(np.abs(want[kind]))
            assert np.max(np.abs(got[kind] - want[kind])) <= 1e-12 * scale, kind
            assert np.all(np.isfinite(got[kind]))


def test_program_rules_are_as_designed():
    kp = tp.compile_source(PROGRAMS[0]).kernel_program
    rules = {q.dim: q for q in kp.integrands}
    assert rules[4].kinked == (0, 1) and rules[4].pivot == (2, 3)
    assert rules[2].kinked == () and rules[2].pivot == (0, 1)
    # the smooth G-var comes first in the program; the kink argument is made the first
    # coordinate of the basis (Expectation._quadrature), the 4-D cross integrals are
    # conditional products
    kp = tp.compile_source(PROGRAMS[2]).kernel_program
    for q in kp.integrands:
        assert q.expr.has(F.Relu(Z[0]))
        assert (q.dim == 2 and q.pivot == (0, 1)) or (q.dim == 4 and q.kinked == (0, 1))


def test_evaluate_expr_is_the_reference_integrand():
    """The NumPy backend integrates the sympy integrand itself (the oracle's tree-walk)."""
    env = {"z0": np.array([-1.0, 2.0])}
    assert np.allclose(evaluate_expr(sp.tanh(F.Relu(Z[0])), env), [0.0, math.tanh(2.0)])
