"""abc-parametrizations (tpcompiler.passes.abc, `tpc abc`).

Pinned values come from the papers: TP4 = Yang & Hu, "Feature Learning in Infinite-Width Neural
Networks" (arXiv 2011.14522): Table 1, Def. 3.2 (r), Thm 3.3 (stability), Thm 3.5
(nontriviality), Cor. 3.9 (dichotomy), Def. 5.1 (muP), Prop. 5.3 (r_l), Thm 5.6; TP IVb = Yang &
Littwin, "Adaptive Optimization in the Infinite-Width Limit" (2308.01814): Defs. 2.4.1, 2.5.1,
2.8.5, Thms 2.8.12, 2.8.15, Remark 2.2.4; TP5 = Yang et al., "Tuning Large Neural Networks via
Zero-Shot Hyperparameter Transfer" (2203.03466): Tables 3 and 9. The random checks compare with
independent implementations of those theorems written here, for an L-hidden-layer MLP.
"""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction as F

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpcompiler import TPError
from tpcompiler.cli import main as tpc_main
from tpcompiler.lowering import lower
from tpcompiler.parse import parse_source
from tpcompiler.passes.abc import PRESETS, Role, abc_table, kernel_refusals

HALF = F(1, 2)


def program(src: str):
    return lower(parse_source(src, "t.tp"))


def mlp(preset: str, depth: int = 3, bias: bool = False, readout_bias: bool = False) -> str:
    """An MLP with `depth` hidden layers (TP4 eq. (1)), tanh (TP4 Assumption 3.1)."""
    b = ", bias=0.1" if bias else ""
    lines = [f"parametrization {preset}", "input x", f"h = tanh(dense(x, var=2.0{b}))"]
    lines += [f"h = tanh(dense(h, var=2.0{b}))"] * (depth - 1)
    lines.append("y = readout(h, var=1.0" + (", bias=0.5)" if readout_bias else ")"))
    return "\n".join(lines) + "\n"


def custom_block(entries: dict) -> str:
    body = "\n".join(f"    {k}: a={a}, b={b}, c={c}" for k, (a, b, c) in entries.items())
    return "parametrization custom {\n" + body + "\n}\n"


def verdicts(t):
    return {v.key: v.holds for v in t.verdicts}


# --- presets on a 3-hidden-layer MLP: TP4 Table 1 -------------------------------------------


def test_ntp_row_of_tp4_table1():
    t = abc_table(program(mlp("ntk")))
    assert (t.r, t.readout_update, t.readout_init + t.r) == (HALF, 1, 1)  # r, 2a+c, a+b+r
    assert verdicts(t) == {"stable_at_init": True, "stable": True, "nontrivial": True,
                           "feature_learning": False, "kernel_regime": True, "gp_at_init": True}
    assert t.regime == "kernel regime"
    assert [(r.a, r.b, r.c) for r in t.rows] == [
        (0, 0, 0), (HALF, 0, 0), (HALF, 0, 0), (HALF, 0, 0)]
    assert all(r.r == HALF for r in t.rows if r.role is not Role.READOUT)
    assert all(isinstance(x, F) for r in t.rows for x in (r.a, r.b, r.c))


def test_mup_row_of_tp4_table1_and_def_5_1():
    t = abc_table(program(mlp("mup")))
    assert [(r.a, r.b, r.c) for r in t.rows] == [
        (-HALF, HALF, 0), (0, HALF, 0), (0, HALF, 0), (HALF, HALF, 0)]
    assert (t.r, t.readout_update, t.readout_init + t.r) == (0, 1, 1)
    assert verdicts(t) == {"stable_at_init": True, "stable": True, "nontrivial": True,
                           "feature_learning": True, "kernel_regime": False, "gp_at_init": False}
    # Thm 5.6: every W^l (l <= L) is updated maximally, r_l = 0 (Prop. 5.3)
    assert [r.r for r in t.rows if r.role is not Role.READOUT] == [0, 0, 0]
    assert all(r.contributes for r in t.rows)


