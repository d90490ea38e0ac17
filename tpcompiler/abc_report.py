"""The abc table as people read it: text (`tpc abc`), Markdown, LaTeX and JSON renderings of
passes.abc.AbcTable. The analysis computes; this module only writes (issue 14: the pass holds no
rendering).
"""

from __future__ import annotations

import json
from fractions import Fraction

from .parametrization import Role
from .passes.abc import PRACTICE_FIELDS, AbcRow, AbcTable, frac_text, power_text


def json_text(t: AbcTable) -> str:
    return json.dumps(t.to_json(), indent=2)

def text(t: AbcTable) -> str:
    head = ["param", "label", "kind", "a", "b", "c", "from", "a+b", "init", "r_l",
            t.update_formula, "moves f"]
    lines = [_title(t),
             "convention (TP4): W = n^-a w,  w ~ N(0, n^-2b),  learning rate eta n^-c;  "
             "n = width", ""]
    lines += _aligned([head] + [_row_cells(t, r) for r in t.rows])
    lines.append("")
    lines.append(_summary(t))
    lines.append("")
    lines.append("verdicts:")
    width = max(len(v.title) for v in t.verdicts)
    for v in t.verdicts:
        lines.append(f"  {v.title:<{width}}  {_yes(v.holds):<4} {v.reason}")
    lines.append("")
    lines.append("kernels computed by tpcompiler:")
    for kind, why in t.refusals:
        lines.append(f"  {kind:<5} {'meaningful' if why is None else 'refused: ' + why}")
    if t.notes:
        lines.append("")
        lines.append("notes:")
        for n in t.notes:
            lines.append(f"  - {n}")
    lines.append("")
    lines.append("practitioner table (n = the layer's width dimension; TP5 Tables 3/9):")
    phead = ["param", "label", "width", "multiplier", "init var", "SGD lr", "Adam lr", "|",
             "no multiplier: init var", "SGD lr", "Adam lr"]
    prows = [[p.name, p.label, p.width, *practice_cells(t, p)[:4], "|",
              *practice_cells(t, p)[4:]] for p in t.practice]
    lines += _aligned([phead] + prows)
    if any(p.role is Role.INPUT and not p.name.startswith("B") for p in t.practice):
        lines.append("var: the declared variance (var=); d: the input's dimension. The input "
                     "layer's constants are part of the scaling: at d = 512 they are 512x")
    return "\n".join(lines) + "\n"


def practice_cells(t: AbcTable, p) -> list[str]:
    """The practitioner row's seven cells, an input matrix's constant var/d written in: in the
    multiplier under the multiplier form (in the init under sp), and in the multiplier-free
    form's init variance and learning rates (sqrt of it for Adam, whose steps do not scale with
    the gradient)."""
    cells = [power_text(p.width, getattr(p, k)) for k in PRACTICE_FIELDS]
    if p.role is not Role.INPUT or p.name.startswith("B"):  # biases: no input dimension
        return cells

    def times(factor: str, cell: str) -> str:
        return factor if cell == "1" else f"{factor} * {cell}"
    root = "sqrt(var/d)"
    if t.preset == "sp":
        cells[1] = times("var/d", cells[1])
    else:
        cells[0] = times(root, cells[0])
    cells[4] = times("var/d", cells[4])
    cells[5] = times("var/d", cells[5])
    cells[6] = times(root, cells[6])
    return cells

def markdown(t: AbcTable) -> str:
    head = ["param", "label", "kind", "a", "b", "c", "from", "a+b", "init", "r_l",
            t.update_formula, "moves f"]
    out = [f"## {_title(t)}", "",
           "Convention (TP4): $W = n^{-a} w$, $w \\sim N(0, n^{-2b})$, learning rate "
           "$\\eta n^{-c}$.", ""]
    out += _md_table(head, [_row_cells(t, r) for r in t.rows])
    out += ["", _summary(t), "", "| verdict | holds | decided by |", "|---|---|---|"]
    out += [f"| {v.title} | {_yes(v.holds)} | {_md(v.reason)} |" for v in t.verdicts]
    out += ["", "| kernel | status |", "|---|---|"]
    out += [f"| {k} | {'meaningful' if w is None else 'refused: ' + _md(w)} |"
            for k, w in t.refusals]
    if t.notes:
        out += ["", "Notes:", ""] + [f"- {n}" for n in t.notes]
    out += ["", "Practitioner table (n = the layer's width dimension):", ""]
    phead = ["param", "label", "width", "multiplier", "init var", "SGD lr", "Adam lr",
             "init var (no mult.)", "SGD lr (no mult.)", "Adam lr (no mult.)"]
    out += _md_table(phead, [[p.name, p.label, p.width, *practice_cells(t, p)]
                             for p in t.practice])
    return "\n".join(out) + "\n"

