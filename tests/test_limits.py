"""Transposes, data-free vectors and scalar limits (issue 20): the NETSOR-transpose Master
theorem (passes/limits.py) against truths it does not use:
- random matrix theory: the semicircle law's even moments are the Catalan numbers
  C_k = binom(2k, k) / (k + 1) (times (2 var)^k for entries of variance 2 var / n), its odd ones
  0; the Marchenko-Pastur law's moments are sum_j N(k, j) rho^(j-1) var^k with the Narayana
  numbers N(k, j) = binom(k, j) binom(k, j-1) / k (written here from the formula, not from the
  compiler);
- Stein's lemma in closed form: E[step'(g - s)] = var * density of N(0, var) at s (the Dirac mass
  that the derivative of step as a function, 0, would drop);
- finite networks (simulate_limits, matrices drawn and applied, transposes as transposes): random
  programs' reports within 5 standard errors of the seeds' spread plus 5 size / n for the O(1/n)
  bias (the fluctuations of a mean of n coordinates are O(n^-1/2)); the same programs without
  the transpose corrections (the gradient-independence shortcut) are far off, so the test can
  fail.
"""

from __future__ import annotations

import json
import math
import warnings
from fractions import Fraction
from math import comb
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import tpcompiler as tpc
from tpcompiler.check_cli import fit_offset
from tpcompiler.cli import main as tpc_main
from tpcompiler.errors import TPWarning
from tpcompiler.simulate_limits import finite_reports

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def catalan(k: int) -> int:
    return comb(2 * k, k) // (k + 1)


def narayana_moment(k: int, rho: Fraction) -> Fraction:
    return sum((Fraction(comb(k, j) * comb(k, j - 1), k) * rho ** (j - 1)
                for j in range(1, k + 1)), Fraction(0))


def semicircle_source(var: str, k: int) -> str:
    lines = [f"weight W(var={var})", "vector z", "h0 = z"]
    for i in range(1, k + 1):
        lines.append(f"h{i} = dense(h{i - 1}, W) + dense(h{i - 1}, transpose(W))")
    lines += [f"report m{i} = mean(h{i} ** 2)" for i in range(1, k + 1)]
    lines += [f"report odd{i} = mean(z * h{i})" for i in range(1, k + 1, 2)]
    return "\n".join(lines) + "\n"


def test_semicircle_example_gives_the_catalan_numbers_exactly():
    lim = tpc.compile(EXAMPLES / "semicircle.tp").limits()
    for k in range(1, 6):
        assert lim[f"m{k}"] == catalan(k) and isinstance(lim[f"m{k}"], sp.Integer)
    for name in ("odd1", "odd3", "odd5"):
        assert lim[name] == 0


@pytest.mark.parametrize("var", ["0.3", "1.5", "1/7"])
def test_semicircle_at_other_variances(var):
    v = Fraction(var) if "/" not in var else Fraction(*map(int, var.split("/")))
    lim = tpc.compile_source(semicircle_source(var, 4)).limits()
    for k in range(1, 5):
        assert lim[f"m{k}"] == sp.Rational(catalan(k) * (2 * v) ** k)
    assert lim["odd1"] == lim["odd3"] == 0


def marchenko_pastur_source(rho: str, var: str, k: int) -> str:
    lines = [f"weight A(var={var}, ratio={rho})", f"vector v(ratio={rho})", "w0 = v"]
    for i in range(1, k + 1):
        lines.append(f"w{i} = dense(dense(w{i - 1}, transpose(A)), A)")
    lines += [f"report m{i} = mean(v * w{i})" for i in range(1, k + 1)]
    return "\n".join(lines) + "\n"


def test_marchenko_pastur_example():
    lim = tpc.compile(EXAMPLES / "marchenko_pastur.tp").limits()
    for k in range(1, 5):
        assert lim[f"m{k}"] == sp.Rational(narayana_moment(k, Fraction(1, 2)))
    assert lim["q2"] == lim["m2"]