def test_sp_rows_of_tp4():
    t = abc_table(program(mlp("sp")))  # c = 0: TP4 Thm 4.1, unstable, r = -1
    assert t.r == -1 and t.readout_update == 0
    assert verdicts(t) == {"stable_at_init": True, "stable": False, "nontrivial": None,
                           "feature_learning": None, "kernel_regime": None, "gp_at_init": True}
    # TP4 Table 1 "SP (w/ LR 1/n)": c = 1 -> r = 1/2, stable, nontrivial, kernel regime
    src = custom_block({"input": ("0", "0", "1"), "hidden": ("0", "1/2", "1"),
                        "readout": ("0", "1/2", "1")}) + mlp("ntk").split("\n", 1)[1]
    t = abc_table(program(src))
    assert (t.r, t.readout_update, t.readout_init + t.r) == (HALF, 1, 1)
    assert verdicts(t)["stable"] and verdicts(t)["nontrivial"] and verdicts(t)["kernel_regime"]
    assert not verdicts(t)["feature_learning"]
    # derived from Prop 5.3: the input layer's update is n^-1 smaller (r_1 = 3/2), its NTK
    # term vanishes: the limiting kernel is not the compiled NTK
    assert [r.contributes for r in t.rows] == [False, True, True, True]
    assert kernel_refusals(program(src))["ntk"] is not None


def test_mf_row_of_tp4_table1_one_hidden_layer():
    t = abc_table(program(mlp("mf", depth=1)))
    assert [(r.a, r.b, r.c) for r in t.rows] == [(0, 0, -1), (1, 0, -1)]  # a_1=0, a_2=1, c=-1
    assert (t.r, t.readout_update, t.readout_init + t.r) == (0, 1, 1)
    assert verdicts(t)["stable"] and verdicts(t)["nontrivial"]
    assert verdicts(t)["feature_learning"] and not verdicts(t)["kernel_regime"]
    # deeper: muP in the b = 0 gauge, same verdicts as muP
    deep, mu = abc_table(program(mlp("mf"))), abc_table(program(mlp("mup")))
    assert verdicts(deep) == verdicts(mu) and deep.r == mu.r == 0
    assert [r.r for r in deep.rows] == [r.r for r in mu.rows]


def test_adam_presets_tp4b():
    # TP IVb eq. (2.23): r = r_l = 1/2 in NTP, 0 in muP (Defs. 2.4.1, 2.5.1)
    nt = abc_table(program(mlp("ntk")), "adam")
    assert nt.r == HALF and all(r.r == HALF for r in nt.rows if r.role is not Role.READOUT)
    assert verdicts(nt)["stable"] and verdicts(nt)["nontrivial"]
    assert verdicts(nt)["operator_regime"] and not verdicts(nt)["feature_learning"]
    mu = abc_table(program(mlp("mup")), "adam")
    assert mu.r == 0 and all(r.r == 0 for r in mu.rows if r.role is not Role.READOUT)
    assert verdicts(mu)["feature_learning"] and not verdicts(mu)["operator_regime"]
    # TP IVb's muP representative (0,0,0 | 0,1/2,1 | 1,0,0) is ours up to (a+t, b-t, c-t)
    for kind, (a, b, c), t in (("input", (0, 0, 0), -HALF), ("hidden", (0, HALF, 1), 0),
                               ("readout", (1, 0, 0), -HALF)):
        assert PRESETS["mup"]["adam"][kind] == (a + t, b - t, c - t)
    sp = abc_table(program(mlp("sp")), "adam")
    assert not verdicts(sp)["stable"]
    assert abc_table(program(mlp("mf")), "adam").regime == "feature learning"


def test_adam_readout_must_not_outgrow_its_init():
    # TP IVb Thm 2.8.12: b_{L+1} <= c_{L+1} (faithfulness); muP-Adam with readout (1, 1/2, 0)
    # satisfies every other condition (a+c = 1, a+b+r = 3/2)
    src = custom_block({"input": ("-1/2", "1/2", "1/2"), "hidden": ("0", "1/2", "1"),
                        "readout": ("1", "1/2", "0")}) + mlp("ntk").split("\n", 1)[1]
    t = abc_table(program(src), "adam")
    assert t.r == 0 and t.readout_update == 1
    assert not verdicts(t)["stable"] and "b = 1/2 > c = 0" in t.verdict("stable").reason


