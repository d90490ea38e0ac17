"""Text -> AST. The Lark parser is built once; syntax errors become TPError with a hint."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import lark
from lark import Transformer, v_args

from . import syntax as S
from .errors import Source, Span, TPError
from .files import read_source

MAX_SOURCE_BYTES = 1_000_000


@functools.lru_cache(maxsize=1)
def grammar_text() -> str:
    return resources.files("tpcompiler").joinpath("grammar/tp.lark").read_text()


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    # lark's own cache (a pickle of the LALR tables, keyed by a hash of the grammar and the
    # options, in the tpcompiler cache directory): building the tables costs ~0.7 s a process,
    # most of a warm start (benchmarks/results.md, compile profile); loading them ~0.05 s
    from .files import cache_dir

    try:
        cache = str(cache_dir() / f"lark-{lark.__version__}.pickle")
    except OSError:
        cache = False
    return lark.Lark(grammar_text(), parser="lalr", propagate_positions=True,
                     maybe_placeholders=True, cache=cache)


HINT_UNCLOSED_PAREN = "an unclosed '(': add the missing ')'"
HINT_UNCLOSED_BLOCK = "a '{' block is not closed: add '}'"

# Bad snippets and what to say about them; _match_hint picks the example that failed in the same
# LALR state (with the same unexpected token, if one did). Each must be a syntax error.
HINTS: dict[str, list[str]] = {
    HINT_UNCLOSED_PAREN: ["h = relu(x\n", "h = dense(relu(x)\n"],
    "a statement is `name = expression`, or starts with a keyword "
    "(network, parametrization, const, param, input, weight, act, repeat, for)": [
        "h relu(x)\n", "h\n"],
    "`repeat` needs a count and a block: repeat 3 { ... }": ["repeat {\n", "repeat 3\n"],
    "a `for` loop reads: for t in 1..4 { ... }": ["for t 1..4 {\n", "for t in 1 {\n", "for in\n"],
    "an expression is missing after '='": ["h =\n", "const C =\n"],
    "an operator needs a value on both sides": ["h = x +\n", "h = * x\n", "h = x * * y\n",
                                                "h = x -\n", "h = x /\n", "h = x ** * y\n"],
    "keyword arguments are written name=value": ["h = dense(x, var=)\n", "h = dense(x, var=,)\n"],
    "`act` defines a function of one variable: act name(z) = expression": [
        "act f = z\n", "act f(z)\n"],
    "an input is `input x` or, for a sequence, `input s[5]`": ["input\n", "input x(3)\n"],
    HINT_UNCLOSED_BLOCK: ["repeat 3 {\n"],
}


def _span_of(meta, source: Source) -> Span | None:
    if meta is None or getattr(meta, "empty", True):
        return None
    return Span(source, meta.line, meta.column, meta.end_line, meta.end_column)


class _ToAST(Transformer):
    """One method per grammar alias, each returning a frozen syntax node."""

    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    def __default__(self, data, children, meta):  # a grammar rule without a method is a bug
        raise AssertionError(f"no AST rule for {data!r}")

    def _sp(self, meta):
        return _span_of(meta, self.source)

    @v_args(meta=True)
    def start(self, meta, children):
        return S.Module(tuple(children), source=self.source)

    @v_args(meta=True)
    def block(self, meta, children):
        return tuple(c for c in children if c is not None)

    @v_args(meta=True)
    def network_decl(self, meta, c):
        return S.NetworkDecl(str(c[0]), self._sp(meta))

    @v_args(meta=True)
    def param_preset(self, meta, c):
        return S.ParamDecl(str(c[0]), None, self._sp(meta))

    @v_args(meta=True)
    def param_custom(self, meta, c):  # `param_entries?` leaves no placeholder when absent
        entries = c[1] if len(c) > 1 and c[1] is not None else ()
        return S.ParamDecl(str(c[0]), tuple(entries), self._sp(meta))

    def param_entries(self, c):
        return list(c)

    @v_args(meta=True)
    def param_entry(self, meta, c):
        return S.ParamEntry(str(c[0]), tuple(c[1]), self._sp(meta))

    @v_args(meta=True)
    def const_decl(self, meta, c):
        return S.ConstDecl(str(c[0]), c[1], self._sp(meta))

    @v_args(meta=True)
    def hyper_decl(self, meta, c):
        return S.HyperDecl(str(c[0]), c[1], self._sp(meta))

    @v_args(meta=True)
    def input_decl(self, meta, c):
        return S.InputDecl(str(c[0]), None, self._sp(meta))

    @v_args(meta=True)
    def seq_input_decl(self, meta, c):
        return S.InputDecl(str(c[0]), c[1], self._sp(meta))

    @v_args(meta=True)
    def image_input_decl(self, meta, c):
        return S.InputDecl(str(c[0]), c[1], self._sp(meta), c[2])

    @v_args(meta=True)
    def weight_decl(self, meta, c):
        kwargs = tuple(c[1]) if len(c) > 1 and c[1] is not None else ()
        return S.WeightDecl(str(c[0]), kwargs, self._sp(meta))

    @v_args(meta=True)
    def vector_decl(self, meta, c):
        kwargs = tuple(c[1]) if len(c) > 1 and c[1] is not None else ()
        return S.VectorDecl(str(c[0]), kwargs, self._sp(meta))

    @v_args(meta=True)
    def report_decl(self, meta, c):
        return S.ReportDecl(str(c[0]), c[1], self._sp(meta))

    @v_args(meta=True)
    def act_decl(self, meta, c):
        return S.ActDecl(str(c[0]), str(c[1]), c[2], self._sp(meta))

    @v_args(meta=True)
    def assign(self, meta, c):
        return S.Assign(str(c[0]), c[1], self._sp(meta))

    @v_args(meta=True)
    def repeat(self, meta, c):
        return S.Repeat(c[0], c[1], self._sp(meta))

    @v_args(meta=True)
    def for_loop(self, meta, c):
        return S.For(str(c[0]), c[1], c[2], c[3], self._sp(meta))

    def kwargs(self, c):
        return list(c)

    @v_args(meta=True)
    def kwarg(self, meta, c):
        return S.Kwarg(str(c[0]), c[1], self._sp(meta))

    def args(self, c):
        return list(c)

    def _bin(op):  # noqa: N805 - a factory evaluated in the class body
        @v_args(meta=True)
        def rule(self, meta, c):
            return S.BinOp(op, c[0], c[1], self._sp(meta))

        return rule

    add, sub, mul, div, pow = _bin("+"), _bin("-"), _bin("*"), _bin("/"), _bin("**")

    @v_args(meta=True)
    def neg(self, meta, c):
        return S.Neg(c[0], self._sp(meta))

    @v_args(meta=True)
    def number(self, meta, c):
        return S.Number(str(c[0]), self._sp(meta))

    @v_args(meta=True)
    def name(self, meta, c):
        return S.Name(str(c[0]), self._sp(meta))

    @v_args(meta=True)
    def index(self, meta, c):
        return S.Index(str(c[0]), c[1], self._sp(meta))

    @v_args(meta=True)
    def call(self, meta, c):
        items = c[1] or []
        args = tuple(a for a in items if not isinstance(a, S.Kwarg))
        kwargs = tuple(a for a in items if isinstance(a, S.Kwarg))
        return S.Call(str(c[0]), args, kwargs, self._sp(meta))


def _describe(token) -> str:
    if token is None or token.type == "$END":
        return "end of file"
    if token.type == "_NL":
        return "';'" if str(token) == ";" else "end of line"
    return repr(str(token))


def _token_type(err: lark.exceptions.UnexpectedInput) -> str:
    if isinstance(err, lark.exceptions.UnexpectedToken):
        return err.token.type
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        return "<character>"
    return "$END"


def _lalr_state(err: lark.exceptions.UnexpectedInput):
    # The LALR state on top of the stack. lark's own match_examples also compares the depth of
    # the stack, so an example written as a first statement never matched an error further down
    # the file or inside a block; the state alone is what the error is about.
    state = getattr(err, "state", None)
    return getattr(state, "position", None)


@functools.lru_cache(maxsize=1)
def _hint_table() -> tuple[tuple[object, str, str], ...]:
    """(LALR state, unexpected token type, hint) of every HINTS example, parsed once."""
    rows = []
    for hint, examples in HINTS.items():
        for text in examples:
            try:
                _parser().parse(text + "\n")
            except lark.exceptions.UnexpectedInput as err:
                rows.append((_lalr_state(err), _token_type(err), hint))
    return tuple(rows)


def _match_hint(err: lark.exceptions.UnexpectedInput) -> str | None:
    state = _lalr_state(err)
    if state is None:
        return None
    same = [(t, h) for s, t, h in _hint_table() if s == state]
    token = _token_type(err)
    for t, h in same:
        if t == token:
            return h
    return same[0][1] if same else None


def _expected(err: lark.exceptions.UnexpectedInput) -> set[str]:
    if isinstance(err, lark.exceptions.UnexpectedToken):
        # `accepts` is exact (tried against the whole stack); `expected`, the LALR state's
        # table row, also lists tokens that only fit other contexts of the same state
        return set(err.accepts or err.expected)
    return set(getattr(err, "allowed", None) or ())


def _syntax_error(err: lark.exceptions.UnexpectedInput, source: Source) -> TPError:
    line = getattr(err, "line", 1) or 1
    col = getattr(err, "column", 1) or 1
    token = _token_type(err)
    if line < 1 or token == "$END":  # point just after the last non-blank line of the text
        lines = source.lines()
        line = len(lines)
        while line > 1 and not lines[line - 1].strip():
            line -= 1
        col = len(lines[line - 1]) + 1
    span = Span(source, line, col, line, col + 1)
    expected = _expected(err)
    hint = _match_hint(err)
    if hint is None:
        if token == "$END" and "RBRACE" in expected:
            hint = HINT_UNCLOSED_BLOCK
        elif token == "_NL" and "RPAR" in expected:
            hint = HINT_UNCLOSED_PAREN
        elif token == "_NL" and "RSQB" in expected:
            hint = "an unclosed '[': add the missing ']'"
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        message = f"unexpected character {source.line(line)[col - 1:col]!r}"
    elif isinstance(err, lark.exceptions.UnexpectedToken):
        message = f"unexpected {_describe(err.token)}"
    else:
        message = "unexpected end of the file"
    if not hint and expected:
        names = _token_names(expected)
        if names:
            hint = "expected one of: " + ", ".join(names)
    return TPError(f"syntax error: {message}", span, hint)


@functools.lru_cache(maxsize=1)
def _terminal_display() -> dict[str, str]:
    """How each terminal is named in 'expected one of': keywords bare, punctuation quoted."""
    out = {"NAME": "a name", "NUMBER": "a number", "_NL": "end of line"}
    for t in _parser().terminals:
        if t.name not in out and isinstance(t.pattern, lark.lexer.PatternStr):
            value = t.pattern.value
            out[t.name] = value if value.isalpha() else repr(value)
    return out


def _token_names(names) -> list[str]:
    display = _terminal_display()
    shown = {display[n] for n in names if n in display}
    # keywords first, then punctuation, then the classes of tokens and the end of the line
    return sorted(shown, key=lambda d: (not d.isalpha(), " " in d, d))


def parse_source(text: str, path: str = "<string>") -> S.Module:
    """Parse .tp source text into an AST Module; every syntax error becomes a TPError."""
    if not isinstance(text, str):
        raise TPError(f"source must be text, got {type(text).__name__}")
    source = Source(text, path)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise TPError(f"{path}: source is larger than {MAX_SOURCE_BYTES} bytes")
    if "\x00" in text:
        raise TPError(f"{path}: source contains a NUL character; is this a binary file?")
    try:
        tree = _parser().parse(text + "\n")
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(err, source) from None
    return _ToAST(source).transform(tree)


def parse_file(path: str | Path) -> S.Module:
    """Parse a .tp file; a missing or unreadable file is a TPError too."""
    return parse_source(read_source(path), str(path))
