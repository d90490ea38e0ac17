"""Rolled loops (passes/loops.py): a `repeat` whose iterations are copies of one another is
derived once and compiled as a loop; the kernels equal those of the unrolled derivation.

Tolerance: the rolled program computes the NTK forward (T recursion) where the unrolled one
sums D x Cov backward; both are float64 evaluations of the same sums in another order, so they
differ by rounding only: a few eps per layer and term. REL = 1e-13 (relative to the largest
entry) leaves a factor ~10 over depth 10 x eps x 50 terms; a wrong rule is off by >= 1e-3."""

from __future__ import annotations

import numpy as np
import pytest

import tpcompiler as tp
from tpcompiler import passes
from tpcompiler.backends import numba as numba_backend
from tpcompiler.backends import numpy as numpy_backend
from tpcompiler.data import prepare
from tpcompiler.passes.kernels import build_kernel_program

REL = 1e-13

ROLLED = {
    "relu": """input x
h = dense(x, var=2.0, bias=0.05)
repeat 6 { h = dense(relu(h), var=2.0, bias=0.05) }
y = readout(relu(h), var=1.0, bias=0.1)
""",
    "erf two per iteration": """input x
h = dense(x, var=1.5)
repeat 4 {
    g = dense(erf(h), var=2.0, bias=0.1)
    h = dense(relu(g) + 0.5 * erf(h), var=1.5)
}
y = readout(erf(h), var=1.0)
""",
    "input inside the body": """input x
h = dense(x, var=1.0)
repeat 5 { h = dense(relu(h), var=2.0) + dense(x, var=0.5) }
y = readout(relu(h), var=1.0)
""",
    "invariant from before": """input x
h0 = dense(x, var=1.0, bias=0.2)
h = dense(relu(h0), var=2.0)
repeat 4 { h = dense(relu(h) * erf(h0), var=2.0, bias=0.1) }
y = readout(relu(h), var=1.0)
""",
    "product of two states": """input x
a = dense(x, var=1.0)
b = dense(x, var=2.0)
repeat 3 {
    a2 = dense(erf(a) * erf(b), var=3.0, bias=0.1)
    b = dense(relu(b), var=2.0)
    a = a2
}
y = readout(erf(a) + relu(b), var=1.0)
""",
    "two loops, readout of the first's last iteration's vector": """input x
h = dense(x, var=2.0)
repeat 3 { h = dense(relu(h), var=2.0, bias=0.05) }
z = h
repeat 3 { h = dense(abs(h), var=1.0) }
y = readout(relu(h) + erf(z), var=1.0)
""",
    "the second loop's body reads the first's last vector": """input x
h = dense(x, var=2.0)
repeat 3 { h = dense(relu(h), var=2.0, bias=0.05) }
z = h
repeat 3 { h = dense(relu(h) * relu(z), var=1.0, bias=0.1) }
y = readout(relu(h), var=1.0)
""",
    "tanh (a quadrature per layer)": """input x
h = dense(x, var=1.5, bias=0.05)
repeat 4 { h = dense(tanh(h), var=1.5, bias=0.05) }
y = readout(tanh(h), var=1.0)
""",
    "for loop": """input x
h = dense(x, var=2.0)
for t in 1..4 { h = dense(leaky_relu(h, slope=0.2), var=2.0, bias=0.1) }
y = readout(h, var=1.0)
""",
}

UNROLLED = {
    "residual (reads every earlier iteration)": """input x
h = dense(x, var=1.0)
repeat 3 { h = h + 0.5 * dense(relu(h), var=2.0) }
y = readout(relu(h), var=1.0)
""",
    "shared weight": """input x
weight W(var=2.0)
h = dense(x, var=1.0)
repeat 3 { h = dense(relu(h), W) }
y = readout(relu(h), var=1.0)
""",
    "body depends on the index": """input x
h = dense(x, var=1.0)
for t in 1..3 { h = dense(relu(h), var=t) }
y = readout(relu(h), var=1.0)
""",
    "skip across two iterations": """input x
h = dense(x, var=1.0)
p = h
repeat 4 {
    q = h
    h = dense(relu(h) + relu(p), var=2.0)
    p = q
}
y = readout(relu(h), var=1.0)
""",
}


def _data(d=5, n=10, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d))
    x[3] = x[1]  # identical
    x[4] = -x[1]  # antipodal
    x[5] = 0.0  # zero norm
    return x


def _classic(net, x, x2=None):
    kp = passes.run(build_kernel_program(net.ir), start="cse")
    a = prepare(net.spec, x, "X")
    b = None if x2 is None else prepare(net.spec, x2, "X2")
    return numpy_backend.evaluate(kp, a, b, kp.kinds)


def _close(got, ref):
    for kind in ref:
        scale = np.abs(ref[kind]).max()
        err = np.abs(got[kind] - ref[kind]).max() / scale
        assert err <= REL, f"{kind}: {err:.2e}"


