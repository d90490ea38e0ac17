"""Content-addressed generated modules: written atomically, imported, regenerated if corrupt.

numba's cache=True only works for functions defined in real files, so every generated module
lives at <cache>/k_<sha256 of its source>.py and is never rewritten in place.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

from ..files import atomic_write_text, cache_dir


@functools.lru_cache(maxsize=1)
def compiler_fingerprint() -> str:
    """Hash of the package's own source: any change to the compiler invalidates cached kernels
    (a version string alone would not, between releases)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")) + sorted(root.rglob("*.lark")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def module_path(source: str) -> Path:
    digest = hashlib.sha256(source.encode()).hexdigest()[:32]
    return cache_dir() / f"k_{digest}.py"


def load_module(source: str):
    """Import the generated module for `source`, writing it first if needed."""
    path = module_path(source)
    # before the sys.modules shortcut: the index written next must point to a sound file even
    # when this process imported the module earlier (from another cache folder, or before the
    # file was damaged)
    _ensure_file(path, source)
    name = "tpcompiler_gen_" + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _ensure_file(path: Path, source: str) -> None:
    """Write `source` to `path` unless the file holds exactly it: a truncated or garbled module
    is replaced, never imported. Compared as bytes, since a garbled file need not be UTF-8."""
    try:
        if path.read_bytes() == source.encode():
            return
    except OSError:
        pass  # missing or unreadable: write it
    atomic_write_text(path, source)


def index_path(key: str) -> Path:
    return cache_dir() / f"p_{key}.json"


def read_index(key: str) -> dict | None:
    path = index_path(key)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        source = Path(data["module"]).read_text(encoding="utf-8")
        if hashlib.sha256(source.encode()).hexdigest()[:32] not in data["module"]:
            return None  # a corrupt or edited module: regenerate
        data["source"] = source
        return data
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_index(key: str, data: dict) -> None:
    atomic_write_text(index_path(key), json.dumps(data))
