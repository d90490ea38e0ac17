"""A program with batchnorm, cut into per-batch stages (BatchPlan).

Batch normalisation couples the points of a batch: the covariance of batchnorm(h) over a
batch of B points is a function of the whole B x B covariance of h (batchnorm.py), not of
pairs. Everywhere else the program is pairwise. So the plan cuts the program at each
normalised vector: every f(batchnorm(h)) that a dense() or readout() reads becomes a *source*,
a synthetic input whose Gram matrix over the batch is the batch moment V = E[f(z) f(z)^T]
(z the normalised coordinates); each stage is an ordinary (pairwise) sub-program, over the
real inputs and the sources it reads, whose readout (variance 1) is the argument h of the next
batchnorm (or the network's readout). Evaluated in order (batch_kernels.py), stage by stage, the
covariance of each h gives the moments of the sources that read it.

The NTK: a stage's own NTK counts the gradients of its parameters with the sources as data;
the tangent that a source carries from the parameters before it (M(S, Theta), batchnorm.py)
enters through the matrices that read it. When each such matrix's output reaches the stage's
target linearly (sums, scalings, biases: the paper's h' = W phi(BN(h)) + b, residual sums of
them), the carried part is sum over those matrices of weight * M_source, weight = the product
of the variances and squared coefficients on the way (`Stage.carry`). Through a nonlinearity
(readout(relu(dense(relu(batchnorm(h)))))) it would need the tangent inside the stage's own
recursion: refused with the reason (`BatchPlan.ntk_refusal`); the NNGP is exact either way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import sympy as sp

from .. import functions as F
from .. import ir
from ..errors import TPError

#: the variable of a source's function f in Source.body
X = sp.Symbol("x", real=True)


@dataclass(frozen=True)
class Source:
    """f(batchnorm(h)) as a synthetic input of the stages after it."""

    name: str  # the synthetic input's name (made by the plan; never the user's)
    bn: str  # the BATCHNORM G-var
    body: sp.Expr  # f in the variable X
    #: (a, b) when f = abrelu(a, b) (positively homogeneous: the exact quadrature), else None
    slopes: tuple[float, float] | None


@dataclass(frozen=True)
class Stage:
    target: str  # a BATCHNORM G-var (its argument's covariance) or "" (the readout)
    program: ir.Program  # pairwise; its readout reads the target
    #: (its input name, the source) for each synthetic input it reads: local names, so that
    #: the stages of a repeated block are equal programs
    sources: tuple[tuple[str, str], ...]
    #: (source, weight): the target's tangent gets weight * M_source; None: not linear
    carry: tuple[tuple[str, sp.Expr], ...] | None

    def weights(self, values: dict) -> list[tuple[str, float]]:
        """carry with the params at `values` (symbol -> number)."""
        return [(src, float(w.xreplace(values))) for src, w in self.carry]


@dataclass(frozen=True)
class BatchPlan:
    sources: tuple[Source, ...]
    stages: tuple[Stage, ...]
    eps: dict  # BATCHNORM G-var -> eps (a number)
    inputs: tuple[ir.Input, ...]  # the program's real inputs
    ntk_refusal: str | None

    def source(self, name: str) -> Source:
        return next(s for s in self.sources if s.name == name)


def _slopes(body: sp.Expr) -> tuple[float, float] | None:
    """(a, b) when body = a min(x, 0) + b max(x, 0): a sum of multiples of x, relu(x),
    abrelu(x, a, b) and |x| (structurally: nothing is proved numerically)."""
    a = b = 0.0
    for term in sp.Add.make_args(sp.expand(body)):
        coeff, atom = term.as_coeff_Mul()
        if not coeff.is_Number:
            return None
        c = float(coeff)
        if atom == X:
            a, b = a + c, b + c
        elif isinstance(atom, F.Relu) and atom.args[0] == X:
            b += c
        elif isinstance(atom, F.ABRelu) and atom.args[0] == X and all(
                v.is_Number for v in atom.args[1:]):
            a, b = a + c * float(atom.args[1]), b + c * float(atom.args[2])
        elif isinstance(atom, F.AbsF) and atom.args[0] == X:
            a, b = a - c, b + c
        else:
            return None
    return a, b


def _prefix(prog: ir.Program) -> str:
    """A prefix no input name of the program starts with (synthetic inputs' names)."""
    taken = {i.name for i in prog.inputs}
    prefix = "_bn"
    while any(t.startswith(prefix) for t in taken):
        prefix = "_" + prefix
    return prefix


def plan(prog: ir.Program) -> BatchPlan:
    """The stages of a program with batchnorm (TPError, located, for what the cut does not
    support)."""
    if prog.spatial:
        raise TPError("batchnorm with conv, pooling, layernorm or attention in one program is "
                      "not supported", next((g.span for g in prog.gvars
                                             if g.op is ir.Op.BATCHNORM), None),
                      "batchnorm works in MLPs (plain vectors)")
    bns = {g.name: g for g in prog.gvars if g.op is ir.Op.BATCHNORM}
    readers = [(g.name, g.arg, g.span) for g in prog.gvars if g.op is not ir.Op.BIAS and
               not isinstance(g.arg, ir.InputRef)]
    if not isinstance(prog.readout.arg, ir.InputRef):
        readers.append(("", prog.readout.arg, prog.readout.span))
    found: list[tuple[str, sp.Expr]] = []
    for name, arg, span in readers:
        normed = [s.name for s in arg.free_symbols if s.name in bns]
        if not normed:
            continue
        g = prog.gvar(name) if name else None
        if g is not None and g.op is not ir.Op.MATMUL:
            raise TPError(f"a batch-normalised vector read by {g.op.value}: not supported",
                          span, "a batch-normalised vector feeds dense() or readout()")
        if g is not None and prog.matrix(g.param).shared:
            raise TPError("a named weight reading a batch-normalised vector is not supported "
                          "(its other uses would need the joint batch law)", span,
                          "use dense(..., var=...) for the layer after batchnorm")
        key = (normed[0], arg.xreplace({ir.gsym(normed[0]): X}))
        if key not in found:
            found.append(key)
    prefix = _prefix(prog)
    names = [f"{prefix}{k}" for k in range(len(found))]
    sources = tuple(Source(n, bn, body, _slopes(body)) for n, (bn, body) in zip(names, found))
    by_key = {(s.bn, s.body): s.name for s in sources}

    def rewrite(arg):
        if isinstance(arg, ir.InputRef):
            return arg
        normed = [s.name for s in arg.free_symbols if s.name in bns]
        if not normed:
            return arg
        return ir.InputRef(by_key[(normed[0], arg.xreplace({ir.gsym(normed[0]): X}))], None)

    gvars = {}
    for g in prog.gvars:
        if g.op is ir.Op.BATCHNORM:
            continue
        arg = rewrite(g.arg) if g.op is ir.Op.MATMUL else g.arg
        op = ir.Op.INPUT if g.op is ir.Op.MATMUL and isinstance(arg, ir.InputRef) else g.op
        gvars[g.name] = dataclasses.replace(g, op=op, arg=arg)
    readout = dataclasses.replace(prog.readout, arg=rewrite(prog.readout.arg))
    synthetic = {s.name for s in sources}
    linear = _Linear(prog, gvars, synthetic)
    stages = []
    refusal = None
    for name, g in bns.items():
        carry = linear.carry(g.arg, sp.S.One)
        stages.append(_stage(prog, gvars, synthetic, prefix, name, g.arg, carry))
        if carry is None and refusal is None:
            refusal = (f"the NTK through the batchnorm at line {g.span.line if g.span else '?'}"
                       " reaches it through a nonlinearity of an earlier batch-normalised "
                       "vector")
    r = prog.readout
    var_r = prog.matrix(r.matrix).var
    if isinstance(readout.arg, ir.InputRef):
        carry = ((readout.arg.input, var_r),) if readout.arg.input in synthetic else ()
    else:
        carry = linear.carry(readout.arg, var_r)
    stages.append(_stage(prog, gvars, synthetic, prefix, "", None, carry, readout))
    if carry is None and refusal is None:
        refusal = ("the readout reads a nonlinearity of a layer after batchnorm: the tangent "
                   "carried through batchnorm would have to pass that nonlinearity")
    if refusal is not None:
        refusal += ("; the NTK is computed when each batch-normalised vector feeds a dense() "
                    "whose output reaches the next batchnorm or the readout linearly, as in "
                    "h = dense(relu(batchnorm(h))); the NNGP is exact")
    return BatchPlan(sources, tuple(stages), {n: g.batch_eps for n, g in bns.items()},
                     tuple(i for i in prog.inputs), refusal)


class _Linear:
    """The carried tangent of an expression: which sources reach it, with what weight, when
    every path from them is linear."""

    def __init__(self, prog, gvars, synthetic):
        self.prog, self.gvars, self.synthetic = prog, gvars, synthetic
        self.memo: dict[str, tuple | None] = {}

    def depends(self, name: str) -> bool:
        g = self.gvars[name]
        if g.op is ir.Op.BIAS:
            return False
        if isinstance(g.arg, ir.InputRef):
            return g.arg.input in self.synthetic
        return any(self.depends(s.name) for s in g.arg.free_symbols)

    def of_gvar(self, name: str):
        if name in self.memo:
            return self.memo[name]
        g = self.gvars[name]
        out: tuple | None = ()
        if g.op is not ir.Op.BIAS:
            var = self.prog.matrix(g.param).var
            if isinstance(g.arg, ir.InputRef):
                out = ((g.arg.input, var),) if g.arg.input in self.synthetic else ()
            elif self.depends(name):
                out = self.carry(g.arg, var)
        self.memo[name] = out
        return out

    def carry(self, expr: sp.Expr, weight: sp.Expr):
        total: list[tuple[str, sp.Expr]] = []
        matrices: dict[str, str] = {}
        for term in sp.Add.make_args(expr):
            coeff, atom = term.as_coeff_Mul()
            if atom == 1:
                continue
            if not atom.is_Symbol:
                if any(self.depends(s.name) for s in atom.free_symbols):
                    return None
                continue
            inner = self.of_gvar(atom.name)
            if inner is None:
                return None
            if inner:
                m = self.gvars[atom.name].param
                if m in matrices and matrices[m] != atom.name:
                    return None  # one matrix twice: their carried tangents correlate
                matrices[m] = atom.name
            total += [(s, weight * coeff ** 2 * w) for s, w in inner]
        return tuple(total)


def _stage(prog, gvars, synthetic, prefix, target, expr, carry, readout=None) -> Stage:
    """The sub-program of the G-vars that `expr` (or the readout) needs, renumbered so that
    equal stages are equal programs (one compiled module for a repeated block)."""
    root = readout.arg if readout is not None else expr
    need: set[str] = set()
    stack = [] if isinstance(root, ir.InputRef) else [s.name for s in root.free_symbols]
    while stack:
        n = stack.pop()
        if n in need:
            continue
        need.add(n)
        a = gvars[n].arg
        if a is not None and not isinstance(a, ir.InputRef):
            stack += [s.name for s in a.free_symbols]
    order = [g for g in gvars.values() if g.name in need]
    rename = {g.name: f"g{i}" for i, g in enumerate(order)}
    sub = {ir.gsym(old): ir.gsym(new) for old, new in rename.items()}
    used_m = []
    used_b = []
    for g in order:
        if g.op is ir.Op.BIAS:
            used_b.append(g.param) if g.param not in used_b else None
        elif g.param not in used_m:
            used_m.append(g.param)
    if readout is not None:
        used_m.append(readout.matrix)
        if readout.bias is not None:
            used_b.append(readout.bias)
    mname = {m: f"A{i}" for i, m in enumerate(used_m)}
    bname = {b: f"B{i}" for i, b in enumerate(used_b)}
    reads = [a.input for a in [*(g.arg for g in order), getattr(readout, "arg", None)]
             if isinstance(a, ir.InputRef)]
    local = {n: f"{prefix}l{k}" for k, n in
             enumerate(dict.fromkeys(n for n in reads if n in synthetic))}

    def input_of(arg):
        return ir.InputRef(local.get(arg.input, arg.input), arg.index)

    new_gvars = []
    for g in order:
        arg = input_of(g.arg) if isinstance(g.arg, ir.InputRef) else (
            None if g.arg is None else g.arg.xreplace(sub))
        param = bname[g.param] if g.op is ir.Op.BIAS else mname[g.param]
        new_gvars.append(dataclasses.replace(g, name=rename[g.name], param=param, arg=arg))
    matrices = []
    for old in used_m:
        m = prog.matrix(old)
        fan_in = m.fan_in
        kind = m.kind
        for g in order:
            if g.param == old and isinstance(g.arg, ir.InputRef) and g.arg.input in synthetic:
                kind, fan_in = ir.Kind.INPUT, local[g.arg.input]
        matrices.append(dataclasses.replace(m, name=mname[old], kind=kind, fan_in=fan_in))
    biases = [dataclasses.replace(prog.bias(b), name=bname[b]) for b in used_b]
    if readout is None:
        unit = ir.Matrix(f"A{len(matrices)}", "batchnorm argument", sp.S.One,
                         ir.Kind.READOUT, False)
        matrices.append(unit)
        r = ir.Readout(unit.name, expr.xreplace(sub), None)
    else:
        arg = input_of(readout.arg) if isinstance(readout.arg, ir.InputRef) else \
            readout.arg.xreplace(sub)
        r = dataclasses.replace(readout, matrix=mname[readout.matrix], arg=arg,
                                bias=bname.get(readout.bias))
    inputs = [i for i in prog.inputs if i.name in reads] + [
        ir.Input(n, None) for n in local.values()]
    if not inputs:  # a target made of biases alone: still one input to carry the batch
        inputs = [prog.inputs[0]]
    program = ir.Program(prog.name, prog.parametrization, tuple(inputs), tuple(matrices),
                         tuple(biases), tuple(new_gvars), r, (), prog.params)
    return Stage(target, program, tuple((v, k) for k, v in local.items()), carry)
