"""The tensor-program IR: a NETSOR-transpose program, unrolled, in SSA form, immutable.

Vectors of the infinite width n are G-vars (Gaussian in the limit) or H-vars. A G-var is one of
  INPUT   A x[t]   an input matrix (fan-in d) applied to an input vector: an initial G-var
  BIAS    b        a bias vector, one per layer (shared by every use and every input)
  MATMUL  W h      a hidden matrix (fan-in n) applied to an H-var
H-vars are sympy expressions over G-var symbols: LinComb and Nonlin of NETSOR are both just
expressions, so h = relu(g0 + g1) * sigmoid(g2) is one (multivariate) Nonlin.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
from dataclasses import dataclass, field
from fractions import Fraction

import sympy as sp

from .errors import Span


class Op(enum.Enum):
    INPUT = "input"
    BIAS = "bias"
    MATMUL = "matmul"
    CONV = "conv"  # a matrix per filter offset, shared by every position (spatial.Stencil)
    POOL = "pool"  # an average over positions of an H-var (derived: no parameter)
    NORM = "norm"  # layernorm: (h - mean) / sqrt(var + eps) over the width (derived)
    ATTEND = "attend"  # self-attention over positions: a per-point mixture of the values
    BATCHNORM = "batchnorm"  # normalised over the batch: couples the points (passes/batch.py)
    VECTOR = "vector"  # `vector z`: a fresh N(0, I) vector without data (an initial G-var)


DERIVED = frozenset({Op.POOL, Op.NORM, Op.ATTEND})


INITIAL = frozenset({Op.INPUT, Op.BIAS, Op.VECTOR})


class Kind(enum.Enum):
    """Which dimensions of a matrix are infinite (Tensor Programs IV's weight kinds)."""

    INPUT = "input"  # finite -> infinite
    HIDDEN = "hidden"  # infinite -> infinite
    READOUT = "readout"  # infinite -> finite (or finite -> finite for a readout of an input)


@dataclass(frozen=True)
class Input:
    name: str  # the user's name: inputs are matched to data by it
    length: int | None  # None for a vector input, T for a sequence s[0..T-1]
    grid: tuple[int, ...] = ()  # (H, W) for an image input img[H, W] (length None)

    @property
    def shape(self):
        """What the data's middle axes are: None (a vector), T (a sequence) or (H, W)."""
        return self.grid if self.grid else self.length

    @property
    def axes(self) -> tuple[int, ...]:
        """The data's middle axes as a tuple: () for a vector, (T,) or (H, W)."""
        return self.grid or ((self.length,) if self.length is not None else ())


@dataclass(frozen=True)
class Stencil:
    """A convolution's spatial map, stride 1: output position p reads input positions
    p + o - low for each filter offset o (zero padding outside the grid for "same" and
    "valid", wrapped for "circular")."""

    size: tuple[int, ...]
    padding: str  # same | valid | circular
    grid_in: tuple[int, ...]
    grid_out: tuple[int, ...]

    @property
    def low(self) -> tuple[int, ...]:
        return tuple(0 if self.padding == "valid" else (k - 1) // 2 for k in self.size)

    @property
    def count(self) -> int:
        return math.prod(self.size)

    def __str__(self) -> str:
        return (f"conv {'x'.join(map(str, self.size))} {self.padding} "
                f"{'x'.join(map(str, self.grid_in))}->{'x'.join(map(str, self.grid_out))}")


@dataclass(frozen=True)
class Pool:
    """An average over non-overlapping windows of `size` (stride = size); size () is the
    global average (gap). `gaussian`: the pooled H-var is linear in Gaussian vectors, so the
    pooled vector is Gaussian too (it may feed a nonlinearity)."""

    size: tuple[int, ...]
    grid_in: tuple[int, ...]
    grid_out: tuple[int, ...]
    gaussian: bool

    def __str__(self) -> str:
        what = "gap" if not self.size else f"avgpool {'x'.join(map(str, self.size))}"
        return f"{what} {'x'.join(map(str, self.grid_in))}->{'x'.join(map(str, self.grid_out))}"


@dataclass(frozen=True)
class Norm:
    """layernorm over the width at each point (and position): (h - mean) / sqrt(var + eps),
    mean and var converging to per-point constants (NETSOR+). `gaussian` as for Pool."""

    eps: sp.Expr
    gaussian: bool

    def __str__(self) -> str:
        return f"layernorm eps={self.eps}"


@dataclass(frozen=True)
class Attend:
    """Self-attention over all positions of a grid, attend(q, k, v): out_p = sum_j a_pj v_j
    with a_p. = softmax_j(q_p . k_j / n) at each point (the G-var's arg is v). With the 1/n
    scaling the logits converge to the per-point moment E[q_p k_j] (the Master theorem), so
    the weights are deterministic per point and the output is a fixed mixture of the values.
    `heads` splits the width into that many blocks, each with its own logits and softmax
    (multi-head attention): every head has the same limit, so only the finite network sees
    it. `gaussian` as for Pool (the values are Gaussian: so is the mixture)."""

    query: sp.Expr
    key: sp.Expr
    grid: tuple[int, ...]
    heads: int
    gaussian: bool

    @property
    def grid_in(self) -> tuple[int, ...]:
        return self.grid

    @property
    def grid_out(self) -> tuple[int, ...]:
        return self.grid

    def __str__(self) -> str:
        heads = f" heads={self.heads}" if self.heads != 1 else ""
        return f"attend[q={format_expr(self.query)} k={format_expr(self.key)}{heads}]"


@dataclass(frozen=True)
class InputRef:
    """The input vector x (index None) or s[index]."""

    input: str
    index: int | None

    def __str__(self) -> str:
        return self.input if self.index is None else f"{self.input}[{self.index}]"


@dataclass(frozen=True)
class Matrix:
    name: str  # IR name (A0, A1, ...): generated code uses these, never the user's text
    label: str  # what the user wrote (a weight name, or dense@line:col), for messages
    var: sp.Expr  # sigma^2: entries are sigma/sqrt(fan_in) * N(0, 1)
    kind: Kind
    shared: bool  # declared with `weight` (may be used many times)
    fan_in: str | None = None  # the input whose dimension is the fan-in, for INPUT-kind
    span: Span | None = field(default=None, compare=False, repr=False)
    #: rows / columns (`weight A(ratio=R)`): A maps width w to width R w; entries have
    #: variance var / columns whichever way A is applied (transpose(A) maps R w to w)
    ratio: sp.Expr = sp.S.One


@dataclass(frozen=True)
class Bias:
    name: str  # IR name (B0, ...)
    label: str
    var: sp.Expr
    shared: bool
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class GVar:
    name: str  # g0, g1, ...: also the sympy symbol's name
    op: Op
    param: str  # the Matrix (INPUT, MATMUL) or Bias (BIAS) it comes from
    arg: sp.Expr | InputRef | None  # the H-var (MATMUL), the input vector (INPUT), None (BIAS)
    span: Span | None = field(default=None, compare=False, repr=False)
    #: the positions of a spatial vector (() for a plain one: the same at every position)
    grid: tuple[int, ...] = ()
    #: CONV: its Stencil; POOL: its Pool; NORM: its Norm; ATTEND: its Attend (param is ""
    #: for the derived ones)
    spatial: Stencil | Pool | Norm | Attend | None = None
    #: BATCHNORM: its eps (its argument is `arg`, Gaussian; param is "")
    batch_eps: sp.Expr | None = None
    #: MATMUL: the matrix is applied transposed (NETSOR-transpose: A^T h)
    transposed: bool = False
    #: the vector's width as a multiple of n (widths differ only with `ratio=`)
    width: sp.Expr = sp.S.One

    @property
    def symbol(self) -> sp.Symbol:
        return gsym(self.name)


@dataclass(frozen=True)
class Readout:
    matrix: str
    arg: sp.Expr | InputRef
    bias: str | None
    span: Span | None = field(default=None, compare=False, repr=False)
    #: the grid of a spatial argument read out whole (neural-tangents' Flatten: the kernel is
    #: the average over positions of the per-position kernel); () for a plain vector
    grid: tuple[int, ...] = ()


@dataclass(frozen=True)
class Report:
    """`report NAME = mean(expr)`: the limit of (1/width) sum_a expr_a over the coordinates of
    an H-var (the Master theorem: E[expr(Z)])."""

    name: str  # the user's name: the key of net.limits()
    expr: sp.Expr  # an H-var: an expression in G-var symbols
    width: sp.Expr = sp.S.One
    span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class LayerAbc:
    """Exponents of one weight kind or weight: W = n^-a w, w ~ N(0, n^-2b), lr = eta n^-c."""

    target: str
    a: Fraction
    b: Fraction
    c: Fraction


@dataclass(frozen=True)
class Parametrization:
    preset: str  # ntk | sp | mup | mf | custom
    entries: tuple[LayerAbc, ...] = ()


@dataclass(frozen=True)
class LoopRecord:
    """Where a top-level `repeat` (or `for`) of the source put its iterations in the unrolled
    G-var list: iteration k owns gvars[starts[k]:starts[k + 1]]. Not part of the program's
    meaning (the text and digest leave it out): the kernel pass may keep such a loop rolled
    (passes/loops.py) when its iterations are copies of one another."""

    starts: tuple[int, ...]
    span: Span | None = field(default=None, compare=False, repr=False)

    @property
    def count(self) -> int:
        return len(self.starts) - 1


@dataclass(frozen=True)
class Param:
    """A hyperparameter (`param sw = 2.0`): a variance whose value comes at call time. The IR
    and generated code know it as `symbol` (theta0, theta1, ...: never the user's name), the
    compiled kernels read its value from an array in the order of Program.params."""

    name: str  # what the user wrote, for messages and net.params
    symbol: sp.Symbol
    default: float
    span: Span | None = field(default=None, compare=False, repr=False)


class ParamSymbol(sp.Symbol):
    """The symbol of the program's param number `index` (theta<index>): generated code reads
    its value as THETA[index]."""

    __slots__ = ("index",)

    def __new__(cls, index: int):
        obj = sp.Symbol.__xnew__(cls, f"theta{index}", real=True)
        obj.index = index
        return obj

    def __getnewargs_ex__(self):
        return (self.index,), {}


@dataclass(frozen=True)
class Program:
    name: str | None
    parametrization: Parametrization
    inputs: tuple[Input, ...]
    matrices: tuple[Matrix, ...]
    biases: tuple[Bias, ...]
    gvars: tuple[GVar, ...]
    #: None for a program that only reports limits (`report NAME = mean(...)`)
    readout: Readout | None
    loops: tuple[LoopRecord, ...] = field(default=(), compare=False, repr=False)
    #: hyperparameters, in the order the compiled kernels read their values; their defaults
    #: are not part of the program's meaning (one compiled module whatever the values)
    params: tuple[Param, ...] = ()
    reports: tuple[Report, ...] = ()

    @property
    def netsor_t(self) -> bool:
        """Whether the program needs the NETSOR-transpose Master theorem or has vectors
        without data or widths other than n: its scalar limits are computed
        (passes/limits.py), not its kernels."""
        return any(g.transposed or g.op is Op.VECTOR or g.width != 1 for g in self.gvars) \
            or any(m.ratio != 1 for m in self.matrices)

    def param_values(self, values: dict | None = None) -> dict[sp.Symbol, float]:
        """symbol -> value of every param: `values` (user name -> number) over the defaults,
        checked as the file's constants are (finite numbers; every variance >= 0)."""
        from .errors import TPError, did_you_mean

        values = dict(values or {})
        names = [p.name for p in self.params]
        for key in values:
            if key not in names:
                hint = did_you_mean(str(key), names) or (
                    "this program's params: " + ", ".join(names) if names else
                    "declare one in the .tp file: param sw = 2.0")
                raise TPError(f"'{key}' is not a param of this program", hint=hint)
        out = {}
        for p in self.params:
            v = values.get(p.name, p.default)
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise TPError(f"param {p.name}={v!r} is not a number", p.span) from None
            if isinstance(v, bool) or not math.isfinite(f) or abs(f) > 1e300:
                raise TPError(f"param {p.name}={v!r} is not a finite number", p.span)
            out[p.symbol] = f
        for item in (*self.matrices, *self.biases):
            if item.var.free_symbols and float(item.var.xreplace(out)) < 0:
                shown = ", ".join(f"{p.name}={out[p.symbol]:g}" for p in self.params
                                  if p.symbol in item.var.free_symbols)
                raise TPError(f"with {shown} the variance of {item.label} is "
                              f"{float(item.var.xreplace(out)):g}; a variance must be >= 0",
                              item.span, "variances are sigma^2: give non-negative values")
        return out

    def bind(self, values: dict | None = None) -> Program:
        """The program with its params replaced by numbers (`values` over the defaults): what
        the finite-width simulator, the abc tables and the data checks read."""
        if not self.params:
            return self
        # the shortest decimal of each value, exactly (as a const written with it would be)
        sub = {s: sp.Rational(*Fraction(repr(v)).as_integer_ratio())
               for s, v in self.param_values(values).items()}
        return dataclasses.replace(
            self, params=(),
            matrices=tuple(dataclasses.replace(m, var=m.var.xreplace(sub))
                           for m in self.matrices),
            biases=tuple(dataclasses.replace(b, var=b.var.xreplace(sub)) for b in self.biases))

    @property
    def batched(self) -> bool:
        """Whether a vector is batch-normalised: the kernels are then those of one batch
        (passes/batch.py), not of pairs."""
        return any(g.op is Op.BATCHNORM for g in self.gvars)

    @property
    def spatial(self) -> bool:
        """Whether passes/spatial.py derives its kernels: a vector has positions (a CNN) or
        is derived (pooled, layer-normalised)."""
        return any(g.spatial is not None for g in self.gvars) or self.gridded

    @property
    def gridded(self) -> bool:
        """Whether any vector has positions: its kernels are arrays over position pairs (the
        spatial backend); a spatial program without positions (layernorm in an MLP or RNN) is
        straight-line scalar code like any other kernel program."""
        return any(i.grid for i in self.inputs) or any(g.grid for g in self.gvars) or (
            self.readout is not None and bool(self.readout.grid))

    def matrix(self, name: str) -> Matrix:
        return self._index()[name]

    def bias(self, name: str) -> Bias:
        return self._index()[name]

    def gvar(self, name: str) -> GVar:
        return self._index()[name]

    def input(self, name: str) -> Input:
        return self._index()[name]

    def param_var(self, name: str) -> sp.Expr:
        return self._index()[name].var

    def _index(self) -> dict:
        cached = self.__dict__.get("_idx")
        if cached is None:
            cached = {x.name: x for x in (*self.inputs, *self.matrices, *self.biases, *self.gvars)}
            object.__setattr__(self, "_idx", cached)
        return cached

    def text(self) -> str:
        return format_program(self)

    def digest(self) -> str:
        """A content hash, stable across processes (the cache key of compiled kernels)."""
        return hashlib.sha256(self.text().encode()).hexdigest()

    def __str__(self) -> str:
        return self.text()


_SYMBOLS: dict[str, sp.Symbol] = {}


def gsym(name: str) -> sp.Symbol:
    """The sympy symbol of a G-var (real: its coordinates are real Gaussians)."""
    sym = _SYMBOLS.get(name)
    if sym is None:
        sym = _SYMBOLS[name] = sp.Symbol(name, real=True)
    return sym


def gvars_of(expr: sp.Expr) -> list[str]:
    """Names of the G-vars an H-var depends on, in a deterministic order."""
    if isinstance(expr, InputRef):
        return []
    return sorted((s.name for s in expr.free_symbols), key=_natural)


def _natural(name: str):
    head = name.rstrip("0123456789")
    return (head, int(name[len(head):] or -1))


def format_expr(expr) -> str:
    return str(expr) if isinstance(expr, InputRef) else sp.sstr(expr, order="lex")


def format_program(p: Program) -> str:
    lines = [f"program {p.name or '<unnamed>'}"]
    par = p.parametrization
    lines.append(f"parametrization {par.preset}")
    for q in p.params:
        lines.append(f"param {q.symbol} [{q.name}]")
    for e in par.entries:
        lines.append(f"  {e.target}: a={e.a} b={e.b} c={e.c}")
    for i in p.inputs:
        shape = "R^d" if i.length is None else f"(R^d)^{i.length}"
        if i.grid:
            shape = f"(R^d)^({'x'.join(map(str, i.grid))})"
        lines.append(f"input {i.name} : {shape}")
    for m in p.matrices:
        fan = f" fan_in={m.fan_in}" if m.fan_in else ""
        share = " shared" if m.shared else ""
        ratio = f" ratio={m.ratio}" if m.ratio != 1 else ""
        lines.append(f"matrix {m.name} [{m.label}] {m.kind.value} var={m.var}{fan}{share}{ratio}")
    for b in p.biases:
        share = " shared" if b.shared else ""
        lines.append(f"bias {b.name} [{b.label}] var={b.var}{share}")
    for g in p.gvars:
        if g.op is Op.BIAS:
            rhs = g.param
        elif g.op is Op.VECTOR:
            rhs = f"N(0, I) [{g.param}]"
        elif g.op in DERIVED:
            rhs = f"{g.spatial}({format_expr(g.arg)})"
        elif g.op is Op.BATCHNORM:
            rhs = f"batchnorm eps={g.batch_eps}({format_expr(g.arg)})"
        else:
            arg = format_expr(g.arg)
            bare = isinstance(g.arg, InputRef) or g.arg.is_Atom
            t = "^T" if g.transposed else ""
            rhs = f"{g.param}{t} @ {arg if bare else '(' + arg + ')'}"
        where = f" [{g.spatial}]" if g.op is Op.CONV else ""
        where += f" width {g.width} n" if g.width != 1 else ""
        grid = f" on {'x'.join(map(str, g.grid))}" if g.grid else ""
        lines.append(f"{g.name} = {rhs}    # {g.op.value}{where}{grid}")
    for rep in p.reports:
        lines.append(f"report {rep.name} = mean({format_expr(rep.expr)})")
    r = p.readout
    if r is None:
        return "\n".join(lines) + "\n"
    bias = f" + {r.bias}" if r.bias else ""
    arg = format_expr(r.arg)
    if not isinstance(r.arg, InputRef) and not r.arg.is_Atom:
        arg = f"({arg})"
    flat = f"    # flatten {'x'.join(map(str, r.grid))}" if r.grid else ""
    lines.append(f"out = {r.matrix} @ {arg}{bias}{flat}")
    return "\n".join(lines) + "\n"
