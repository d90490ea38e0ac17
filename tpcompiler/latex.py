"""The recursion as a human reads it: the KernelProgram in LaTeX, closed forms written out."""

from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter

from . import ir
from .kernel_program import KernelProgram, Label, QuadCall, twin
from .passes.closedform import LATEX, LATEX_AUX


def _g(name: str) -> str:
    head = name.rstrip("0123456789")
    return f"{head}_{{{name[len(head):]}}}"


def _label_tex(label: Label, side: str) -> str:
    """A meaning of a symbol at one side: "11" (x, x), "22" (x', x') or "12" (x, x')."""
    pt = {"11": "(x,x)", "22": "(x',x')", "12": "(x,x')"}[side]
    if label.kind in ("cov", "dcov", "tcov"):
        head = {"cov": r"\Sigma", "dcov": "D", "tcov": r"\Theta"}[label.kind]
        return rf"{head}_{{{_g(label.a)}{_g(label.b)}}}{pt}"
    if label.kind == "gram":
        p1, p2 = {"11": ("", ""), "22": ("'", "'"), "12": ("", "'")}[side]
        return rf"\langle {label.a}{p1}, {label.b}{p2}\rangle / d"
    return rf"\mathrm{{{label.kind.upper()}}}{pt}"


def _tex_name(name: str) -> str:
    return name.replace("_", "\\_")


class _Printer(LatexPrinter):
    def __init__(self, names):
        super().__init__({"mul_symbol": "dot"})
        self.names = names

    def _print_Symbol(self, expr, style="plain"):
        return self.names.get(expr.name, super()._print_Symbol(expr))

    def _print_Function(self, expr, exp=None):
        name = type(expr).__name__
        args = ", ".join(self._print(a) for a in expr.args)
        if isinstance(expr, QuadCall):
            q = expr.integrand
            return rf"\mathbb{{E}}_{{z\sim\mathcal N(0, C)}}[{q}(z)]_{{C=({args})}}"
        text = rf"\operatorname{{{_tex_name(name)}}}({args})"
        return text if exp is None else f"{text}^{{{exp}}}"


def program_latex(prog: ir.Program, kp: KernelProgram) -> str:
    """An aligned block: the per-point and per-pair recursions, then the closed forms used."""
    names = {}
    diag = {s.name: s for s, _ in kp.diag} | {g.symbol.name: g.symbol for g in kp.diag_gram}
    for s, meanings in kp.labels.items():
        label = meanings[0]  # a shared value is shown under its first meaning
        if s in diag:
            names[s] = _label_tex(label, "11")
            names[twin(diag[s]).name] = _label_tex(label, "22")
        else:
            names[s] = _label_tex(label, "12")
    for q in prog.params:  # shown as the user named them: \sigma_w^2 reads better than theta0
        names[q.symbol.name] = rf"\mathrm{{{_tex_name(q.name)}}}"
    pr = _Printer(names)
    rows = []
    # temporaries (shared subexpressions) are inlined: the reader wants the recursion itself
    temps = {}
    for s, e in kp.cross:
        if s.name not in kp.labels:
            temps[s] = e.xreplace(temps)
    cross = [(s, e.xreplace(temps)) for s, e in kp.cross if s.name in kp.labels]
    # the per-point block is the same recursion at x' = x, so only the per-pair one is shown
    for s, e in cross:
        rows.append(f"{names.get(s.name, s.name)} &= {pr.doprint(e)}")
    for kind, (_, c) in kp.outputs.items():
        c = c.xreplace(temps)
        shown = c.is_Symbol and kp.labels.get(c.name, (Label(""),))[0].kind in ("nngp", "ntk")
        if not shown:  # else the output is the row of its own symbol already
            rows.append(rf"\mathrm{{{kind.upper()}}}(x,x') &= {pr.doprint(c)}")
    # every helper the rows call, arguments' calls included (rootdet and angle inside
    # relu_relu_rt's), defined once with its own parameters; auxiliary symbols once, if used
    used: set[str] = set()
    quads: set[str] = set()
    for e in [e for _, e in cross] + [c.xreplace(temps) for _, c in kp.outputs.values()]:
        used |= {type(f).__name__ for f in e.atoms(sp.Function)}
        quads |= {f.integrand for f in e.atoms(QuadCall)}
    aux: list[str] = []
    for name in sorted(used & set(LATEX)):
        params, body, needs = LATEX[name]
        rows.append(rf"\operatorname{{{_tex_name(name)}}}({', '.join(params)}) &= {body}")
        aux += [a for a in needs if a not in aux]
    if aux:
        rows.append(r"&\quad " + r",\ ".join(LATEX_AUX[a] for a in aux))
    for q in kp.integrands:
        if q.name not in quads:
            continue  # a per-point integral: the recursion at x' = x, not shown
        zs = ", ".join(f"z_{i}" for i in range(q.dim))
        rows.append(rf"{q.name}({zs}) &= {sp.latex(q.expr)}")
    return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"


def limits_latex(prog: ir.Program, lim) -> str:
    """An aligned block of a program's reports (tpcompiler.limits.Limits): each G-var's Z as
    its Gaussian part plus the transpose corrections (with the Gaussian part's variance and
    family), then each report's expectation and value."""
    names = {}
    for g in prog.gvars:
        names[g.name] = rf"Z^{{{_g(g.name)}}}"
        names["zhat" + g.name[1:]] = rf"\hat Z^{{{_g(g.name)}}}"
    pr = _Printer(names)
    rows = []
    for step in lim.derivation.steps:
        g = ir.gsym(step.gvar)
        rhs = pr.doprint(sp.Symbol("zhat" + step.gvar[1:]))
        for c in step.corrections:
            src = pr.doprint(c.source)
            src = rf"\left({src}\right)" if c.source.is_Add else src
            rhs += rf" + {pr.doprint(c.coefficient)} \cdot {src}"
        fam = _tex_name(step.family).replace("^T", "^{\\top}")
        rows.append(rf"{pr.doprint(g)} &= {rhs} \qquad \operatorname{{Var}} "
                    rf"\hat Z^{{{_g(step.gvar)}}} = {pr.doprint(step.variance)}"
                    rf"\ (\mathrm{{{fam}}})")
    for rep, v in zip(prog.reports, lim.values):
        value = pr.doprint(v.value) if v.exact else f"{float(v.value):.12g}"
        rows.append(rf"\mathrm{{{_tex_name(rep.name)}}} &= \mathbb{{E}}\left[{pr.doprint(rep.expr)}"
                    rf"\right] = {value}")
    return "\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}"
