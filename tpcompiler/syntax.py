"""The AST: one frozen dataclass per grammar alias. Spans never take part in equality."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Span


def _span():
    return field(default=None, compare=False, repr=False)


# --- expressions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    text: str  # the literal as written, so that 0.05 stays the exact rational 1/20
    span: Span | None = _span()


@dataclass(frozen=True)
class Name:
    id: str
    span: Span | None = _span()


@dataclass(frozen=True)
class Index:
    name: str
    index: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Kwarg:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    kwargs: tuple[Kwarg, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / **
    left: Expr
    right: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span | None = _span()


Expr = Number | Name | Index | Call | BinOp | Neg


# --- statements --------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkDecl:
    name: str
    span: Span | None = _span()


@dataclass(frozen=True)
class ParamEntry:
    target: str  # a weight kind (input / hidden / readout / bias) or a weight name
    kwargs: tuple[Kwarg, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class ParamDecl:
    name: str  # ntk | sp | mup | mf | custom
    entries: tuple[ParamEntry, ...] | None = None  # only for `custom { ... }`
    span: Span | None = _span()


@dataclass(frozen=True)
class ConstDecl:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class HyperDecl:
    """`param NAME = value`: a hyperparameter, its value given at call time (the default
    otherwise)."""

    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class InputDecl:
    name: str
    length: Expr | None = None  # None: a vector input; otherwise a sequence of that length
    span: Span | None = _span()
    width: Expr | None = None  # an image input img[length, width]


@dataclass(frozen=True)
class WeightDecl:
    name: str
    kwargs: tuple[Kwarg, ...] = ()
    span: Span | None = _span()


@dataclass(frozen=True)
class VectorDecl:
    """`vector z` / `vector z(ratio=R)`: a fresh N(0, I) vector of width R n, without data."""

    name: str
    kwargs: tuple[Kwarg, ...] = ()
    span: Span | None = _span()


@dataclass(frozen=True)
class ReportDecl:
    """`report NAME = mean(expr)`: a scalar limit of the program (the Master theorem)."""

    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class ActDecl:
    name: str
    param: str
    body: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Assign:
    name: str
    value: Expr
    span: Span | None = _span()


@dataclass(frozen=True)
class Repeat:
    count: Expr
    body: tuple[Stmt, ...]
    span: Span | None = _span()


@dataclass(frozen=True)
class For:
    var: str
    start: Expr
    stop: Expr  # inclusive
    body: tuple[Stmt, ...]
    span: Span | None = _span()


Stmt = (NetworkDecl | ParamDecl | ConstDecl | HyperDecl | InputDecl | WeightDecl | VectorDecl
        | ReportDecl | ActDecl | Assign | Repeat | For)


@dataclass(frozen=True)
class Module:
    body: tuple[Stmt, ...]
    source: object = field(default=None, compare=False, repr=False)


# --- the pretty-printer: parse(print_module(m)) == m -------------------------------------

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2, "**": 4}


def print_expr(e: Expr, prec: int = 0) -> str:
    """Source text for an expression, with only the parentheses its precedence needs."""
    if isinstance(e, Number):
        return e.text
    if isinstance(e, Name):
        return e.id
    if isinstance(e, Index):
        return f"{e.name}[{print_expr(e.index)}]"
    if isinstance(e, Call):
        parts = [print_expr(a) for a in e.args]
        parts += [f"{k.name}={print_expr(k.value)}" for k in e.kwargs]
        return f"{e.func}({', '.join(parts)})"
    if isinstance(e, Neg):
        text = "-" + print_expr(e.operand, 3)
        return f"({text})" if prec > 3 else text
    if isinstance(e, BinOp):
        p = _PREC[e.op]
        if e.op == "**":
            # the base is an atom; the exponent is a unary (right associative)
            text = f"{print_expr(e.left, 5)} ** {print_expr(e.right, 3)}"
        else:
            text = f"{print_expr(e.left, p)} {e.op} {print_expr(e.right, p + 1)}"
        return f"({text})" if p < prec else text
    raise TypeError(f"not an expression: {e!r}")


def _kw(kwargs) -> str:
    return ", ".join(f"{k.name}={print_expr(k.value)}" for k in kwargs)


def print_stmt(s: Stmt, indent: str = "") -> str:
    if isinstance(s, NetworkDecl):
        return f"{indent}network {s.name}"
    if isinstance(s, ParamDecl):
        if s.entries is None:
            return f"{indent}parametrization {s.name}"
        lines = [f"{indent}parametrization {s.name} {{"]
        lines += [f"{indent}    {e.target}: {_kw(e.kwargs)}" for e in s.entries]
        return "\n".join(lines + [f"{indent}}}"])
    if isinstance(s, ConstDecl):
        return f"{indent}const {s.name} = {print_expr(s.value)}"
    if isinstance(s, HyperDecl):
        return f"{indent}param {s.name} = {print_expr(s.value)}"
    if isinstance(s, InputDecl):
        if s.length is None:
            return f"{indent}input {s.name}"
        if s.width is not None:
            return f"{indent}input {s.name}[{print_expr(s.length)}, {print_expr(s.width)}]"
        return f"{indent}input {s.name}[{print_expr(s.length)}]"
    if isinstance(s, WeightDecl):
        if s.kwargs:
            return f"{indent}weight {s.name}({_kw(s.kwargs)})"
        return f"{indent}weight {s.name}"
    if isinstance(s, VectorDecl):
        if s.kwargs:
            return f"{indent}vector {s.name}({_kw(s.kwargs)})"
        return f"{indent}vector {s.name}"
    if isinstance(s, ReportDecl):
        return f"{indent}report {s.name} = {print_expr(s.value)}"
    if isinstance(s, ActDecl):
        return f"{indent}act {s.name}({s.param}) = {print_expr(s.body)}"
    if isinstance(s, Assign):
        return f"{indent}{s.name} = {print_expr(s.value)}"
    if isinstance(s, Repeat):
        head = f"{indent}repeat {print_expr(s.count)} {{"
        return "\n".join([head, *(print_stmt(b, indent + "    ") for b in s.body), f"{indent}}}"])
    if isinstance(s, For):
        head = f"{indent}for {s.var} in {print_expr(s.start)}..{print_expr(s.stop)} {{"
        return "\n".join([head, *(print_stmt(b, indent + "    ") for b in s.body), f"{indent}}}"])
    raise TypeError(f"not a statement: {s!r}")


def print_module(m: Module) -> str:
    """Source text that parses back to an equal Module."""
    return "".join(print_stmt(s) + "\n" for s in m.body)
