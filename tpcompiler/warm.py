"""The warm start: a .tp file compiled before runs from the compile cache without the front end
(lark), the symbolic passes (sympy) or the KernelProgram.

`api.compile(path)` records, under a key of (path, text, tol, compiler), the key of the
network's compiled module and what running it needs besides: the data checks (data.DataSpec),
the kinds and refusals, and the rendered NTK caveats. `load(path, tol)` finds that record for
the file's current text and returns a WarmNetwork; any change of the text, the tolerance or the
compiler's own source misses, and the caller takes the full path (`tpc kernel` does both).
Networks with integrals are not recorded: their first kernels on new data run the accuracy
probe, which needs the KernelProgram.

The rules every kernel call follows, whichever path built the network (`check_get`,
`check_kinds`, `tell_caveats`), live here so that both paths share them.
"""

from __future__ import annotations

import hashlib
import json
import sys

import numpy as np

from . import __version__
from .backends import cache, runner
from .backends.gram import GramLayout
from .data import HINT_SCALE, DataSpec, prepare_pair
from .errors import TPError, warn
from .files import atomic_write_text, cache_dir, read_source

KINDS = ("nngp", "ntk")


def key(path: str, text: str, tol: float) -> str:
    """The record's key: the file's path (its messages name it), text and tolerance, and the
    compiler (its version and a hash of its source)."""
    h = hashlib.sha256(json.dumps([str(path), text, repr(float(tol)), __version__,
                                   cache.compiler_fingerprint()]).encode())
    return h.hexdigest()[:40]


def _record_path(k: str):
    return cache_dir() / f"w_{k}.json"


def has_record(k: str) -> bool:
    return _record_path(k).exists()


def record(k: str, module_key: str, name: str | None, spec: DataSpec,
           caveats: list[tuple[str, str]]) -> None:
    """Remember how to run the network of record key k without compiling it."""
    atomic_write_text(_record_path(k), json.dumps(
        {"module_key": module_key, "name": name, "spec": spec.to_json(),
         "caveats": [list(c) for c in caveats]}))


class WarmNetwork:
    """A compiled network run from the cache: kernels(...) as CompiledNetwork.kernels, on the
    CPU (anything else takes the full path)."""

    def __init__(self, name, module, layout: GramLayout, spec: DataSpec, kinds, refused,
                 caveats, tol: float):
        self.name, self.tol = name, tol
        self._module, self._layout, self._spec = module, layout, spec
        self._kinds, self._refused = tuple(kinds), dict(refused)
        self._caveats = [tuple(c) for c in caveats]
        self._caveats_told = False

    def kernels(self, x1, x2=None, get=KINDS, *, progress=None, device: str = "cpu",
                params: dict | None = None) -> dict[str, np.ndarray]:
        if device != "cpu":
            raise TPError(f"device='{device}': a warm start runs on the CPU",
                          hint="compile the network (tpcompiler.compile) for the GPU")
        if params:  # a warm record is written only for a program without params
            raise TPError(f"{', '.join(map(repr, params))}: this program has no params")
        get = check_get(get)
        a, b = prepare_pair(self._spec, x1, x2)
        check_kinds(get, self._kinds, self._refused)
        if "ntk" in get and not self._caveats_told:
            self._caveats_told = True
            tell_caveats(self._caveats)
        res = runner.run(self._module, self._layout, a, b, progress=progress)
        check_finite(res, get)
        return {kind: res[kind] for kind in get}


def load(path: str, tol: float) -> WarmNetwork | None:
    """The network of the .tp file at path as recorded for its current text, or None (never
    compiled with this text, tolerance and compiler; an integral program; a damaged record)."""
    text = read_source(path)
    try:
        entry = json.loads(_record_path(key(path, text, tol)).read_text(encoding="utf-8"))
        index = cache.read_index(entry["module_key"])
        if index is None or index.get("integrals", True) or not index["kinds"]:
            return None
        spec = DataSpec.from_json(entry["spec"])
        layout = GramLayout.from_json(index["layout"])
        module = cache.load_module(index["source"])
        return WarmNetwork(entry["name"], module, layout, spec, index["kinds"],
                           index["refused"], entry["caveats"], tol)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_get(get) -> tuple[str, ...]:
    get = (get,) if isinstance(get, str) else tuple(get)
    for k in get:
        if k not in KINDS:
            raise TPError(f"unknown kernel '{k}'", hint="use 'nngp' or 'ntk'")
    return get


def check_kinds(get, kinds, refused) -> None:
    for k in get:
        if k not in kinds:
            raise TPError(f"the {k.upper()} of this network is not available: "
                          f"{refused.get(k, 'not computed')}")


def check_finite(res: dict, get) -> None:
    """TPError when a kernel asked for is not finite on these data. The data's size bound
    (data.py) keeps the first layer's covariances inside float64; a program that multiplies
    them (powers, products, exp) can still take large inputs past 1.8e308, and an inf (or the
    nan of inf - inf) is no kernel to hand back."""
    for kind in get:
        # one pass that allocates nothing: a sum is finite unless an entry is not or the
        # entries are too large to add (then the entry-wise check decides)
        if np.isfinite(np.add.reduce(res[kind], axis=None)):
            continue
        bad = ~np.isfinite(res[kind])
        if bad.any():
            first = [int(v) for v in np.argwhere(bad)[0]]
            i, j = first[0], first[-1]  # a diagonal (N,) has one index
            where = f"point {i}" if i == j else f"points {i} and {j}"
            raise TPError(f"the {kind.upper()} of this network overflows float64 (about 1.8e308) "
                          f"at {where} of these data: the program multiplies its covariances "
                          f"(powers, products, exp), and these inputs make them too large",
                          hint=HINT_SCALE)


def tell_caveats(caveats) -> None:
    """A TPWarning for each (message, hint), pointing at the user's line."""
    for message, hint in caveats:
        warn(message, hint=hint, stacklevel=user_stacklevel())


def user_stacklevel() -> int:
    """The stacklevel for errors.warn, called by the caller of this function, that points at
    the first frame outside tpcompiler: the user's line, however many wrappers (net.ntk,
    net.kernels) lie between."""
    frame, level = sys._getframe(1), 2  # errors.warn's level 2 is its caller
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
            "tpcompiler."):
        frame, level = frame.f_back, level + 1
    return level
