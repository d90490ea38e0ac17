"""The front end's text -> AST step: the AST of every construct, the pretty-printer round trip,
the grammar's strictness, the syntax-error hints, and fuzzing (grammar-generated and mutated
sources must parse and lower or raise TPError, nothing else)."""

from __future__ import annotations

import re
from pathlib import Path

import lark
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

from tpcompiler import TPError, lower
from tpcompiler import syntax as S
from tpcompiler.parse import HINTS, MAX_SOURCE_BYTES, grammar_text, parse_file, parse_source
from tpcompiler.syntax import print_expr, print_module

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.tp"))
KEYWORDS = {"network", "parametrization", "const", "input", "weight", "vector", "report", "act",
            "repeat", "for", "in"}


def N(text):  # noqa: N802 - short AST constructors keep the expected trees readable
    return S.Number(text)


def V(name):  # noqa: N802
    return S.Name(name)


def K(name, value):  # noqa: N802
    return S.Kwarg(name, value)


def body(src: str):
    return parse_source(src, "t.tp").body


def expr(src: str):
    (stmt,) = body(f"h = {src}\n")
    return stmt.value


def check_tp_error(err: TPError, path: str = "t.tp") -> None:
    """A TPError's text: path:line:col, the offending line as the parser counts lines, a caret."""
    text = str(err)
    assert text == err.format()
    if err.span is None:
        assert text.startswith("error: ")
        return
    sp = err.span
    assert text.startswith(f"{sp.source.path}:{sp.line}:{sp.column}: error: ")
    assert sp.source.path == path
    lines = sp.source.text.split("\n")
    assert 1 <= sp.line <= len(lines)
    shown = lines[sp.line - 1].removesuffix("\r").expandtabs(1)
    rendered = text.split("\n")
    assert rendered[1] == "    " + shown
    assert re.fullmatch(r" {4,}\^+", rendered[2]), rendered[2]
    assert rendered[2].index("^") == 4 + sp.column - 1


# --- the AST of each construct ----------------------------------------------------------------


def test_declarations():
    src = """network my_net
parametrization sp
const C = 2.0
input x
input s[5]
weight W
weight U()
weight V(var=C, bias=0.1)
act swish(z) = z * sigmoid(z)
"""
    assert body(src) == (
        S.NetworkDecl("my_net"),
        S.ParamDecl("sp", None),
        S.ConstDecl("C", N("2.0")),
        S.InputDecl("x", None),
        S.InputDecl("s", N("5")),
        S.WeightDecl("W", ()),
        S.WeightDecl("U", ()),
        S.WeightDecl("V", (K("var", V("C")), K("bias", N("0.1")))),
        S.ActDecl("swish", "z", S.BinOp("*", V("z"), S.Call("sigmoid", (V("z"),), ()))),
    )


def test_custom_parametrization():
    src = """parametrization custom {

    input: a=0, b=0, c=0
    hidden: a=1/2, b=0, c=0; W: a=1, b=-1/2, c=0

}
"""
    (p,) = body(src)
    half = S.BinOp("/", N("1"), N("2"))
    assert p == S.ParamDecl("custom", (
        S.ParamEntry("input", (K("a", N("0")), K("b", N("0")), K("c", N("0")))),
        S.ParamEntry("hidden", (K("a", half), K("b", N("0")), K("c", N("0")))),
        S.ParamEntry("W", (K("a", N("1")), K("b", S.BinOp("/", S.Neg(N("1")), N("2"))),
                           K("c", N("0")))),  # -1/2 is (-1)/2: unary minus binds tighter
    ))
    assert body("parametrization custom {}\n") == (S.ParamDecl("custom", ()),)
    assert body("parametrization custom {\n}\n") == (S.ParamDecl("custom", ()),)
    assert body("parametrization custom { input: a=0, b=0, c=0 }")[0].entries[0].target == "input"


def test_statements_and_blocks():
    src = """h = dense(x, var=2.0, bias=0.05)
repeat 3 {
    h = dense(relu(h))
}
for t in 1..4 { h = tanh(dense(s[t], W) + dense(h, W2)) }
repeat N {}
for i in 0 .. N - 1 {
}
"""
    assert body(src) == (
        S.Assign("h", S.Call("dense", (V("x"),), (K("var", N("2.0")), K("bias", N("0.05"))))),
        S.Repeat(N("3"), (S.Assign("h", S.Call("dense", (S.Call("relu", (V("h"),), ()),), ())),)),
        S.For("t", N("1"), N("4"), (S.Assign("h", S.Call("tanh", (S.BinOp(
            "+", S.Call("dense", (S.Index("s", V("t")), V("W")), ()),
            S.Call("dense", (V("h"), V("W2")), ())),), ())),)),
        S.Repeat(V("N"), ()),
        S.For("i", N("0"), S.BinOp("-", V("N"), N("1")), ()),
    )


