"""Invariants of what crosses a stage: the IR (one rule per Op) and the kernel program
(straight-line code). The pipeline (passes/__init__.py) runs them after every pass; a violation
is a compiler bug, reported as an AssertionError naming the rule, never a user's TPError.
"""

from __future__ import annotations

import re

import sympy as sp

from . import ir
from .ir import ParamSymbol
from .kernel_program import KernelProgram, QuadCall, is_first_point, twin


def _check(ok: bool, rule: str) -> None:
    if not ok:
        raise AssertionError(f"verify: {rule}")


def _gvar_rules() -> dict:
    """One rule per Op: what a G-var of that Op must look like, given the program."""

    def input_(p: ir.Program, g: ir.GVar, seen: set) -> None:
        _check(isinstance(g.arg, ir.InputRef), f"{g.name}: an INPUT G-var reads an input")
        _check(g.arg.input in {i.name for i in p.inputs}, f"{g.name}: unknown input")
        _check(p.matrix(g.param).kind is ir.Kind.INPUT, f"{g.name}: its matrix is an input one")

    def bias(p: ir.Program, g: ir.GVar, seen: set) -> None:
        _check(g.param in {b.name for b in p.biases}, f"{g.name}: unknown bias {g.param}")

    def matmul(p: ir.Program, g: ir.GVar, seen: set) -> None:
        _check(g.param in {m.name for m in p.matrices}, f"{g.name}: unknown matrix {g.param}")
        _check(not g.transposed or p.matrix(g.param).kind is ir.Kind.HIDDEN,
               f"{g.name}: only a hidden matrix is transposed")
        used = set(ir.gvars_of(g.arg))
        _check(used <= seen, f"{g.name}: reads {sorted(used - seen)} before their definition")

    def vector(p: ir.Program, g: ir.GVar, seen: set) -> None:
        _check(g.arg is None and g.param.startswith("V") and not g.grid,
               f"{g.name}: a vector has no argument, its own family and no positions")

    def conv(p: ir.Program, g: ir.GVar, seen: set) -> None:
        _check(isinstance(g.spatial, ir.Stencil), f"{g.name}: a CONV G-var has a stencil")
        _check(g.grid == g.spatial.grid_out, f"{g.name}: on its stencil's output grid")
        if isinstance(g.arg, ir.InputRef):
            _check(p.matrix(g.param).kind is ir.Kind.INPUT, f"{g.name}: an input matrix")
        else:
            matmul(p, g, seen)

    def derived(kind):
        def rule(p: ir.Program, g: ir.GVar, seen: set) -> None:
            _check(g.param == "" and isinstance(g.spatial, kind),
                   f"{g.name}: a derived G-var has no parameter and its {kind.__name__}")
            used = set(ir.gvars_of(g.arg))
            _check(used <= seen, f"{g.name}: reads {sorted(used - seen)} before their definition")
        return rule

    def attend(p: ir.Program, g: ir.GVar, seen: set) -> None:
        derived(ir.Attend)(p, g, seen)
        a = g.spatial
        used = set(ir.gvars_of(a.query)) | set(ir.gvars_of(a.key))
        _check(used <= seen, f"{g.name}: its logits read {sorted(used - seen)} before their "
                             "definition")
        _check(g.grid == a.grid and a.heads >= 1, f"{g.name}: on its attention's grid")

    def batchnorm(p: ir.Program, g: ir.GVar, seen: set) -> None:
        _check(g.param == "" and g.batch_eps is not None and not g.grid,
               f"{g.name}: a batchnorm has no parameter, an eps and no positions")
        used = set(ir.gvars_of(g.arg))
        _check(used <= seen, f"{g.name}: reads {sorted(used - seen)} before their definition")

    return {ir.Op.INPUT: input_, ir.Op.BIAS: bias, ir.Op.MATMUL: matmul, ir.Op.CONV: conv,
            ir.Op.POOL: derived(ir.Pool), ir.Op.NORM: derived(ir.Norm), ir.Op.ATTEND: attend,
            ir.Op.BATCHNORM: batchnorm, ir.Op.VECTOR: vector}


GVAR_RULES = _gvar_rules()


def verify_program(p: ir.Program) -> ir.Program:
    """SSA (each G-var defined once, read only after its definition), every Op by its rule,
    the readout and the reports reading defined G-vars. Returns p (so that it chains in the
    pipeline)."""
    _check(set(GVAR_RULES) == set(ir.Op), "every Op has a rule")
    seen: set[str] = set()
    for g in p.gvars:
        _check(g.name not in seen, f"{g.name} is defined twice")
        GVAR_RULES[g.op](p, g, seen)
        seen.add(g.name)
    for rep in p.reports:
        used = set(ir.gvars_of(rep.expr))
        _check(used <= seen, f"report {rep.name} reads undefined G-vars {sorted(used - seen)}")
    r = p.readout
    _check(r is not None or bool(p.reports), "the program has a readout or reports")
    if r is not None and not isinstance(r.arg, ir.InputRef):
        used = set(ir.gvars_of(r.arg))
        _check(used <= seen, f"the readout reads undefined G-vars {sorted(used - seen)}")
    return p