def test_practitioner_table_is_tp5_tables_3_and_9():
    table3 = {  # TP5 Table 3 (no multipliers): init var, SGD LR, Adam LR
        ("input", "weight"): ("1", "fan_out", "1"), ("input", "bias"): ("1", "fan_out", "1"),
        ("hidden", "weight"): ("1/fan_in", "1", "1/fan_in"),
        ("readout", "weight"): ("1/fan_in^2", "1/fan_in", "1/fan_in")}
    table9 = {  # TP5 Table 9: init var, multiplier, SGD LR, Adam LR
        ("input", "weight"): ("1/fan_out", "sqrt(fan_out)", "1", "1/sqrt(fan_out)"),
        ("hidden", "weight"): ("1/fan_in", "1", "1", "1/fan_in"),
        ("readout", "weight"): ("1/fan_in", "1/sqrt(fan_in)", "1", "1/sqrt(fan_in)")}
    for opt in ("sgd", "adam"):  # the same parametrization, read for either optimizer
        data = abc_table(program(mlp("mup", bias=True)), opt).to_json()
        param = {r["name"]: (r["role"], r["param"]) for r in data["rows"]}
        for p in data["practice"]:
            s, key = p["scaling"], param[p["name"]]
            assert (s["init_var0"], s["sgd_lr0"], s["adam_lr0"]) == table3[key], (opt, key)
            if key in table9:
                assert (s["init_var"], s["multiplier"], s["sgd_lr"], s["adam_lr"]) == \
                    table9[key], (opt, key)


def test_kernel_refusals_policy():
    assert kernel_refusals(program(mlp("ntk", bias=True, readout_bias=True))) == {
        "nngp": None, "ntk": None}
    sp = kernel_refusals(program(mlp("sp")))
    assert sp["nngp"] is None and "width" in sp["ntk"] and "parametrization ntk" in sp["ntk"]
    for preset in ("mup", "mf"):
        k = kernel_refusals(program(mlp(preset)))
        assert "Gaussian-process" in k["nngp"] and "feature-learning" in k["ntk"]
    k = kernel_refusals(program(mlp("ntk")), "adam")
    assert k["nngp"] is None and "Adam" in k["ntk"]


def test_notes_state_the_consequences():
    notes = " ".join(abc_table(program(mlp("mup"))).notes)
    assert "no GP limit" in notes and "no kernel describes training" in notes
    notes = " ".join(abc_table(program(mlp("sp"))).notes)
    assert "unstable" in notes and "1/width" in notes
    assert "kernel regime" in " ".join(abc_table(program(mlp("ntk"))).notes)
    assert "feature learning" in " ".join(abc_table(program(mlp("mf", depth=1))).notes)


# --- custom blocks ----------------------------------------------------------------------------


def test_named_entry_overrides_kind_and_biases_and_finite_rows():
    src = custom_block({"input": ("0", "0", "0"), "hidden": ("1/2", "0", "0"),
                        "readout": ("1/2", "0", "0"), "bias": ("0", "0", "0"),
                        "V": ("1/2", "0", "1/2")}) + (
        "input x\nweight V(var=2.0, bias=0.1)\nh = relu(dense(x, bias=0.1))\n"
        "h = relu(dense(h, V))\nh = relu(dense(h))\nz = relu(dense(x))\n"
        "y = readout(h, bias=1.0)\n")
    t = abc_table(program(src))
    src_of = {(r.label if r.param == "weight" else "bias " + r.label): r.source for r in t.rows}
    assert src_of["V"] == "custom V" and src_of["bias V"] == "custom bias"
    assert [r.source for r in t.rows if r.role is Role.HIDDEN] == ["custom V", "custom hidden"]
    fin = [r for r in t.rows if r.role is Role.FINITE]
    assert len(fin) == 1 and (fin[0].a, fin[0].b, fin[0].c) == (0, 0, 0)
    unused = [r for r in t.rows if not r.used]
    assert len(unused) == 1 and unused[0].kind.value == "input"
    # V (c = 1/2) is updated too slowly: r_V = 1, its NTK term vanishes
    assert t.row("V").r == 1 and t.row("V").contributes is False
    assert t.regime == "kernel regime"
    k = kernel_refusals(program(src))
    assert k["nngp"] is None and "V" in k["ntk"]


