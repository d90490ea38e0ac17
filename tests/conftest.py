"""Fixtures shared by every test module."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def tpc_cache_dir(tmp_path_factory):
    """Generated kernel modules go to one folder per test session, never ~/.cache: a network
    compiled by one test is reused by the next, and subprocesses inherit the folder through
    the environment."""
    path = tmp_path_factory.mktemp("tpc-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("TPC_CACHE_DIR", str(path))
    yield path
    patch.undo()