@pytest.mark.parametrize("name", list(ROLLED))
def test_rolled_kernels_equal_the_unrolled_derivation(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TPC_CACHE_DIR", str(tmp_path))
    net = tp.compile_source(ROLLED[name])
    assert net.rolled_program.loops, "this loop should stay rolled"
    x = _data()
    ref = _classic(net, x)
    _close(net.kernels(x), ref)  # the rolled Numba module
    _close(net.kernels(x, backend="numpy"), ref)  # the rolled program written out
    x2 = _data(seed=1, n=7)
    _close(net.kernels(x, x2), _classic(net, x, x2))


@pytest.mark.parametrize("name", list(UNROLLED))
def test_loops_that_differ_by_iteration_stay_unrolled(name):
    net = tp.compile_source(UNROLLED[name])
    assert net.rolled_program.loops == ()


def test_the_compiled_program_does_not_grow_with_depth():
    def source(depth):
        kp = tp.compile_source(ROLLED["relu"].replace("repeat 6", f"repeat {depth}")
                               ).rolled_program
        return numba_backend.render(kp), kp

    (s5, k5), (s80, k80) = source(5), source(80)
    assert [lp.count for lp in k5.loops] == [4] and [lp.count for lp in k80.loops] == [79]
    def code(source):  # the per-point table's width: the lines that depend on the depth
        return [ln for ln in source.splitlines() if not ln.startswith(("N_DIAG", "N_SCALARS"))]

    assert code(s5.replace("range(4)", "range(79)")) == code(s80)


def test_deep_relu_keeps_exact_diagonals_and_symmetry(tmp_path, monkeypatch):
    monkeypatch.setenv("TPC_CACHE_DIR", str(tmp_path))
    net = tp.compile_source(ROLLED["relu"].replace("repeat 6", "repeat 49"))
    x = _data(n=12)
    k = net.kernels(x)
    ref = _classic(net, x)
    _close(k, ref)
    for kind, m in k.items():
        assert np.array_equal(m, m.T)
        assert m[3, 3] == m[1, 1] == m[1, 3] == m[3, 1]  # identical points: one point


def test_lowering_records_top_level_loops_only():
    prog = tp.compile_source("""input x
h = dense(x)
repeat 3 { repeat 2 { h = dense(relu(h)) } }
y = readout(h)
""").ir
    assert [rec.count for rec in prog.loops] == [3]
    starts = prog.loops[0].starts
    assert [b - a for a, b in zip(starts, starts[1:])] == [2, 2, 2]


def test_the_rolled_program_reads_as_a_loop():
    text = tp.compile_source(ROLLED["relu"]).rolled_program.text()
    assert "repeat 5 times (state" in text
    assert "T(g" in text  # the forward tangent kernel's state


def _loop_program(rng: np.random.Generator) -> str:
    """A random program with a loop: a body of one or two layers of closed-form nonlinearities,
    with sums or products with a vector from before the loop, or the input read again."""
    # closed forms only: what is compared is the recursion, not a quadrature's accuracy
    acts = ["relu({})", "erf({})", "abs({})", "leaky_relu({}, slope=0.3)", "gelu({})",
            "({}) ** 2", "step({})"]

    def act(arg):
        return rng.choice(acts).replace("{}", arg)

    def var():
        return rng.choice(["0.5", "1.0", "2.0"])

    lines = ["input x", f"h = dense(x, var={var()}, bias=0.1)", f"p = dense(x, var={var()})"]
    body = []
    if rng.random() < 0.5:
        body.append(f"g = dense({act('h')}, var={var()}, bias={rng.choice(['0.0', '0.2'])})")
        src = "g"
    else:
        src = "h"
    extra = rng.choice(["", f" + 0.5 * {act('p')}", f" * {act('p')}", " + 0.3 * dense(x)"])
    body.append(f"h = dense({act(src)}{extra}, var={var()}, bias={rng.choice(['0.0', '0.1'])})")
    lines.append(f"repeat {int(rng.integers(2, 6))} {{\n    " + "\n    ".join(body) + "\n}")
    lines.append(f"y = readout({act('h')}, var=1.0, bias=0.05)")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(6))
def test_random_loop_programs_equal_the_unrolled_derivation(seed, tmp_path, monkeypatch):
    """Seeded draws (the slow sweep below takes 40): the rolled Numba kernels against the
    unrolled derivation, on data with repeated, antipodal and zero points."""
    monkeypatch.setenv("TPC_CACHE_DIR", str(tmp_path))
    src = _loop_program(np.random.default_rng(seed))
    net = tp.compile_source(src)
    assert net.rolled_program.loops, src
    x = _data(n=8, seed=seed)
    _close(net.kernels(x), _classic(net, x))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 140))
def test_random_loop_programs_equal_the_unrolled_derivation_sweep(seed, tmp_path, monkeypatch):
    test_random_loop_programs_equal_the_unrolled_derivation(seed, tmp_path, monkeypatch)