def test_custom_equal_to_ntp_up_to_symmetry_keeps_the_ntk():
    # per-layer symmetry (a+t, b-t, c-2t): SP-style init with lr 1 on the input layer and
    # 1/n on hidden and readout layers is NTP
    src = custom_block({"input": ("0", "0", "0"), "hidden": ("0", "1/2", "1"),
                        "readout": ("0", "1/2", "1"), "bias": ("1/4", "-1/4", "-1/2")})
    src += mlp("ntk", bias=True).split("\n", 1)[1]
    assert kernel_refusals(program(src)) == {"nngp": None, "ntk": None}
    assert abc_table(program(src)).r == HALF


def test_width_independent_program():
    t = abc_table(program("parametrization mup\ninput x\nh = relu(dense(x))\n"
                          "y = readout(x, bias=1.0)\n"))
    assert t.regime == "width-independent"
    assert dict(t.refusals) == {"nngp": None, "ntk": None}


# --- random abc choices against the theorems --------------------------------------------------

GRID = [F(k, 2) for k in range(-2, 4)]  # -1 .. 3/2


def tp4_mlp(a, b, c):
    """TP4 Def 3.2, Thm 3.3, Thm 3.5, Cor 3.9 for an L-hidden-layer MLP with one global c.
    a, b: lists over l = 1..L+1."""
    L = len(a) - 1
    aR, bR = a[L], b[L]
    r = min(aR + bR, 2 * aR + c) + c - 1 + min(2 * a[i] + (1 if i == 0 else 0) for i in range(L))
    init = (a[0] + b[0] == 0 and all(a[i] + b[i] == HALF for i in range(1, L))
            and aR + bR >= HALF)
    stable = init and r >= 0 and 2 * aR + c >= 1 and aR + bR + r >= 1
    nontrivial = stable and (aR + bR + r == 1 or 2 * aR + c == 1)
    return {"r": r, "init": init, "stable": stable, "nontrivial": nontrivial,
            "feature_learning": nontrivial and r == 0, "kernel": nontrivial and r > 0}


def tp4b(a, b, c):
    """TP IVb Def 2.8.5, Lemma 2.8.10, Thm 2.8.12, Thm 2.8.15 (abcd with faithful d, or Adam
    with epsilon -> 0); per-layer c over l = 1..L+1."""
    L = len(a) - 1
    rl = [c[i] + a[i] - (0 if i == 0 else 1) for i in range(L + 1)]
    r = min(rl[:L])
    aR, bR, cR = a[L], b[L], c[L]
    init = (a[0] + b[0] == 0 and all(a[i] + b[i] == HALF for i in range(1, L))
            and aR + bR >= HALF)
    stable = init and all(x >= 0 for x in rl) and aR + bR + r >= 1 and bR <= cR
    nontrivial = stable and (aR + cR == 1 or aR + bR + r == 1)
    return {"r": r, "rl": rl[:L], "init": init, "stable": stable, "nontrivial": nontrivial,
            "feature_learning": nontrivial and r == 0, "operator": nontrivial and r > 0}


# Named parametrizations to sample around (layers 1 | 2..L | L+1), written from the papers:
# SGD: TP4 Table 1 (NTP; SP with lr 1/n) and Def 5.1 (muP); Adam: TP IVb Defs 2.4.1 and 2.5.1
# (d dropped; muP moved by t = -1/2 on layers 1 and L+1), SP with global lr n^-3/2.
BASES = {
    "sgd": {"ntp": ((0, 0, 0), (HALF, 0, 0), (HALF, 0, 0)),
            "mup": ((-HALF, HALF, 0), (0, HALF, 0), (HALF, HALF, 0)),
            "sp": ((0, 0, 1), (0, HALF, 1), (0, HALF, 1))},
    "adam": {"ntp": ((0, 0, HALF), (HALF, 0, 1), (HALF, 0, HALF)),
             "mup": ((-HALF, HALF, HALF), (0, HALF, 1), (HALF, HALF, HALF)),
             "sp": ((0, 0, F(3, 2)), (0, HALF, F(3, 2)), (0, HALF, F(3, 2)))},
}


