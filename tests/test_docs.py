"""Docs that must match the code: docs/internals.md's module table lists every module of the
package, and nothing that is not one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_module_table_lists_every_module():
    text = (ROOT / "docs" / "internals.md").read_text()
    table = text[text.index("| module | holds |"):text.index("## The IR")]
    named = set()
    for cell in re.findall(r"^\| ([^|]*) \|", table, re.M):
        named |= set(re.findall(r"`([\w/]+\.py)`", cell))
    modules = {p.relative_to(ROOT / "tpcompiler").as_posix()
               for p in (ROOT / "tpcompiler").rglob("*.py")}
    modules -= {"__init__.py", "backends/__init__.py"}
    assert named == modules, (sorted(modules - named), sorted(named - modules))
