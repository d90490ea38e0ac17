"""The content-addressed cache of generated modules (tpcompiler/backends/cache.py): a second
compile in a new process loads the module from the index, skipping the symbolic passes and
numba's compilation; damaged files are regenerated; the key follows the program."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import tpcompiler as tp
from tpcompiler import files
from tpcompiler.backends import cache

SMALL = """\
network small
const SW = 2.0
input x
h = dense(x, var=SW, bias=0.1)
y = readout(relu(h), var=1.0)
"""

# one process: compile + evaluate, then report what it had to build
PROBE = textwrap.dedent("""\
    import json, sys, time
    import numpy as np
    import tpcompiler as tp

    start = time.perf_counter()
    net = tp.compile(sys.argv[1])
    k = net.kernels(np.load(sys.argv[2]), get=("nngp", "ntk"))
    seconds = time.perf_counter() - start
    module = net._module
    jitted = [f for f in vars(module).values() if hasattr(f, "stats")]  # numba dispatchers
    misses = sum(sum(f.stats.cache_misses.values()) for f in jitted)
    np.save(sys.argv[3], np.stack([k["nngp"], k["ntk"]]))
    print(json.dumps({"built": "rolled_program" in net.__dict__, "numba_misses": misses,
                      "seconds": seconds, "key": net._cache_key}))
""")


def _probe(tmp_path, cache_dir, tag: str) -> tuple[dict, np.ndarray]:
    out = tmp_path / f"k_{tag}.npy"
    env = dict(os.environ, TPC_CACHE_DIR=str(cache_dir))
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "small.tp"),
                           str(tmp_path / "x.npy"), str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(out)


def test_second_process_loads_from_the_cache(tmp_path):
    (tmp_path / "small.tp").write_text(SMALL)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(5, 3)))
    shared = tmp_path / "cache"
    first = None
    for _ in range(3):
        cold, k_cold = _probe(tmp_path, shared, "cold")
        first = first or cold
        warm, k_warm = _probe(tmp_path, shared, "warm")
        if warm["key"] == cold["key"]:
            break  # else the package's source changed in between (the key hashes it): again
    print(f"compile + first call: cold {cold['seconds']:.2f} s, warm {warm['seconds']:.2f} s")
    assert warm["key"] == cold["key"]
    assert first["built"] and first["numba_misses"] > 0  # it was cold
    assert not warm["built"], "the warm process ran the symbolic passes"
    assert warm["numba_misses"] == 0, "the warm process recompiled with numba"
    np.testing.assert_array_equal(k_warm, k_cold)


# --- in this process: prepare() generates and imports a module without compiling it ---------


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TPC_CACHE_DIR", str(tmp_path))
    return tmp_path


def _module_file(net):
    return cache.module_path(cache.read_index(net._cache_key)["source"])


def _sound(path) -> bool:
    """The file holds the source its name is the hash of."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    return path.name == f"k_{digest}.py"


def _forget_import(net, monkeypatch):
    """What a new process sees: the module is not imported yet."""
    monkeypatch.delitem(sys.modules, net._module.__name__)


