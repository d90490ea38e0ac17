"""tpcompiler: compile networks written in the .tp language to their infinite-width kernels."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .errors import TPError as TPError  # noqa: E402
from .errors import TPWarning as TPWarning  # noqa: E402

# the rest loads on first use (PEP 562): `import tpcompiler` and `tpc --help` need neither
# sympy nor numba, which take most of a second to import
_LAZY = {"CompiledNetwork": "api", "compile": "api", "compile_source": "api", "lower": "lowering",
         "parse_file": "parse", "parse_source": "parse"}

if TYPE_CHECKING:
    from .api import CompiledNetwork as CompiledNetwork
    from .api import compile as compile
    from .api import compile_source as compile_source
    from .lowering import lower as lower
    from .parse import parse_file as parse_file
    from .parse import parse_source as parse_source


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