@st.composite
def abc_mlp(draw, global_c: bool, opt: str = "sgd"):
    """(L, a, b, c, use_kind_entry): exponents for layers 1..L+1. Half the draws are a named
    parametrization moved by random symmetries (uniform when global_c) and maybe perturbed in
    one coordinate; the others are random, mostly init-stable."""
    L = draw(st.integers(1, 3))
    if draw(st.booleans()):
        base = BASES[opt][draw(st.sampled_from(sorted(BASES[opt])))]
        layers = [base[0]] + [base[1]] * (L - 1) + [base[2]]
        k = 2 if opt == "sgd" else 1
        t0 = draw(st.sampled_from(GRID))
        ts = [t0 if global_c else draw(st.sampled_from(GRID)) for _ in range(L + 1)]
        a = [F(x[0]) + t for x, t in zip(layers, ts)]
        b = [F(x[1]) - t for x, t in zip(layers, ts)]
        c = [F(x[2]) - k * t for x, t in zip(layers, ts)]
        if draw(st.integers(0, 2)) == 0:
            which, i = draw(st.sampled_from("abc")), draw(st.integers(0, L))
            delta = draw(st.sampled_from([-HALF, HALF]))
            vec = {"a": a, "b": b, "c": c}[which]
            for j in (range(L + 1) if which == "c" and global_c else [i]):
                vec[j] += delta
        return L, a, b, c, draw(st.booleans())
    a = [draw(st.sampled_from(GRID)) for _ in range(L + 1)]
    need = [F(0)] + [HALF] * (L - 1) + [draw(st.sampled_from([HALF, F(3, 4), F(1)]))]
    b = [need[i] - a[i] if draw(st.integers(0, 9)) else draw(st.sampled_from(GRID))
         for i in range(L + 1)]
    if global_c:
        c = [draw(st.sampled_from(GRID))] * (L + 1)
    else:
        c = [draw(st.sampled_from(GRID)) for _ in range(L + 1)]
    return L, a, b, c, draw(st.booleans())


def mlp_source(L, a, b, c, use_kind_entry) -> str:
    """Hidden layers W2..WL have entries of their own (overriding a decoy `hidden` entry),
    except the last one when use_kind_entry: it takes the `hidden` entry."""
    entries = {"input": (a[0], b[0], c[0]), "readout": (a[L], b[L], c[L]),
               "hidden": ("7", "-7", "7")}
    decls, body = [], ["h = tanh(dense(x, var=2.0))"]
    for i in range(1, L):
        if use_kind_entry and i == L - 1:
            entries["hidden"] = (a[i], b[i], c[i])
            body.append("h = tanh(dense(h, var=2.0))")
        else:
            entries[f"W{i + 1}"] = (a[i], b[i], c[i])
            decls.append(f"weight W{i + 1}(var=2.0)")
            body.append(f"h = tanh(dense(h, W{i + 1}))")
    return custom_block(entries) + "input x\n" + "\n".join(decls + body) + "\ny = readout(h)\n"


SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(abc_mlp(global_c=True))
def test_random_sgd_abc_against_tp4(case):
    L, a, b, c, kind = case
    t = abc_table(program(mlp_source(L, a, b, c, kind)))
    ref = tp4_mlp(a, b, c[0])
    v = verdicts(t)
    assert t.r == ref["r"]
    assert v["stable_at_init"] == ref["init"]
    assert v["stable"] == ref["stable"]
    assert bool(v["nontrivial"]) == ref["nontrivial"]
    assert bool(v["feature_learning"]) == ref["feature_learning"]
    assert bool(v["kernel_regime"]) == ref["kernel"]
    assert (v["nontrivial"] is None) == (not ref["stable"])
    assert v["gp_at_init"] == (ref["init"] and a[L] + b[L] == HALF)


@SETTINGS
@given(abc_mlp(global_c=False, opt="adam"))
def test_random_adam_abc_against_tp4b(case):
    L, a, b, c, kind = case
    t = abc_table(program(mlp_source(L, a, b, c, kind)), "adam")
    ref = tp4b(a, b, c)
    v = verdicts(t)
    assert t.r == ref["r"]
    assert [r.r for r in t.rows if r.role is not Role.READOUT] == ref["rl"]
    assert v["stable"] == ref["stable"]
    assert bool(v["nontrivial"]) == ref["nontrivial"]
    assert bool(v["feature_learning"]) == ref["feature_learning"]
    assert bool(v["operator_regime"]) == ref["operator"]


