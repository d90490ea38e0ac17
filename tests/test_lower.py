"""AST -> IR: the IR of every construct, every class of user mistake (a TPError with
path:line:col, the line and a caret), did-you-mean hints, and the IR's determinism."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from tpcompiler import TPError, ir, lower
from tpcompiler.check import MAX_GVARS, MAX_POWER, MAX_SEQ, MAX_STEPS
from tpcompiler.functions import ABRelu, Erf, Relu, Sigmoid
from tpcompiler.parse import parse_file, parse_source
from tpcompiler.syntax import print_module

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.tp"))
g = ir.gsym


def lw(src: str) -> ir.Program:
    return lower(parse_source(src, "t.tp"))


def fails(src: str, match: str, at: tuple[int, int] | None = None, hint: str | None = None):
    """Lowering src raises a TPError matching `match`, whose text shows t.tp:line:col, the
    offending source line and a caret under the span; returns the error."""
    with pytest.raises(TPError, match=match) as info:
        lw(src)
    err = info.value
    text = str(err)
    assert err.span is not None, text
    line, col = err.span.line, err.span.column
    if at is not None:
        assert (line, col) == at, text
    assert text.startswith(f"t.tp:{line}:{col}: error: "), text
    shown = src.split("\n")[line - 1].removesuffix("\r").expandtabs(1)
    out = text.split("\n")
    assert out[1] == "    " + shown
    assert re.fullmatch(r" {4,}\^+", out[2]) and out[2].index("^") == 3 + col, text
    if hint is not None:
        assert err.hint is not None and hint in err.hint, text
    return err


MLP = """network mlp
input x
h = dense(x, var=2.0, bias=0.05)
repeat 2 {
    h = dense(relu(h), var=2.0, bias=0.05)
}
y = readout(relu(h), var=1.0, bias=0.0)
"""


# --- the IR of each construct -----------------------------------------------------------------


def test_mlp():
    p = lw(MLP)
    assert p.name == "mlp"
    assert p.parametrization == ir.Parametrization("ntk")
    assert p.inputs == (ir.Input("x", None),)
    assert [(m.kind, m.var, m.shared, m.fan_in) for m in p.matrices] == [
        (ir.Kind.INPUT, 2, False, "x"), (ir.Kind.HIDDEN, 2, False, None),
        (ir.Kind.HIDDEN, 2, False, None), (ir.Kind.READOUT, 1, False, None)]
    assert all(m.var.is_Rational for m in p.matrices)  # exact numbers, not floats
    assert [b.var for b in p.biases] == [sp.Rational(1, 20)] * 3
    assert [(v.op, v.param) for v in p.gvars] == [
        (ir.Op.BIAS, "B0"), (ir.Op.INPUT, "A0"), (ir.Op.BIAS, "B1"), (ir.Op.MATMUL, "A1"),
        (ir.Op.BIAS, "B2"), (ir.Op.MATMUL, "A2")]
    assert p.gvars[1].arg == ir.InputRef("x", None)
    assert p.gvars[3].arg == Relu(g("g0") + g("g1"))
    assert p.gvars[5].arg == Relu(g("g2") + g("g3"))
    assert p.readout == ir.Readout("A3", Relu(g("g4") + g("g5")), None)
    assert p.matrices[0].label == "dense@3:5" and p.matrices[3].label == "readout@7:5"
    assert p.gvar("g3").op is ir.Op.MATMUL and p.param_var("B1") == sp.Rational(1, 20)


def test_defaults_and_zero_bias():
    p = lw("input x\nh = dense(x)\ny = readout(h)\n")
    assert [m.var for m in p.matrices] == [1, 1]
    assert p.biases == () and [v.op for v in p.gvars] == [ir.Op.INPUT]
    assert p.readout.bias is None and p.name is None
    p = lw("input x\ny = readout(dense(x, bias=0), var=0.5, bias=0.25)\n")
    assert p.biases == (ir.Bias("B0", "readout@2:5", sp.Rational(1, 4), False),)
    assert p.readout.bias == "B0" and p.matrix(p.readout.matrix).var == sp.Rational(1, 2)


def test_weight_sharing():
    p = parse_and_lower_file("rnn.tp")
    (u,) = [m for m in p.matrices if m.label == "U"]
    (w,) = [m for m in p.matrices if m.label == "W"]
    assert u.shared and u.kind is ir.Kind.INPUT and u.fan_in == "s" and u.var == 1
    assert w.shared and w.kind is ir.Kind.HIDDEN and w.var == sp.Rational(3, 2)
    inputs = [v for v in p.gvars if v.op is ir.Op.INPUT]
    matmuls = [v for v in p.gvars if v.op is ir.Op.MATMUL]
    assert {v.param for v in inputs} == {u.name} and len(inputs) == 4
    assert {v.param for v in matmuls} == {w.name} and len(matmuls) == 3
    assert [v.arg for v in inputs] == [ir.InputRef("s", t) for t in range(4)]
    # U's bias: one Bias, one BIAS G-var, in every pre-activation
    (b,) = p.biases
    assert b.shared and b.label == "U" and b.var == sp.Rational(1, 10)
    (gb,) = [v for v in p.gvars if v.op is ir.Op.BIAS]
    assert all(gb.symbol in v.arg.free_symbols for v in matmuls)
    assert gb.symbol in p.readout.arg.free_symbols
    # a named weight without a bias adds no BIAS G-var; its var comes from the declaration
    p = lw("input x\nweight W(var=3)\nh = dense(x)\nh = dense(h, W) + dense(relu(h), W)\n"
           "y = readout(h)\n")
    (w,) = [m for m in p.matrices if m.shared]
    assert w.var == 3 and len([v for v in p.gvars if v.param == w.name]) == 2
    assert not p.biases


def test_weight_shared_across_inputs_of_one_kind():
    p = lw("input x\ninput s[2]\nweight U\ny = readout(dense(x, U) + dense(s[1], U))\n")
    (u,) = p.matrices[:1]
    assert u.fan_in == "x" and [v.arg for v in p.gvars] == [
        ir.InputRef("x", None), ir.InputRef("s", 1)]


def test_loops_unroll():
    p = lw("input s[5]\nh = dense(s[0])\nfor t in 1..4 { h = tanh(dense(s[t]) + dense(h)) }\n"
           "repeat 0 { h = dense(h) }\nfor t in 3..2 { h = dense(h) }\ny = readout(h)\n")
    assert [v.arg for v in p.gvars if v.op is ir.Op.INPUT] == [
        ir.InputRef("s", t) for t in range(5)]
    assert len(p.matrices) == 1 + 4 * 2 + 1  # a fresh matrix per unrolled dense()
    assert len({m.label for m in p.matrices[1:-1]}) == 2  # ...labelled by the dense() call
    p = lw("const N = 2\ninput x\nh = dense(x)\nrepeat N { repeat N + 1 { h = dense(h) } }\n"
           "y = readout(h)\n")
    assert len(p.gvars) == 1 + 2 * 3


def test_loop_variable_is_a_constant_scoped_to_the_loop():
    p = lw("input x\nh = dense(x)\nfor k in 1..3 { h = h + k * dense(h, var=k) }\n"
           "y = readout(h)\n")
    assert [m.var for m in p.matrices[1:-1]] == [1, 2, 3]
    fails("input x\nh = dense(x)\nfor k in 1..2 { h = dense(h) }\ny = readout(h * k)\n",
          "undefined name 'k'", (4, 17))
    # the name is free again after the loop: a second loop may reuse it
    p = lw("input x\nh = dense(x)\nfor k in 1..2 { h = dense(h) }\nfor k in 5..5 { h = k * h }\n"
           "y = readout(h)\n")
    assert p.readout.arg == 5 * g("g2")


def test_acts_inline():
    p = lw("input x\nconst B = 2\nact swish(z) = z * sigmoid(B * z)\n"
           "act sq(u) = swish(u) ** 2 - 1 / B\ny = readout(sq(dense(x)))\n")
    g0 = g("g0")
    assert p.readout.arg == (g0 * Sigmoid(2 * g0)) ** 2 - sp.Rational(1, 2)
    assert not p.readout.arg.atoms(sp.Dummy)
    # the parameter's name does not leak, and shadows a constant of the same name
    p = lw("input x\nconst z = 5\nact f(z) = z + 1\ny = readout(f(dense(x)) + z)\n")
    assert p.readout.arg == g("g0") + 6


def test_builtins():
    p = lw("input x\nh = dense(x)\n"
           "y = readout(leaky_relu(h) + leaky_relu(h, slope=0.1) + abrelu(h, a=-0.5, b=2)"
           " + erf(h) + identity(h) + h ** 3)\n")
    h = g("g0")
    assert p.readout.arg == (ABRelu(h, sp.Rational(1, 100), 1) + ABRelu(h, sp.Rational(1, 10), 1)
                             + ABRelu(h, sp.Rational(-1, 2), 2) + Erf(h) + h + h ** 3)


def test_vector_algebra():
    p = lw("input x\na = dense(x)\nb = dense(x)\nh = -a + 0.5 * b - a / 4\n"
           "y = readout(relu(h) * sigmoid(b) + h ** 0)\n")
    a, b = g("g0"), g("g1")
    h = -a + b / 2 - a / 4
    assert p.readout.arg == Relu(h) * Sigmoid(b) + 1
    p = parse_and_lower_file("residual.tp")
    assert [v.op for v in p.gvars].count(ir.Op.MATMUL) == 3


def test_readout_of_an_input():
    p = lw("input x\ny = readout(x, var=2)\n")
    m = p.matrix(p.readout.matrix)
    assert p.readout.arg == ir.InputRef("x", None)
    assert m.kind is ir.Kind.READOUT and m.fan_in == "x" and m.var == 2 and not p.gvars
    p = lw("input s[3]\ny = readout(s[2])\n")
    assert p.readout.arg == ir.InputRef("s", 2)


def test_constants_are_exact():
    p = lw("const A = (1 + 1) * 1.0\nconst B = 1 / 2 ** 4\nconst C = 2 ** 0.5\n"
           "const D = -1e-3 + 10 ** -2\nconst E = 2 ** -2 ** 2\ninput x\n"
           "y = readout(dense(x, var=A, bias=B) * C * D * E)\n")
    assert p.matrices[0].var == 2 and p.biases[0].var == sp.Rational(1, 16)
    expected = (g("g0") + g("g1")) * sp.sqrt(2) * sp.Rational(9, 1000) / 16  # E = 2**-4
    assert sp.expand(p.readout.arg - expected) == 0


def test_parametrizations():
    for preset in ("ntk", "sp", "mup", "mf"):
        p = lw(f"parametrization {preset}\ninput x\ny = readout(x)\n")
        assert p.parametrization == ir.Parametrization(preset)
    p = parse_and_lower_file("parametrization_custom.tp")
    assert p.parametrization.preset == "custom"
    assert p.parametrization.entries[1] == ir.LayerAbc("hidden", Fraction(1, 2), Fraction(0),
                                                       Fraction(0))
    assert [e.target for e in p.parametrization.entries] == [
        "input", "hidden", "readout", "bias", "V"]
    p = lw("parametrization custom {\n  W: a=1/3, b=-0.5, c=2 ** -1\n"
           "  readout: a=1/2, b=0, c=0\n}\ninput x\nweight W\ny = readout(dense(x, W))\n")
    assert p.parametrization.entries == (
        ir.LayerAbc("W", Fraction(1, 3), Fraction(-1, 2), Fraction(1, 2)),
        ir.LayerAbc("readout", Fraction(1, 2), Fraction(0), Fraction(0)))
    assert isinstance(p.parametrization.entries[0].a, Fraction)


def test_statements_after_the_readout_are_lowered():
    p = lw("input x\ny = readout(x)\nh = relu(dense(x))\n")
    assert len(p.gvars) == 1


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_lower(path):
    p = lower(parse_file(path))
    assert (p.readout is not None and p.inputs) or (p.reports and not p.inputs)
    assert p.text() == lower(parse_file(path)).text()
    # printing the AST and reading it back gives the same IR (labels carry positions)
    again = lower(parse_source(print_module(parse_file(path))))
    assert _unlabelled(again.text()) == _unlabelled(p.text())


def parse_and_lower_file(name: str) -> ir.Program:
    return lower(parse_file(Path(__file__).resolve().parent.parent / "examples" / name))


def _unlabelled(text: str) -> str:
    return re.sub(r"\[[^\]]*@\d+:\d+\]", "[]", text)


# --- determinism, equality, hashing -----------------------------------------------------------


def test_program_is_a_comparable_hashable_value():
    a, b = lw(MLP), lw(MLP)
    assert a == b and hash(a) == hash(b) and a.digest() == b.digest() and a.text() == b.text()
    assert len({a, b}) == 1
    a.matrix("A0")  # the lookup cache must not break equality
    assert a == b and hash(a) == hash(b)
    c = lw(MLP.replace("bias=0.05)\nrepeat", "bias=0.06)\nrepeat"))
    assert c != a and c.digest() != a.digest()
    assert len(a.digest()) == 64 and str(a) == a.text()


def test_ir_text_is_stable_across_processes():
    """The digest is a cache key: it must not depend on the hash seed or on the process."""
    code = ("import json, sys\nfrom tpcompiler.lowering import lower\n"
            "from tpcompiler.parse import parse_file\n"
            "print(json.dumps([lower(parse_file(p)).digest() for p in sys.argv[1:]]))\n")
    here = [lower(parse_file(p)).digest() for p in EXAMPLES]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, *map(str, EXAMPLES)], env=env,
                             capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == here


# --- valid programs generated at random lower, deterministically ------------------------------

_FUNCS = ["relu", "erf", "tanh", "sigmoid", "gelu", "abs", "step", "sign", "softplus", "sin",
          "cos", "identity", "leaky_relu", "swish"]


@st.composite
def _programs(draw):
    lines = ["input x", "input s[3]", "weight W(var=2, bias=0.1)", "weight U(bias=0.5)",
             "const C = 0.5", "act swish(z) = z * sigmoid(z)", "h0 = dense(x)"]
    vecs = ["h0"]

    def f(v):
        name = draw(st.sampled_from(_FUNCS))
        return f"leaky_relu({v}, slope=0.2)" if name == "leaky_relu" and draw(
            st.booleans()) else f"{name}({v})"

    for i in range(1, draw(st.integers(1, 8)) + 1):
        a, b = draw(st.sampled_from(vecs)), draw(st.sampled_from(vecs))
        rhs = draw(st.sampled_from([
            f"dense({f(a)}, var=2, bias=0.05)", f"dense({f(a)}, W)", f"{a} + C * {b}",
            f"{f(a)} * {f(b)}", f"{a} ** 2 / 3", f"-{a}", f"dense(s[{draw(st.integers(0, 2))}], U)",
            f"abrelu({a}, a=-1, b=C)", f"dense(x, var=C) + {b}"]))
        lines.append(f"h{i} = {rhs}")
        vecs.append(f"h{i}")
        if draw(st.booleans()):
            lines.append(f"repeat {draw(st.integers(0, 2))} {{ h{i} = dense({f(f'h{i}')}) }}")
    lines.append(f"y = readout({f(draw(st.sampled_from(vecs)))}, var=1, bias=0.1)")
    return "\n".join(lines) + "\n"


@settings(derandomize=True, deadline=None, max_examples=60)
@given(_programs())
def test_generated_valid_programs_lower(src):
    p = lw(src)
    assert p == lw(src) and p.text() == lw(src).text()
    # every G-var an H-var uses is defined before it (SSA order)
    for i, v in enumerate(p.gvars):
        if v.op is ir.Op.MATMUL:
            assert all(int(s.name[1:]) < i for s in v.arg.free_symbols)
    again = lower(parse_source(print_module(parse_source(src))))
    assert _unlabelled(again.text()) == _unlabelled(p.text())


# --- errors -----------------------------------------------------------------------------------


def test_syntax_error_through_lowering_path():
    with pytest.raises(TPError, match=r"syntax error: unexpected end of line") as info:
        lw("input x\nh = relu(dense(x)\ny = readout(h)\n")
    assert str(info.value).startswith("t.tp:2:18: error:")
    assert info.value.hint == "an unclosed '(': add the missing ')'"


@pytest.mark.parametrize("src", ["", "\n\n", "# just a comment\n", " ; ;\n"])
def test_empty_program(src):
    fails(src, "the program is empty", (1, 1), hint="at least an input")


def test_names():
    fails("input x\nh = dense(x)\ny = readout(relu(hh))\n", "undefined name 'hh'", (3, 18),
          hint="did you mean 'h'?")
    fails("input xx\ny = readout(dense(x))\n", "undefined name 'x'", (2, 19),
          hint="did you mean 'xx'?")
    err = fails("input x\ny = readout(qqq)\n", "undefined name 'qqq'", (2, 13))
    assert err.hint is None
    fails("input x\ny = readout(h)\nh = dense(x)\n", "'h' is used before it is assigned",
          (2, 13), hint="assign it earlier")
    fails("input x\nrepeat 2 { y = readout(h) }\nrepeat 2 { h = dense(x) }\n",
          "'h' is used before it is assigned", (2, 24))
    fails("input x\nh = relu\n", r"'relu' is a function; call it: relu\(...\)", (2, 5))
    fails("input x\nh = dense(x, relu)\n", "'relu' is a function", (2, 14))


def test_redefinitions():
    fails("const C = 1\nconst C = 2\n", r"'C' is already defined \(defined at line 1\)", (2, 1))
    fails("input x\ninput x\n", "'x' is already defined", (2, 1))
    fails("input x\nweight x\n", "'x' is already defined", (2, 1))
    fails("input x\nh = dense(x)\nconst h = 2\n", "'h' is already defined", (3, 1))
    fails("const C = 1\ninput x\nC = dense(x)\n", "cannot assign to 'C': it is a constant", (3, 1))
    fails("input x\nx = dense(x)\n", "cannot assign to 'x': it is an input vector", (2, 1))
    fails("input x\nact f(z) = z\nf = dense(x)\n",
          "cannot assign to 'f': it is an activation function", (3, 1))
    fails("input x\nconst relu = 1\n", "'relu' is a built-in function and cannot be redefined",
          (2, 1), hint="choose another name")
    fails("input x\nrelu = dense(x)\n", "'relu' is a built-in function", (2, 1))
    fails("input x\nact tanh(z) = z\n", "'tanh' is a built-in function", (2, 1))
    fails("input dense\n", "'dense' is a built-in function", (1, 1))
    fails("input x\nweight readout\n", "'readout' is a built-in function", (2, 1))
    fails("input x\nfor erf in 1..2 { h = dense(x) }\n", "'erf' is a built-in function", (2, 1))
    fails("input x\nh = dense(x)\nfor h in 1..2 { }\n", "the loop variable 'h' is already "
          "defined", (3, 1))
    fails("input x\nfor t in 1..2 { for t in 1..2 { } }\n", "the loop variable 't' is already "
          "defined", (2, 17))
    # a keyword where the grammar expects a name parses, but is not a name
    fails("input for\n", "'for' is a keyword and cannot be used as a name", (1, 1))
    fails("weight in\n", "'in' is a keyword", (1, 1))
    fails("act f(input) = input\n", "'input' is a keyword", (1, 1))


def test_declarations_only_at_top_level():
    for decl in ("const C = 1", "input y", "weight W", "act f(z) = z", "network n",
                 "parametrization sp"):
        fails(f"input x\nrepeat 1 {{\n  {decl}\n}}\n", "declarations are only allowed at the "
              "top level", (3, 3), hint="move it before the loop")
    # a declaration inside a loop that runs zero times is never reached: nothing to report
    fails("input x\nrepeat 0 { const C = 1 }\n", "no readout")


def test_network_and_parametrization_errors():
    fails("network a\nnetwork b\n", "the network is named twice", (2, 1))
    fails("parametrization ntk\nparametrization sp\n", "the parametrization is set twice",
          (2, 1))
    fails("parametrization mpu\n", "unknown parametrization 'mpu'", (1, 1),
          hint="did you mean 'mup'?")
    fails("parametrization xyz\n", "unknown parametrization 'xyz'", hint="use one of: ntk, sp")
    fails("parametrization custom\n", "`parametrization custom` needs a block of entries",
          (1, 1), hint="parametrization custom { hidden: a=1/2, b=0, c=0 }")
    fails("parametrization custom {\n  input: a=0, a=1, b=0, c=0\n}\n",
          "keyword 'a' is given twice", (2, 15))
    fails("parametrization ntk {\n  input: a=0, b=0, c=0\n}\n",
          "only `parametrization custom` takes a block", (1, 1))
    fails("parametrization custom {\n  input: a=0, b=0, d=0\n}\n", "unknown exponent 'd'",
          (2, 20), hint="a=, b= and c=")
    fails("parametrization custom {\n  input: a=0, c=0\n}\n", "'input' is missing b=", (2, 3))
    fails("parametrization custom {\n  input: a=0, b=0, c=0\n  input: a=0, b=0, c=0\n}\n",
          "'input' appears twice", (3, 3))
    fails("parametrization custom {\n  input: a=2 ** 0.5, b=0, c=0\n}\n",
          r"a= must be a rational number, got sqrt\(2\)", (2, 12))
    fails("parametrization custom {\n  input: a=x, b=0, c=0\n}\ninput x\n",
          "undefined name 'x'", (2, 12))
    fails("parametrization custom {\n  hiden: a=0, b=0, c=0\n}\ninput x\ny = readout(x)\n",
          "unknown parametrization entry 'hiden'", (2, 3), hint="did you mean 'hidden'?")
    fails("parametrization custom {\n  Wq: a=0, b=0, c=0\n}\ninput x\nweight Wh\n"
          "y = readout(dense(x, Wh))\n", "unknown parametrization entry 'Wq'", (2, 3),
          hint="a weight kind (input, hidden, readout, bias) or a declared weight")


def test_functions_arity_and_keywords():
    fails("input x\nh = rleu(dense(x))\n", "unknown function 'rleu'", (2, 5),
          hint="did you mean 'relu'?")
    fails("input x\nh = dnese(x)\n", "unknown function 'dnese'", (2, 5),
          hint="did you mean 'dense'?")
    fails("input x\nact swish(z) = z\nh = swsh(dense(x))\n", "unknown function 'swsh'",
          hint="did you mean 'swish'?")
    fails("input x\nh = qqqq(dense(x))\n", "unknown function 'qqqq'",
          hint="define it with `act name(z) = ...`")
    fails("input x\nh = dense(x)\nh = h(h)\n", "'h' is a vector, not a function", (3, 5))
    fails("input x\nh = relu(dense(x), dense(x))\n",
          r"relu\(\) takes 1 positional argument, got 2", (2, 5))
    fails("input x\nh = relu()\n", r"relu\(\) takes 1 positional argument, got 0", (2, 5))
    fails("input x\nh = relu(dense(x), slope=1)\n", r"relu\(\) has no parameter 'slope'",
          (2, 20), hint="relu() takes no keyword arguments")
    fails("input x\nh = leaky_relu(dense(x), slop=1)\n",
          r"leaky_relu\(\) has no parameter 'slop'", (2, 26), hint="did you mean 'slope'?")
    fails("input x\nh = abrelu(dense(x), a=1)\n", r"abrelu\(\) needs the keyword argument b=",
          (2, 5))
    fails("input x\nh = leaky_relu(dense(x), slope=dense(x))\n",
          "expected a number for slope=, got a vector", (2, 32))
    fails("input x\nh = relu(dense(x), slope=1, slope=2)\n", "keyword 'slope' is given twice",
          (2, 29))
    fails("input x\nact f(z) = z\nh = f(dense(x), a=1)\n", r"f\(\) takes no keyword",
          (3, 17))
    fails("input x\nact f(z) = z\nh = f(dense(x), x)\n", r"f\(\) takes 1 positional", (3, 5))
    fails("input x\nh = relu(x)\n", r"relu\(\) needs a vector argument, got an input vector",
          (2, 10), hint="apply dense() first")
    fails("input x\nh = relu(2)\n", r"relu\(\) needs a vector argument, got a constant", (2, 10))


def test_dense_and_readout_arguments():
    fails("input x\nh = dense()\n", r"dense\(\) takes 1 or 2 positional arguments", (2, 5))
    fails("input x\nweight W\nh = dense(x, W, W)\n", r"dense\(\) takes 1 or 2", (3, 5))
    fails("input x\nh = dense(x, 2)\n", "the second argument of dense.. must be a weight name",
          (2, 14))
    fails("input x\nh = dense(x, x)\n", "'x' is an input vector, not a weight", (2, 14),
          hint="declare it with `weight x(var=...)`")
    fails("input x\nh = dense(x, var)\n", "'var' needs a value", (2, 14),
          hint="keyword arguments are written name=value")
    fails("input x\nweight W\nh = dense(x, W, var=2)\n", "var= and bias= of a named weight "
          "are set in its declaration", (3, 17), hint="weight W(...)")
    fails("input x\nh = dense(x, vra=2)\n", r"dense\(\) has no parameter 'vra'", (2, 14),
          hint="did you mean 'var'?")
    fails("input x\nh = dense(x, bias=1, bias=2)\n", "keyword 'bias' is given twice", (2, 22))
    fails("input x\nweight W(var=1, vr=2)\n", "unknown weight parameter 'vr'", (2, 17),
          hint="did you mean 'var'?")
    fails("input x\nweight W(var=1, var=2)\n", "keyword 'var' is given twice", (2, 17))
    fails("input x\nh = dense(2)\n", r"dense\(\) needs a vector or an input, got a constant",
          (2, 11))
    fails("input x\ny = readout(x, x)\n", r"readout\(\) takes 1 positional argument", (2, 5))
    fails("input x\ny = readout(2)\n", r"readout\(\) needs a vector, got a constant", (2, 13))
    fails("input x\ny = readout(x, bais=1)\n", r"readout\(\) has no parameter 'bais'", (2, 16),
          hint="did you mean 'bias'?")
    fails("input x\nact f(z) = dense(z)\n", r"dense\(\) cannot be used inside an act", (2, 12))


def test_sequences():
    fails("input s[3]\nh = dense(s[3])\n", r"index 3 is out of range: 's' has 3 elements "
          r"\(s\[0\] .. s\[2\]\)", (2, 11))
    fails("input s[3]\nh = dense(s[-1])\n", "index -1 is out of range", (2, 11))
    fails("input s[3]\nfor t in 0..3 { h = dense(s[t]) }\n", "index 3 is out of range",
          (2, 27))
    fails("input s[3]\nh = dense(s[0.5])\n", "a sequence index must be an integer, got 1/2",
          (2, 13))
    fails("input x\nh = dense(x[0])\n", "'x' is an input vector, not a sequence; it cannot be "
          "indexed", (2, 11), hint="input s[T]")
    fails("input x\nh = dense(x)\ny = readout(h[0])\n", "'h' is a vector, not a sequence",
          (3, 13))
    fails("input x\nh = dense(q[0])\n", "undefined name 'q'", (2, 11))
    # a sequence where a vector is needed
    fails("input s[3]\nh = dense(s)\n", r"'s' is a sequence; use one element, e.g. s\[0\]",
          (2, 11))
    fails("input s[3]\ny = readout(s)\n", "'s' is a sequence; read out one element", (2, 13))
    fails("input s[3]\nh = s\n", "cannot assign a sequence input to 'h'", (2, 5),
          hint="inputs enter the network through dense(x)")
    fails("input s[3]\nh = relu(s)\n", r"relu\(\) needs a vector argument, got a sequence input",
          (2, 10))
    fails("input s[3]\nh = dense(s[0]) + s\n", "'\\+' cannot take a sequence input", (2, 19),
          hint="use dense(x) here")
    fails("input s[3]\nh = -s[1]\n", "'-' cannot take an input vector", (2, 6))
    # the sequence length
    fails("input s[0]\n", "the sequence length must be at least 1, got 0", (1, 9))
    fails("input s[2.5]\n", "the sequence length must be an integer, got 5/2", (1, 9))
    fails(f"input s[{MAX_SEQ + 1}]\n", f"the sequence length is {MAX_SEQ + 1}, more than the "
          f"limit {MAX_SEQ}", (1, 9), hint="the program is unrolled")
    fails("input x\ninput s[x]\n", "expected the sequence length, got an input vector", (2, 9))


def test_kinds_of_values():
    fails("input x\nh = 2\n", "cannot assign a constant to 'h'", (2, 5),
          hint="const NAME = ...")
    fails("input x\nh = x\n", "cannot assign an input vector to 'h'", (2, 5))
    fails("input x\nweight W\nh = W + 1\n", "'\\+' cannot take a weight", (3, 5),
          hint="a weight is not a value")
    fails("input x\nact f(z) = z\nh = f * 2\n", "'\\*' cannot take an activation function",
          (3, 5), hint="a function is not a value")
    fails("input x\nh = dense(x) / dense(x)\n", "division by a vector is not supported",
          (2, 16))
    fails("input x\nh = dense(x) / (1 - 1)\n", "division by zero", (2, 17))
    fails("input x\nh = dense(x) ** dense(x)\n", "an exponent must be a constant integer, not a "
          "vector", (2, 17))
    fails("input x\nh = dense(x) ** 0.5\n", f"integer power 0..{MAX_POWER}, got 1/2", (2, 17))
    fails(f"input x\nh = dense(x) ** {MAX_POWER + 1}\n", "integer power", (2, 17))
    fails("input x\nh = dense(x) ** -1\n", "integer power", (2, 17))
    fails("const C = 2\nrepeat C { }\ninput x\nh = dense(x, var=x)\n",
          "expected a number for var=, got an input vector", (4, 18))


def test_readouts():
    fails("input x\nh = dense(x)\n", "the program has no readout", (2, 1),
          hint="y = readout(relu(h), var=1.0)")
    fails("input x\nh = dense(x)\n# the end\n\n", "the program has no readout", (2, 1))
    fails("input x\nrepeat 0 { y = readout(x) }\n", "the program has no readout", (2, 1))
    fails("input x\ny = readout(x)\nz = readout(x)\n", "a program has exactly one readout; this "
          "is a second one", (3, 5), hint="the first is at line 2")
    fails("input x\nrepeat 2 { y = readout(x) }\n", "exactly one readout", (2, 16))
    fails("input x\ny = readout(x)\nh = relu(dense(x)) + y\n", "'y' is the network's scalar "
          "output and cannot be used again", (3, 22))
    fails("input x\nh = 2 * readout(dense(x))\n", "'\\*' cannot take the readout output", (2, 9))


def test_negative_variances():
    hint = "variances are sigma^2"
    fails("input x\nh = dense(x, var=-1)\n", "var= is a variance and must be >= 0, got -1",
          (2, 18), hint=hint)
    fails("input x\nh = dense(x, bias=-0.5)\n", "bias= is a variance and must be >= 0, got -1/2",
          (2, 19), hint=hint)
    fails("const C = 1\ninput x\nweight W(var=C - 2)\n", "var= is a variance", (3, 14))
    fails("input x\nweight W(bias=-1e-3)\n", "bias= is a variance", (2, 15))
    fails("input x\ny = readout(x, var=-2)\n", "var= is a variance", (2, 20))
    fails("input x\ny = readout(x, bias=-2)\n", "bias= is a variance", (2, 21))


def test_loop_counts_and_size_caps():
    fails("input x\nrepeat 2.5 { }\n", "the repeat count must be an integer, got 5/2", (2, 8))
    fails("input x\nrepeat -1 { }\n", "the repeat count must be at least 0, got -1", (2, 8))
    fails("input x\nrepeat 2 ** 0.5 { }\n", r"must be an integer, got sqrt\(2\)", (2, 8))
    fails("input x\nh = dense(x)\nrepeat h { }\n", "expected the repeat count, got a vector",
          (3, 8))
    fails(f"input x\nrepeat {MAX_GVARS + 1} {{ }}\n",
          f"the repeat count is {MAX_GVARS + 1}, more than the limit {MAX_GVARS}", (2, 8),
          hint="the program is unrolled")
    fails("input x\nrepeat 10 ** 100 { }\n", "more than the limit", (2, 8))
    fails("input x\nfor t in 1..0.5 { }\n", "the loop end must be an integer, got 1/2", (2, 13))
    fails("input x\nfor t in 1.5..2 { }\n", "the loop start must be an integer", (2, 10))
    fails(f"input x\nfor t in 0..{MAX_GVARS} {{ }}\n", f"the loop runs {MAX_GVARS + 1} times, "
          f"more than the limit {MAX_GVARS}", (2, 1))
    size = (f"the unrolled program is too large \\(more than {MAX_GVARS} vectors or "
            f"{MAX_STEPS} statements\\)")
    fails("input x\nh = dense(x)\nrepeat 3000 { h = dense(h, bias=1) }\n", size, (3, 19),
          hint="reduce the loop counts")
    # loops with empty bodies count too: nothing else would stop 10^12 iterations
    fails("input x\nrepeat 5000 { repeat 5000 { repeat 5000 { } } }\n", size)
    fails("input x\nfor a in 1..5000 { for b in 1..5000 { } }\n", size)


def test_acts():
    fails("act f(z) = f(z)\n", "act 'f' calls itself; acts cannot be recursive", (1, 12))
    fails("act f(z) = z + f\n", "act 'f' refers to itself", (1, 16))
    fails("act f(z) = g(z)\nact g(z) = f(z)\n", "unknown function 'g' in act 'f'", (1, 12),
          hint="acts may call built-in functions and earlier acts")
    fails("act f(z) = rleu(z)\n", "unknown function 'rleu' in act 'f'", (1, 12),
          hint="did you mean 'relu'?")
    fails("act f(z) = z + y\n", "undefined name 'y' in act 'f'", (1, 16),
          hint="may use only 'z' and constants")
    fails("const BETA = 1\nact f(z) = z * BEAT\n", "undefined name 'BEAT' in act 'f'", (2, 16),
          hint="did you mean 'BETA'?")
    fails("act f(u) = z\n", "undefined name 'z' in act 'f'", (1, 12), hint="only 'u'")
    fails("input x\nh = dense(x)\nact f(z) = z * h\n", "act 'f' cannot use a vector 'h'",
          (3, 16))
    fails("input x\nact f(z) = x\n", "act 'f' cannot use an input vector 'x'", (2, 12))
    fails("input s[2]\nact f(z) = s[0]\n", "act 'f' cannot index 's'", (2, 12))
    fails("act f(z) = 1 / z\n", "division by an expression in the variable", (1, 16))
    fails("act f(z) = z / 0\n", "division by zero", (1, 16))
    fails("act f(z) = z ** 0.5\n", f"integer power 0..{MAX_POWER}, got 1/2", (1, 17))
    fails("act f(z) = 2 ** z\n", "an exponent must be a constant integer", (1, 17))
    fails("act f(z) = z * erf(1) ** 2\n", r"erf\(\) needs an argument that depends on 'z', "
          "got a constant", (1, 20))
    fails("act f(z) = relu(z, z)\n", r"relu\(\) takes 1 positional argument, got 2", (1, 12))
    fails("act f(z) = leaky_relu(z, slop=1)\n", "has no parameter 'slop'", (1, 26),
          hint="did you mean 'slope'?")
    fails("act g(z) = z\nact f(z) = g(z, a=1)\n", r"g\(\) takes no keyword arguments", (2, 17))
    fails("act f(z) = readout(z)\n", r"readout\(\) cannot be used inside an act", (1, 12))
    fails("act f(z) = g(1)\n", "unknown function 'g' in act 'f'", (1, 12))
    fails("act f(z) = leaky_relu(z, slope=1, slope=2)\n", "keyword 'slope' is given twice",
          (1, 35))
    fails("act f(z) = leaky_relu(z, slope=z)\n", "slope= must be a constant, not an expression "
          "in 'z'", (1, 32))
    fails("const z = 1\nact f(z) = abrelu(z, a=0, b=z)\n", "b= must be a constant", (2, 29))


def test_non_finite_and_huge_constants():
    hint = "division by zero, an overflow or a root of a negative number"
    fails("const C = 1 / 0\n", "division by zero", (1, 15))
    fails("const C = 1 / (2 - 2)\n", "division by zero", (1, 16))
    fails("const C = 10 ** 400\n", "not a finite real number", (1, 11), hint=hint)
    fails("const C = 1e300 * 10\n", "not a finite real number", (1, 11))
    fails("const C = (-1) ** 0.5\n", "not a finite real number", (1, 11))
    fails("const C = 0 ** -1\n", "zero to a negative power", (1, 11))
    fails("const C = 2 ** 10000\n", "too large to be a finite number", (1, 11))
    fails("const C = 2 ** 0.5\nconst D = C ** 10000\n", "too large", (2, 11))
    fails("const C = 1e999\n", "the number 1e999 is out of range", (1, 11),
          hint="between about 1e-400 and 1e300")
    fails("const C = 1e-99999999\n", "out of range", (1, 11))
    fails("const C = 1" + "0" * 500 + "\n", "the number 1" + "0" * 19 + r"\.\.\. is out of "
          "range", (1, 11))
    fails("const C = 1e-300\nconst D = C * C * C * C * C\n", "needs more than 4096 bits",
          (2, 11))
    fails("input x\nh = dense(x, var=1e999)\n", "out of range", (2, 18))
    # tiny and exact numbers are fine
    p = lw("const C = 1e-300 * 1e-300\ninput x\ny = readout(x, var=C)\n")
    assert p.matrices[0].var == sp.Rational(1, 10 ** 600)


def test_constants_that_enter_the_network_are_at_most_1e100():
    """Each constant the kernels use (a variance, a slope, a coefficient, an added constant)
    and each vector's size (its coefficients multiplied together) is at most 1e100: the kernel
    program multiplies a variance by two of them, 1e300 at most (lower.MAX_CONSTANT)."""
    hint = "at most 1e100 in magnitude"
    fails("input x\ng = dense(x)\ny = readout(leaky_relu(g, slope=1e200))\n",
          r"slope= is 1e\+200, more than the largest constant a network may use \(1e100\)",
          (3, 33), hint=hint)
    fails("input x\ny = readout(abrelu(dense(x), a=-2e100, b=1))\n", "a= is -2e\\+100", (2, 32))
    fails("input x\nh = dense(x, var=1e101)\n", r"var= is 1e\+101", (2, 18), hint=hint)
    fails("input x\nh = dense(x, bias=2e100)\n", r"bias= is 2e\+100", (2, 19))
    fails("weight W(var=1e150)\n", r"var= is 1e\+150", (1, 14))
    fails("input x\ny = readout(dense(x), var=10 ** 120)\n", r"var= is 1e\+120", (2, 27))
    too_large = "this expression is too large for float64 kernels"
    fails("input x\ny = readout(1e200 * dense(x))\n", too_large + r": the constant 1e\+200",
          (2, 13), hint=hint)
    fails("input x\ny = readout(dense(x) / 1e-120)\n", r"the constant 1e\+120", (2, 13))
    fails("input x\ny = readout(dense(x) + 1e101)\n", r"the constant 1e\+101", (2, 13))
    fails("input x\nh = 1e60 * dense(x)\ny = readout(1e60 * h)\n", r"the constant 1e\+120",
          (3, 13))
    fails("input x\nh = dense(x) + 1e20\ny = readout(h ** 16)\n",
          "its coefficients multiply to about 1e320", (3, 13))
    fails("input x\nu = 1e60 * dense(x)\ny = readout(u * u)\n", r"the constant 1e\+120",
          (3, 13))
    fails("input x\nu = relu(1e60 * dense(x))\ny = readout(u * u)\n",
          "multiply to about 1e120", (3, 13))
    fails("input x\ny = readout(abrelu(1e60 * dense(x), a=1e50, b=1))\n",
          "multiply to about 1e110", (2, 13))
    fails("input x\ny = readout(tanh(1e101 * dense(x)))\n", r"the constant 1e\+101", (2, 18))
    err = fails("input x\ny = readout(exp(300 * dense(x)))\n",
                "exp\\(\\) of an argument that is not bounded above reaches about 1e130", (2, 13))
    assert "scale its argument down" in err.hint
    fails("input x\ny = readout(exp(-dense(x) ** 2 + 300))\n",
          "exp\\(\\) of an argument up to 300 reaches about 1e130", (2, 13))
    fails("act f(z) = 1e200 * z\n", r"the constant 1e\+200", (1, 12))
    fails("act f(z) = tanh(z) + z ** 2 * 1e101\n", r"the constant 1e\+101", (1, 22))
    fails("act f(z) = 1e60 * z\ninput x\ny = readout(f(1e60 * dense(x)))\n",
          r"the constant 1e\+120", (3, 13))
    fails("act f(z) = leaky_relu(z, slope=1e101)\n", r"slope= is 1e\+101", (1, 32))
    fails("parametrization custom { hidden: a=21, b=0, c=0 }\n",
          "a= is 21, beyond the largest width exponent \\(20\\)", (1, 36))
    fails("input x\nh = dense(x, var=1e301)\n", r"the number 1e\+301 is out of range", (2, 18))
    fails("repeat 1e300 { }\n", r"the repeat count is 1e\+300, more than the limit 5000", (1, 8))
    fails("repeat 1e300 / 3 { }\n", r"must be an integer, got 3.33e\+299", (1, 8))
    # at the bound, intermediate constants, cancellations and bounded exps are fine
    p = lw("const C = 1e250\ninput x\nh = dense(x, var=C / 1e150, bias=1e100)\n"
           "u = leaky_relu(1e100 * h, slope=1e-100) + 1e60 * (1e-60 * h)\n"
           "y = readout(exp(-300 * h ** 2) + exp(200 * dense(u)) + 1e50 * h * h + u, "
           "var=1e100)\n")
    assert p.matrices[0].var == sp.Integer(10) ** 100


def test_weight_fan_in_conflict():
    fails("input x\nweight W\nh = dense(x, W)\nh = dense(h, W)\n",
          "weight 'W' is used with hidden fan-in here but with input fan-in at line 3", (4, 5),
          hint="use separate weights for inputs and hidden vectors")
    fails("input x\nweight W\nh = dense(dense(x), W)\nh = dense(x, W)\n",
          "weight 'W' is used with input fan-in here but with hidden fan-in at line 3", (4, 5))
    fails("input s[3]\nweight W\nh = dense(s[0])\n"
          "for t in 1..2 { h = dense(h, W) + dense(s[t], W) }\n", "with input fan-in here",
          (4, 35))
    fails("input x\nweight W\nh = dense(x, Wq)\n", "undefined name 'Wq'", (3, 14))


def test_errors_render_tabs_and_crlf():
    err = fails("input x\r\n\th = relu(hh)\r\n", "undefined name 'hh'", (2, 11))
    assert "\r" not in str(err)
    assert str(err).split("\n")[1:3] == ["     h = relu(hh)", "              ^^"]


# --- docs/language.md matches the code --------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "language.md"
_BLOCK = re.compile(r"```(\w*)\n((?:(?!```).)*?)```\n", re.S)


def _doc_blocks():
    """(language, text) of every fenced block of the language reference, in order."""
    return [(m.group(1), m.group(2)) for m in _BLOCK.finditer(DOC.read_text())]


def test_language_doc_errors():
    """Each ```tp block followed by a ```text block: the text is exactly the TPError it raises
    (file example.tp); every other ```tp block is a complete program that lowers."""
    blocks = _doc_blocks()
    checked = lowered = 0
    for i, (lang, text) in enumerate(blocks):
        if lang != "tp":
            continue
        if i + 1 < len(blocks) and blocks[i + 1][0] == "text":
            with pytest.raises(TPError) as info:
                lower(parse_source(text, "example.tp"))
            assert str(info.value) + "\n" == blocks[i + 1][1], text
            checked += 1
        else:
            low = lower(parse_source(text, "example.tp"))
            assert low.readout is not None or low.reports
            lowered += 1
    assert checked >= 40 and lowered >= 4


def test_language_doc_states_the_limits_and_builtins():
    from tpcompiler.check import KEYWORDS, MAX_BITS, MAX_EXPONENT
    from tpcompiler.functions import BUILTINS
    from tpcompiler.parametrization import PRESETS
    from tpcompiler.parse import MAX_SOURCE_BYTES

    doc = DOC.read_text()
    for n in (MAX_GVARS, MAX_STEPS, MAX_SEQ, MAX_BITS, MAX_EXPONENT):
        assert str(n) in doc
    assert f"0 <= k <= {MAX_POWER}" in doc and f"0..{MAX_POWER}" in doc
    assert f"{MAX_SOURCE_BYTES:,}" in doc
    assert "`" + " ".join(KEYWORDS) + "`" in doc
    for p in PRESETS:
        assert f"`{p}`" in doc
    table = doc[doc.index("## Built-in functions"):doc.index("## Parametrizations")]
    for name, (params, _) in BUILTINS.items():
        assert f"`{name}(z" in table, name
        for kw, default in params.items():
            assert (f"{kw}={float(default)}" if default is not None else f"{kw}=") in table