def test_separators_comments_and_continuations():
    a = body("input x\nh = dense(x)\ny = readout(h)\n")
    for src in ["input x; h = dense(x); y = readout(h)",
                "input x\r\nh = dense(x)\r\ny = readout(h)\r\n",
                "# header\n\ninput x   # the input\n\n\nh = dense(x);\n;y = readout(h)  # out\n",
                "input x\nh = dense(\\\n  x)\ny = \\\n readout(h)",
                "\tinput x\n\fh =\tdense(x)\ny = readout(h)"]:
        assert body(src) == a, src
    # a block may end on the line of its last statement, or hold several on one line
    assert body("repeat 2 { h = relu(h); h = dense(h) }") == body(
        "repeat 2 {\n  h = relu(h)\n  h = dense(h)\n}\n")
    assert body("") == () and body("# only a comment") == () and body("\n;\n") == ()


def test_expression_precedence_and_associativity():
    a, b, c = V("a"), V("b"), V("c")
    assert expr("a + b * c") == S.BinOp("+", a, S.BinOp("*", b, c))
    assert expr("(a + b) * c") == S.BinOp("*", S.BinOp("+", a, b), c)
    assert expr("a - b - c") == S.BinOp("-", S.BinOp("-", a, b), c)
    assert expr("a / b / c") == S.BinOp("/", S.BinOp("/", a, b), c)
    assert expr("a ** b ** c") == S.BinOp("**", a, S.BinOp("**", b, c))
    assert expr("-a ** 2") == S.Neg(S.BinOp("**", a, N("2")))
    assert expr("(-a) ** 2") == S.BinOp("**", S.Neg(a), N("2"))
    assert expr("a ** -b") == S.BinOp("**", a, S.Neg(b))
    assert expr("-a * b") == S.BinOp("*", S.Neg(a), b)
    assert expr("a * -b") == S.BinOp("*", a, S.Neg(b))
    assert expr("--a") == S.Neg(S.Neg(a))
    assert expr("2 * a ** 3 + 1") == S.BinOp("+", S.BinOp("*", N("2"), S.BinOp(
        "**", a, N("3"))), N("1"))


def test_atoms():
    assert expr("1.5e-3") == N("1.5e-3")  # the literal's text is kept (exact rationals later)
    assert expr("007") == N("007")
    assert expr("s[t + 1]") == S.Index("s", S.BinOp("+", V("t"), N("1")))
    assert expr("f()") == S.Call("f", (), ())
    assert expr("abrelu(h, a=-1, b=2)") == S.Call(
        "abrelu", (V("h"),), (K("a", S.Neg(N("1"))), K("b", N("2"))))
    # positional and keyword arguments are kept apart, in their own order
    assert expr("dense(var=2, x)") == S.Call("dense", (V("x"),), (K("var", N("2")),))


def test_spans_are_positions_but_not_part_of_equality():
    m = parse_source("input x\nh = relu(dense(x, var=2))\n", "net.tp")
    assign = m.body[1]
    assert (assign.span.line, assign.span.column) == (2, 1)
    call = assign.value
    assert (call.span.line, call.span.column, call.span.end_column) == (2, 5, 26)
    kw = call.args[0].kwargs[0]
    assert (kw.span.column, kw.span.end_column) == (19, 24)
    assert kw.span.where == "net.tp:2:19"
    moved = parse_source("\n\n  input x\n  h = relu(dense(x,   var=2))\n", "other.tp")
    assert moved == m and moved.body[1].span.line == 4


def test_keywords_are_contextual():
    # a keyword is a keyword only where the grammar expects it; lowering rejects it as a name
    assert body("inputs = dense(x)")[0] == S.Assign("inputs", S.Call("dense", (V("x"),), ()))
    assert body("h = in")[0] == S.Assign("h", V("in"))
    with pytest.raises(TPError, match="syntax error"):
        parse_source("input = dense(x)")