@SETTINGS
@given(abc_mlp(global_c=False))
def test_random_per_layer_sgd_against_tp4b_reduction(case):
    # TP IVb Remark 2.2.4: SGD abc = abcd with c_abcd = c + d; faithful d (Lemma 2.8.11):
    # d_l = a_l + a_{L+1} + b_{L+1} (l <= L), d_{L+1} = a_{L+1}. The theorem needs the readout
    # not to outgrow its init (b <= c_abcd), i.e. a+b <= 2a+c at the readout.
    L, a, b, c, kind = case
    t = abc_table(program(mlp_source(L, a, b, c, kind)))
    s = a[L] + b[L]
    d = [a[i] + s for i in range(L)] + [a[L]]
    ref = tp4b(a, b, [c[i] + d[i] for i in range(L + 1)])
    v = verdicts(t)
    if s <= 2 * a[L] + c[L]:
        assert t.r == ref["r"]
        assert v["stable"] == ref["stable"]
        assert bool(v["nontrivial"]) == ref["nontrivial"]
        assert bool(v["feature_learning"]) == ref["feature_learning"]
        assert bool(v["kernel_regime"]) == ref["operator"]


@SETTINGS
@given(st.sampled_from(["sgd", "adam"]).flatmap(
    lambda opt: st.tuples(abc_mlp(global_c=False, opt=opt), st.just(opt))),
    st.lists(st.sampled_from(GRID), min_size=4, max_size=4))
def test_symmetry_leaves_everything_unchanged(case_opt, thetas):
    # TP4 eq. (5) per layer (TP IVb Prop 2.2.3): (a+t, b-t, c-2t) for SGD, (a+t, b-t, c-t) Adam
    (L, a, b, c, kind), opt = case_opt
    k = 2 if opt == "sgd" else 1
    a2 = [a[i] + thetas[i] for i in range(L + 1)]
    b2 = [b[i] - thetas[i] for i in range(L + 1)]
    c2 = [c[i] - k * thetas[i] for i in range(L + 1)]
    t1 = abc_table(program(mlp_source(L, a, b, c, kind)), opt)
    t2 = abc_table(program(mlp_source(L, a2, b2, c2, kind)), opt)
    assert verdicts(t1) == verdicts(t2) and t1.r == t2.r and t1.regime == t2.regime
    assert [(r.r, r.contributes) for r in t1.rows] == [(r.r, r.contributes) for r in t2.rows]
    assert [(p.init_var0, p.sgd_lr0, p.adam_lr0) for p in t1.practice] == [
        (p.init_var0, p.sgd_lr0, p.adam_lr0) for p in t2.practice]
    assert [w is None for _, w in t1.refusals] == [w is None for _, w in t2.refusals]


@SETTINGS
@given(abc_mlp(global_c=False))
def test_random_kernel_refusals(case):
    L, a, b, c, kind = case
    p = program(mlp_source(L, a, b, c, kind))
    k = kernel_refusals(p)
    init = (a[0] + b[0] == 0 and all(a[i] + b[i] == HALF for i in range(1, L))
            and a[L] + b[L] >= HALF)
    assert (k["nngp"] is None) == (init and a[L] + b[L] == HALF)
    # the NTK is meaningful iff every layer has NTP's invariants (a+b, 2a+c)
    ntp = [(F(0), F(0))] + [(HALF, F(1))] * L
    assert (k["ntk"] is None) == all((a[i] + b[i], 2 * a[i] + c[i]) == ntp[i]
                                     for i in range(L + 1))
    if k["ntk"] is None:
        v = verdicts(abc_table(p))
        assert v["stable"] and v["nontrivial"] and v["kernel_regime"] and v["gp_at_init"]
    assert kernel_refusals(p, "adam")["ntk"] is not None


# --- errors -----------------------------------------------------------------------------------