def _reads(e: sp.Expr) -> set:
    """The symbols an expression reads from the program (params come from the caller)."""
    return {s for s in e.free_symbols if not isinstance(s, ParamSymbol)}


def _walk(kp: KernelProgram, block: str, known: set, body_known: set = frozenset()) -> set:
    """Check one block in order, each loop in its place: a symbol is assigned once and read
    after its assignment; a loop's body reads what is known before it (and body_known), its
    state is assigned before it, and the code after it never reads the body's symbols.
    Returns the symbols known after the block."""
    known = set(known)
    assigned: set = set()

    def run(assigns, scope):
        for s, e in assigns:
            _check(s not in assigned and s not in scope, f"{s} is assigned twice ({block})")
            _check(_reads(e) <= scope, f"{s} reads {sorted(map(str, _reads(e) - scope))}"
                                            f" before their assignment ({block})")
            scope.add(s)
            assigned.add(s)

    for assigns, lp in kp.pieces(block):
        if lp is None:
            run(assigns, known)
            continue
        inner = known | set(body_known)
        run(assigns, inner)
        for s, v in getattr(lp, block + "_state"):
            _check(s in known, f"the loop state {s} is not assigned before the loop ({block})")
            _check(_reads(v) <= inner, f"the next value of {s} reads undefined symbols")
    return known


def _point_values(assigns) -> set:
    values = {s for s, _ in assigns if is_first_point(s)}
    return values | {twin(s) for s in values}


def verify_kernel_program(kp: KernelProgram) -> KernelProgram:
    """Straight-line code (loops in their places: `_walk`): every symbol read is a Gram
    entry, an earlier assignment (the cross block also reads the first point's diag values d_i
    and the second's e_i; a loop's body those of the diag loop's body too), or an integration
    variable; assigned once; every quadrature call names an integrand; the outputs read
    defined symbols. Returns kp."""
    integrands = {q.name for q in kp.integrands}
    diag = _walk(kp, "diag", {g.symbol for g in kp.diag_gram})
    grams = {g.symbol for g in kp.diag_gram}
    values = _point_values(kp.diag) | grams | {twin(s) for s in grams}
    body_values = set().union(*(_point_values(lp.diag) for lp in kp.loops))
    cross = _walk(kp, "cross", {g.symbol for g in kp.cross_gram} | values, body_values)
    for kind, (d, c) in kp.outputs.items():
        _check(_reads(d) <= diag, f"the {kind} diagonal reads undefined symbols")
        _check(_reads(c) <= cross, f"the {kind} kernel reads undefined symbols")
        # a kind, or the derivative of one in a param (passes/tangent.py: d<m>_<kind>)
        _check(re.fullmatch(r"(d\d+_)?(nngp|ntk)", kind) is not None,
               f"an output of unknown kind {kind}")
    for _, e in kp.assignments():
        for f in e.atoms(QuadCall):
            _check(f.integrand in integrands, f"{type(f).__name__} has no integrand")
    return kp


#: the per-point spatial ops that read pair statements evaluated at (x, x) (passes/spatial.py)
READS_PAIRS = frozenset({"pool1", "attw1", "att1"})


def verify_spatial_program(sp) -> None:
    """A spatial program (passes/spatial.py) in order: each symbol assigned once and read after
    its assignment; a per-point statement reads per-point values, or (a pooled value) pair
    statements that the per-point stage runs; the outputs read assigned symbols."""
    point: set = set()
    pair: set = set()
    for block, s, e in sp.order:
        _check(s.name not in point | pair, f"{s} is assigned twice (spatial)")
        reads = set() if e is None else {x.name if not hasattr(x, "point") or x.point == 1
                                         else f"d{x.index}" for x in e.free_symbols}
        if block == "diag":
            pairs = reads - point
            _check(pairs <= pair and (not pairs or getattr(e, "op", "") in READS_PAIRS),
                   f"{s} reads {sorted(pairs)} (spatial, per point)")
            _check(pairs <= sp.pointwise, f"{s}: the per-point stage does not run {sorted(pairs)}")
            point.add(s.name)
        else:
            _check(reads <= point | pair, f"{s} reads {sorted(reads - point - pair)} before "
                                          "their assignment (spatial)")
            pair.add(s.name)
    for kind, (d, c) in sp.kernel.outputs.items():
        _check({x.name for x in d.free_symbols} <= point, f"the per-point {kind} reads "
                                                           "unassigned symbols")
        _check({x.name if not hasattr(x, "point") or x.point == 1 else f"d{x.index}"
                for x in c.free_symbols} <= point | pair, f"the pair {kind} reads unassigned "
                                                          "symbols")
