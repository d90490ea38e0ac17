"""tpcompiler/truncated.py, the conditional rule's closed forms, against an independent
reference: nested adaptive quadrature (tests/reference.py gauss2, split at both kinks) of
E[X^p Y^q [X > 0]^i [Y > 0]^j] for X = mx + sx e0, Y = my + ty e0 + uy e1, and mpmath's
bivariate normal probability at 40 digits."""

from __future__ import annotations

import inspect
import itertools
import math

import mpmath as mp
import numba
import numpy as np
import pytest

from tpcompiler import truncated as T

from reference import gauss2

#: the reference is good to ~1e-14 (QUADPACK at epsrel 1e-13 on each level); the closed forms
#: were measured within 1.3e-15 of it
TOL = 1e-13


def _cases():
    rng = np.random.default_rng(1)
    out = [(0.3, 0.0, -0.2, 0.7, 0.5), (0.3, 1.0, -0.2, 0.0, 0.0), (-0.3, 0.0, 0.2, 0.0, 0.0),
           (0.0, 1.0, 0.0, 1.0, 0.0), (0.0, 1.0, 0.0, 0.5, 0.5), (1.0, 2.0, -1.0, -2.0, 2.0 ** -20)]
    # Y nearly -X (the last): uy^2 = 2^-40 keeps ty^2 + uy^2 exact in the reference's
    # covariance (1e-7 would be rounded there by 2 %, and the reference with it)
    for _ in range(10):
        mx, my = rng.normal(size=2) * 1.5
        out.append((mx, abs(rng.normal()) + 0.1, my, rng.normal(),
                    abs(rng.normal()) * rng.choice([1.0, 1e-3, 0.0])))
    return out


@pytest.mark.parametrize("forms", _cases())
def test_kink_moment_against_nested_quadrature(forms):
    mx, sx, my, ty, uy = forms
    c = np.array([[sx * sx, sx * ty], [sx * ty, ty * ty + uy * uy]])
    for p, q, i, j in itertools.product((0, 1, 2), (0, 1, 2), (0, 1), (0, 1)):
        if p + q > 2 or (i and j and (p > 1 or q > 1)):
            continue

        def f(u, v, p=p, q=q, i=i, j=j):
            x, y = u + mx, v + my
            return x ** p * y ** q * ((x > 0) if i else 1) * ((y > 0) if j else 1)

        ref = gauss2(f, c, (-mx, -my))
        low = T.kink_low(*forms)
        got = T.kink_moment(*forms, p, q, i, j, low)
        assert abs(got - ref) <= TOL * max(1.0, abs(ref)), ((p, q, i, j), got, ref)


def test_orthant_probability_against_mpmath():
    """bvn_cdf over correlations up to 1 - 1e-14, both signs, and a = b = 0."""
    mp.mp.dps = 40
    rng = np.random.default_rng(0)
    cases = [(0.3, -0.2, 0.5), (2, 2, 0.99999), (0.5, 0.5, 1 - 1e-10), (1, -1, -0.999),
             (0.1, 0.2, 0.926), (0, 0, -0.9), (0, 1, 0.5), (-8, -8, 0.999), (3, -3, -0.99999)]
    cases += [(rng.normal() * 3, rng.normal() * 3, rng.uniform(-1, 1)) for _ in range(20)]
    for a, b, r in cases:
        s = math.sqrt((1 - r) * (1 + r))
        got = T.bvn_cdf(a, b, r, (b - r * a) / s, (a - r * b) / s)
        am, bm, rm = mp.mpf(a), mp.mpf(b), mp.mpf(r)
        sm = mp.sqrt(1 - rm * rm)
        pts = [-mp.inf] + ([bm / rm] if rm != 0 and bm / rm < am else []) + [am]
        ref = mp.quad(lambda x: mp.npdf(x) * mp.ncdf((bm - rm * x) / sm), pts, maxdegree=12)
        # the inputs (b - r a) / s are rounded: a few ulps of them, amplified by phi / s
        assert abs(got - float(ref)) <= 4e-16 + 1e-16 * abs(b - r * a) / s, (a, b, r)


def test_sources_are_self_contained():
    """Bodies may name only math, min/max/abs/range and functions earlier in the order."""
    allowed = set(dir(math)) | {"math", "min", "max", "abs", "range", "int"}
    assert tuple(T.TRUNCATED) == T.SOURCE_ORDER
    for name in T.SOURCE_ORDER:
        fn = T.TRUNCATED[name]
        assert fn.__name__ == name and fn.__doc__
        assert not fn.__code__.co_freevars, name
        assert set(fn.__code__.co_names) <= allowed, (name, set(fn.__code__.co_names) - allowed)
        allowed.add(name)


def test_numba_matches_python():
    """Compiled as the generated modules compile them (sources copied in order, @njit):
    the same values to a few ulps."""
    ns = {"math": math, "njit": numba.njit}
    for name in T.SOURCE_ORDER:
        exec("@njit(cache=False)\n" + inspect.getsource(T.TRUNCATED[name]), ns)
    for forms in _cases():
        for p, q, i, j in ((1, 1, 1, 1), (0, 0, 1, 1), (1, 0, 1, 0), (0, 2, 0, 1), (2, 0, 1, 0)):
            low = T.kink_low(*forms)
            assert ns["kink_low"](*forms) == pytest.approx(low, rel=1e-15, abs=1e-300)
            a = T.kink_moment(*forms, p, q, i, j, low)
            b = ns["kink_moment"](*(float(v) for v in forms + (p, q, i, j, low)))
            assert abs(a - b) <= 8 * np.finfo(float).eps * max(abs(a), 1e-300), (forms, a, b)