@pytest.mark.parametrize("rho, var", [("1/3", "1"), ("2", "1"), ("3/2", "0.5"), ("1", "2")])
def test_marchenko_pastur_at_other_ratios(rho, var):
    r = Fraction(*map(int, rho.split("/"))) if "/" in rho else Fraction(rho)
    v = Fraction(var)
    lim = tpc.compile_source(marchenko_pastur_source(rho, var, 4)).limits()
    for k in range(1, 5):
        assert lim[f"m{k}"] == sp.Rational(narayana_moment(k, r) * v ** k)


def noncrossing_pairings(word: str) -> int:
    """The number of non-crossing pairings of the positions of `word` that pair equal letters:
    for free standard semicircular elements, phi(word) (Voiculescu's free Wick formula)."""
    if not word:
        return 1
    total = 0
    for j in range(1, len(word), 2):  # position 0 pairs with j; inside and outside separate
        if word[j] == word[0]:
            total += noncrossing_pairings(word[1:j]) * noncrossing_pairings(word[j + 1:])
    return total


def test_two_independent_wigner_matrices_are_free():
    """A = P + P^T and B = Q + Q^T of two independent weights: in the limit free semicircular
    elements (TP III's Free Independence Principle), so (1/n) z^T M z for a word M in A and B
    is phi(M), the number of non-crossing pairings of equal letters."""
    src = ("weight P(var=0.5)\nweight Q(var=0.5)\nvector z\n"
           "b = dense(z, Q) + dense(z, transpose(Q))\n"
           "ab = dense(b, P) + dense(b, transpose(P))\n"
           "bab = dense(ab, Q) + dense(ab, transpose(Q))\n"
           "abab = dense(bab, P) + dense(bab, transpose(P))\n"
           "report w1 = mean(ab ** 2)\nreport w2 = mean(z * abab)\n"
           "report w3 = mean(bab ** 2)\nreport w4 = mean(abab ** 2)\n")
    lim = tpc.compile_source(src).limits()
    # |M z|^2 / n = phi(M^T M); the letters read right to left (M = A B: B applied first)
    words = {"w1": "baab", "w2": "abab", "w3": "babbab", "w4": "babaabab"}
    for name, word in words.items():
        assert lim[name] == noncrossing_pairings(word), (name, lim[name])
    assert noncrossing_pairings("abab") == 0 and noncrossing_pairings("babaabab") == 1


def test_a_trig_correction_in_closed_form():
    """g = W^T sin(W z): its correction along z is var E[cos(Zhat)] z = var e^(-var/2) z, so
    mean(g z) = var e^(-var/2), and g is uncorrelated with the even cos(z)."""
    src = ("weight W(var=1.5)\nvector z\nh = dense(z, W)\ng = dense(sin(h), transpose(W))\n"
           "report a = mean(g * z)\nreport b = mean(g * cos(z))\n")
    lim = tpc.compile_source(src).limits()
    assert float(lim["a"]) == pytest.approx(1.5 * math.exp(-0.75), rel=1e-13)
    assert lim["b"] == 0


def test_a_kinked_derivative_keeps_its_dirac_mass():
    """E[d step(g - s)/dg] is the density at s: Stein's lemma keeps it (step' as a function
    is 0). The correction of W^T step(W z - s) along z is var * that density."""
    src = ("weight W(var=2.0)\nvector z\nh = step(dense(z, W) - 0.3)\n"
           "g = dense(h, transpose(W))\nreport a = mean(g * z)\n")
    a = float(tpc.compile_source(src).limits()["a"])
    q = 2.0  # Var(W z)
    assert a == pytest.approx(2.0 * math.exp(-0.3 ** 2 / (2 * q)) / math.sqrt(2 * math.pi * q),
                              rel=1e-12)


def test_the_non_bp_like_counterexample_of_tp2():
    """TP2 section 6.3 (THEORY.md 1.2): x = all-ones, h = W x, y = 1^T h^2 / n with no random
    readout; backprop gives dx = 2 W^T W x, whose coordinates have mean 2 (the W_ba^2 terms
    pair up) and second moment 4 + 4, where gradient independence predicts N(0, 4)."""
    src = ("weight W\nvector z\nx = 0 * z + 1\nh = dense(x, W)\n"
           "dx = dense(2 * h, transpose(W))\nreport m = mean(dx)\nreport s = mean(dx ** 2)\n")
    lim = tpc.compile_source(src).limits()
    assert lim["m"] == 2 and lim["s"] == 8
    runs = [finite_reports(tpc.compile_source(src).ir, 1000, s) for s in range(8)]
    assert abs(np.mean([r["m"] for r in runs]) - 2) < 0.1


