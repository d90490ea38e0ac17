"""abc-parametrizations: what the width exponents of a program imply (Tensor Programs IV, IVb, V).

Convention (TP4, Yang & Hu 2011.14522, Sec. 3; per-layer c as in TP IVb, 2308.01814, Def. 2.2.1):
every weight or bias W of the program is W = n^-a w with trainable w ~ N(0, n^-2b) and learning
rate eta n^-c (eta width-independent), n the width. The program's variances (var=, bias=) are
width-independent constant multipliers on top (neural-tangents' convention, docs/internals.md);
only powers of n are tracked here.

Layers are the program's matrices and biases (its "weights"), in four roles:
  INPUT    finite fan-in -> width n: input matrices and every width-n bias (fan-in 1); TP4's l = 1
  HIDDEN   width n -> width n; TP4's 2 <= l <= L
  READOUT  width n -> the output; TP4's l = L + 1 (a program has exactly one readout)
  FINITE   finite -> finite: the readout's own bias, a readout of an input. No width enters them:
           their exponents are fixed at a = b = c = 0 (the "scalar parameters" of TP IVb
           Defs. 2.9.11/2.9.12) and they take no part in the verdicts.

With R the readout, SGD (TP4 Def. 3.2 and Prop. 5.3, c_l the layer's own learning rate):
  r_l = min(a_R + b_R, 2 a_R + c_R) + c_l - 1 + 2 a_l + [l INPUT],   r = min_l r_l
and Adam with epsilon -> 0 (TP IVb Def. 2.8.5; faithfulness is automatic for a scale-invariant
update): r_l = a_l + c_l - 1 + [l INPUT]. The theorems (TP4 Thms 3.3, 3.5, Cor. 3.9; TP IVb
Lemma 2.8.10, Thms 2.8.12, 2.8.15, Cor. 2.8.20) then read, over the layers that reach the output:
  stable at init   a+b = 0 (INPUT), a+b = 1/2 (HIDDEN), a_R + b_R >= 1/2
  stable           that, r >= 0, a_R + b_R + r >= 1, and 2 a_R + c_R >= 1 (SGD) or
                   a_R + c_R >= 1 and b_R <= c_R (Adam)
  nontrivial       a_R + b_R + r = 1 or 2 a_R + c_R = 1 (SGD; a_R + c_R = 1 for Adam)
  regime           r = 0 feature learning; r > 0 kernel regime (SGD) / operator regime (Adam)
docs/abc.md states the generalisation from TP4's MLP to arbitrary programs and the tables.

`abc_table(program, optimizer)` builds the whole analysis as an immutable `AbcTable` (rows,
verdicts, notes, the practitioner table, renderers); `kernel_refusals(program)` says which compiled
kernels are meaningful limits. Pure functions of the IR: importing this module has no side effects.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import sympy as sp

from .. import ir
from ..errors import TPError
from ..parametrization import OPTIMIZERS, TABLE, Role, bias_role, exponents, matrix_role

ZERO = Fraction(0)
HALF = Fraction(1, 2)
ONE = Fraction(1)


#: preset -> optimizer -> entry -> (a, b, c): the table of parametrization.py
PRESETS = TABLE


# The per-layer invariants of NTP under the symmetry (a+t, b-t, c-2t) (SGD): (a+b, 2a+c).
_NTP_INVARIANTS = {Role.INPUT: (ZERO, ZERO), Role.HIDDEN: (HALF, ONE), Role.READOUT: (HALF, ONE)}

VERDICT_TITLES = {
    "stable_at_init": "stable at init",
    "stable": "stable",
    "nontrivial": "nontrivial",
    "feature_learning": "feature learning",
    "kernel_regime": "kernel regime",
    "operator_regime": "operator regime",
    "gp_at_init": "GP at init (NNGP)",
}


@dataclass(frozen=True)
class AbcRow:
    """One weight (matrix) or bias of the program with its exponents and per-layer quantities."""

    name: str  # IR name (A0, B1, ...)
    label: str  # what the user wrote (weight name, dense@line:col, readout@line:col)
    param: str  # "weight" | "bias"
    kind: ir.Kind  # weight kind; a width-n bias is INPUT (fan-in 1), the readout's bias READOUT
    role: Role
    fan_in: str  # "n", "dim(x)" or "1"
    fan_out: str  # "n" or "1"
    a: Fraction
    b: Fraction
    c: Fraction
    source: str  # where the exponents come from: "preset mup", "custom hidden", "custom W", ...
    used: bool  # the output depends on it
    init_required: str  # "= 0", "= 1/2", ">= 1/2" or "" (FINITE)
    init_ok: bool
    r: Fraction | None  # r_l (INPUT and HIDDEN rows)
    update: Fraction | None  # readout: 2a+c (SGD) or a+c (Adam)
    contributes: bool | None  # its update moves f by Theta(1) (a_R+b_R+r_l = 1; readout: its
    # update exponent = 1): in a kernel regime, its NTK term is kept. None: FINITE or unused

    @property
    def a_plus_b(self) -> Fraction:
        return self.a + self.b


@dataclass(frozen=True)
class Verdict:
    key: str
    holds: bool | None  # None: does not apply (e.g. the dichotomy of an unstable parametrization)
    reason: str  # the condition that decided it

    @property
    def title(self) -> str:
        return VERDICT_TITLES[self.key]


@dataclass(frozen=True)
class PracticeRow:
    """Width scalings of one layer in the practitioner's form (TP5 Tables 3 and 9).

    Exponents k stand for n^k, with n this layer's width dimension (`width`: fan_out for INPUT,
    fan_in for HIDDEN and READOUT). `multiplier`, `init_var`: W = n^multiplier w,
    Var(w) = n^init_var as declared; `sgd_lr`, `adam_lr`: the learning-rate scalings of the
    same abcd-parametrization for each optimizer (TP IVb: c_Adam = c_SGD + d with the faithful
    d of Lemma 2.8.11). The `*0` fields are the multiplier-free form (TP5 Table 3), obtained by
    the per-layer symmetry with t = -a."""

    name: str
    label: str
    role: Role
    width: str
    multiplier: Fraction
    init_var: Fraction
    sgd_lr: Fraction
    adam_lr: Fraction
    init_var0: Fraction
    sgd_lr0: Fraction
    adam_lr0: Fraction


@dataclass(frozen=True)
class AbcTable:
    """The abc analysis of one program for one optimizer (built by `abc_table`).

    `rows`: one per weight and bias, in program order; `verdicts`: stable_at_init, stable,
    nontrivial, feature_learning, kernel_regime (SGD) or operator_regime (Adam), gp_at_init,
    each with the condition that decided it (holds None: does not apply); `notes`: the
    consequences in words; `practice`: the practitioner's scalings; `refusals`: what
    `kernel_refusals` returns. Renderers: text(), markdown(), latex(), json(), to_json()."""

    program: str | None
    preset: str
    optimizer: str
    rows: tuple[AbcRow, ...]
    readout_init: Fraction | None  # a_R + b_R
    readout_update: Fraction | None  # 2a_R + c_R (SGD) or a_R + c_R (Adam)
    r: Fraction | None
    regime: str  # unstable | trivial | feature learning | kernel regime | operator regime |
    # width-independent
    verdicts: tuple[Verdict, ...]
    notes: tuple[str, ...]
    practice: tuple[PracticeRow, ...]
    refusals: tuple[tuple[str, str | None], ...]  # (("nngp", reason|None), ("ntk", ...))

    def verdict(self, key: str) -> Verdict:
        for v in self.verdicts:
            if v.key == key:
                return v
        raise KeyError(key)

    def row(self, name_or_label: str) -> AbcRow:
        for r in self.rows:
            if name_or_label in (r.name, r.label):
                return r
        raise KeyError(name_or_label)

    @property
    def update_formula(self) -> str:
        return "2a+c" if self.optimizer == "sgd" else "a+c"

    # --- renderers -------------------------------------------------------------------------

    def to_json(self) -> dict:
        """Machine-readable: every exponent an exact rational written as a string ("-1/2")."""
        rows = [{
            "name": r.name, "label": r.label, "param": r.param, "kind": r.kind.value,
            "role": r.role.value, "fan_in": r.fan_in, "fan_out": r.fan_out,
            "a": _q(r.a), "b": _q(r.b), "c": _q(r.c), "source": r.source, "used": r.used,
            "a_plus_b": _q(r.a_plus_b), "init_required": r.init_required, "init_ok": r.init_ok,
            "r_l": _q(r.r), "update": _q(r.update), "contributes": r.contributes,
        } for r in self.rows]
        practice = [{
            "name": p.name, "label": p.label, "role": p.role.value, "width": p.width,
            "exponents": {k: _q(getattr(p, k)) for k in (
                "multiplier", "init_var", "sgd_lr", "adam_lr", "init_var0", "sgd_lr0",
                "adam_lr0")},
            "scaling": {k: _power(p.width, getattr(p, k)) for k in (
                "multiplier", "init_var", "sgd_lr", "adam_lr", "init_var0", "sgd_lr0",
                "adam_lr0")},
        } for p in self.practice]
        return {
            "program": self.program,
            "preset": self.preset,
            "optimizer": self.optimizer,
            "convention": "W = n^-a w, w ~ N(0, n^-2b), learning rate eta n^-c",
            "rows": rows,
            "readout": {"a_plus_b": _q(self.readout_init), "update": _q(self.readout_update),
                        "update_formula": self.update_formula},
            "r": _q(self.r),
            "regime": self.regime,
            "verdicts": {v.key: {"holds": v.holds, "reason": v.reason} for v in self.verdicts},
            "kernels": dict(self.refusals),
            "notes": list(self.notes),
            "practice": practice,
        }

#: the fields of a PracticeRow, in the order the tables show them
PRACTICE_FIELDS = ("multiplier", "init_var", "sgd_lr", "adam_lr", "init_var0", "sgd_lr0",
                    "adam_lr0")


# --- the analysis --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    name: str
    label: str
    param: str
    kind: ir.Kind
    role: Role
    fan_in: str
    fan_out: str
    used: bool
    span: object


def _check_optimizer(optimizer: str) -> str:
    opt = str(optimizer).lower()
    if opt not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    return opt


def _used_params(program: ir.Program) -> set[str]:
    """The matrices and biases the output depends on (through G-vars, transitively)."""
    r = program.readout
    used = {r.matrix} | ({r.bias} if r.bias else set())
    if isinstance(r.arg, ir.InputRef):
        return used
    gvars = {g.name: g for g in program.gvars}
    stack, seen = list(ir.gvars_of(r.arg)), set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        g = gvars[name]
        used.add(g.param)
        # every G-var computed from vectors (conv, pooling, layernorm, attention, batchnorm
        # too), not only matmuls: their weights are used
        if isinstance(g.arg, sp.Expr):
            stack.extend(ir.gvars_of(g.arg))
        if isinstance(g.spatial, ir.Attend):
            stack.extend(ir.gvars_of(g.spatial.query) + ir.gvars_of(g.spatial.key))
    return used


def _layers(program: ir.Program) -> list[_Layer]:
    used = _used_params(program)
    first = {}
    for i, g in enumerate(program.gvars):
        first.setdefault(g.param, i)
    out = []
    for m in program.matrices:
        role = matrix_role(m)  # a readout of an input is FINITE: finite -> finite
        fan_in = f"dim({m.fan_in})" if m.fan_in else "n"
        fan_out = "n" if role in (Role.INPUT, Role.HIDDEN) else "1"
        out.append((first.get(m.name, len(program.gvars)),
                    _Layer(m.name, m.label, "weight", m.kind, role, fan_in, fan_out,
                           m.name in used, m.span)))
    for b in program.biases:
        if bias_role(program, b) is Role.FINITE:  # the readout's
            layer = _Layer(b.name, b.label, "bias", ir.Kind.READOUT, Role.FINITE, "1", "1",
                           True, b.span)
        else:
            layer = _Layer(b.name, b.label, "bias", ir.Kind.INPUT, Role.INPUT, "1", "n",
                           b.name in used, b.span)
        # a bias's G-var comes just before its matrix's: list it just after
        out.append((first.get(b.name, len(program.gvars)) + 1.5, layer))
    out.sort(key=lambda t: t[0])
    return [t[1] for t in out]


def _exponents(program: ir.Program, layer: _Layer, optimizer: str):
    """(a, b, c, source) of one layer."""
    entry = "bias" if layer.param == "bias" else layer.kind.value
    return exponents(program.parametrization, layer.role, entry, layer.label, optimizer,
                     layer.span)


@dataclass(frozen=True)
class Requirement:
    """What stability at init asks of a + b for a role: `op` ("=" or ">=") `target`."""

    op: str
    target: Fraction

    def holds(self, s: Fraction) -> bool:
        return s == self.target if self.op == "=" else s >= self.target

    def __str__(self) -> str:
        return f"{self.op} {self.target}"


_INIT = {Role.INPUT: Requirement("=", ZERO), Role.HIDDEN: Requirement("=", HALF),
         Role.READOUT: Requirement(">=", HALF)}


def _init_requirement(role: Role) -> tuple[Requirement | str, object]:
    """(the requirement as the table shows it, its test); none for FINITE tensors."""
    req = _INIT.get(role)
    if req is None:
        return "", lambda s: True
    return req, req.holds


def abc_table(program: ir.Program, optimizer: str = "sgd") -> AbcTable:
    """The abc analysis of a lowered program for SGD or Adam (see the module docstring).

    The program's exponents are read as those of `optimizer`: a preset resolves to its table for
    that optimizer (`PRESETS`), a custom block's c is that optimizer's learning-rate exponent.
    Raises TPError only when a custom block lacks an entry (lower() rejects those already) and
    ValueError for an unknown optimizer."""
    opt = _check_optimizer(optimizer)
    if program.readout is None or program.netsor_t:
        raise TPError("the abc analysis reads a network with a readout and no transpose(), "
                      "`vector` or ratio=", hint="a program of reports has limits (tpc limits), "
                      "not a training parametrization")
    layers = _layers(program)
    exps = {L.name: _exponents(program, L, opt) for L in layers}
    feats = [L for L in layers if L.used and L.role in (Role.INPUT, Role.HIDDEN)]
    readout = next((L for L in layers if L.role is Role.READOUT), None)
    preset = program.parametrization.preset
    if readout is None or not feats:
        return _width_independent(program, layers, exps, opt)

    aR, bR, cR, _ = exps[readout.name]
    sR = aR + bR
    if opt == "sgd":
        uR = 2 * aR + cR
        m = min(sR, uR)

        def r_of(L):
            a, _, c, _ = exps[L.name]
            return m + c - 1 + 2 * a + (1 if L.role is Role.INPUT else 0)
    else:
        uR = aR + cR

        def r_of(L):
            a, _, c, _ = exps[L.name]
            return a + c - 1 + (1 if L.role is Role.INPUT else 0)

    rls = {L.name: r_of(L) for L in layers if L.role in (Role.INPUT, Role.HIDDEN)}
    r = min(rls[L.name] for L in feats)

    rows = []
    bad_init = []
    for L in layers:
        a, b, c, src = exps[L.name]
        req, ok_fn = _init_requirement(L.role)
        ok = ok_fn(a + b)
        if L.used and not ok:
            bad_init.append((L, a + b, req))
        rl = rls.get(L.name)
        upd = uR if L.role is Role.READOUT else None
        term = None
        if L.used and L.role in (Role.INPUT, Role.HIDDEN):
            term = sR + rl == 1
        elif L.role is Role.READOUT:
            term = uR == 1
        rows.append(AbcRow(L.name, L.label, L.param, L.kind, L.role, L.fan_in, L.fan_out,
                           a, b, c, src, L.used, str(req), ok, rl, upd, term))
    rows = tuple(rows)

    verdicts = _verdicts(opt, rows, feats, readout, sR, uR, bR, cR, r, rls, bad_init)
    v = {x.key: x for x in verdicts}
    if not v["stable"].holds:
        regime = "unstable"
    elif not v["nontrivial"].holds:
        regime = "trivial"
    elif r == 0:
        regime = "feature learning"
    else:
        regime = "kernel regime" if opt == "sgd" else "operator regime"
    practice = _practice(rows, sR, opt)
    refusals = _refusals(program, opt, rows, v, regime, sR)
    notes = _notes(program, opt, rows, v, regime, sR, uR, r, refusals)
    return AbcTable(program.name, preset, opt, rows, sR, uR, r, regime, verdicts, notes,
                    practice, refusals)


def _rows_text(items) -> str:
    return ", ".join(items)


def _verdicts(opt, rows, feats, readout, sR, uR, bR, cR, r, rls, bad_init):
    q = _q
    upd = "2a+c" if opt == "sgd" else "a+c"
    cite = "TP4 Thm 3.3" if opt == "sgd" else "TP IVb Lemma 2.8.10, Thm 2.8.12"
    # stable at init
    if bad_init:
        parts = []
        for L, s, req in bad_init:
            what = {Role.INPUT: "input weight" if L.param == "weight" else "bias",
                    Role.HIDDEN: "hidden weight", Role.READOUT: "readout"}[L.role]
            target = req.target
            if L.role is Role.READOUT:
                effect = "the output blows up at init"
            elif s < target:
                effect = "its output coordinates blow up at init"
            else:
                effect = "its output coordinates vanish at init"
            parts.append(f"a+b = {q(s)} for {what} {_who(L)}, needs {req} ({effect})")
        init = Verdict("stable_at_init", False, "; ".join(parts) + f" ({cite}(1))")
    else:
        kinds = [k for k in (Role.INPUT, Role.HIDDEN) if any(L.role is k for L in feats)]
        need = {Role.INPUT: "a+b = 0 for input weights and biases",
                Role.HIDDEN: "a+b = 1/2 for hidden weights"}
        init = Verdict("stable_at_init", True,
                       "; ".join(need[k] for k in kinds)
                       + f"; a+b = {q(sR)} >= 1/2 for the readout ({cite}(1))")
    # stable during training
    fails, holds = [], []
    worst = [_who(L) for L in feats if rls[L.name] == r]
    if r < 0:
        fails.append(f"r = {q(r)} < 0: features blow up during training (r_l = {q(r)} for "
                     f"{_rows_text(worst)})")
    else:
        holds.append(f"r = {q(r)} >= 0")
    if uR < 1:
        fails.append(f"{upd} = {q(uR)} < 1 for the readout: its own update blows the output up "
                     f"(Delta W^(L+1) x^L = Theta({_npow(1 - uR)}))")
    else:
        holds.append(f"{upd} = {q(uR)} >= 1 for the readout")
    if sR + r < 1:
        fails.append(f"a+b+r = {q(sR + r)} < 1 for the readout: W_0^(L+1) Delta x^L = "
                     f"Theta({_npow(1 - sR - r)}) blows the output up")
    else:
        holds.append(f"a+b+r = {q(sR + r)} >= 1 for the readout")
    if opt == "adam":
        if bR > cR:
            fails.append(f"b = {q(bR)} > c = {q(cR)} for the readout: its updates outgrow its "
                         f"initialisation (not faithful, TP IVb Thm 2.8.12)")
        else:
            holds.append(f"b = {q(bR)} <= c = {q(cR)} for the readout")
    if not init.holds:
        fails.insert(0, "not stable at init")
    if fails:
        stable = Verdict("stable", False, "; ".join(fails) + f" ({cite})")
    else:
        stable = Verdict("stable", True, ", ".join(holds) + f" ({cite})")
    # nontriviality
    nt_cite = "TP4 Thm 3.5" if opt == "sgd" else "TP IVb Thm 2.8.15"
    if not stable.holds:
        nontrivial = Verdict("nontrivial", None, "defined for stable parametrizations only")
    else:
        eqs = []
        if sR + r == 1:
            eqs.append("a+b+r = 1 for the readout (W_0^(L+1) Delta x^L = Theta(1))")
        if uR == 1:
            eqs.append(f"{upd} = 1 for the readout (its own update is Theta(1))")
        if eqs:
            nontrivial = Verdict("nontrivial", True, " and ".join(eqs) + f" ({nt_cite})")
        else:
            nontrivial = Verdict("nontrivial", False,
                                 f"a+b+r = {q(sR + r)} > 1 and {upd} = {q(uR)} > 1: f stays "
                                 f"at f_0 in the limit ({nt_cite})")
    # the dichotomy
    dich = stable.holds and nontrivial.holds
    d_cite = "TP4 Cor 3.9" if opt == "sgd" else "TP IVb Cor 2.8.20"
    if not dich:
        why = "unstable" if not stable.holds else "trivial"
        fl = Verdict("feature_learning", None, f"{why}: the dichotomy does not apply")
        kr = Verdict("kernel_regime" if opt == "sgd" else "operator_regime", None,
                     f"{why}: the dichotomy does not apply")
    elif r == 0:
        fl = Verdict("feature_learning", True,
                     f"r = 0: Delta x^L = Theta(1), the features move ({d_cite})")
        kr = Verdict("kernel_regime" if opt == "sgd" else "operator_regime", False,
                     f"r = 0 ({d_cite})")
    else:
        fl = Verdict("feature_learning", False,
                     f"r = {q(r)} > 0: Delta x^L = Theta({_npow(-r)}) -> 0 ({d_cite})")
        if opt == "sgd":
            kr = Verdict("kernel_regime", True,
                         f"r = {q(r)} > 0: f evolves by kernel gradient descent with a fixed "
                         f"kernel (TP4 Thm 3.8)")
        else:
            kr = Verdict("operator_regime", True,
                         f"r = {q(r)} > 0: f evolves by a fixed nonlinear operator, not a "
                         f"kernel (TP IVb Def 2.8.16)")
    # the output at initialisation
    if not init.holds:
        gp = Verdict("gp_at_init", False, "not stable at init")
    elif sR == HALF:
        gp = Verdict("gp_at_init", True,
                     "a+b = 1/2 for the readout: f_0 converges to a Gaussian process (the NNGP)")
    else:
        gp = Verdict("gp_at_init", False,
                     f"a+b = {q(sR)} > 1/2 for the readout: f_0 -> 0 (variance "
                     f"Theta({_npow(1 - 2 * sR)})), no Gaussian-process limit")
    return (init, stable, nontrivial, fl, kr, gp)


def _practice(rows, sR, opt) -> tuple[PracticeRow, ...]:
    out = []
    for r in rows:
        if r.role is Role.FINITE:
            d = r.a
            width = "1"
        else:
            # faithful d (TP IVb Lemma 2.8.11): the gradient of w has entries n^-d
            d = r.a if r.role is Role.READOUT else r.a + sR
            width = "fan_out" if r.role is Role.INPUT else "fan_in"
        if opt == "sgd":
            c_sgd, c_adam = r.c, r.c + d
        else:
            c_sgd, c_adam = r.c - d, r.c
        out.append(PracticeRow(
            r.name, r.label, r.role, width,
            multiplier=-r.a, init_var=-2 * r.b, sgd_lr=-c_sgd, adam_lr=-c_adam,
            init_var0=-2 * (r.a + r.b), sgd_lr0=-(c_sgd + 2 * r.a), adam_lr0=-(c_adam + r.a)))
    return tuple(out)


_SP_NTK = ("the NTK of the standard parametrization grows linearly with the width "
           "(neural-tangents' parameterization='standard' kernel scales with the layer widths), "
           "and SGD with a width-independent learning rate is unstable (TP4 Thm 4.1); the "
           "stable choice, learning rate ~ 1/width, has a different limiting kernel (hidden "
           "and readout terms only) that tpcompiler does not compute. Use `parametrization "
           "ntk` (same NNGP) for the NTK")


def _refusals(program, opt, rows, v, regime, sR):
    preset = program.parametrization.preset
    gp = v["gp_at_init"]
    # NNGP: the law of f_0
    if gp.holds:
        nngp = None
    elif not v["stable_at_init"].holds:
        nngp = (f"parametrization {preset} is not stable at initialisation "
                f"({v['stable_at_init'].reason}), so f_0 has no Gaussian-process limit")
    else:
        nngp = (f"parametrization {preset}: the output at initialisation vanishes as the width "
                f"grows (a+b = {_q(sR)} > 1/2 for the readout), so f_0 has no "
                f"Gaussian-process limit and the NNGP is degenerate (0); the NNGP computed by "
                f"tpcompiler is that of `parametrization ntk` or `sp`")
    # NTK: the kernel of SGD training
    if opt != "sgd":
        ntk = ("with Adam no kernel describes training: the limit is in the feature-learning "
               "or the operator regime (TP IVb Cor 2.8.20), f_{t+1} - f_t is not linear in the "
               "loss derivative")
    elif preset == "sp":
        ntk = "parametrization sp: " + _SP_NTK
    elif regime == "feature learning":
        ntk = (f"parametrization {preset} is in the feature-learning regime (r = 0, "
               f"TP4 Cor 3.9): no fixed kernel describes its training")
    elif regime != "kernel regime":
        bad = v["stable"] if regime == "unstable" else v["nontrivial"]
        ntk = f"parametrization {preset} is {regime}: {bad.reason}"
    elif not gp.holds:
        ntk = (f"parametrization {preset} is in the kernel regime but f_0 -> 0 "
               f"({gp.reason}); the NTK computed by tpcompiler assumes the GP output at init "
               f"of the NTK parametrization")
    else:
        off = [r for r in rows if r.used and r.role in _NTP_INVARIANTS
               and (r.a + r.b, 2 * r.a + r.c) != _NTP_INVARIANTS[r.role]]
        if not off:
            ntk = None
        else:
            gone = [_who(r) for r in rows if r.contributes is False]
            ntk = (f"parametrization {preset} is in the kernel regime, but its exponents are "
                   f"not those of the NTK parametrization up to the symmetry "
                   f"(a+t, b-t, c-2t) (differs at {', '.join(_who(r) for r in off)}): the "
                   f"limiting kernel drops the terms of {', '.join(gone) or 'no layer'} and "
                   f"is not the NTK computed here")
    return (("nngp", nngp), ("ntk", ntk))


def _largest_stable_global_lr(program, opt):
    """The smallest global c on a 1/4 grid in [-2, 4] that makes the preset's a, b stable."""
    par = program.parametrization
    for k in range(-8, 17):
        c = Fraction(k, 4)
        base = PRESETS[par.preset][opt]
        table = {kind: (a, b, c) for kind, (a, b, _) in base.items()}
        probe = _with_table(program, table)
        if abc_table(probe, opt).verdict("stable").holds:
            return c
    return None


