"""Fixtures shared by every test module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n: the workers already fill the cores, so one BLAS thread each (two each on two
    # cores made the simulator's matrix products 3-4x slower); set before NumPy loads its BLAS
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


@pytest.fixture(scope="session", autouse=True)
def tpc_cache_dir(tmp_path_factory):
    """Generated kernel modules go to one folder per test run, never ~/.cache: a network
    compiled by one test is reused by the next, and subprocesses inherit the folder through
    the environment. A TPC_CACHE_DIR set before the run is kept (CI points it at a folder that
    outlives the run, so a second run loads what the first compiled: keys are content hashes,
    so a stale module is never reused)."""
    preset = os.environ.get("TPC_CACHE_DIR")
    if preset:
        path = Path(preset)
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        # pytest -n: one folder for all workers of the run (their common temp root), so a
        # network is compiled once, not once per worker (writes are atomic)
        path = tmp_path_factory.getbasetemp().parent / "tpc-cache"
    else:
        path = tmp_path_factory.mktemp("tpc-cache")
    path.mkdir(parents=True, exist_ok=True)
    patch = pytest.MonkeyPatch()
    patch.setenv("TPC_CACHE_DIR", str(path))
    yield path
    patch.undo()
