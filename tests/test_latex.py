"""`tpc latex` as a reader follows it (issue 14): every name the recursion uses is defined,
before use for the recursion's own quantities, and nothing defined goes unused. A LaTeX-free
check over the output of every example (no TeX installation needed); where pdflatex is
installed, the output also compiles."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import tpcompiler as tp
from tpcompiler import functions as F

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.tp"))
#: names a reader knows without a definition: the language's functions (docs/language.md) and
#: standard ones
KNOWN = {re.sub(r"\\operatorname\{(.*)\}", r"\1", c.latex_name) for c in F.PRIMITIVES} | {
    "atan2"}
OPNAME = re.compile(r"\\operatorname\{([^}]*)\}")
QUANTITY = re.compile(r"(\\Sigma_\{[^}]*\}\}|D_\{[^}]*\}\}|\\mathrm\{NNGP\})\(x,x'\)")


def _rows(text: str) -> list[tuple[str, str]]:
    body = text.split("\\begin{aligned}\n", 1)[1].rsplit("\n\\end{aligned}", 1)[0]
    out = []
    for row in body.split(" \\\\\n"):
        lhs, _, rhs = row.partition("&=")
        out.append((lhs.strip(), rhs.strip() if _ else row.strip()))
    return out


@pytest.mark.parametrize("path", [p for p in EXAMPLES if not tp.compile(p).ir.spatial
                                  and not tp.compile(p).ir.batched
                                  and tp.compile(p).ir.readout is not None],
                         ids=lambda p: p.stem)
def test_every_name_is_defined_and_used(path):
    text = tp.compile(path).latex()
    rows = _rows(text)
    defined_fn = {OPNAME.search(lhs).group(1): i for i, (lhs, _) in enumerate(rows)
                  if lhs.startswith(r"\operatorname{")}
    defined_q = {m.group(1): i for i, (lhs, _) in enumerate(rows)
                 if (m := re.match(r"(Q\d+)\(z_0", lhs))}
    defined_k = {}
    for i, (lhs, _) in enumerate(rows):
        m = QUANTITY.fullmatch(lhs.replace(" ", "")) or QUANTITY.fullmatch(lhs)
        if m:
            defined_k[m.group(1)] = i
    used_fn, used_q = set(), set()
    for i, (lhs, rhs) in enumerate(rows):
        # the right-hand sides, and the auxiliary line, which is all right-hand side
        names = set(OPNAME.findall(rhs))
        for name in names - KNOWN:
            name = name.replace("\\_", "_").replace("_", "\\_")
            assert name in defined_fn, f"{path.name}: {name} used in row {i}, never defined"
            if defined_fn[name] != i:
                used_fn.add(name)
        for q in re.findall(r"\[(Q\d+)\(z\)\]", rhs):
            assert q in defined_q, f"{path.name}: integral {q} used, never defined"
            used_q.add(q)
        for k in QUANTITY.findall(rhs):
            assert k in defined_k and defined_k[k] < i, \
                f"{path.name}: {k} used in row {i} before (or without) its definition"
    assert set(defined_fn) <= used_fn, f"{path.name}: defined, unused {set(defined_fn) - used_fn}"
    assert set(defined_q) <= used_q, f"{path.name}: integrands defined, unused"
    aux = [r for lhs, r in rows if lhs == "" and r.startswith(r"\quad")]
    for line in aux:
        for sym in re.findall(r"(P|\\Delta|A) =", line):
            others = "".join(r for lhs, r in rows if not r.startswith(r"\quad"))
            assert sym in others, f"{path.name}: auxiliary {sym} defined, unused"


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex on this machine")
def test_output_compiles_with_pdflatex(tmp_path):
    for path in EXAMPLES:
        doc = ("\\documentclass{article}\\usepackage{amsmath,amssymb}\\begin{document}\n$$"
               + tp.compile(path).latex() + "$$\n\\end{document}\n")
        (tmp_path / "t.tex").write_text(doc)
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                              "t.tex"], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, (path.name, run.stdout[-2000:])
