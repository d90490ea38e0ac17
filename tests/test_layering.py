"""The package's shape (issue 14): data flows one way through the pipeline's stages, backends
share code through common modules rather than each other's privates, and no module outgrows a
line budget. Read from the source with `ast`: imports inside functions count too (a lazy
import that reaches back is still a stage reaching back)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "tpcompiler"

#: the stages in pipeline order; a module may import from its own stage or earlier ones
STAGES = (
    # leaves: no stage of their own
    ("errors", "files", "functions", "helpers", "truncated"),
    # text -> AST
    ("syntax", "parse"),
    # AST -> IR
    ("ir", "ranges", "growth", "parametrization", "check", "lowering_spatial", "lowering_batch",
     "lowering_limits", "lowering", "data"),
    # IR -> kernel program (and the abc analysis of the IR)
    ("kernel_program", "verify", "quadrature", "conditional", "series", "passes",
     "passes.closedform",
     "passes.expect", "passes.kernels", "passes.loops", "passes.spatial", "passes.tangent",
     "passes.abc", "passes.batch", "passes.limits"),
    # kernel program -> code and numbers
    ("backends", "backends.printer", "backends.coincident", "backends.gram",
     "backends.quadsource", "backends.cache", "backends.numpy", "backends.numba",
     "backends.cuda", "backends.runner", "backends.stencil", "backends.spatial", "latex",
     "batchnorm"),
    # what runs the backends: the probe and the finite-width simulator; what reads kernels:
    # the predictions
    ("accuracy", "psd", "simulate", "simulate_spatial", "warm", "solve", "predict",
     "diagnose", "limits", "simulate_limits"),
    # the API that wires the stages together
    ("api", "batch_kernels", "dask_kernels"),
    # users of the API: commands and test helpers
    ("coordcheck", "transfer", "transfer_cli", "check_cli", "check_reports", "abc_report",
     "abc_cli", "diagnose_batch",
     "diagnose_cli", "cli", "testing",
     "sklearn",
     "__init__"),
)
STAGE = {m: i for i, group in enumerate(STAGES) for m in group}
#: lines per module: an alarm, not a style (the largest today, passes/abc.py, has 754)
LINE_BUDGET = 900


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else \
            ".".join(parts)
        out[name] = path
    return out


def _imports(name: str, path: Path):
    """(imported module, imported names) for every tpcompiler import of the module."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        package = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("tpcompiler"):
                target = node.module[len("tpcompiler."):] if "." in node.module else ""
            else:
                continue
            names = [a.name for a in node.names if a.name != "__version__"]
            if node.module is None or target == "":  # `from . import x`: modules x
                base = target
                for a in names:
                    sub = f"{base}.{a}" if base else a
                    yield (sub if sub in MODULES else (base or "__init__")), []
            else:
                yield target, names
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("tpcompiler."):
                    yield a.name[len("tpcompiler."):], []


MODULES = _modules()


def test_every_module_has_a_stage():
    assert set(MODULES) <= set(STAGE), sorted(set(MODULES) - set(STAGE))


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_stage_imports_a_later_one(name):
    later = [(dep, STAGES[STAGE[dep]]) for dep, _ in _imports(name, MODULES[name])
             if dep in STAGE and STAGE[dep] > STAGE[name]]
    assert not later, f"{name} (stage {STAGE[name]}) imports later stages: {later}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_imports_another_ones_privates(name):
    private = [(dep, n) for dep, names in _imports(name, MODULES[name]) for n in names
               if n.startswith("_") and not n.startswith("__") and dep != name]
    assert not private, f"{name} imports private names: {private}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_line_budget(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= LINE_BUDGET, f"{name}: {lines} lines (budget {LINE_BUDGET}): split it"
