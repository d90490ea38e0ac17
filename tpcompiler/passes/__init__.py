"""The compiler's table of contents: every pass from text to KernelProgram, in order.

Each pass is a pure function of the previous one's output; `verify` (tpcompiler/verify.py)
checks what it produced, after every pass; `show` prints it (`tpc ir FILE --after PASS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from .. import ir, syntax
from ..errors import TPError
from ..kernel_program import KernelProgram, cse_block
from ..lowering import lower
from ..parse import parse_source
from ..verify import verify_kernel_program, verify_program, verify_spatial_program
from .kernels import build_kernel_program
from .loops import build_rolled
from .spatial import SpatialProgram
from .spatial import derive as derive_spatial
from .tangent import tangent


@dataclass(frozen=True)
class Source:
    """What the first pass reads: the text of a .tp file and its path (for messages)."""

    text: str
    path: str = "<string>"


def _recursions(program: ir.Program):
    """The rolled kernel program where the program's loops can stay loops, else unrolled; the
    SpatialProgram of a program with conv, pooling or layernorm (passes/spatial.py); without
    positions (layernorm in an MLP) that program's scalar statements, a plain kernel program."""
    if program.readout is None or program.netsor_t:
        raise TPError("this program has no kernel program: it "
                      + ("has no readout" if program.readout is None else
                         "uses transpose(), `vector` or ratio="),
                      hint="its reports' limits: tpc limits FILE (net.limits())")
    if program.batched:
        raise TPError("a program with batchnorm has no pairwise kernel program: its kernels "
                      "are those of one batch, computed stage by stage (passes/batch.py)",
                      hint="net.kernels(X) and `tpc kernel` compute them; `tpc diagnose "
                           "--batch B` analyses the block")
    if program.spatial:
        sprog = derive_spatial(program)
        return sprog if program.gridded else sprog.kernel
    return build_rolled(program) or build_kernel_program(program)


def _verify(kp) -> None:
    if isinstance(kp, SpatialProgram):
        verify_spatial_program(kp)
    else:
        verify_kernel_program(kp)


def _cse(kp: KernelProgram) -> KernelProgram:
    """Common subexpressions as temporaries of each piece of straight code (t* per point, u*
    per pair): a loop's body on its own, so that no temporary crosses a loop's boundary. (A
    spatial program is left as it is: its statements are arrays, each computed once.)"""
    if isinstance(kp, SpatialProgram):
        return kp
    blocks: dict = {}  # block -> straight code
    loops: dict = {n: {} for n in range(len(kp.loops))}  # loop -> its fields, CSE'd
    for block, prefix in (("diag", "t"), ("cross", "u")):
        straight: list = []
        number, n = 0, 0
        for assigns, lp in kp.pieces(block):
            out = cse_block(assigns, prefix, number)
            number += len(out) - len(assigns)
            if lp is None:
                straight += out
                continue
            loops[n].update({block: out, block + "_at": len(straight)})
            n += 1
        blocks[block] = tuple(straight)
    return dataclasses.replace(kp, **blocks, loops=tuple(
        dataclasses.replace(lp, **loops[n]) for n, lp in enumerate(kp.loops)))


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
    Pass("recursions", _recursions, _verify, lambda kp: kp.text(),
         "IR -> KernelProgram: the NNGP and NTK recursions by the Master theorem, loops kept "
         "rolled where their iterations are copies of one another (passes/loops.py)"),
    Pass("cse", _cse, _verify, lambda kp: kp.text(),
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


def tangent_program(program: ir.Program, kinds=None) -> KernelProgram:
    """IR -> KernelProgram that also computes dK/dtheta_m of each kind (of `kinds`, default
    all; outputs grad_kind(kind, m)) for the program's params theta_m (passes/tangent.py, on
    the recursion before CSE; then CSE as usual). Straight-line code."""
    if program.gridded:
        raise TPError("derivatives in the params are not available for programs with "
                      "positions (conv, pooling) yet", hint="the MLP, RNN and residual "
                      "programs (layernorm included) have them")
    kt = tangent(run(program, start="recursions", stop="recursions"), len(program.params),
                 kinds)
    verify_kernel_program(kt)
    return verify_kernel_program(_cse(kt))


def kernel_program(program: ir.Program) -> KernelProgram:
    """IR -> KernelProgram: the passes after lowering (rolled where it can be:
    KernelProgram.unrolled() writes it out as straight-line code)."""
    return run(program, start="recursions")
