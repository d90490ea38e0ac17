"""The compiler's table of contents: every pass from text to KernelProgram, in order.

Each pass is a pure function of the previous one's output; `verify` (tpcompiler/verify.py)
checks what it produced, after every pass; `show` prints it (`tpc ir FILE --after PASS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from .. import ir, syntax
from ..kernel_program import KernelProgram, cse_block
from ..lowering import lower
from ..parse import parse_source
from ..verify import verify_kernel_program, verify_program
from .kernels import build_kernel_program


@dataclass(frozen=True)
class Source:
    """What the first pass reads: the text of a .tp file and its path (for messages)."""

    text: str
    path: str = "<string>"


def _cse(kp: KernelProgram) -> KernelProgram:
    """Common subexpressions as temporaries of each block (t* per point, u* per pair)."""
    return dataclasses.replace(kp, diag=cse_block(kp.diag, "t"), cross=cse_block(kp.cross, "u"))


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable
    verify: Callable | None
    show: Callable
    doc: str


PIPELINE: tuple[Pass, ...] = (
    Pass("parse", lambda src: parse_source(src.text, src.path), None, syntax.print_module,
         "text -> AST (syntax.Module): the grammar, syntax errors"),
    Pass("lower", lower, verify_program, ir.Program.text,
         "AST -> IR (ir.Program): names, kinds, loops unrolled, acts inlined"),
    Pass("recursions", build_kernel_program, verify_kernel_program, KernelProgram.text,
         "IR -> KernelProgram: the NNGP and NTK recursions by the Master theorem"),
    Pass("cse", _cse, verify_kernel_program, KernelProgram.text,
         "KernelProgram -> KernelProgram: shared subexpressions computed once"),
)
PASS_NAMES = tuple(p.name for p in PIPELINE)


def run(value, start: str = "parse", stop: str = "cse"):
    """Run the passes from `start` through `stop` on `value` (what `start` reads), verifying
    each one's output."""
    names = list(PASS_NAMES)
    for p in PIPELINE[names.index(start): names.index(stop) + 1]:
        value = p.run(value)
        if p.verify is not None:
            p.verify(value)
    return value


def kernel_program(program: ir.Program) -> KernelProgram:
    """IR -> KernelProgram: the passes after lowering."""
    return run(program, start="recursions")