_REGIME_PHRASE = {"kernel regime": "in the kernel regime",
                  "operator regime": "in the operator regime",
                  "feature learning": "in the feature-learning regime"}


def _with_table(program, table):
    entries = tuple(ir.LayerAbc(k, *v) for k, v in table.items())
    return ir.Program(program.name, ir.Parametrization("custom", entries), program.inputs,
                      program.matrices, program.biases, program.gvars, program.readout)


def _notes(program, opt, rows, v, regime, sR, uR, r, refusals) -> tuple[str, ...]:
    preset = program.parametrization.preset
    notes = []
    if preset == "sp":
        if opt == "sgd":
            notes.append("SP with a width-independent learning rate (c = 0) is unstable: after "
                         "one SGD step the output moves by Theta(n^(1-c)) (TP4 Sec 4, Thm 4.1). "
                         "With learning rate ~ 1/width (c = 1, TP4 Table 1 'SP w/ LR 1/n') it "
                         "is stable and in the kernel regime (r = 1/2, no feature learning); "
                         "its limiting kernel keeps only the hidden and readout NTK terms "
                         "(input and bias updates are Theta(n^-1) smaller).")
        else:
            c = _largest_stable_global_lr(program, opt)
            if c is not None:
                probe = abc_table(_with_table(program, {
                    k: (a, b, c) for k, (a, b, _) in PRESETS["sp"]["adam"].items()}), opt)
                text = (f"SP with Adam and a width-independent learning rate is unstable; the "
                        f"largest stable global learning rate is {_npow(-c)}, where it is "
                        f"{_REGIME_PHRASE.get(probe.regime, probe.regime)} (r = {_q(probe.r)}).")
                if any(x.used and x.role is Role.HIDDEN for x in rows):
                    text += (" TP IVb Remark 2.2.7 says SP-Adam at learning rate 1/n learns "
                             "features; by its own Thm 2.8.12 that choice has a+b+r = 1/2 < 1 "
                             "at the readout when a hidden layer sits between input and readout, "
                             "so it is unstable here.")
                notes.append(text)
        notes.append("The NNGP of SP is that of the same network under NTP: the forward pass at "
                     "init is the same (up to where the constants sit).")
    elif preset == "ntk":
        if opt == "sgd":
            notes.append("NTP (TP4 Table 1): kernel regime with every layer's NTK term kept "
                         "(r = 1/2): f_0 is the NNGP and SGD training is kernel gradient "
                         "descent with the NTK.")
        else:
            notes.append("NTP for Adam (TP IVb Def 2.4.1): operator regime; training follows "
                         "the nonlinear neural tangent operator K_Q, not the NTK.")
    elif preset == "mup":
        notes.append("muP (TP4 Def 5.1; TP5 Tables 3, 8, 9): every layer is updated maximally "
                     "(all r_l = 0), so the parametrization learns features. The output at "
                     "init vanishes (a+b = 1 for the readout: variance Theta(1/n)), so there is "
                     "no GP limit of f_0 and the NNGP is degenerate; in the limit f_t is "
                     "deterministic (TP4 Thm H.13, TP IVb Thm 2.8.19) and no kernel describes "
                     "training.")
    elif preset == "mf":
        notes.append("MF: TP4's mean-field parametrization (Table 1, one hidden layer: "
                     "a = 0, 1; b = 0; c = -1). Hidden layers take muP moved by the symmetry "
                     "with t = 1/2 (a = 1/2, b = 0), so for any depth MF is muP in the b = 0 "
                     "gauge: feature learning, output 0 at init, no kernel.")
    # consequences read off the numbers (any parametrization)
    if regime == "unstable":
        notes.append("Unstable: " + v["stable"].reason + ".")
    elif regime == "trivial":
        notes.append("Trivial: the function does not move in the infinite-width limit.")
    elif regime in ("kernel regime", "operator regime"):
        kept = [_who(x) for x in rows if x.contributes]
        gone = [_who(x) for x in rows if x.contributes is False]
        if gone:
            upd = "2a+c" if opt == "sgd" else "a+c"
            notes.append(f"Only the layers with a+b+r_l = 1 (and the readout if its {upd} = 1) "
                         f"contribute to the limit: kept {', '.join(kept) or 'none'}; "
                         f"vanishing {', '.join(gone)} (TP IVb Remark 2.8.21).")
    if v["stable_at_init"].holds and sR > HALF:
        notes.append(f"The output at init vanishes (readout a+b = {_q(sR)} > 1/2): every "
                     f"feature-learning limit has f_0 = 0 (TP4 Cor 3.10).")
    unused = [_who(x) for x in rows if not x.used]
    if unused:
        notes.append(f"Not reaching the output (left out of the verdicts): {', '.join(unused)}.")
    finite = [_who(x) for x in rows if x.role is Role.FINITE]
    if finite:
        notes.append(f"Finite-dimensional parameters ({', '.join(finite)}) do not depend on the "
                     f"width: a = b = c = 0 in every parametrization (TP IVb scalar parameters); "
                     f"custom entries do not apply to them.")
    return tuple(notes)