def latex(t: AbcTable) -> str:
    upd = "2a+c" if t.optimizer == "sgd" else "a+c"
    out = [f"% {_title(t)}",
           "% convention (TP4): W = n^{-a} w, w ~ N(0, n^{-2b}), learning rate eta n^{-c}",
           "\\begin{tabular}{lllrrrrlrr}", "\\hline",
           f"param & label & kind & $a$ & $b$ & $c$ & $a+b$ & init & $r_l$ & ${upd}$ \\\\",
           "\\hline"]
    for r in t.rows:
        cells = [r.name, _tex_text(r.label), _kind_text(r), _tex(r.a), _tex(r.b), _tex(r.c),
                 _tex(r.a_plus_b), _tex_text(r.init_required + (" ok" if r.init_ok else
                                                                " fails")
                                             if r.init_required else "--"),
                 _tex(r.r), _tex(r.update)]
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\hline", "\\end{tabular}", "", "\\begin{itemize}"]
    out.append(f"  \\item $r = {_tex_raw(t.r)}$; regime: {_tex_text(t.regime)}")
    for v in t.verdicts:
        out.append(f"  \\item {_tex_text(v.title)}: {_yes(v.holds)} "
                   f"({_tex_text(v.reason)})")
    for k, w in t.refusals:
        out.append(f"  \\item {k.upper()}: "
                   f"{'meaningful' if w is None else 'refused: ' + _tex_text(w)}")
    for n in t.notes:
        out.append(f"  \\item {_tex_text(n)}")
    out += ["\\end{itemize}", "", "\\begin{tabular}{lllllllll}", "\\hline",
            "param & width & multiplier & init var & SGD lr & Adam lr & init var$^0$ & "
            "SGD lr$^0$ & Adam lr$^0$ \\\\", "\\hline"]
    for p in t.practice:
        cells = [p.name, _tex_text(p.width)] + [
            _tex_power(p.width, getattr(p, k)) for k in PRACTICE_FIELDS]
        out.append(" & ".join(cells) + " \\\\")
    out += ["\\hline", "\\end{tabular}",
            "% ^0: the multiplier-free form (TP5 Table 3), by the per-layer symmetry"]
    return "\n".join(out) + "\n"

def _title(t: AbcTable) -> str:
    name = f"'{t.program}'" if t.program else "the program"
    return (f"abc-parametrization of {name}: preset {t.preset}, optimizer "
            f"{t.optimizer}")

def _summary(t: AbcTable) -> str:
    if t.readout_init is None:
        return f"regime: {t.regime}"
    return (f"readout: a+b = {frac_text(t.readout_init)}, {t.update_formula} = "
            f"{frac_text(t.readout_update)};  r = min r_l = {frac_text(t.r)};  "
            f"regime: {t.regime}")

def _row_cells(t: AbcTable, r: AbcRow) -> list[str]:
    if r.init_required:
        init = f"{r.init_required} {'ok' if r.init_ok else 'FAILS'}"
    else:
        init = "-"
    term = "-" if r.contributes is None else ("yes" if r.contributes else "no")
    src = r.source if r.used else r.source + " (unused)"
    return [r.name, r.label, _kind_text(r), frac_text(r.a), frac_text(r.b), frac_text(r.c), src,
            frac_text(r.a_plus_b), init, frac_text(r.r) if r.r is not None else "-",
            frac_text(r.update) if r.update is not None else "-", term]


def _yes(h: bool | None) -> str:
    return "n/a" if h is None else ("yes" if h else "no")


def _kind_text(r: AbcRow) -> str:
    if r.param == "bias":
        return "bias" if r.role is Role.INPUT else "bias (out)"
    return r.kind.value if r.role is not Role.FINITE else "readout (finite)"


def _aligned(table: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]


def _md(s: str) -> str:
    return s.replace("|", "\\|")


def _md_table(head, rows) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return out


def _tex_raw(x: Fraction | None) -> str:
    if x is None:
        return "\\text{--}"
    if x.denominator == 1:
        return str(x.numerator)
    sign = "-" if x < 0 else ""
    return f"{sign}\\tfrac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def _tex(x: Fraction | None) -> str:
    return "--" if x is None else f"${_tex_raw(x)}$"


_TEX_ESCAPE = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#",
               "_": "\\_", "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}",
               "^": "\\textasciicircum{}", "<": "\\textless{}", ">": "\\textgreater{}",
               "|": "\\textbar{}"}


def _tex_text(s: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in s)


def _tex_power(width: str, k: Fraction) -> str:
    if k == 0 or width == "1":
        return "$1$"
    w = "\\mathrm{" + width.replace("_", "\\_") + "}"
    return f"${w}^{{{_tex_raw(k)}}}$"
