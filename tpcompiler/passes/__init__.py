"""The compiler's table of contents: the passes from IR to KernelProgram, in order."""

from __future__ import annotations

from .. import ir
from ..kernel_program import KernelProgram
from .kernels import build_kernel_program


class _Pipeline:
    """IR -> KernelProgram. One pass today (the Master-theorem recursions); the list is the
    place where more passes (simplification, abc rescaling) go."""

    passes = (("kernels", build_kernel_program),)

    def kernel_program(self, program: ir.Program) -> KernelProgram:
        return build_kernel_program(program)


PIPELINE = _Pipeline()