# --- pretty-printer round trip ----------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_round_trip_examples(path):
    m = parse_file(path)
    text = print_module(m)
    assert parse_source(text) == m
    assert print_module(parse_source(text)) == text  # the printer's output is a fixed point


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"relu_mlp.tp", "erf_mlp.tp", "tanh_mlp.tp", "residual.tp", "gated_product.tp",
            "rnn.tp", "user_act.tp", "leaky_abrelu.tp", "consts_loops.tp", "nested_nonlin.tp",
            "parametrization_mup.tp", "parametrization_custom.tp"} <= names


def test_printer_parenthesizes_only_what_precedence_needs():
    for src in ["a + b * c", "(a + b) * c", "a - (b - c)", "a - b - c", "a / (b * c)",
                "a ** b ** c", "(a ** b) ** c", "-a ** 2", "(-a) ** 2", "a ** -b", "-(a * b)",
                "a * -b", "--a", "-(a + b)", "f(a, b=-c) ** 2", "s[i + 1] * 2"]:
        assert print_expr(expr(src)) == src


# An AST strategy: any module the grammar can express (names avoid the keywords).
_names = st.sampled_from(["x", "h", "s", "z", "t", "W", "U", "relu", "dense", "readout", "f",
                          "a", "b", "c", "var", "bias", "custom", "hidden", "h_2", "_q"])
_numbers = st.one_of(st.sampled_from(["0", "1", "2.0", "0.05", "1e3", "2.5E-2", "10"]),
                     st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?",
                                   fullmatch=True))
_exprs = st.recursive(
    st.one_of(_numbers.map(S.Number), _names.map(S.Name)),
    lambda e: st.one_of(
        st.builds(S.BinOp, st.sampled_from(["+", "-", "*", "/", "**"]), e, e),
        st.builds(S.Neg, e),
        st.builds(S.Index, _names, e),
        st.builds(S.Call, _names, st.lists(e, max_size=2).map(tuple),
                  st.lists(st.builds(S.Kwarg, _names, e), max_size=2).map(tuple)),
    ),
    max_leaves=8,
)
_kwargs = st.lists(st.builds(S.Kwarg, _names, _exprs), min_size=1, max_size=3).map(tuple)
_simple_stmts = st.one_of(
    st.builds(S.NetworkDecl, _names),
    st.builds(S.ParamDecl, _names, st.none()),
    st.builds(S.ParamDecl, _names, st.lists(st.builds(S.ParamEntry, _names, _kwargs),
                                            max_size=3).map(tuple)),
    st.builds(S.ConstDecl, _names, _exprs),
    st.builds(S.InputDecl, _names, st.none() | _exprs),
    st.builds(S.WeightDecl, _names, st.just(()) | _kwargs),
    st.builds(S.ActDecl, _names, _names, _exprs),
    st.builds(S.Assign, _names, _exprs),
)
_stmts = st.recursive(
    _simple_stmts,
    lambda s: st.one_of(
        st.builds(S.Repeat, _exprs, st.lists(s, max_size=3).map(tuple)),
        st.builds(S.For, _names, _exprs, _exprs, st.lists(s, max_size=3).map(tuple)),
    ),
    max_leaves=6,
)
_modules = st.lists(_stmts, max_size=6).map(lambda b: S.Module(tuple(b)))


@settings(derandomize=True, deadline=None, max_examples=150)
@given(_modules)
def test_round_trip_generated_asts(m):
    assert parse_source(print_module(m)) == m


# --- the grammar itself -----------------------------------------------------------------------


def test_grammar_is_strict():
    """strict=True makes Lark fail on shift/reduce conflicts and on terminals whose regexps
    collide (checked with interegular)."""
    pytest.importorskip("interegular")
    lark.Lark(grammar_text(), parser="lalr", strict=True, propagate_positions=True,
              maybe_placeholders=True)


def test_grammar_file_is_the_shipped_one():
    repo = Path(__file__).resolve().parent.parent / "grammar" / "tp.lark"
    assert repo.read_text() == grammar_text()


# --- syntax errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "input x\nh = dense(x)\n", "repeat 2 {\n    "],
                         ids=["first-line", "later-line", "in-block"])
@pytest.mark.parametrize("hint,example", [(h, e) for h, es in HINTS.items() for e in es])
def test_every_hint_example_yields_its_hint(hint, example, prefix):
    with pytest.raises(TPError) as info:
        parse_source(prefix + example, "t.tp")
    assert info.value.hint == hint
    assert info.value.message.startswith("syntax error: ")
    check_tp_error(info.value)