def test_missing_kind_points_at_the_custom_block():
    src = ("network n\nparametrization custom {\n    input: a=0, b=0, c=0\n"
           "    readout: a=1/2, b=0, c=0\n}\ninput x\nh = relu(dense(x, bias=0.1))\n"
           "h = relu(dense(h))\ny = readout(h)\n")
    with pytest.raises(TPError) as e:
        program(src)
    assert e.value.span.line == 2 and e.value.span.column == 1
    assert "'hidden'" in e.value.message and "'bias'" in e.value.message
    # a named weight with its own entry needs no kind entry
    src2 = ("parametrization custom {\n    input: a=0, b=0, c=0\n    readout: a=1/2, b=0, c=0\n"
            "    W: a=1/2, b=0, c=0\n}\ninput x\nweight W\nh = relu(dense(dense(x), W))\n"
            "y = readout(h, bias=1.0)\n")
    assert abc_table(program(src2)).regime == "kernel regime"


@pytest.mark.parametrize("entry, message", [
    ("hiden: a=1/2, b=0, c=0", "unknown parametrization entry 'hiden'"),
    ("U: a=1/2, b=0, c=0", "unknown parametrization entry 'U'"),
    ("hidden: a=2**0.5, b=0, c=0", "must be a rational number"),
    ("hidden: a=1/2, b=0", "missing c="),
    ("hidden: a=1/2, b=0, c=0, d=1", "unknown exponent 'd'"),
])
def test_bad_entries(entry, message):
    src = ("parametrization custom {\n    input: a=0, b=0, c=0\n    readout: a=1/2, b=0, c=0\n"
           f"    {entry}\n}}\ninput x\nweight V\nh = relu(dense(relu(dense(x)), V))\n"
           "h = relu(dense(h))\ny = readout(h)\n")
    with pytest.raises(TPError) as e:
        program(src)
    assert message in e.value.message
    assert e.value.span is not None and e.value.span.line == 4


def test_weight_named_like_a_kind_is_ambiguous():
    src = ("parametrization custom {\n    input: a=0, b=0, c=0\n    readout: a=1/2, b=0, c=0\n"
           "    hidden: a=1/2, b=0, c=0\n}\ninput x\nweight hidden\n"
           "h = relu(dense(relu(dense(x)), hidden))\ny = readout(h)\n")
    with pytest.raises(TPError, match="both a weight kind and a weight name"):
        program(src)


def test_unknown_optimizer():
    with pytest.raises(ValueError):
        abc_table(program(mlp("ntk")), "rmsprop")


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def mup_file(tmp_path):
    p = tmp_path / "mup.tp"
    p.write_text("network mlp\n" + mlp("mup", bias=True, readout_bias=True))
    return p


@pytest.mark.parametrize("fmt, marker", [("text", "verdicts:"), ("markdown", "| verdict |"),
                                         ("latex", "\\begin{tabular}")])
def test_cli_formats(mup_file, capsys, fmt, marker):
    assert tpc_main(["abc", str(mup_file), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert marker in out and "feature learning" in out and "1/2" in out


def test_cli_text_is_aligned(mup_file, capsys):
    assert tpc_main(["abc", str(mup_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, s in enumerate(lines) if s.startswith("param"))
    col = lines[head].index(" a ") + 1
    assert all(s[col - 1] == " " for s in lines[head + 1:head + 5])


def test_cli_json(mup_file, capsys):
    assert tpc_main(["abc", str(mup_file), "--format", "json", "--optimizer", "adam"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["optimizer"] == "adam" and data["preset"] == "mup" and data["r"] == "0"
    hidden = [r for r in data["rows"] if r["kind"] == "hidden"]
    assert hidden[0]["a"] == "0" and hidden[0]["b"] == "1/2" and hidden[0]["c"] == "1"
    assert data["verdicts"]["feature_learning"]["holds"] is True
    assert data["kernels"]["ntk"] and data["kernels"]["nngp"]
    assert all(isinstance(r["a"], str) for r in data["rows"])


def test_cli_error_exits_2(tmp_path, capsys):
    p = tmp_path / "bad.tp"
    p.write_text("parametrization custom {\n    input: a=0, b=0, c=0\n}\ninput x\n"
                 "y = readout(relu(dense(x)))\n")
    assert tpc_main(["abc", str(p)]) == 2
    err = capsys.readouterr().err
    assert "bad.tp:1:1" in err and "no entry for 'readout'" in err


def test_tpc_abc_subprocess(mup_file):
    res = subprocess.run([sys.executable, "-m", "tpcompiler.cli", "abc", str(mup_file),
                          "--format", "json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["regime"] == "feature learning"
