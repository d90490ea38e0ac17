"""verify.py: each invariant fails on a program that breaks it (so that the pipeline's checks
can fail), and holds on every example after every pass."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import sympy as sp

from tpcompiler import ir, passes
from tpcompiler.kernel_program import quad_call
from tpcompiler.passes.batch import plan as batch_plan
from tpcompiler.verify import verify_kernel_program, verify_program

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.tp"))
SRC = "input x\nh = dense(x, var=2.0, bias=0.1)\ny = readout(tanh(h) * relu(h))\n"


def _stages():
    module = passes.run(passes.Source(SRC), stop="parse")
    program = passes.run(module, "lower", "lower")
    return program, passes.run(program, "recursions", "cse")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_passes_every_verifier(path):
    program = passes.run(passes.Source(path.read_text(), str(path)), stop="lower")
    if program.readout is None:  # a program of reports: its limits, not a kernel program
        return
    if program.batched:  # each stage of its batch plan is a pairwise program
        for stage in batch_plan(program).stages:
            passes.run(verify_program(stage.program), start="recursions")
        return
    passes.run(program, start="recursions")  # raises on a violation


def test_ir_violations_are_caught():
    program, _ = _stages()
    g = program.gvars
    twice = dataclasses.replace(program, gvars=g + (g[0],))
    with pytest.raises(AssertionError, match="defined twice"):
        verify_program(twice)
    late = next(x for x in g if x.op is ir.Op.INPUT)
    bad = dataclasses.replace(late, op=ir.Op.MATMUL, arg=sp.Symbol("g99", real=True))
    with pytest.raises(AssertionError, match="before their definition"):
        verify_program(dataclasses.replace(program, gvars=(bad,) + g[1:]))
    with pytest.raises(AssertionError, match="unknown bias"):
        b = next(x for x in g if x.op is ir.Op.BIAS)
        verify_program(dataclasses.replace(
            program, gvars=tuple(dataclasses.replace(x, param="B9") if x is b else x
                                 for x in g)))


def test_kernel_program_violations_are_caught():
    _, kp = _stages()
    (s0, e0), *rest = kp.cross
    early = ((s0, e0 + sp.Symbol("c999", real=True)), *rest)
    with pytest.raises(AssertionError, match="before their assignment"):
        verify_kernel_program(dataclasses.replace(kp, cross=early))
    with pytest.raises(AssertionError, match="assigned twice"):
        verify_kernel_program(dataclasses.replace(kp, cross=kp.cross + kp.cross[:1]))
    gram = kp.cross_gram[0].symbol  # defined: only the integrand is missing
    ghost = ((s0, e0 + quad_call("Q99", 2)(gram, gram, gram)), *rest)
    with pytest.raises(AssertionError, match="quad2_Q99 has no integrand"):
        verify_kernel_program(dataclasses.replace(kp, cross=ghost))


def test_per_point_values_and_sides_are_typed_not_named():
    """The kernel program's per-point values carry their index and point as fields, the pair
    code's G-vars their G-var and side: nothing downstream parses a symbol's name (a symbol
    merely named like one is not one)."""
    from tpcompiler.kernel_program import PointValue, is_first_point, twin, untwin
    from tpcompiler.passes.kernels import Sided, at_side

    _, kp = _stages()
    firsts = [s for s, _ in kp.diag if is_first_point(s)]
    assert firsts and all(isinstance(s, PointValue) and s.point == 1 for s in firsts)
    temps = [s for s, _ in kp.diag if not is_first_point(s)]
    assert temps, "the cse pass should leave temporaries in this program"
    with pytest.raises(TypeError):
        twin(temps[0])
    e = twin(firsts[0])
    assert (e.index, e.point, e.name) == (firsts[0].index, 2, "e" + firsts[0].name[1:])
    assert untwin(e) == firsts[0]
    assert not is_first_point(sp.Symbol(firsts[0].name, real=True))
    g = at_side(sp.Symbol("g3", real=True) + 1, 2).free_symbols.pop()
    assert isinstance(g, Sided) and (g.gvar, g.side) == ("g3", 2)
    assert g != sp.Symbol("g3_2", real=True)