def test_without_transposes_a_report_is_the_gaussian_expectation():
    """NETSOR (no transpose): E[relu(g)^2] = q / 2 and E[g^4] = 3 q^2 exactly, and the
    arc-cosine closed form of a second layer (Cho & Saul)."""
    src = ("vector z\nh = dense(z, var=3.0)\ng = dense(relu(h), var=2.0)\n"
           "report a = mean(relu(h) ** 2)\nreport b = mean(h ** 4)\n"
           "report c = mean(relu(g) * relu(h))\n")
    lim = tpc.compile_source(src).limits()
    assert lim["a"] == sp.Rational(3, 2) and lim["b"] == 27
    # g is independent of h (another matrix): E[relu(g)] E[relu(h)], g's variance 2 * 3/2
    assert float(lim["c"]) == pytest.approx(math.sqrt(3 / (2 * math.pi)) ** 2, rel=1e-13)


# --- random programs against finite networks ----------------------------------------------

FUNCS = ("tanh({})", "relu({})", "sin({})", "({} + 0.5)", "step({} - 0.2)", "{}")


def random_program(seed: int) -> str:
    """A random NETSOR-transpose program: two weights (one with ratio R), a vector of each
    width, 5 random steps of dense / transposed dense / functions / products (mostly reading
    the latest vector, so that transposes read functions of their own matrix's outputs),
    3 reports."""
    rng = np.random.default_rng(seed)
    ratio = ["1/2", "1", "2"][rng.integers(3)]
    lines = [f"weight W(var={rng.choice(['0.5', '1.0', '1.5'])})",
             f"weight U(var={rng.choice(['0.5', '1.0'])}, ratio={ratio})",
             "vector z", f"vector y(ratio={ratio})"]
    pools = {"n": ["z"], "r": ["y"]}

    def pick(pool):
        return pool[-1] if rng.random() < 0.7 else rng.choice(pool)

    for i in range(5):
        op = rng.choice(6, p=[0.25, 0.2, 0.15, 0.15, 0.15, 0.1])
        name = f"v{i}"
        if op <= 1:
            w = "W" if op == 0 else "transpose(W)"
            lines.append(f"{name} = dense({rng.choice(FUNCS).format(pick(pools['n']))}, {w})")
            pools["n"].append(name)
        elif op == 2:
            lines.append(f"{name} = dense({rng.choice(FUNCS).format(pick(pools['n']))}, U)")
            pools["r"].append(name)
        elif op == 3:
            x = pick(pools["r"])
            lines.append(f"{name} = dense({rng.choice(FUNCS).format(x)}, transpose(U))")
            pools["n"].append(name)
        else:
            pool = pools["n"] if op == 4 or len(pools["r"]) < 2 else pools["r"]
            a, b = pick(pool), rng.choice(pool)
            lines.append(f"{name} = {rng.choice(FUNCS[:3]).format(a)} * 0.5 + {b}")
            pool.append(name)
    for k in range(3):
        pool = pools["n"] if k != 2 or len(pools["r"]) < 2 else pools["r"]
        a, b = pool[-1], rng.choice(pool)
        lines.append(f"report r{k} = mean({rng.choice(FUNCS).format(a)} * "
                     f"{rng.choice(FUNCS).format(b)})")
    return "\n".join(lines) + "\n"


def _compare(src: str, n: int, seeds: int) -> list[tuple[str, float, float, float, float]]:
    """(name, limit, finite mean, its standard error, allowed distance) per report."""
    net = tpc.compile_source(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TPWarning)  # Monte Carlo: its error is v.error
        lim = net.limit_values()
    runs = [finite_reports(net.ir, n, (7, s)) for s in range(seeds)]
    out = []
    for v in lim.values:
        x = np.array([r[v.name] for r in runs])
        se = x.std(ddof=1) / math.sqrt(seeds)
        out.append((v.name, float(v.value), float(x.mean()), se,
                    5 * se + 5 * v.scale / n + v.error))
    return out


