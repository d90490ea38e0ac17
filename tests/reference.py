"""An independent reference for Gaussian expectations and one-hidden-layer kernels.

Nested adaptive quadrature (scipy.integrate.quad, requested tolerance 1e-13 relative) in
whitened coordinates, each level split where a kink line crosses it and truncated at +-12
standard deviations (mass 4e-33): no code of tpcompiler's. Used by tests/test_exact.py and
benchmarks/exactness.py.

one_layer(act, X, var, bias): NNGP = E[phi(u) phi(v)] and NTK = NNGP + E[phi'(u) phi'(v)]
Cov(u, v) (neural-tangents' 'ntk' convention, readout variance 1) of
`g = dense(x, var, bias); y = readout(phi(g))`, (u, v) ~ N(0, [[q1, k], [k, q2]]),
Cov = var <x, x'>/d + bias.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import integrate

#: name -> (.tp expression of g, phi, phi', kinks of phi)
ACTS = {
    "hardtanh": ("relu(g + 1) - relu(g - 1) - 1", lambda z: min(max(z, -1.0), 1.0),
                 lambda z: 1.0 if -1.0 < z < 1.0 else 0.0, (-1.0, 1.0)),
    "relu6": ("relu(g) - relu(g - 6)", lambda z: min(max(z, 0.0), 6.0),
              lambda z: 1.0 if 0.0 < z < 6.0 else 0.0, (0.0, 6.0)),
    "leaky_shift": ("leaky_relu(g - 1, slope=0.1)", lambda z: z - 1 if z > 1 else 0.1 * (z - 1),
                    lambda z: 1.0 if z > 1 else 0.1, (1.0,)),
    "step_shift": ("step(g + 0.5)", lambda z: 1.0 if z + 0.5 > 0 else 0.0, lambda z: 0.0,
                   (-0.5,)),
    "tanh_relu": ("tanh(g + 0.5) * relu(g - 0.3)",
                  lambda z: math.tanh(z + 0.5) * max(z - 0.3, 0.0),
                  lambda z: ((1 - math.tanh(z + 0.5) ** 2) * (z - 0.3) + math.tanh(z + 0.5))
                  if z > 0.3 else 0.0, (0.3,)),
    "sin2": ("sin(2 * g)", lambda z: math.sin(2 * z), lambda z: 2 * math.cos(2 * z), ()),
}


def gauss2(f, c: np.ndarray, kinks) -> float:
    """E[f(u, v)], (u, v) ~ N(0, c), by nested adaptive quadrature in whitened coordinates,
    each level split where a kink line crosses it."""
    # scipy warns when rounding stops it short of the requested 1e-13 relative (values that
    # cancel to ~1e-16 of their terms); its result is then still ~1e-14, far inside the 1e-10
    # the tests hold the compiler to
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        return _gauss2(f, c, kinks)


def _gauss2(f, c: np.ndarray, kinks) -> float:
    a, b, d = c[0, 0], c[1, 0], c[1, 1]
    l00 = math.sqrt(a) if a > 0 else 0.0
    l10 = b / l00 if l00 > 0 else 0.0
    l11 = math.sqrt(max(d - l10 * l10, 0.0))
    if l11 <= 1e-12 * math.sqrt(max(d, 1e-300)):
        l11 = 0.0
    phi = lambda t: math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
    # relative, not absolute: kernels of tiny inputs are ~1e-16 and still owed full accuracy
    opts = dict(epsabs=1e-30, epsrel=1e-13, limit=200)

    def cuts(pts):
        return sorted(p for p in pts if -12 < p < 12)

    def inner(s):
        u = l00 * s
        if l11 == 0.0:
            return f(u, l10 * s)
        pts = cuts([(kv - l10 * s) / l11 for kv in kinks])
        return integrate.quad(lambda t: f(u, l10 * s + l11 * t) * phi(t), -12, 12,
                              points=pts or None, **opts)[0]

    if l00 == 0.0:  # u is a point mass at 0
        if l11 == 0.0:
            return f(0.0, 0.0)
        return integrate.quad(lambda t: f(0.0, l11 * t) * phi(t), -12, 12,
                              points=cuts([kv / l11 for kv in kinks]) or None, **opts)[0]
    outer = [ku / l00 for ku in kinks]
    if l10 != 0.0:
        # where v's kink crosses t = 0: for l11 << |l10| (nearly collinear points) the inner
        # integral jumps there within a width w = l11 / |l10|; cut around it at multiples of w
        w = l11 / abs(l10)
        outer += [kv / l10 + m * w for kv in kinks for m in (-8, -3, -1, 0, 1, 3, 8)]
    return integrate.quad(lambda s: inner(s) * phi(s), -12, 12,
                          points=cuts(outer) or None, **opts)[0]


def one_layer(act: str, X: np.ndarray, var: float, bias: float) -> dict:
    _, f, df, kinks = ACTS[act]
    n = len(X)
    cov = var * (X @ X.T) / X.shape[1] + bias
    out = {"nngp": np.zeros((n, n)), "ntk": np.zeros((n, n))}
    for i in range(n):
        for j in range(n):
            c = np.array([[cov[i, i], cov[i, j]], [cov[i, j], cov[j, j]]])
            nngp = gauss2(lambda u, v: f(u) * f(v), c, kinks)
            dd = gauss2(lambda u, v: df(u) * df(v), c, kinks)
            out["nngp"][i, j] = nngp
            out["ntk"][i, j] = nngp + dd * cov[i, j]
    return out
