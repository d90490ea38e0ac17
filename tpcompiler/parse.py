"""Text -> AST. The Lark parser is built once; syntax errors become TPError with a hint."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import lark
from lark import Transformer, v_args

from . import syntax as S
from .errors import Source, Span, TPError

MAX_SOURCE_BYTES = 1_000_000


@functools.lru_cache(maxsize=1)
def grammar_text() -> str:
    return resources.files("tpcompiler").joinpath("grammar/tp.lark").read_text()


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(grammar_text(), parser="lalr", propagate_positions=True,
                     maybe_placeholders=True)


# Bad snippets and what to say about them; lark's match_examples picks the closest by parser state.
HINTS: dict[str, list[str]] = {
    "an unclosed '(': add the missing ')'": ["h = relu(x\n", "h = dense(relu(x)\n"],
    "a statement is `name = expression`, or starts with a keyword "
    "(network, parametrization, const, input, weight, act, repeat, for)": ["h relu(x)\n", "h\n"],
    "`repeat` needs a count and a block: repeat 3 { ... }": ["repeat {\n", "repeat 3\n"],
    "a `for` loop reads: for t in 1..4 { ... }": ["for t 1..4 {\n", "for t in 1 {\n", "for in\n"],
    "an expression is missing after '='": ["h =\n", "const C =\n"],
    "an operator needs a value on both sides": ["h = x +\n", "h = * x\n", "h = x * * y\n"],
    "keyword arguments are written name=value": ["h = dense(x, var)\n", "h = dense(x, var=)\n"],
    "`act` defines a function of one variable: act name(z) = expression": [
        "act f = z\n", "act f(z)\n"],
    "an input is `input x` or, for a sequence, `input s[5]`": ["input\n", "input x(3)\n"],
    "a '{' block is not closed: add '}'": ["repeat 3 {\n"],
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
    def param_custom(self, meta, c):
        return S.ParamDecl(str(c[0]), tuple(c[1] or ()), self._sp(meta))

    def param_entries(self, c):
        return list(c)

    @v_args(meta=True)
    def param_entry(self, meta, c):
        return S.ParamEntry(str(c[0]), tuple(c[1]), self._sp(meta))

    @v_args(meta=True)
    def const_decl(self, meta, c):
        return S.ConstDecl(str(c[0]), c[1], self._sp(meta))

    @v_args(meta=True)
    def input_decl(self, meta, c):
        return S.InputDecl(str(c[0]), None, self._sp(meta))

    @v_args(meta=True)
    def seq_input_decl(self, meta, c):
        return S.InputDecl(str(c[0]), c[1], self._sp(meta))

    @v_args(meta=True)
    def weight_decl(self, meta, c):
        kwargs = tuple(c[1]) if len(c) > 1 and c[1] is not None else ()
        return S.WeightDecl(str(c[0]), kwargs, self._sp(meta))

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
        return "end of line"
    return repr(str(token))


def _syntax_error(err: lark.exceptions.UnexpectedInput, source: Source) -> TPError:
    line = getattr(err, "line", 1) or 1
    col = getattr(err, "column", 1) or 1
    if line < 1:  # lark reports the end of input as line -1
        lines = source.text.splitlines() or [""]
        line, col = len(lines), len(lines[-1]) + 1
    span = Span(source, line, col, line, col + 1)
    hint = None
    try:
        hint = err.match_examples(_parser().parse, HINTS, use_accepts=True)
    except Exception:  # match_examples re-parses examples; a failure there must not hide the error
        hint = None
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        message = f"unexpected character {source.line(line)[col - 1:col]!r}"
    elif isinstance(err, lark.exceptions.UnexpectedToken):
        message = f"unexpected {_describe(err.token)}"
        expected = sorted(e for e in err.expected if not e.startswith("_") and e != "$END")
        if not hint and expected:
            hint = "expected one of: " + ", ".join(_token_names(expected))
    else:
        message = "unexpected end of the file"
    return TPError(f"syntax error: {message}", span, hint)


_TOKEN_NAMES = {"NAME": "a name", "NUMBER": "a number", "LPAR": "'('", "RPAR": "')'",
                "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "EQUAL": "'='",
                "COMMA": "','", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'",
                "COLON": "':'", "__ANON_0": "'**'", "__ANON_1": "'..'"}


def _token_names(names):
    return [_TOKEN_NAMES.get(n, n.lower().strip("_")) for n in names]


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
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TPError(f"no such file: {p}", hint="check the path") from None
    except IsADirectoryError:
        raise TPError(f"{p} is a directory, not a .tp file") from None
    except UnicodeDecodeError:
        raise TPError(f"{p} is not UTF-8 text") from None
    except OSError as err:
        raise TPError(f"cannot read {p}: {err.strerror}") from None
    return parse_source(text, str(path))
