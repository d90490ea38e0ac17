"""The batch-normalisation covariance map (tpcompiler/batchnorm.py, groundwork for issue 18's
`batchnorm`), against truths that do not use its Laplace-transform integral:
- B = 2: BN(h) = sign(h1 - h2) (1, -1) exactly, so V = [[(a^2 + b^2)/2, -ab], [-ab, (a^2 + b^2)/2]]
  for abrelu(a, b);
- identity: |BN(h)|^2 = B and BN(h) sums to 0 for every h, so trace V = B and V 1 = 0;
- an isotropic batch (S = q I): by symmetry E[u_i^2 / |u|^2] = 1 / B, so relu's V_ii = 1/2;
- Monte Carlo of BN itself (2e5 batches): within 5 standard errors (estimated from the
  samples), which is ~3e-3 here against the map's 1e-15 quadrature error.
"""

from __future__ import annotations

import numpy as np
import pytest

import tpcompiler as tpc
from tpcompiler.batchnorm import STEP, batch_map


def _cov(b: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((b, b))
    return a @ a.T / b + 0.3 * np.eye(b)


@pytest.mark.parametrize("a, b", [(0.0, 1.0), (0.1, 1.0), (1.0, 1.0), (-0.5, 2.0)])
def test_batch_of_two_is_exact(a, b):
    v = batch_map(_cov(2, 1), a, b)
    want = np.array([[(a * a + b * b) / 2, -a * b], [-a * b, (a * a + b * b) / 2]])
    assert np.abs(v - want).max() <= 1e-14


@pytest.mark.parametrize("size", [3, 5, 16])
def test_identity_invariants_and_isotropic_relu(size):
    v = batch_map(_cov(size, size), 1.0, 1.0)
    assert abs(np.trace(v) - size) <= 1e-13 * size
    assert np.abs(v @ np.ones(size)).max() <= 1e-13
    iso = batch_map(2.5 * np.eye(size))
    assert np.allclose(np.diag(iso), 0.5, rtol=0, atol=1e-14)


@pytest.mark.parametrize("size, a", [(3, 0.0), (5, 0.0), (5, 0.2)])
def test_against_monte_carlo(size, a):
    s = _cov(size, 7 + size)
    rng = np.random.default_rng(size)
    h = rng.standard_normal((200_000, size)) @ np.linalg.cholesky(s).T
    c = h - h.mean(axis=1, keepdims=True)
    bn = c / np.sqrt((c ** 2).mean(axis=1, keepdims=True))
    phi = np.where(bn > 0, bn, a * bn)
    samples = phi[:, :, None] * phi[:, None, :]
    mean = samples.mean(axis=0)
    se = samples.std(axis=0) / np.sqrt(len(samples))
    v = batch_map(s, a, 1.0)
    assert np.all(np.abs(v - mean) <= 5 * se + 1e-12), np.max(np.abs(v - mean) / se)


def test_quadrature_step_is_converged():
    """Halving the step changes nothing above rounding (exponential convergence in 1 / h)."""
    import tpcompiler.batchnorm as bn

    s = _cov(6, 3)
    v = batch_map(s)
    old = bn.STEP
    try:
        bn.STEP = STEP / 2
        finer = batch_map(s)
    finally:
        bn.STEP = old
    assert np.abs(v - finer).max() <= 1e-14 * np.abs(v).max()


def test_bad_batches():
    with pytest.raises(tpc.TPError, match="zero standard deviation"):
        batch_map(np.ones((3, 3)))
    with pytest.raises(tpc.TPError, match="square matrix"):
        batch_map(np.ones((1, 1)))