@pytest.mark.parametrize("src,line,col,message,hint", [
    ("input x\nh = dense(x\ny = readout(h)\n", 2, 12, "unexpected end of line",
     "an unclosed '('"),
    ("input s[3]\nh = dense(s[1\n", 2, 14, "unexpected end of line", "an unclosed '['"),
    ("input x\nrepeat 2 {\n  h = dense(x)\n\n\n", 3, 15, "unexpected end of file",
     "block is not closed"),
    ("input x\nh = dense(x) y\n", 2, 14, "unexpected 'y'", "expected one of: '*', '**', '+'"),
    ("input x\nh = dense(x) ** ** 2\n", 2, 17, "unexpected '**'", "operator needs a value"),
    ("input x\nh = x @ W\n", 2, 7, "unexpected character '@'", "expected one of:"),
    ("input x; h = dense(x);; y = readout(h) ; z\n", 1, 43, "unexpected end of line",
     "a statement is `name = expression`"),
    ("input x\nh = relu(x));\n", 2, 12, "unexpected ')'", "expected one of:"),
    ("for t in 1..3 y\n", 1, 15, "unexpected 'y'", "expected one of: '*'"),
    ("h = 1 ;; h = (2 3)", 1, 17, "unexpected '3'", "')'"),
])
def test_syntax_error_messages(src, line, col, message, hint):
    with pytest.raises(TPError) as info:
        parse_source(src, "t.tp")
    err = info.value
    assert err.message == f"syntax error: {message}"
    assert (err.span.line, err.span.column) == (line, col)
    assert hint in err.hint
    assert "__ANON" not in err.hint and "_NL" not in err.hint
    check_tp_error(err)


def test_error_line_is_the_parsers_line_even_with_odd_line_breaks():
    # str.splitlines() also breaks at \f, \v, \x1c, \u2028...: the shown line must not shift
    for sep in ["\f", "\x0b", "\x1c", "\u2028", "\x85"]:
        src = f"# a comment{sep}with a separator\ninput x\nh = dense(x) $\n"
        with pytest.raises(TPError) as info:
            parse_source(src, "t.tp")
        assert info.value.span.line == 3
        assert "    h = dense(x) $\n" in str(info.value)
        check_tp_error(info.value)


def test_source_level_errors(tmp_path):
    with pytest.raises(TPError, match="source must be text"):
        parse_source(b"input x")
    with pytest.raises(TPError, match="NUL character"):
        parse_source("input x\x00", "t.tp")
    with pytest.raises(TPError, match="larger than"):
        parse_source("#" * (MAX_SOURCE_BYTES + 1))
    with pytest.raises(TPError, match="no such file") as info:
        parse_file(tmp_path / "missing.tp")
    assert info.value.hint == "check the path"
    with pytest.raises(TPError, match="is a directory"):
        parse_file(tmp_path)
    bad = tmp_path / "latin1.tp"
    bad.write_bytes("# caf\xe9\ninput x\n".encode("latin-1"))
    with pytest.raises(TPError, match="not UTF-8"):
        parse_file(bad)
    bom = tmp_path / "bom.tp"
    bom.write_bytes("\ufeffinput x\ny = readout(x)\n".encode())
    assert parse_file(bom) == parse_source("input x\ny = readout(x)\n")
    syntax = tmp_path / "bad.tp"
    syntax.write_text("input x\ny = readout(x\n")
    with pytest.raises(TPError) as info:
        parse_file(syntax)
    assert str(info.value).startswith(f"{syntax}:2:14: error: syntax error")


# --- fuzzing: everything ends in a parsed+lowered program or a TPError ------------------------


def parse_and_lower_or_tp_error(src: str) -> str:
    """'ok' when the source parses and lowers, 'parse'/'lower' for the stage of its TPError."""
    try:
        m = parse_source(src, "t.tp")
    except TPError as err:
        check_tp_error(err)
        return "parse"
    try:
        prog = lower(m)
    except TPError as err:
        check_tp_error(err)
        return "lower"
    assert prog.text()
    return "ok"