def _width_independent(program, layers, exps, opt) -> AbcTable:
    rows = []
    for L in layers:
        a, b, c, src = exps[L.name]
        req, ok_fn = _init_requirement(L.role)
        rows.append(AbcRow(L.name, L.label, L.param, L.kind, L.role, L.fan_in, L.fan_out,
                           a, b, c, src, False if L.role is not Role.FINITE else L.used,
                           str(req), ok_fn(a + b), None, None, None))
    rows = tuple(rows)
    why = "no width-n vector reaches the output: the network does not depend on the width"
    verdicts = (Verdict("stable_at_init", True, why), Verdict("stable", True, why),
                Verdict("nontrivial", None, why), Verdict("feature_learning", None, why),
                Verdict("kernel_regime" if opt == "sgd" else "operator_regime", None, why),
                Verdict("gp_at_init", None, why))
    notes = ("The output does not depend on any width-n vector, so every parametrization gives "
             "the same network and the kernels computed are exact at any width.",)
    return AbcTable(program.name, program.parametrization.preset, opt, rows, None, None, None,
                    "width-independent", verdicts, notes, _practice(rows, HALF, opt),
                    (("nngp", None), ("ntk", None)))


def kernel_refusals(program: ir.Program, optimizer: str = "sgd") -> dict[str, str | None]:
    """Which kernels tpcompiler computes are meaningful limits under this program's
    parametrization.

    Returns {"nngp": reason or None, "ntk": reason or None}. None means the compiled kernel
    (neural-tangents' 'ntk' conventions, docs/internals.md) is the infinite-width limit for the
    declared parametrization: for "nngp" the law of the output at initialisation, for "ntk" the
    kernel of (S)GD training (kernel gradient descent). A string is a complete sentence for a
    user, fit for TPError or KernelProgram.refused. Policy (docs/abc.md):
      ntk        both None.
      sp         NNGP None (same forward pass at init); NTK refused (it grows like the width
                 and SGD at a width-independent learning rate is unstable).
      mup, mf    both refused: the output at init tends to 0 (no GP limit), and feature learning
                 has no fixed kernel.
      custom     NNGP None iff stable at init and the readout has a+b = 1/2; NTK None iff
                 moreover the exponents equal NTP's up to the per-layer symmetry
                 (a+t, b-t, c-2t), i.e. stable, nontrivial, kernel regime with every NTK term.
      any program whose output depends on no width-n vector: both None (width-independent).
    With optimizer="adam" the NTK is always refused (no kernel describes Adam training).
    Only the parametrization is judged, and nothing else refuses a kernel: an exp() outside the
    NTK theorem's hypotheses is computed with a TPWarning (ranges.ntk_caveats). A pure
    function of the IR: no I/O, no caching, no side effects on import; it raises TPError only
    for a custom block without the entry a weight needs (lower() rejects those first) and
    ValueError for an unknown optimizer."""
    return dict(abc_table(program, optimizer).refusals)


# --- formatting helpers ---------------------------------------------------------------------


def _q(x: Fraction | None) -> str | None:
    return None if x is None else str(x)


def _who(x) -> str:
    """A layer (_Layer or AbcRow) for messages: its label, or 'bias of <label>'."""
    return f"bias of {x.label}" if x.param == "bias" else x.label


def _npow(k: Fraction) -> str:
    return f"n^{k}" if k.denominator == 1 else f"n^({k})"


def _power(width: str, k: Fraction) -> str:
    """n^k written with the layer's width name: 1, fan_in, 1/fan_in^2, sqrt(fan_out), ..."""
    if k == 0 or width == "1":
        return "1"
    mag = abs(k)
    if mag == 1:
        base = width
    elif mag == HALF:
        base = f"sqrt({width})"
    else:
        base = f"{width}^{mag}" if mag.denominator == 1 else f"{width}^({mag})"
    return base if k > 0 else f"1/{base}"


#: the formatting that the renderers (abc_report.py) share with the analysis' messages
frac_text = _q
power_text = _power
