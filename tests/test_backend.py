"""The Numba backend equals the NumPy reference evaluator (the oracle) to 1e-12. Both take the
same rules (quadrature.py, and the Mehler series of series.py for smooth 2-D expectations per
pair); tests/test_series.py checks the series against independent references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tpcompiler as tp

from programs import CLOSED_ACTS, programs


def _close(a, b, rtol=1e-12):
    scale = np.max(np.abs(b)) if b.size else 1.0
    assert np.max(np.abs(a - b)) <= rtol * max(scale, 1e-300), (np.max(np.abs(a - b)), scale)


# agreement of backends / with finite networks at their own tolerances, not the
# accuracy probe: its warnings (4-D rules at ~1e-6) are what tests/test_exact.py checks
@pytest.mark.filterwarnings("ignore::tpcompiler.errors.TPWarning")
@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(prog=programs(acts=CLOSED_ACTS + ("tanh",), max_depth=2), seed=st.integers(0, 100))
def test_numba_equals_reference_on_random_programs(prog, seed):
    src, shape = prog
    net = tp.compile_source(src)
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=(5, *shape))
    x1[3] = x1[1]  # a duplicate point
    x2 = rng.normal(size=(3, *shape))
    for a, b in [(x1, None), (x1, x2)]:
        got = net.kernels(a, b)
        want = net.kernels(a, b, backend="numpy")
        for kind in want:
            _close(got[kind], want[kind])
            if b is None:
                assert np.array_equal(got[kind], got[kind].T)