def _grammar_strategy():
    """Programs generated from the grammar, with every token padded by a space (so that
    adjacent tokens cannot fuse) and a small vocabulary of names, so lowering gets somewhere."""
    g = lark.Lark(grammar_text(), parser="lalr")
    explicit = {t.name: st.just(f" {t.pattern.value} ") for t in g.terminals
                if isinstance(t.pattern, lark.lexer.PatternStr)}
    names = ["x", "h", "s", "W", "U", "z", "t", "relu", "dense", "readout", "tanh", "erf",
             "leaky_relu", "abrelu", "f", "custom", "ntk", "mup", "var", "bias", "slope", "a",
             "b", "c", "hidden", "inputs"]
    explicit.update({
        "NAME": st.sampled_from(names).map(" {} ".format),
        "NUMBER": st.sampled_from(["0", "1", "2", "3", "0.5", "2.0", "1e3", "1e-2", "5000",
                                   "1e999"]).map(" {} ".format),
        "_NL": st.sampled_from(["\n", ";", " # comment\n", "\r\n"]),
        "COMMENT": st.just(" "),  # a comment needs a newline after it; _NL draws them
    })
    for t in g.ignore_tokens:
        if t not in explicit:
            explicit[t] = st.sampled_from([" ", "\t", "\\\n"])
    # from_lark favours short expansions: skip the many programs made of separators only
    return from_lark(g, explicit=explicit).filter(lambda src: any(c.isalpha() for c in src))


@settings(derandomize=True, deadline=None, max_examples=150,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_grammar_strategy())
def test_fuzz_grammar_generated_programs(src):
    # the grammar generates only parseable text, and the printer round-trips it
    m = parse_source(src, "t.tp")
    assert parse_source(print_module(m)) == m
    assert parse_and_lower_or_tp_error(src) in ("ok", "lower")


_EXAMPLE_TEXTS = [p.read_text() for p in EXAMPLES]
_alphabet = st.sampled_from(list("()[]{}=,;:.#*+-/\\ \t\n\r\f0123456789eExhsWz_$é\u2028")
                            + ["**", "..", "relu(", "dense(", "s[", "1e999", "-1", "repeat ",
                               "for ", "act ", "input ", "weight ", "readout(", "\x00"])


def _code_start(text: str) -> int:
    """Where the example's comment header ends (mutating comments is mostly a no-op)."""
    pos = 0
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        pos += len(line)
    return pos


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+(\.[0-9]+)?")
_vocabulary = st.sampled_from(
    ["x", "h", "s", "s[0]", "s[9]", "W", "U", "V", "z", "t", "k", "g", "a", "b", "relu", "rleu",
     "dense", "readout", "erf", "tanh", "sigmoid", "swish", "leaky_relu", "abrelu", "var", "bias",
     "slope", "SW", "SB", "DEPTH", "ALPHA", "input", "for", "custom", "mup", "hidden", "0", "1",
     "-1", "2.5", "0.5", "1e999", "1e-999", "5000", "100000", "1/0", "2 ** 0.5", "(-1) ** 0.5"])


@st.composite
def _mutated_examples(draw):
    text = draw(st.sampled_from(_EXAMPLE_TEXTS))
    # half the sources only get names/numbers swapped (they mostly parse: lowering is tested),
    # the other half get characters inserted, deleted, replaced or the text truncated
    ops = ["word"] if draw(st.booleans()) else ["insert"] * 3 + ["delete"] * 3 + [
        "replace"] * 3 + ["truncate"]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(ops))
        i = draw(st.integers(min(_code_start(text), len(text)), len(text)))
        words = list(_WORD.finditer(text, _code_start(text)))
        if op == "word" and words:  # swap a name or number: mostly still parses, so it lowers
            w = draw(st.sampled_from(words))
            text = text[:w.start()] + draw(_vocabulary) + text[w.end():]
        elif op == "insert":
            text = text[:i] + draw(_alphabet) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 8)):]
        elif op == "replace":
            text = text[:i] + draw(_alphabet) + text[i + 1:]
        else:
            text = text[:i]
    return text


@settings(derandomize=True, deadline=None, max_examples=300)
@given(_mutated_examples())
def test_fuzz_mutated_examples(src):
    parse_and_lower_or_tp_error(src)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_truncation_of_an_example(path):
    text = path.read_text()
    cuts = sorted(set(range(0, len(text), 7)) | {i for i, ch in enumerate(text) if ch in "\n("})
    seen = set()
    for i in cuts:
        seen.add(parse_and_lower_or_tp_error(text[:i]))
    assert "parse" in seen and "lower" in seen