@pytest.mark.parametrize("seed", [3, 13, 14, 22])  # programs with two transpose corrections
def test_random_programs_match_finite_networks(seed):
    src = random_program(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TPWarning)  # curved kinks: checked by Monte Carlo
        steps = tpc.compile_source(src).limit_values().derivation.steps
    assert sum(len(s.corrections) for s in steps) == 2
    for name, limit, mean, se, allowed in _compare(src, 1000, 12):
        assert abs(mean - limit) <= allowed, (name, limit, mean, se)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 41))
def test_random_programs_match_finite_networks_sweep(seed):
    for name, limit, mean, se, allowed in _compare(random_program(seed), 2000, 24):
        assert abs(mean - limit) <= allowed, (name, limit, mean, se)


def test_the_transpose_corrections_matter(monkeypatch):
    """The gradient-independence shortcut (no Zdot) is far from the finite networks on a
    program where W^T reads a function of W z: the comparison above can fail."""
    src = ("weight W(var=1.5)\nvector z\nh = tanh(dense(z, W)) + 0.3 * z\n"
           "g = relu(dense(h, transpose(W)) + 0.5)\nreport a = mean(g * h)\n")
    (_, limit, mean, se, allowed), = _compare(src, 1000, 12)
    assert abs(mean - limit) <= allowed
    from tpcompiler.passes import limits as limit_pass

    monkeypatch.setattr(limit_pass.Calculator, "gradient",
                        lambda self, f, wrt: {j: sp.S.Zero for j in wrt})
    shortcut = float(tpc.compile_source(src).limits()["a"])
    assert abs(mean - shortcut) > 2 * allowed


# --- Monte Carlo, accuracy, derivation ------------------------------------------------------


def test_wide_integrals_go_to_monte_carlo_with_a_warning():
    # a 6-dimensional integral: (a, b, c, d, e, f + a) in one product
    src = ("vector a\nvector b\nvector c\nvector d\nvector e\nvector f\n"
           "report m = mean(relu(a + b * c + d * e) * tanh(f + a))\n")
    with pytest.warns(TPWarning, match="Monte Carlo"):
        v = tpc.compile_source(src).limit_values().values[0]
    assert v.how == "Monte Carlo" and 0 < v.error < 0.01
    # an independent Monte Carlo of the same expectation (other samples)
    z = np.random.default_rng(5).standard_normal((6, 2_000_000))
    f = np.maximum(z[0] + z[1] * z[2] + z[3] * z[4], 0) * np.tanh(z[5] + z[0])
    se = f.std() / math.sqrt(f.size)
    assert abs(float(v.value) - f.mean()) <= v.error + 5 * se


def test_latex_shows_the_corrections():
    text = tpc.compile(EXAMPLES / "semicircle.tp").latex()
    assert r"\hat Z^{g_{3}} + \frac{1}{2} \cdot Z^{g_{0}}" in text
    assert r"\mathrm{m5} &= \mathbb{E}" in text and "= 42" in text


def test_params_bind_before_the_limits():
    src = "param s = 0.5\nweight W(var=s)\nvector z\nh = dense(z, W) + dense(z, transpose(W))\n" \
          "report m = mean(h ** 2)\n"
    net = tpc.compile_source(src)
    assert net.limits()["m"] == 1 and net.limits({"s": 2})["m"] == 4


# --- the finite-width check ----------------------------------------------------------------


def test_semicircle_converges_like_n_to_the_minus_half():
    """The error of the finite moments falls like n^-1/2: the fit a n^-1/2 + b has b within
    4 standard errors of 0 and a > 0, over 8 networks per width."""
    net = tpc.compile(EXAMPLES / "semicircle.tp")
    lim = net.limit_values()
    widths = [125, 250, 500, 1000, 2000]
    for v in lim.values[:3]:
        errs = np.array([[abs(finite_reports(net.ir, n, (3, s))[v.name] - float(v.value))
                          / v.scale for s in range(8)] for n in widths])
        fit = fit_offset(widths, errs)
        assert fit.a > 0 and abs(fit.b) <= 4 * fit.se_b + 0.01, (v.name, fit)