@pytest.mark.parametrize("damage", ["truncated", "garbled", "empty"])
def test_damaged_module_is_regenerated(damage, fresh_cache, monkeypatch):
    first = tp.compile_source(SMALL).prepare()
    path = _module_file(first)
    good = path.read_bytes()
    path.write_bytes({"truncated": good[: len(good) // 2], "garbled": b"\xff\xfe\x00junk",
                      "empty": b""}[damage])
    _forget_import(first, monkeypatch)
    again = tp.compile_source(SMALL).prepare()
    assert "rolled_program" in again.__dict__  # the index entry was not trusted
    assert path.read_bytes() == good and _sound(path)
    assert again._module.KINDS == ("nngp", "ntk")
    # and the next one is warm again
    assert "rolled_program" not in tp.compile_source(SMALL).prepare().__dict__


def test_damaged_index_is_rebuilt(fresh_cache):
    first = tp.compile_source(SMALL).prepare()
    index = cache.index_path(first._cache_key)
    index.write_text(index.read_text()[:10])
    again = tp.compile_source(SMALL).prepare()
    assert "rolled_program" in again.__dict__
    assert json.loads(index.read_text())["kinds"] == ["nngp", "ntk"]


def test_module_written_even_if_imported_from_another_cache(fresh_cache, monkeypatch, tmp_path):
    # the same network in a second cache folder, in a process that already imported it
    tp.compile_source(SMALL).prepare()
    other = tmp_path / "other"
    monkeypatch.setenv("TPC_CACHE_DIR", str(other))
    net = tp.compile_source(SMALL).prepare()
    path = _module_file(net)
    assert path.parent == other and _sound(path)


def test_different_programs_get_different_modules(fresh_cache):
    a = tp.compile_source(SMALL).prepare()
    b = tp.compile_source(SMALL.replace("relu(h)", "erf(h)")).prepare()
    assert a._cache_key != b._cache_key
    assert _module_file(a) != _module_file(b)
    assert a._module is not b._module
    assert len(list(fresh_cache.glob("k_*.py"))) == 2
    assert len(list(fresh_cache.glob("p_*.json"))) == 2


def test_digest_follows_the_program():
    base = tp.compile_source(SMALL)
    assert tp.compile_source(SMALL).ir.digest() == base.ir.digest()  # stable
    changed = tp.compile_source(SMALL.replace("SW = 2.0", "SW = 2.5"))
    assert changed.ir.digest() != base.ir.digest()
    assert changed._cache_key != base._cache_key
    # the key names this compiler and numba too: an upgrade never loads stale kernels
    assert cache.compiler_fingerprint() in base._cache_key
    assert tp.__version__ in base._cache_key


def test_cache_dir_is_the_session_folder(tpc_cache_dir):
    assert files.cache_dir() == tpc_cache_dir


# --- the warm start of `tpc kernel` (tpcompiler/warm.py) -----------------------------------

WARM_RUN = textwrap.dedent("""
    import json, sys, warnings
    from tpcompiler import cli
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = cli.main(sys.argv[1:])
    print(json.dumps({"status": status, "sympy": "sympy" in sys.modules,
                      "lark": "lark" in sys.modules,
                      "scipy": "scipy.linalg" in sys.modules,
                      "warnings": [str(w.message) for w in caught]}))
""")


def _tpc_kernel(tmp_path, cache_dir, tp_file, out) -> dict:
    env = dict(os.environ, TPC_CACHE_DIR=str(cache_dir))
    proc = subprocess.run([sys.executable, "-c", WARM_RUN, "kernel", str(tp_file), "--data",
                           str(tmp_path / "x.npy"), "--kind", "both", "--out", str(out),
                           "--force", "--quiet"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


EXP_NET = "input x\nh = dense(x, var=0.5)\ny = readout(exp(h))\n"


@pytest.mark.parametrize("text", [SMALL, EXP_NET], ids=["relu", "exp-caveat"])
def test_tpc_kernel_runs_a_known_file_without_the_front_end(text, tmp_path):
    """The second `tpc kernel` of an unchanged file loads neither lark nor sympy, writes the
    same kernels bit for bit and tells the same warnings; an edited file is compiled again and
    gives the kernels of the edited network."""
    tp_file = tmp_path / "net.tp"
    tp_file.write_text(text)
    x = np.random.default_rng(0).normal(size=(5, 3))
    np.save(tmp_path / "x.npy", x)
    cache_dir = tmp_path / "cache"
    first = _tpc_kernel(tmp_path, cache_dir, tp_file, tmp_path / "a.npz")
    second = _tpc_kernel(tmp_path, cache_dir, tp_file, tmp_path / "b.npz")
    assert first["sympy"] and first["lark"]
    assert not second["sympy"] and not second["lark"], "the warm start ran the front end"
    assert not second["scipy"], "numba's BLAS probe imported scipy.linalg (cli.cmd_kernel)"
    assert second["warnings"] == first["warnings"]
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    for kind in ("nngp", "ntk"):
        np.testing.assert_array_equal(b[kind], a[kind])
    tp_file.write_text(text.replace("var=", "var=1.5 * "))
    edited = _tpc_kernel(tmp_path, cache_dir, tp_file, tmp_path / "c.npz")
    assert edited["sympy"], "an edited file was taken from the record of the old text"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.TPWarning)  # the caveat, compared above
        want = tp.compile(tp_file).kernels(x)
    c = np.load(tmp_path / "c.npz")
    for kind in ("nngp", "ntk"):
        np.testing.assert_allclose(c[kind], want[kind], rtol=1e-14, atol=0)
        assert not np.allclose(c[kind], a[kind])


def test_warm_start_skips_programs_that_need_the_probe_and_damaged_records(tmp_path,
                                                                          monkeypatch):
    """A program with integrals is never run from a record (its first kernels on new data run
    the accuracy probe, which needs the kernel program); a damaged record is a miss."""
    from tpcompiler import warm

    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("TPC_CACHE_DIR", str(cache_dir))
    tanh = tmp_path / "tanh.tp"
    tanh.write_text("input x\nh = dense(x, var=2.0)\ny = readout(tanh(h))\n")
    tp.compile(tanh).prepare()
    assert warm.load(str(tanh), 1e-10) is None
    relu = tmp_path / "relu.tp"
    relu.write_text(SMALL)
    tp.compile(relu).prepare()
    assert warm.load(str(relu), 1e-10) is not None
    assert warm.load(str(relu), 1e-8) is None  # another tolerance: another record
    for record in cache_dir.glob("w_*.json"):
        record.write_text("{not json")
    assert warm.load(str(relu), 1e-10) is None
