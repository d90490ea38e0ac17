"""AST -> IR: builds the NETSOR program, unrolling loops and inlining acts.

The lowering is a small interpreter over the AST: every construct is one case here. The rules
that do not build anything (limits, reserved names, constants' range, vector sizes) are in
check.py; every mistake a user can make ends in a TPError pointing at the offending node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import sympy as sp

from . import ir
from . import syntax as S
from .check import (
    KEYWORDS,
    KINDS,
    MAX_ABC_EXPONENT,
    MAX_GVARS,
    MAX_NUMBER,
    MAX_POWER,
    MAX_SEQ,
    MAX_STEPS,
    NUMBER_HINT,
    check_finite,
    check_name,
    check_scale,
    fraction,
    in_range,
    show,
)
from .errors import Span, TPError, did_you_mean
from .functions import BUILTINS
from .lowering_batch import BatchCalls
from .lowering_limits import Limit, LimitCalls
from .lowering_spatial import SpatialCalls, joint_grid
from .parametrization import PRESETS


@dataclass(frozen=True)
class Scalar:
    value: sp.Expr  # an exact number


@dataclass(frozen=True)
class Vec:
    expr: sp.Expr  # an H-var: an expression in G-var symbols
    grid: tuple[int, ...] = ()  # its positions (a spatial vector); () for a plain vector
    width: sp.Expr = sp.S.One  # its width as a multiple of n (`ratio=`)


@dataclass(frozen=True)
class InVec:
    ref: ir.InputRef


@dataclass(frozen=True)
class Seq:
    input: ir.Input


@dataclass(frozen=True)
class Weight:
    name: str


@dataclass(frozen=True)
class Act:
    name: str
    param: sp.Dummy
    body: sp.Expr


@dataclass(frozen=True)
class Output:
    pass


@dataclass(frozen=True)
class Hyper:
    """A value built from params (`param sw = 2.0`) and numbers: known at call time only, so
    it may stand where a variance does (var=, bias=) and nowhere a number shapes the program."""

    value: sp.Expr  # in the params' symbols


PARAM_HINT = ("a param is a variance given at call time: use it in var= or bias= (of dense, "
              "readout, conv or a weight); write a number here, or a const")

_WHAT = {Hyper: "a param expression", Scalar: "a constant", Vec: "a vector",
         InVec: "an input vector", Seq: "a sequence input",
         Weight: "a weight", Act: "an activation function", Output: "the readout output",
         Limit: "a report (a scalar limit)"}


def describe(v) -> str:
    """What a value of the lowering is, in words (for messages)."""
    return _WHAT[type(v)]


class _Lowerer(SpatialCalls, BatchCalls, LimitCalls):
    CALLS = (*SpatialCalls.SPATIAL_CALLS, *BatchCalls.BATCH_CALLS)

    def __init__(self, module: S.Module):
        self.module = module
        self.source = module.source
        self.env: dict[str, object] = {}
        self.defined_at: dict[str, Span | None] = {}
        self.assigned_later = self._all_assigned(module.body)
        self.name: str | None = None
        self.param: ir.Parametrization | None = None
        self.inputs: list[ir.Input] = []
        self.matrices: list[ir.Matrix] = []
        self.biases: list[ir.Bias] = []
        self.gvars: list[ir.GVar] = []
        self.named: dict[str, dict] = {}  # weight name -> var, bias, matrix, bias_g, kind info
        self.readout: ir.Readout | None = None
        self.readout_span: Span | None = None
        self.steps = 0
        self.loop_depth = 0
        self.loops: list[ir.LoopRecord] = []
        self.scales: dict = {}  # ranges.log_scale's memo: sub-expressions are shared
        self._arg_grid: tuple[int, ...] = ()  # the grid of _one_vector_arg's last vector
        self._arg_width: sp.Expr = sp.S.One  # and its width
        self.params: list[ir.Param] = []
        self.reports: list[ir.Report] = []
        self.nvectors = 0

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def _all_assigned(body) -> set[str]:
        names: set[str] = set()
        for s in body:
            if isinstance(s, S.Assign):
                names.add(s.name)
            elif isinstance(s, (S.Repeat, S.For)):
                names |= _Lowerer._all_assigned(s.body)
        return names

    def _bind(self, name: str, value, span, what: str) -> None:
        self._check_name(name, span, what)
        if name in self.env:
            prev = self.defined_at.get(name)
            where = f" (defined at line {prev.line})" if prev is not None else ""
            raise TPError(f"'{name}' is already defined{where}", span, "choose another name")
        self.env[name] = value
        self.defined_at[name] = span

    _check_name = staticmethod(check_name)

    def _lookup(self, name: str, span):
        if name in self.env:
            return self.env[name]
        if name in BUILTINS or name in ("dense", "readout", "mean", "transpose", *self.CALLS):
            raise TPError(f"'{name}' is a function; call it: {name}(...)", span)
        if name in self.assigned_later:
            raise TPError(f"'{name}' is used before it is assigned", span,
                          "assign it earlier in the program")
        hint = did_you_mean(name, self.env)
        raise TPError(f"undefined name '{name}'", span, hint)

    def _tick(self, span) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS or len(self.gvars) > MAX_GVARS:
            raise TPError(
                f"the unrolled program is too large (more than {MAX_GVARS} vectors or "
                f"{MAX_STEPS} statements)", span, "reduce the loop counts")

    def _new_gvar(self, op: ir.Op, param: str, arg, span, width=sp.S.One,
                  transposed: bool = False) -> sp.Symbol:
        g = ir.GVar(f"g{len(self.gvars)}", op, param, arg, span, width=width,
                    transposed=transposed)
        self.gvars.append(g)
        self._tick(span)
        return g.symbol

    def _new_matrix(self, label, var, kind, shared, fan_in, span, ratio=sp.S.One) -> ir.Matrix:
        m = ir.Matrix(f"A{len(self.matrices)}", label, var, kind, shared, fan_in, span, ratio)
        self.matrices.append(m)
        return m

    def _new_bias(self, label, var, shared, span) -> ir.Bias:
        b = ir.Bias(f"B{len(self.biases)}", label, var, shared, span)
        self.biases.append(b)
        return b

    def _label(self, what: str, span) -> str:
        return f"{what}@{span.line}:{span.column}" if span is not None else what

    # --- constants -----------------------------------------------------------------------

    def scalar(self, e: S.Expr, what: str = "a constant") -> sp.Expr:
        v = self.expr(e)
        if isinstance(v, Hyper):
            raise TPError(f"expected {what}: a param's value is known only at call time",
                          e.span, PARAM_HINT)
        if not isinstance(v, Scalar):
            raise TPError(f"expected {what}, got {describe(v)}", e.span)
        return v.value

    def integer(self, e: S.Expr, what: str, lo: int | None = None, hi: int | None = None) -> int:
        v = self.scalar(e, what)
        if not v.is_Integer:
            raise TPError(f"{what} must be an integer, got {show(v)}", e.span)
        n = int(v)
        if lo is not None and n < lo:
            raise TPError(f"{what} must be at least {lo}, got {show(v)}", e.span)
        if hi is not None and n > hi:
            raise TPError(f"{what} is {show(v)}, more than the limit {hi}", e.span,
                          "the program is unrolled; keep loops and sequences small")
        return n

    in_range = staticmethod(in_range)

    def vec(self, expr: sp.Expr, span, grid: tuple[int, ...] = (),
            width: sp.Expr = sp.S.One) -> Vec:
        """A vector whose size (ranges.log_scale: its coefficients multiplied together, and
        exp's growth) stays within MAX_LOG_SCALE; see MAX_CONSTANT."""
        check_scale(expr, span, self.scales)
        self.check_derived_use(expr, span)
        self._check_batch_use(expr, span)
        return Vec(expr, grid, width)

    def variance(self, kw: S.Kwarg, params: bool = True) -> sp.Expr:
        """The value of var=, bias= (or eps=): a number >= 0, or (params=True) an expression
        in params whose default value is >= 0 (ir.Program.param_values checks given ones)."""
        h = self.expr(kw.value) if params else None
        if isinstance(h, Hyper):
            defaults = {p.symbol: sp.Float(p.default) for p in self.params}
            at = h.value.xreplace(defaults)
            if at.is_negative:
                raise TPError(f"{kw.name}= is a variance and must be >= 0; with the params' "
                              f"defaults it is {float(at):g}", kw.value.span,
                              "variances are sigma^2; give the params non-negative defaults")
            return h.value
        v = self.scalar(kw.value, f"a number for {kw.name}=")
        if v.is_negative:
            raise TPError(f"{kw.name}= is a variance and must be >= 0, got {show(v)}",
                          kw.value.span, "variances are sigma^2; use a non-negative number")
        return self.in_range(v, kw.value.span, f"{kw.name}=")

    # --- statements ----------------------------------------------------------------------

    def run(self) -> ir.Program:
        body = self.module.body
        if not body:
            raise TPError("the program is empty", Span(self.source, 1, 1, 1, 2),
                          hint="a program needs at least an input, layers and a readout, "
                               "e.g. examples/relu_mlp.tp")
        for stmt in body:
            self.stmt(stmt, top=True)
        if self.readout is None and not self.reports:
            span = body[-1].span  # the last statement: the readout was expected after it
            if span is None:
                lines = self.source.lines()
                span = Span(self.source, len(lines), 1, len(lines), max(2, len(lines[-1]) + 1))
            raise TPError("the program has no readout", span,
                          "end the program with e.g. y = readout(relu(h), var=1.0), or "
                          "report a limit: report m = mean(h ** 2)")
        self._check_param_targets()
        self._check_netsor_t()
        return ir.Program(
            name=self.name,
            parametrization=self.param or ir.Parametrization("ntk"),
            inputs=tuple(self.inputs),
            matrices=tuple(self.matrices),
            biases=tuple(self.biases),
            gvars=tuple(self.gvars),
            readout=self.readout,
            loops=tuple(self.loops),
            params=tuple(self.params),
            reports=tuple(self.reports),
        )

    def _check_param_targets(self) -> None:
        """Each `custom` entry names a weight kind or a declared weight (declared anywhere), and
        every weight and bias of the program gets its exponents from an entry (passes/abc.py):
        a matrix from its weight's own entry, else from its kind's; a bias from `bias`. The
        readout's bias and a readout of an input are finite-dimensional (width-independent,
        no entry needed)."""
        entries = getattr(self, "_param_entries", None)
        if entries is None:
            return
        for e in entries:
            if e.target not in KINDS and e.target not in self.named:
                hint = did_you_mean(e.target, (*KINDS, *self.named)) or (
                    "an entry is a weight kind (" + ", ".join(KINDS) + ") or a declared weight")
                raise TPError(f"unknown parametrization entry '{e.target}'", e.span, hint)
            if e.target in KINDS and e.target in self.named:
                raise TPError(f"'{e.target}' is both a weight kind and a weight name, so this "
                              f"entry is ambiguous", e.span, f"rename the weight '{e.target}'")
        given = {e.target for e in entries}
        need: dict[str, str] = {}  # kind -> the first weight or bias that needs its entry
        for m in self.matrices:
            if (m.shared and m.label in given) or (m.kind is ir.Kind.READOUT and m.fan_in):
                continue
            need.setdefault(m.kind.value, m.label)
        readout_bias = self.readout.bias if self.readout is not None else None
        for b in self.biases:
            if b.name != readout_bias:
                need.setdefault("bias", f"the bias of {b.label}")
        missing = [k for k in KINDS if k in need and k not in given]
        if missing:
            what = ", ".join(f"'{k}' (needed by {need[k]})" for k in missing)
            raise TPError(f"the custom parametrization has no entry for {what}",
                          self._param_span,
                          "add e.g.  " + missing[0] + ": a=0, b=0, c=0  (every weight kind the "
                          "program uses needs an entry; a named weight may have its own)")

    def stmt(self, s: S.Stmt, top: bool = False) -> None:
        self._tick(s.span)
        method = getattr(self, "stmt_" + type(s).__name__)
        if not top and isinstance(s, (S.NetworkDecl, S.ParamDecl, S.ConstDecl, S.HyperDecl,
                                      S.InputDecl, S.WeightDecl, S.ActDecl, S.VectorDecl,
                                      S.ReportDecl)):
            raise TPError("declarations are only allowed at the top level, not inside a loop",
                          s.span, "move it before the loop")
        method(s)

    def stmt_NetworkDecl(self, s: S.NetworkDecl) -> None:
        if self.name is not None:
            raise TPError("the network is named twice", s.span)
        self.name = s.name

    def stmt_ParamDecl(self, s: S.ParamDecl) -> None:
        if self.param is not None:
            raise TPError("the parametrization is set twice", s.span)
        if s.entries is None:
            if s.name == "custom":
                raise TPError("`parametrization custom` needs a block of entries", s.span,
                              "write e.g.  parametrization custom { hidden: a=1/2, b=0, c=0 }")
            if s.name not in PRESETS:
                hint = did_you_mean(s.name, PRESETS + ("custom",)) or (
                    "use one of: " + ", ".join(PRESETS) + ", or custom { ... }")
                raise TPError(f"unknown parametrization '{s.name}'", s.span, hint)
            self.param = ir.Parametrization(s.name)
            return
        if s.name != "custom":
            raise TPError(f"only `parametrization custom` takes a block, not '{s.name}'", s.span)
        entries = []
        seen = set()
        for e in s.entries:
            if e.target in seen:
                raise TPError(f"'{e.target}' appears twice in the parametrization", e.span)
            seen.add(e.target)
            self._check_unique_kwargs(e.kwargs)
            vals = {}
            for kw in e.kwargs:
                if kw.name not in ("a", "b", "c"):
                    raise TPError(f"unknown exponent '{kw.name}'", kw.span,
                                  "each entry sets a=, b= and c=")
                v = self.scalar(kw.value, f"a rational number for {kw.name}=")
                if not v.is_Rational:
                    raise TPError(f"{kw.name}= must be a rational number, got {v}", kw.value.span)
                if abs(v) > MAX_ABC_EXPONENT:
                    raise TPError(f"{kw.name}= is {show(v)}, beyond the largest width exponent "
                                  f"({MAX_ABC_EXPONENT})", kw.value.span,
                                  "width ** exponent must stay finite in float64 for the "
                                  "finite networks (tpc coordcheck); exponents are small "
                                  "rationals such as 0, 1/2, 1")
                vals[kw.name] = Fraction(int(v.p), int(v.q))
            missing = [k for k in ("a", "b", "c") if k not in vals]
            if missing:
                raise TPError(f"'{e.target}' is missing {', '.join(missing)}=", e.span,
                              "write e.g.  hidden: a=1/2, b=0, c=0")
            entries.append(ir.LayerAbc(e.target, vals["a"], vals["b"], vals["c"]))
        self.param = ir.Parametrization("custom", tuple(entries))
        self._param_entries = s.entries
        self._param_span = s.span

    def stmt_ConstDecl(self, s: S.ConstDecl) -> None:
        value = self.scalar(s.value)
        self._bind(s.name, Scalar(value), s.span, "a constant")

    def stmt_HyperDecl(self, s: S.HyperDecl) -> None:
        value = self.in_range(self.scalar(s.value, "a number for the param's default"),
                              s.value.span, "a param")
        sym = ir.ParamSymbol(len(self.params))
        self.params.append(ir.Param(s.name, sym, float(value), s.span))
        self._bind(s.name, Hyper(sym), s.span, "a param")

    def stmt_InputDecl(self, s: S.InputDecl) -> None:
        if s.width is not None:
            grid = (self.integer(s.length, "the image height", lo=1, hi=MAX_SEQ),
                    self.integer(s.width, "the image width", lo=1, hi=MAX_SEQ))
            inp = ir.Input(s.name, None, grid)
            self._bind(s.name, InVec(ir.InputRef(s.name, None)), s.span, "an input")
        elif s.length is None:
            inp = ir.Input(s.name, None)
            self._bind(s.name, InVec(ir.InputRef(s.name, None)), s.span, "an input")
        else:
            n = self.integer(s.length, "the sequence length", lo=1, hi=MAX_SEQ)
            inp = ir.Input(s.name, n)
            self._bind(s.name, Seq(inp), s.span, "an input")
        self.inputs.append(inp)

    def stmt_WeightDecl(self, s: S.WeightDecl) -> None:
        var, bias, ratio = sp.S.One, sp.S.Zero, sp.S.One
        for kw in s.kwargs:
            if kw.name == "var":
                var = self.variance(kw)
            elif kw.name == "bias":
                bias = self.variance(kw)
            elif kw.name == "ratio":
                ratio = self._ratio(kw)
            else:
                raise TPError(f"unknown weight parameter '{kw.name}'", kw.span,
                              did_you_mean(kw.name, ("var", "bias", "ratio")) or "a weight "
                              "takes var=, bias= (the bias is shared by every use, like the "
                              "matrix) and ratio= (rows / columns)")
        self._check_unique_kwargs(s.kwargs)
        self._bind(s.name, Weight(s.name), s.span, "a weight")
        self.named[s.name] = {"var": var, "bias": bias, "decl": s.span, "matrix": None,
                              "bias_g": None, "first_use": None, "ratio": ratio, "cols": None}

    def stmt_ActDecl(self, s: S.ActDecl) -> None:
        self._check_name(s.name, s.span, "an activation")
        if s.param in KEYWORDS:
            raise TPError(f"'{s.param}' is a keyword and cannot be used as a name", s.span,
                          "write e.g. act name(z) = ...")
        z = sp.Dummy(s.param, real=True)
        body = _ActBody(self, s.name, s.param, z).expr(s.body)
        self._bind(s.name, Act(s.name, z, body), s.span, "an activation")

    def stmt_Assign(self, s: S.Assign) -> None:
        self._check_name(s.name, s.span, "a vector")
        value = self.expr(s.value)
        if isinstance(value, Output):
            pass
        elif not isinstance(value, Vec):
            hint = None
            if isinstance(value, Scalar):
                hint = "declare numbers with `const NAME = ...`"
            elif isinstance(value, (InVec, Seq)):
                hint = "inputs enter the network through dense(x) or readout(x)"
            raise TPError(f"cannot assign {describe(value)} to '{s.name}'", s.value.span, hint)
        current = self.env.get(s.name)
        if current is not None and not isinstance(current, (Vec, Output)):
            raise TPError(f"cannot assign to '{s.name}': it is {describe(current)}", s.span,
                          "use a new name for the vector")
        self.env[s.name] = value
        self.defined_at.setdefault(s.name, s.span)

    def _iterations(self, span, items, run) -> None:
        """run(item) for each iteration; a top-level loop records where its iterations' G-vars
        start (ir.LoopRecord), for the kernel pass to keep it rolled."""
        starts = []
        self.loop_depth += 1
        try:
            for item in items:
                self._tick(span)  # also bounds nested loops with empty bodies
                starts.append(len(self.gvars))
                run(item)
        finally:
            self.loop_depth -= 1
        if self.loop_depth == 0 and len(starts) >= 2:
            self.loops.append(ir.LoopRecord((*starts, len(self.gvars)), span))

    def stmt_Repeat(self, s: S.Repeat) -> None:
        n = self.integer(s.count, "the repeat count", lo=0, hi=MAX_GVARS)

        def one(_):
            for b in s.body:
                self.stmt(b)
        self._iterations(s.span, range(n), one)

    def stmt_For(self, s: S.For) -> None:
        lo = self.integer(s.start, "the loop start")
        hi = self.integer(s.stop, "the loop end")
        if hi - lo + 1 > MAX_GVARS:
            raise TPError(f"the loop runs {hi - lo + 1} times, more than the limit {MAX_GVARS}",
                          s.span, "the program is unrolled; keep loops small")
        self._check_name(s.var, s.span, "a loop variable")
        if s.var in self.env:
            raise TPError(f"the loop variable '{s.var}' is already defined", s.span,
                          "choose another name")
        def one(t):
            self.env[s.var] = Scalar(sp.Integer(t))
            for b in s.body:
                self.stmt(b)
        try:
            self._iterations(s.span, range(lo, hi + 1), one)
        finally:
            self.env.pop(s.var, None)

    # --- expressions ---------------------------------------------------------------------

    def expr(self, e: S.Expr):
        return getattr(self, "expr_" + type(e).__name__)(e)

    def expr_Number(self, e: S.Number):
        f = fraction(e.text, e.span)
        if abs(f) > MAX_NUMBER:
            raise TPError(f"the number {show(sp.Rational(f.numerator, f.denominator))} is out of "
                          f"range", e.span, NUMBER_HINT)
        return Scalar(check_finite(sp.Rational(f.numerator, f.denominator), e.span))

    def expr_Name(self, e: S.Name):
        v = self._lookup(e.id, e.span)
        if isinstance(v, Output):
            raise TPError(f"'{e.id}' is the network's scalar output and cannot be used again",
                          e.span, "the readout must be the last step")
        if isinstance(v, Limit):
            raise TPError(f"'{e.id}' is a report, a scalar limit of the program; it cannot be "
                          "used in the program", e.span, "reports are computed by net.limits()")
        return v

    def expr_Index(self, e: S.Index):
        v = self._lookup(e.name, e.span)
        if not isinstance(v, Seq):
            raise TPError(f"'{e.name}' is {describe(v)}, not a sequence; it cannot be indexed",
                          e.span, "declare a sequence input with `input s[T]`")
        i = self.integer(e.index, "a sequence index")
        n = v.input.length
        if not 0 <= i < n:
            raise TPError(f"index {i} is out of range: '{e.name}' has {n} elements "
                          f"({e.name}[0] .. {e.name}[{n - 1}])", e.span)
        return InVec(ir.InputRef(e.name, i))

    def expr_Neg(self, e: S.Neg):
        v = self.expr(e.operand)
        if isinstance(v, Hyper):
            return Hyper(-v.value)
        if isinstance(v, Scalar):
            return Scalar(-v.value)
        if isinstance(v, Vec):
            return Vec(-v.expr, v.grid, v.width)
        raise self._bad_operand("-", v, e.operand.span)

    def _bad_operand(self, op, v, span) -> TPError:
        hint = None
        if isinstance(v, (InVec, Seq)):
            hint = "inputs enter the network through dense(x); use dense(x) here"
        elif isinstance(v, (Weight, Act)):
            hint = f"a {'weight' if isinstance(v, Weight) else 'function'} is not a value"
        return TPError(f"'{op}' cannot take {describe(v)}", span, hint)

    def expr_BinOp(self, e: S.BinOp):
        a, b = self.expr(e.left), self.expr(e.right)
        if isinstance(a, Hyper) or isinstance(b, Hyper):
            return self._hyper_op(e, a, b)
        for v, sub in ((a, e.left), (b, e.right)):
            if not isinstance(v, (Scalar, Vec)):
                raise self._bad_operand(e.op, v, sub.span)
        if isinstance(a, Scalar) and isinstance(b, Scalar):
            return Scalar(self._scalar_op(e.op, a.value, b.value, e))
        x = a.value if isinstance(a, Scalar) else a.expr
        y = b.value if isinstance(b, Scalar) else b.expr
        grid = joint_grid([v for v in (a, b) if isinstance(v, Vec)], e.span)
        width = self.joint_width([v for v in (a, b) if isinstance(v, Vec)], e.span)
        if e.op == "+":
            return self.vec(x + y, e.span, grid, width)
        if e.op == "-":
            return self.vec(x - y, e.span, grid, width)
        if e.op == "*":
            return self.vec(x * y, e.span, grid, width)
        if e.op == "/":
            if isinstance(b, Vec):
                raise TPError("division by a vector is not supported", e.right.span,
                              "divide by constants only; 1/h is not integrable for Gaussian h")
            if y == 0:
                raise TPError("division by zero", e.right.span)
            return self.vec(x / y, e.span, grid, width)
        # e.op == "**"
        if isinstance(b, Vec):
            raise TPError("an exponent must be a constant integer, not a vector", e.right.span)
        if not (y.is_Integer and 0 <= int(y) <= MAX_POWER):
            raise TPError(f"a vector can only be raised to an integer power 0..{MAX_POWER}, "
                          f"got {show(y)}", e.right.span, "use a non-negative integer exponent")
        return self.vec(x ** int(y), e.span, grid, width)

    def _hyper_op(self, e: S.BinOp, a, b) -> Hyper:
        """Arithmetic of params and numbers: + - * / by a number, integer powers (the
        derivatives in params stay polynomial or rational, with no 0 denominator)."""
        for v, sub in ((a, e.left), (b, e.right)):
            if not isinstance(v, (Hyper, Scalar)):
                raise TPError(f"'{e.op}' cannot combine a param with {describe(v)}", sub.span,
                              "a param is a variance: a coefficient of a layer goes into its "
                              "variance, a * dense(h, var=v) = dense(h, var=a ** 2 * v)"
                              if isinstance(v, Vec) else PARAM_HINT)
        if e.op == "/" and isinstance(b, Hyper):
            raise TPError("division by a param is not supported", e.right.span,
                          "divide by numbers only (a param may become 0 at call time)")
        if e.op == "**" and not (isinstance(b, Scalar) and b.value.is_Integer
                                 and 0 <= int(b.value) <= MAX_POWER):
            raise TPError(f"a param can only be raised to an integer power 0..{MAX_POWER}",
                          e.right.span)
        if e.op == "/" and b.value == 0:
            raise TPError("division by zero", e.right.span)
        x, y = a.value, b.value
        return Hyper({"+": x + y, "-": x - y, "*": x * y}[e.op] if e.op in "+-*" else
                     x / y if e.op == "/" else x ** y)

    def _scalar_op(self, op, x, y, e) -> sp.Expr:
        if op == "/" and y == 0:
            raise TPError("division by zero", e.right.span)
        if op == "**":
            if x == 0 and y.is_negative:
                raise TPError("zero to a negative power", e.span)
            if y.is_Integer and x.is_Rational and x != 0:
                bits = max(abs(int(x.p)), abs(int(x.q)), 2).bit_length()
                if abs(int(y)) * bits > 2048:
                    raise TPError("this constant is too large to be a finite number", e.span)
            else:
                try:
                    big = abs(float(y)) * abs(math.log2(abs(float(x)) or 1.0)) > 1100
                except (TypeError, ValueError, OverflowError):
                    big = True
                if big:
                    raise TPError("this constant is too large to be a finite number", e.span)
        ops = {"+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y,
               "/": lambda: x / y, "**": lambda: x**y}
        return check_finite(ops[op](), e.span)

    def _check_unique_kwargs(self, kwargs) -> None:
        seen = set()
        for kw in kwargs:
            if kw.name in seen:
                raise TPError(f"keyword '{kw.name}' is given twice", kw.span)
            seen.add(kw.name)

    def expr_Call(self, e: S.Call):
        self._check_unique_kwargs(e.kwargs)
        if e.func == "dense":
            return self.call_dense(e)
        if e.func == "readout":
            return self.call_readout(e)
        if e.func in self.CALLS:
            return getattr(self, "call_" + e.func)(e)
        if e.func in BUILTINS:
            params, build = BUILTINS[e.func]
            z = self._one_vector_arg(e)
            kw = self._keywords(e, params)
            return self.vec(build(z, **kw), e.span, self._arg_grid, self._arg_width)
        if e.func in self.env:
            f = self.env[e.func]
            if not isinstance(f, Act):
                raise TPError(f"'{e.func}' is {describe(f)}, not a function", e.span)
            z = self._one_vector_arg(e, allow_kwargs=False)
            return self.vec(f.body.xreplace({f.param: z}), e.span, self._arg_grid,
                            self._arg_width)
        if e.func == "mean":
            raise TPError("mean() is the value of a report, not a vector", e.span,
                          "write  report m = mean(h ** 2)  at the top level")
        if e.func == "transpose":
            raise TPError("transpose(W) is a weight: it is dense()'s second argument",
                          e.span, "write  dense(h, transpose(W))")
        hint = did_you_mean(e.func, [*BUILTINS, "dense", "readout", *self.CALLS,
                                     *(n for n, v in self.env.items() if isinstance(v, Act))])
        raise TPError(f"unknown function '{e.func}'", e.span,
                      hint or "define it with `act name(z) = ...` or see docs/language.md")

    def _one_vector_arg(self, e: S.Call, allow_kwargs: bool = True) -> sp.Expr:
        if len(e.args) != 1:
            raise TPError(f"{e.func}() takes 1 positional argument, got {len(e.args)}", e.span)
        if not allow_kwargs and e.kwargs:
            raise TPError(f"{e.func}() takes no keyword arguments", e.kwargs[0].span)
        v = self.expr(e.args[0])
        if not isinstance(v, Vec):
            hint = None
            if isinstance(v, (InVec, Seq)):
                hint = "apply dense() first: inputs enter the network through dense(x)"
            raise TPError(f"{e.func}() needs a vector argument, got {describe(v)}",
                          e.args[0].span, hint)
        self._arg_grid = v.grid
        self._arg_width = v.width
        return v.expr

    def _keywords(self, e: S.Call, params: dict) -> dict:
        out = {}
        for kw in e.kwargs:
            if kw.name not in params:
                names = ", ".join(f"{p}=" for p in params) or "no keyword arguments"
                raise TPError(f"{e.func}() has no parameter '{kw.name}'", kw.span,
                              did_you_mean(kw.name, params) or f"{e.func}() takes {names}")
            value = self.scalar(kw.value, f"a number for {kw.name}=")
            out[kw.name] = self.in_range(value, kw.value.span, f"{kw.name}=")
        for p, default in params.items():
            if p not in out:
                if default is None:
                    raise TPError(f"{e.func}() needs the keyword argument {p}=", e.span)
                out[p] = default
        return out

    def call_dense(self, e: S.Call) -> Vec:
        if not 1 <= len(e.args) <= 2:
            raise TPError(f"dense() takes 1 or 2 positional arguments (vector[, weight]), got "
                          f"{len(e.args)}", e.span)
        arg = self.expr(e.args[0])
        if isinstance(arg, Seq):
            raise TPError(f"'{arg.input.name}' is a sequence; use one element, "
                          f"e.g. {arg.input.name}[0]", e.args[0].span)
        if not isinstance(arg, (Vec, InVec)):
            raise TPError(f"dense() needs a vector or an input, got {describe(arg)}",
                          e.args[0].span)
        if self.grid_of(arg):
            return self.call_conv(e, dense=True, arg=arg)  # per position: a 1 x 1 conv
        kind = ir.Kind.INPUT if isinstance(arg, InVec) else ir.Kind.HIDDEN
        fan_in = arg.ref.input if isinstance(arg, InVec) else None
        width_in = arg.width if isinstance(arg, Vec) else sp.S.One
        transposed = False
        width = width_in  # a fresh matrix is square (an input layer's: width n)
        if len(e.args) == 2:
            w = e.args[1]
            if isinstance(w, S.Call) and w.func == "transpose":
                if len(w.args) != 1 or w.kwargs or not isinstance(w.args[0], S.Name):
                    raise TPError("transpose() takes one weight name", w.span,
                                  "write  dense(h, transpose(W))")
                transposed, w = True, w.args[0]
            if not isinstance(w, S.Name):
                raise TPError("the second argument of dense() must be a weight name", w.span)
            if w.id in ("var", "bias") and w.id not in self.env:
                raise TPError(f"'{w.id}' needs a value", w.span,
                              f"keyword arguments are written name=value: {w.id}=...")
            wv = self._lookup(w.id, w.span)
            if not isinstance(wv, Weight):
                raise TPError(f"'{w.id}' is {describe(wv)}, not a weight", w.span,
                              f"declare it with `weight {w.id}(var=...)`")
            if e.kwargs:
                raise TPError("var= and bias= of a named weight are set in its declaration",
                              e.kwargs[0].span, f"write them in `weight {w.id}(...)`")
            if transposed:
                self._check_transposable(w.id, arg, e.args[1].span)
            width = self._named_widths(w.id, width_in, transposed, e.span)
            matrix, bias_g = self._named_use(w.id, kind, fan_in, e.span, width)
            if transposed:
                bias_g = None  # _check_transposable: a transposed weight has no bias
        else:
            kw = self._dense_kwargs(e)
            label = self._label("dense", e.span)
            m = self._new_matrix(label, kw["var"], kind, False, fan_in, e.span)
            matrix = m.name
            bias_g = None
            if kw["bias"] != 0:
                b = self._new_bias(label, kw["bias"], False, e.span)
                bias_g = self._new_gvar(ir.Op.BIAS, b.name, None, e.span, width)
        op = ir.Op.INPUT if kind is ir.Kind.INPUT else ir.Op.MATMUL
        g = self._new_gvar(op, matrix, arg.ref if isinstance(arg, InVec) else arg.expr, e.span,
                           width, transposed)
        return Vec(g + bias_g if bias_g is not None else g, (), width)

    def _dense_kwargs(self, e: S.Call) -> dict:
        out = {"var": sp.S.One, "bias": sp.S.Zero}
        for kw in e.kwargs:
            if kw.name not in out:
                raise TPError(f"{e.func}() has no parameter '{kw.name}'", kw.span,
                              did_you_mean(kw.name, out) or f"{e.func}() takes var= and bias=")
            out[kw.name] = self.variance(kw)
        return out

    def _named_use(self, name, kind, fan_in, span, width=sp.S.One):
        info = self.named[name]
        if info["matrix"] is None:
            m = self._new_matrix(name, info["var"], kind, True, fan_in, info["decl"],
                                 info["ratio"])
            info["matrix"], info["kind"], info["fan_in"], info["first_use"] = (
                m.name, kind, fan_in, span)
            if info["bias"] != 0:
                b = self._new_bias(name, info["bias"], True, info["decl"])
                info["bias_g"] = self._new_gvar(ir.Op.BIAS, b.name, None, info["decl"],
                                                width)
        elif info["kind"] is not kind:
            first = info["first_use"]
            raise TPError(
                f"weight '{name}' is used with {kind.value} fan-in here but with "
                f"{info['kind'].value} fan-in at line {first.line}", span,
                "a matrix has one fan-in: use separate weights for inputs and hidden vectors")
        return info["matrix"], info["bias_g"]

    def call_readout(self, e: S.Call) -> Output:
        if len(e.args) != 1:
            raise TPError(f"readout() takes 1 positional argument, got {len(e.args)}", e.span)
        if self.readout is not None:
            raise TPError("a program has exactly one readout; this is a second one", e.span,
                          f"the first is at line {self.readout_span.line}")
        arg = self.expr(e.args[0])
        if isinstance(arg, Seq):
            raise TPError(f"'{arg.input.name}' is a sequence; read out one element or a vector",
                          e.args[0].span)
        if not isinstance(arg, (Vec, InVec)):
            raise TPError(f"readout() needs a vector, got {describe(arg)}", e.args[0].span)
        grid = self.grid_of(arg)
        if grid and isinstance(arg, InVec):
            raise TPError(f"readout() of the spatial input '{arg.ref.input}' directly is not "
                          "supported", e.args[0].span, "apply conv() first")
        kw = self._dense_kwargs(e)
        fan_in = arg.ref.input if isinstance(arg, InVec) else None
        m = self._new_matrix(self._label("readout", e.span), kw["var"], ir.Kind.READOUT, False,
                             fan_in, e.span)
        bias = None
        if kw["bias"] != 0:
            bias = self._new_bias(self._label("readout", e.span), kw["bias"], False, e.span).name
        self.readout = ir.Readout(m.name, arg.ref if isinstance(arg, InVec) else arg.expr, bias,
                                  e.span, grid)
        self.readout_span = e.span
        return Output()


class _ActBody:
    """Lowers the body of `act name(z) = ...`: only z, constants, numbers and functions."""

    def __init__(self, outer: _Lowerer, name: str, param: str, z: sp.Dummy):
        self.outer, self.name, self.param, self.z = outer, name, param, z

    def expr(self, e: S.Expr) -> sp.Expr:
        if isinstance(e, S.Number):
            return self.outer.expr_Number(e).value
        if isinstance(e, S.Name):
            if e.id == self.param:
                return self.z
            if e.id == self.name:
                raise TPError(f"act '{self.name}' refers to itself; acts cannot be recursive",
                              e.span)
            v = self.outer.env.get(e.id)
            if isinstance(v, Scalar):
                return v.value
            if v is None:
                hint = did_you_mean(e.id, [self.param, *(n for n, x in self.outer.env.items()
                                                          if isinstance(x, Scalar))])
                raise TPError(f"undefined name '{e.id}' in act '{self.name}'", e.span,
                              hint or f"an act body may use only '{self.param}' and constants")
            raise TPError(f"act '{self.name}' cannot use {describe(v)} '{e.id}'", e.span,
                          f"an act body may use only '{self.param}', constants and functions")
        if isinstance(e, S.Neg):
            return -self.expr(e.operand)
        if isinstance(e, (S.BinOp, S.Call)):
            out = self._binop(e) if isinstance(e, S.BinOp) else self._call(e)
            if out.has(self.z):  # constants alone are checked as constants (<= 1e300)
                check_scale(out, e.span, self.outer.scales)
            return out
        if isinstance(e, S.Index):
            raise TPError(f"act '{self.name}' cannot index '{e.name}'", e.span)
        raise AssertionError(e)

    def _binop(self, e: S.BinOp) -> sp.Expr:
        a, b = self.expr(e.left), self.expr(e.right)
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        if e.op == "/":
            if b.has(self.z):
                raise TPError("division by an expression in the variable is not supported",
                              e.right.span, "divide by constants only")
            if b == 0:
                raise TPError("division by zero", e.right.span)
            return a / b
        if not b.is_number:
            raise TPError("an exponent must be a constant integer", e.right.span)
        if a.has(self.z):
            if not (b.is_Integer and 0 <= int(b) <= MAX_POWER):
                raise TPError(f"the variable can only be raised to an integer power "
                              f"0..{MAX_POWER}, got {show(b)}", e.right.span)
            return a ** int(b)
        return self.outer._scalar_op("**", a, b, e)

    def _call(self, e: S.Call) -> sp.Expr:
        if e.func == self.name:
            raise TPError(f"act '{self.name}' calls itself; acts cannot be recursive", e.span)
        if e.func in ("dense", "readout", *self.outer.CALLS):
            raise TPError(f"{e.func}() cannot be used inside an act", e.span,
                          "an act is an elementwise function; apply dense() outside it")
        if len(e.args) != 1:
            raise TPError(f"{e.func}() takes 1 positional argument, got {len(e.args)}", e.span)
        f = self.outer.env.get(e.func)
        if e.func not in BUILTINS and not isinstance(f, Act):
            hint = did_you_mean(e.func, [*BUILTINS, *(n for n, v in self.outer.env.items()
                                                      if isinstance(v, Act))])
            raise TPError(f"unknown function '{e.func}' in act '{self.name}'", e.span,
                          hint or "acts may call built-in functions and earlier acts")
        self.outer._check_unique_kwargs(e.kwargs)
        z = self.expr(e.args[0])
        if not z.has(self.z):  # relu(1) would stay an unevaluated constant in the IR
            raise TPError(f"{e.func}() needs an argument that depends on '{self.param}', "
                          f"got a constant", e.args[0].span,
                          "functions apply to vectors; fold constants by hand")
        if e.func in BUILTINS:
            params, build = BUILTINS[e.func]
            for kw in e.kwargs:  # evaluated as constants outside the act: no variable here
                if kw.name in params and self.expr(kw.value).has(self.z):
                    raise TPError(f"{kw.name}= must be a constant, not an expression in "
                                  f"'{self.param}'", kw.value.span)
            return build(z, **self.outer._keywords(e, params))
        if e.kwargs:
            raise TPError(f"{e.func}() takes no keyword arguments", e.kwargs[0].span)
        return f.body.xreplace({f.param: z})


def lower(module: S.Module) -> ir.Program:
    """Check a parsed module and lower it to the tensor-program IR."""
    return _Lowerer(module).run()