def test_tpc_check_and_limits_on_the_examples(tmp_path, capsys):
    path = str(EXAMPLES / "marchenko_pastur.tp")
    assert tpc_main(["limits", path]) == 0
    out = capsys.readouterr().out
    assert "m2 = 3/2    (exact)" in out and "m4 = 45/8" in out
    assert tpc_main(["limits", path, "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)["limits"]
    assert data["m3"]["exact"] == "11/4" and data["m3"]["value"] == 2.75
    plot = tmp_path / "mp.png"
    assert tpc_main(["check", path, "--widths", "200,400,800", "--seeds", "4", "--quiet",
                     "--plot", str(plot)]) == 0
    assert "m1: ok" in capsys.readouterr().out and plot.stat().st_size > 10_000


def test_tpc_check_fails_a_wrong_limit(monkeypatch, capsys):
    """A limit off by 10 % of the report's size: the finite networks level off at it."""
    from tpcompiler import limits

    real = limits.compute

    def wrong(prog, tol, values=None):
        out = real(prog, tol, values)
        bad = tuple(v.__class__(v.name, v.value + sp.Rational(1, 10) * sp.nsimplify(v.scale),
                                v.exact, v.error, v.scale, v.how) for v in out.values)
        return limits.Limits(bad, out.derivation)

    monkeypatch.setattr(limits, "compute", wrong)
    assert tpc_main(["check", str(EXAMPLES / "semicircle.tp"), "--widths", "250,1000,4000",
                     "--seeds", "4", "--quiet"]) == 1
    assert "m1: FAIL" in capsys.readouterr().out


# --- the language's errors -----------------------------------------------------------------

ERRORS = [
    ("input x\nweight W\nh = dense(x, W)\ng = dense(h, transpose(W))\ny = readout(g)\n",
     "reads an input"),
    ("weight W(bias=0.1)\nvector z\ng = dense(z, transpose(W))\nreport m = mean(g)\n",
     "has a bias"),
    ("weight W(ratio=2)\nvector z\ng = dense(z, W)\nk = g + z\nreport m = mean(k)\n",
     "different widths"),
    ("weight W(ratio=2)\nvector z\ng = dense(z, W)\nk = dense(z, transpose(W))\n"
     "report m = mean(k)\n", "needs a vector of width 2 n"),
    ("vector z\nh = mean(z)\nreport m = mean(h)\n", "value of a report"),
    ("vector z\nreport m = z\n", "mean of a vector"),
    ("vector z\nrepeat 2 {\n  report m = mean(z)\n}\n", "top level"),
    ("vector z\nreport m = mean(z)\nh = dense(m)\n", "is a report"),
    ("vector z\nreport m = mean(z)\nreport m = mean(z ** 2)\n", "already defined"),
    ("vector z(width=2)\nreport m = mean(z)\n", "unknown vector parameter"),
    ("vector z(ratio=-1)\nreport m = mean(z)\n", "positive rational"),
    ("vector z\nh = transpose(z)\nreport m = mean(h)\n", "is a weight: it is dense"),
    ("vector z\nh = dense(z, transpose(z))\nreport m = mean(h)\n", "not a weight"),
    ("input x\nh = dense(x)\nreport m = mean(h)\n", "without data"),
    ("vector z\nh = dense(z)\ny = readout(h)\n", "not derived"),
]


@pytest.mark.parametrize("src, message", ERRORS)
def test_mistakes_are_tperrors(src, message):
    with pytest.raises(tpc.TPError, match=message) as err:
        net = tpc.compile_source(src, "bad.tp")
        if net.ir.readout is not None:
            net.kernels(np.ones((2, 3)))
        else:
            net.limits()
    text = err.value.format()
    assert "bad.tp:" in text and "^" in text


def test_report_only_programs_refuse_kernels():
    net = tpc.compile(EXAMPLES / "semicircle.tp")
    with pytest.raises(tpc.TPError, match="no readout"):
        net.kernels(np.ones((2, 3)))
    with pytest.raises(tpc.TPError, match="no readout"):
        net.simulate(64)
