"""The scalar source of the quadrature rules (quadrature.py) for generated code, shared by the
Numba renderer (backends/numba.py) and the CUDA one (backends/cuda.py, with its device
decorator): quad<dim>_<name>(lower triangle of C) per integrand, the split rule's node
functions, the pieces of kinked integrands. Code is built through the printer, one line per
statement; the rules' nodes are inlined as array literals.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

from ..conditional import CUT_ACROSS, NARROW, RESIDUAL_FLOOR, conditional_grid
from ..kernel_program import Integrand
from ..quadrature import (
    DEFAULT_ORDER,
    SNAP,
    SPLIT_EDGES,
    SPLIT_ORDER,
    SPLIT_RAMP,
    is_soft,
    legendre_rule,
    pieces,
    polar_order,
    rayleigh_rule,
    rule,
    tensor_order,
    vanishing_arcs,
)
from .printer import KernelPrinter

JIT = "@njit(cache=True, error_model='numpy')"


def array_literal(a: np.ndarray) -> str:
    return "np.array([" + ", ".join(repr(float(v)) for v in a.ravel()) + f"]).reshape({a.shape})"


def cholesky_lines(prefix: str, coords, cov: str = "c") -> list[str]:
    """PSD Cholesky of C[coords][coords] into scalars {prefix}{a}{b} (a >= b positions in
    coords), zero columns where singular, noise-size pivots snapped to 0 (the same arithmetic
    as quadrature.cholesky_psd)."""
    def entry(i, j):
        i, j = coords[i], coords[j]
        return f"{cov}{max(i, j)}{min(i, j)}"

    out = []
    for j in range(len(coords)):
        s = entry(j, j) + "".join(f" - {prefix}{j}{m} * {prefix}{j}{m}" for m in range(j))
        out.append(f"    {prefix}{j}{j} = {s}")
        out.append(f"    {prefix}{j}{j} = math.sqrt({prefix}{j}{j}) if {prefix}{j}{j} > "
                   f"{SNAP!r} * {entry(j, j)} else 0.0")
        for i in range(j + 1, len(coords)):
            t = entry(i, j) + "".join(f" - {prefix}{i}{m} * {prefix}{j}{m}" for m in range(j))
            out.append(f"    {prefix}{i}{j} = ({t}) / {prefix}{j}{j} if {prefix}{j}{j} > 0.0 "
                       f"else 0.0")
    return out


def integrand_cse(expr: sp.Expr):
    """Temporaries and the final expression of an integrand: common subexpressions once, every
    function call its own temporary (so that quad_source can hoist it out of the loops that do
    not change its arguments), and every non-atomic base of a small integer power (printed as
    repeated multiplication)."""
    names = sp.numbered_symbols("v", real=True)
    temps, (body,) = sp.cse([expr], symbols=names, order="none")
    out: list = []
    calls: dict = {}

    def hoist(e: sp.Expr) -> sp.Expr:
        for f in sorted(e.atoms(sp.Function), key=sp.count_ops):  # inner calls first
            if f not in calls:
                t = next(names)
                out.append((t, f.xreplace(calls)))
                calls[f] = t
        e = e.xreplace(calls)
        pows = {p.base for p in e.atoms(sp.Pow)
                if p.exp.is_Integer and 2 <= int(p.exp) <= 4 and not p.base.is_Atom}
        for base in sorted(pows, key=sp.count_ops):
            t = next(names)
            out.append((t, base))
            e = e.xreplace({base: t})
        return e

    for sym, e in temps:
        e = hoist(e)
        out.append((sym, e))
    return out, hoist(body)


def quad_source(q: Integrand, printer: KernelPrinter, jit: str = JIT) -> list[str]:
    """Source of quad<dim>_<name>(lower triangle of C) for one integrand, by its rule
    (quadrature.py): z = L w with L the Cholesky factor in the order q.kinked + q.pivot; the
    tensor rule over the pivot's whitened coordinates as nested loops, one per axis, inside the
    polar wedge rule over the kinked pair when there is one (its rays computed and sorted per
    call). The integrand is inlined: each of its common subexpressions is computed in the
    outermost loop where its coordinates are known (tanh(z2 + relu(z0)) once per (polar node,
    first tensor axis), not once per node). Scalar code and module-level constant arrays only
    (no allocation), so that any numba target can compile it; `jit` is the decorator."""
    if q.breaks:
        return split_source(q, printer, jit)
    if q.given:
        return conditional_source(q, printer, jit)
    name, dim, itg = f"quad{q.dim}_{q.name}", q.dim, q.name
    order = list(q.kinked) + list(q.pivot)
    npol = len(q.kinked)  # the pair's whitened coordinates are w0, w1 (positions 0, 1)
    ntens = len(q.pivot)
    temps, body = integrand_cse(q.expr)
    # loop level of each coordinate: -1 set in the polar loop (or before the tensor loops),
    # a: in the tensor loop over axis a
    level = {f"z{i}": -1 for i in q.kinked}
    level.update({f"z{i}": a for a, i in enumerate(q.pivot)})
    placed: dict[int, list[str]] = {}
    for sym, e in temps:
        lev = max([level[x.name] for x in e.free_symbols] or [-1])
        level[sym.name] = lev
        placed.setdefault(lev, []).append(f"{sym} = {printer.doprint(e)}")
    value = printer.doprint(body)
    lines: list[str] = []
    if ntens:
        x, w = rule(tensor_order(ntens, bool(npol), per_point=q.per_point))
        lines += [f"RULEX_{itg} = {array_literal(x)}", f"RULEW_{itg} = {array_literal(w)}"]

    def coord(a: int) -> str:
        """z of the coordinate at position a of the order, from w0, w1 (polar) and n.. (tensor)."""
        terms = [f"l{a}{b} * w{b}" for b in range(min(npol, a + 1))]
        if a >= npol:
            terms = ([f"m{a}"] if npol else []) + \
                [f"l{a}{b} * n{b - npol}" for b in range(npol, a + 1)]
        return " + ".join(terms)

    def nest(t: int, ind: str) -> list[str]:
        """Sum over tensor axes t.. into s{t}."""
        a = npol + t
        out = [f"{ind}s{t} = 0.0", f"{ind}for i{t} in range({len(x)}):",
               f"{ind}    n{t} = RULEX_{itg}[i{t}]", f"{ind}    z{order[a]} = {coord(a)}"]
        out += [f"{ind}    {line}" for line in placed.get(t, [])]
        if t == ntens - 1:
            out.append(f"{ind}    s{t} += RULEW_{itg}[i{t}] * ({value})")
        else:
            out += nest(t + 1, ind + "    ")
            out.append(f"{ind}    s{t} += RULEW_{itg}[i{t}] * s{t + 1}")
        return out

    def inner(ind: str, target: str) -> list[str]:
        """target = the tensor rule's sum, the pair (if any) being set."""
        out = [f"{ind}{line}" for line in placed.get(-1, [])]
        if ntens:
            out += nest(0, ind) + [f"{ind}{target} = s0"]
        else:
            out.append(f"{ind}{target} = {value}")
        return out

    tri = [f"c{i}{j}" for i in range(dim) for j in range(i + 1)]
    if not npol:
        rank1 = []
        if dim == 2:
            # a rank-1 covariance (identical points): the 1-D rule along w0, as the diagonal's
            # integral takes it (the 2-D rule would be the 1-D rule at the 2-D order)
            xline, wline = rule(DEFAULT_ORDER[1])
            lines += [f"LINEX_{itg} = {array_literal(xline)}",
                      f"LINEW_{itg} = {array_literal(wline)}",
                      jit, f"def _line_{itg}(l00, l10):", "    acc = 0.0",
                      f"    for k in range({len(xline)}):",
                      f"        z{order[0]} = l00 * LINEX_{itg}[k]",
                      f"        z{order[1]} = l10 * LINEX_{itg}[k]"]
            lines += [f"        {ln}" for lev in (-1, 0, 1) for ln in placed.get(lev, [])]
            lines += [f"        acc += LINEW_{itg}[k] * ({value})", "    return acc", ""]
            rank1 = ["    if l11 == 0.0:", f"        return _line_{itg}(l00, l10)"]
        lines += [jit, f"def {name}({', '.join(tri)}):"]
        lines += cholesky_lines("l", order) + rank1 + inner("    ", "acc") + ["    return acc", ""]
        return lines

    nleg, nrad = polar_order(ntens)
    xl, wl = legendre_rule(nleg)
    r, wr = rayleigh_rule(nrad)
    lines += [f"LEGX_{itg} = {array_literal(xl)}", f"LEGW_{itg} = {array_literal(wl)}",
              f"RADX_{itg} = {array_literal(r)}", f"RADW_{itg} = {array_literal(wr)}"]
    low = [f"l{a}{b}" for a in range(dim) for b in range(a + 1)]
    # one arc [lo, hi) of the polar pair: Legendre in t, the radial rule in rho, the tensor
    # loops inside (the pair's part m.. of the later coordinates computed once per polar node)
    lines += [jit, f"def _arc_{itg}({', '.join(['lo', 'hi'] + low)}):",
              "    half = 0.5 * (hi - lo)",
              "    mid = 0.5 * (hi + lo)",
              "    acc = 0.0",
              f"    for j in range({nleg}):",
              f"        t = mid + half * LEGX_{itg}[j]",
              "        ct = math.cos(t)",
              "        st = math.sin(t)",
              f"        wa = half * LEGW_{itg}[j] / (2.0 * math.pi)",
              f"        for k in range({nrad}):",
              f"            w0 = ct * RADX_{itg}[k]",
              f"            w1 = st * RADX_{itg}[k]",
              f"            z{order[0]} = {coord(0)}",
              f"            z{order[1]} = {coord(1)}"]
    lines += [f"            m{a} = l{a}0 * w0 + l{a}1 * w1" for a in range(2, dim)]
    lines += inner("            ", "val")
    lines += [f"            acc += wa * RADW_{itg}[k] * val", "    return acc", ""]
    # a rank-1 pair (identical points, l11 = 0): the integral is 1-D along w0, taken by the
    # 1-D rule, as the diagonal's integral is (the wedges would be half-planes, where the
    # angular rule is far less accurate: 3e-9 against 1e-16)
    xline, wline = rule(DEFAULT_ORDER[1])
    lines += [f"LINEX_{itg} = {array_literal(xline)}", f"LINEW_{itg} = {array_literal(wline)}",
              jit, f"def _line_{itg}({', '.join(low)}):", "    acc = 0.0",
              f"    for k in range({len(xline)}):", f"        w0 = LINEX_{itg}[k]",
              "        w1 = 0.0",
              f"        z{order[0]} = {coord(0)}", f"        z{order[1]} = {coord(1)}"]
    lines += [f"        m{a} = l{a}0 * w0 + l{a}1 * w1" for a in range(2, dim)]
    lines += inner("        ", "val")
    lines += [f"        acc += LINEW_{itg}[k] * val", "    return acc", ""]

    vanishing = vanishing_arcs(q.expr, q.kinked, q.kink_forms)
    if vanishing:
        # the arc's sign code at its midpoint (quadrature.arc_keep): the wedges on which the
        # integrand is identically 0 are skipped
        lines += [jit, f"def _keep_{itg}(lo, hi, l00, l10, l11):",
                  "    mid = 0.5 * (hi + lo)", "    c = math.cos(mid)", "    s = math.sin(mid)",
                  "    x0 = l00 * c", "    x1 = l10 * c + l11 * s", "    code = 0"]
        for i, (a0, a1) in enumerate(q.kink_forms):
            lines += [f"    v = {float(a0)!r} * x0 + {float(a1)!r} * x1",
                      "    if v == 0.0:", "        return True",
                      "    if v > 0.0:", f"        code += {1 << i}"]
        lines += ["    return not (" + " or ".join(f"code == {c}" for c in vanishing) + ")", ""]

    lines += [jit, f"def {name}({', '.join(tri)}):"]
    lines += cholesky_lines("l", order)
    lines += ["    if l11 == 0.0:", f"        return _line_{itg}({', '.join(low)})"]
    # the rays of the lines {a . s = 0}: t = atan2(b0, -b1) and t + pi, b = L_ss^T a
    angles = []
    for k, (a0, a1) in enumerate(q.kink_forms):
        lines += [f"    b0 = {float(a0)!r} * l00 + {float(a1)!r} * l10",
                  f"    b1 = {float(a1)!r} * l11",
                  f"    r{2 * k} = math.atan2(b0, -b1)",
                  f"    if r{2 * k} < 0.0:",
                  f"        r{2 * k} += 2.0 * math.pi",
                  f"    r{2 * k + 1} = r{2 * k} + math.pi if r{2 * k} < math.pi "
                  f"else r{2 * k} - math.pi"]
        angles += [f"r{2 * k}", f"r{2 * k + 1}"]
    # sorted by an odd-even transposition network (no arrays)
    for rnd in range(len(angles)):
        for i in range(rnd % 2, len(angles) - 1, 2):
            a, b = angles[i], angles[i + 1]
            lines += [f"    if {b} < {a}:", f"        {a}, {b} = {b}, {a}"]
    args = ", ".join(low)
    lines.append("    acc = 0.0")
    for i in range(len(angles)):
        hi = angles[i + 1] if i + 1 < len(angles) else f"{angles[0]} + 2.0 * math.pi"
        call = f"acc += _arc_{itg}({angles[i]}, {hi}, {args})"
        if vanishing:
            lines += [f"    if _keep_{itg}({angles[i]}, {hi}, l00, l10, l11):", f"        {call}"]
        else:
            lines.append(f"    {call}")
    lines += ["    return acc", ""]
    return lines


def panel_loop(edges: str, npanels: int, xs: str, ws: str, order: int, breaks: list[str],
               ind: str, tag: str, node: str, weight: str, inner: list[str]) -> list[str]:
    """Lines of the split rule along one whitened axis: the fixed panels `edges` (module array,
    npanels + 1 entries) cut at the runtime `breaks` inside them by repeatedly taking the
    nearest break above (scalar code, no arrays), Gauss-Legendre `xs`, `ws` (order nodes) on
    every piece; per node, `node` and its weight `weight` (Gaussian weight included) are set
    and the `inner` lines run. Loop variables carry the suffix `tag`."""
    lo, hi, top = f"lo{tag}", f"hi{tag}", f"top{tag}"
    out = [f"{ind}for p{tag} in range({npanels}):", f"{ind}    {lo} = {edges}[p{tag}]",
           f"{ind}    {top} = {edges}[p{tag} + 1]", f"{ind}    while {lo} < {top}:",
           f"{ind}        {hi} = {top}"]
    for b in breaks:
        out += [f"{ind}        if {b} > {lo} and {b} < {hi}:", f"{ind}            {hi} = {b}"]
    out += [f"{ind}        half{tag} = 0.5 * ({hi} - {lo})",
            f"{ind}        mid{tag} = 0.5 * ({hi} + {lo})",
            f"{ind}        for i{tag} in range({order}):",
            f"{ind}            {node} = mid{tag} + half{tag} * {xs}[i{tag}]",
            f"{ind}            {weight} = half{tag} * {ws}[i{tag}] * "
            f"math.exp(-0.5 * {node} * {node}) * {1.0 / math.sqrt(2.0 * math.pi)!r}"]
    out += [f"{ind}            {line}" for line in inner]
    return out + [f"{ind}        {lo} = {hi}"]


def ramp_lines(prefix: str, centre: str, width: str, ind: str,
               when: str | None = None) -> tuple[list[str], list[str]]:
    """(names, lines) of the breaks around a transition: centre + m width for m in
    quadrature.SPLIT_RAMP. With `when`, only where that holds (centre and width are then
    evaluated under it); elsewhere the breaks are 1e300, never inside a panel."""
    lines = []
    if when is not None:
        lines = [f"{ind}if {when}:", f"{ind}    {prefix}c = {centre}",
                 f"{ind}    {prefix}w = {width}", f"{ind}else:", f"{ind}    {prefix}c = 1e300",
                 f"{ind}    {prefix}w = 0.0"]
        centre, width = f"{prefix}c", f"{prefix}w"
    names = [f"{prefix}_{m}" for m in range(len(SPLIT_RAMP))]
    return names, lines + [f"{ind}{n} = {centre} + {fac!r} * {width}"
                           for n, fac in zip(names, SPLIT_RAMP)]


def conditional_source(q: Integrand, printer: KernelPrinter, jit: str = JIT) -> list[str]:
    """Source of quad<dim>_<name> by the conditional rule (conditional.conditional; the same
    arithmetic as backends/numpy.py's _conditional): z = L w in the order pivot + given; the
    tensor rule over the pivot's w as nested loops (the 1-D rule along w0 when a pivot pair is
    rank 1); per node, the given coordinates' conditional means m and each kink form's mean,
    and the integrand as a sum of functions of the pivot times truncated.kink_moment of the
    forms (their loadings on the given coordinates' whitened part are fixed per call)."""
    name, dim, itg = f"quad{q.dim}_{q.name}", q.dim, q.name
    ns = len(q.pivot)
    order = list(q.pivot) + list(q.given)
    ng = len(q.given)
    x, w = conditional_grid(ns)
    xline, wline = rule(DEFAULT_ORDER[1])
    lines = [f"CONDX_{itg} = {array_literal(x)}", f"CONDW_{itg} = {array_literal(w)}",
             f"CONDLX_{itg} = {array_literal(xline)}", f"CONDLW_{itg} = {array_literal(wline)}"]
    # the kink forms' fixed part: loadings ell_f on the given whitened coordinates, |ell_f|,
    # and per pair of forms in a term (ty, uy) as backends/numpy.py's _pair_loadings
    fixed: list[str] = []
    rows = [[r[i] for i in q.given] for r in q.given_forms]
    for f, row in enumerate(rows):
        for b in range(ng):
            terms = [f"{row[a]!r} * l{ns + a}{ns + b}" for a in range(ng)
                     if row[a] != 0.0 and a >= b]
            fixed.append(f"    e{f}_{b} = {' + '.join(terms) or '0.0'}")
        squares = " + ".join(f"e{f}_{b} * e{f}_{b}" for b in range(ng))
        fixed.append(f"    sz{f} = math.sqrt({squares})")
    pairs = sorted({(t[1], t[4]) for t in q.given_terms if t[1] >= 0 and t[4] >= 0})
    for f, g in pairs:
        dot = " + ".join(f"e{f}_{b} * e{g}_{b}" for b in range(ng))
        fixed.append(f"    ty{f}_{g} = ({dot}) / sz{f} if sz{f} > 0.0 else 0.0")
        if ng == 1:
            uy = "0.0"
        elif ng == 2:
            uy = f"abs(e{f}_0 * e{g}_1 - e{f}_1 * e{g}_0) / sz{f}"
        else:
            uy = f"math.sqrt(max(sz{g} * sz{g} - ty{f}_{g} * ty{f}_{g}, 0.0))"
        fixed.append(f"    uy{f}_{g} = {uy} if sz{f} > 0.0 else sz{g}")
    # the integrand at one pivot node: z of the pivot, means of the forms, the sum of terms
    node: list[str] = []
    for a in range(ng):
        node.append(f"m{a} = " + " + ".join(f"l{ns + a}{b} * n{b}" for b in range(ns)))
    own = [[r[i] for i in q.pivot] for r in q.given_forms]  # the forms' pivot part
    for f, row in enumerate(rows):
        mean = [f"{row[a]!r} * m{a}" for a in range(ng) if row[a] != 0.0]
        mean += [f"{own[f][a]!r} * z{q.pivot[a]}" for a in range(ns) if own[f][a] != 0.0]
        node.append(f"mu{f} = {' + '.join(mean) or '0.0'} + {q.given_forms[f][-1]!r}")
    value = sp.S.Zero
    for rest, f, p, i, g, qq, j in q.given_terms:
        if f < 0:
            moment = sp.S.One
        elif g < 0:
            moment = sp.Function("kink_moment")(
                sp.Symbol(f"mu{f}"), sp.Symbol(f"sz{f}"), 0, 0, 0, p, 0, i, 0, 0)
        else:
            forms = (sp.Symbol(f"mu{f}"), sp.Symbol(f"sz{f}"), sp.Symbol(f"mu{g}"),
                     sp.Symbol(f"ty{f}_{g}"), sp.Symbol(f"uy{f}_{g}"))
            low = sp.Function("kink_low")(*forms) if i and j else 0
            moment = sp.Function("kink_moment")(*forms, p, qq, i, j, low)
        value += rest * moment
    temps, body = integrand_cse(value)
    node += [f"{sym} = {printer.doprint(e)}" for sym, e in temps]

    def loop(xs: str, ws: str, line: bool) -> list[str]:
        """One loop over the grid's nodes (rows of xs; the 1-D rule's along w0 if line)."""
        ind = "        "
        out = [f"    for k in range(len({ws})):"]
        out += [f"{ind}n{t} = {xs}[k]" if line else f"{ind}n{t} = {xs}[k, {t}]"
                for t in range(1 if line else ns)]
        out += [f"{ind}n{t} = 0.0" for t in range(1 if line else ns, ns)]
        for a in range(ns):
            zsum = " + ".join(f"l{a}{b} * n{b}" for b in range(a + 1))
            out.append(f"{ind}z{order[a]} = {zsum}")
        out += [f"{ind}{ln}" for ln in node]
        out.append(f"{ind}acc += {ws}[k] * ({printer.doprint(body)})")
        return out

    # narrow kink forms (conditional.NARROW; backends/numpy.py _narrow_lines, _cut_nodes):
    # each candidate line n {An . w + Cn = 0} of relative width rn (1e300: not narrow here);
    # the smooth coordinates rotated so that the narrowest one's normal u is an axis, the
    # half-range rule across it (skipped for a rank-1 pair) and along it the split rule cut
    # at every line's crossing and around it
    used = sorted({t[1] for t in q.given_terms if t[1] >= 0}
                  | {t[4] for t in q.given_terms if t[4] >= 0})
    cols = range(ns)
    narrow: list[str] = []
    slots = 0

    def candidate(ratio: str, beta: str, const: str) -> list[str]:
        """Lines of candidate line `slots`: (ratio, An = beta_0.., Cn = const)."""
        n = slots
        out = [f"    rn{n} = {ratio}", f"    if rn{n} > {NARROW!r}:", f"        rn{n} = 1e300"]
        out += [f"    An{n}_{b} = {beta}_{b}" for b in cols]
        return out + [f"    Cn{n} = {const}"]

    for f in used:
        for b in cols:
            beta = [f"{rows[f][a]!r} * l{ns + a}{b}" for a in range(ng) if rows[f][a] != 0.0]
            beta += [f"{own[f][a]!r} * l{a}{b}" for a in range(b, ns) if own[f][a] != 0.0]
            narrow.append(f"    bt{f}_{b} = {' + '.join(beta) or '0.0'}")
        norm = " + ".join(f"bt{f}_{b} * bt{f}_{b}" for b in cols)
        narrow.append(f"    nb{f} = math.sqrt({norm})")
        narrow += candidate(f"sz{f} / nb{f} if nb{f} > 0.0 else 1e300", f"bt{f}",
                            repr(q.given_forms[f][-1]))
        slots += 1
    for f, g in pairs:
        # Y given X: the residual Y - (ty / sx) X, of standard deviation uy (backends/numpy.py
        # _narrow_lines), narrow where Y is nearly a function of X (nearly collinear points);
        # none where it is rounding (conditional.RESIDUAL_FLOOR)
        narrow.append(f"    kr = ty{f}_{g} / sz{f} if sz{f} > 0.0 else 0.0")
        narrow += [f"    br{slots}_{b} = bt{g}_{b} - kr * bt{f}_{b}" for b in cols]
        squares = " + ".join(f"br{slots}_{b} * br{slots}_{b}" for b in cols)
        narrow.append(f"    nr = math.sqrt({squares})")
        narrow.append(f"    floor = {RESIDUAL_FLOOR!r} * (nb{g} + abs(kr) * nb{f})")
        narrow += candidate(f"uy{f}_{g} / nr if sz{f} > 0.0 and nr > floor and nr > 0.0 "
                            "else 1e300", f"br{slots}",
                            f"{q.given_forms[g][-1]!r} - kr * {q.given_forms[f][-1]!r}")
        slots += 1
    # the pivot's own kinks (Integrand.pivot_breaks; backends/numpy.py _pivot_lines): lines
    # P{j} of width 0, present where their whitened normal is not 0
    npiv = len(q.pivot_breaks)
    for j, row in enumerate(q.pivot_breaks):
        for b in cols:
            beta = [f"{row[q.pivot[a]]!r} * l{a}{b}" for a in range(b, ns)
                    if row[q.pivot[a]] != 0.0]
            narrow.append(f"    P{j}_{b} = {' + '.join(beta) or '0.0'}")
        narrow.append(f"    pn{j} = math.sqrt({' + '.join(f'P{j}_{b} * P{j}_{b}' for b in cols)})")
    # every line: (normal, constant, width times |normal|, present)
    every = [(f"An{n}_", f"Cn{n}",
              f"rn{n} * math.sqrt({' + '.join(f'An{n}_{b} * An{n}_{b}' for b in cols)})",
              f"rn{n} < 1e300") for n in range(slots)]
    every += [(f"P{j}_", repr(row[-1]), "0.0", f"pn{j} > 0.0")
              for j, row in enumerate(q.pivot_breaks)]
    xb, wb = rule(CUT_ACROSS)
    xs, ws = legendre_rule(SPLIT_ORDER[0])
    lines += [f"CONDE_{itg} = {array_literal(np.array(SPLIT_EDGES))}",
              f"CONDSX_{itg} = {array_literal(xs)}", f"CONDSW_{itg} = {array_literal(ws)}",
              f"CONDBX_{itg} = {array_literal(xb)}", f"CONDBW_{itg} = {array_literal(wb)}"]
    rot = ["    cu0 = 1.0", "    cu1 = 0.0", "    across = 1"]
    if ns == 2:
        # u: the narrowest narrow line's normal (the first of equals), else the first kink's
        rot += ["    if l11 != 0.0:", "        best = 1e300", "        found = False"]
        for n in range(slots):
            rot += [f"        if rn{n} < best:", f"            best = rn{n}",
                    f"            nrm = math.sqrt(An{n}_0 * An{n}_0 + An{n}_1 * An{n}_1)",
                    f"            cu0 = An{n}_0 / nrm", f"            cu1 = An{n}_1 / nrm",
                    "            found = True"]
        for j in range(npiv):
            rot += [f"        if not found and pn{j} > 0.0:", f"            cu0 = P{j}_0 / pn{j}",
                    f"            cu1 = P{j}_1 / pn{j}", "            found = True"]
        rot += [f"        across = len(CONDBW_{itg})"]

    def along_block(ind: str) -> list[str]:
        """Per node across (b, weight wb): the split rule along u cut at every line."""
        out, breaks = [], []
        for n, (beta, const, width, present) in enumerate(every):
            along = " + ".join(f"{beta}{b} * cu{b}" for b in cols)
            across_dot = f"-{beta}0 * cu1 + {beta}1 * cu0" if ns == 2 else "0.0"
            out.append(f"{ind}al{n} = {along}")
            when = f"{present} and al{n} != 0.0"
            crossing = f"-({const} + b * ({across_dot})) / al{n}"
            if n < slots:
                names, ramp = ramp_lines(f"k{n}", crossing, f"{width} / abs(al{n})", ind, when)
                out += ramp
                breaks += names
            else:  # a kink: one break, no width
                out.append(f"{ind}t{n} = {crossing} if {when} else 1e300")
                breaks.append(f"t{n}")
        along_u = ["n0 = a * cu0 - b * cu1"] + (["n1 = a * cu1 + b * cu0"] if ns == 2 else [])
        along_u += [f"z{order[a]} = " + " + ".join(f"l{a}{b} * n{b}" for b in range(a + 1))
                    for a in range(ns)]
        along_u += node + [f"acc += wb * ga * ({printer.doprint(body)})"]
        return out + panel_loop(f"CONDE_{itg}", len(SPLIT_EDGES) - 1, f"CONDSX_{itg}",
                                f"CONDSW_{itg}", SPLIT_ORDER[0], breaks, ind, "a", "a", "ga",
                                along_u)

    if npiv and ns == 2:
        # across, where there are kinks: the split rule cut where two lines cross and around
        # lines steep across (backends/numpy.py _across_breaks)
        cross = []  # (along, across, width) of line n, per call
        names = []
        for n, (beta, const, width, present) in enumerate(every):
            cross += [f"        ua{n} = {beta}0 * cu0 + {beta}1 * cu1",
                      f"        ub{n} = -{beta}0 * cu1 + {beta}1 * cu0",
                      f"        uw{n} = {width}"]
        for n, (_, const_n, _, present_n) in enumerate(every):
            for m, (_, const_m, _, present_m) in enumerate(every[n + 1:], n + 1):
                cross += [f"        det = ua{n} * ub{m} - ua{m} * ub{n}",
                          f"        x{n}_{m} = (ua{m} * {const_n} - ua{n} * {const_m}) / det "
                          f"if {present_n} and {present_m} and det != 0.0 else 1e300"]
                names.append(f"x{n}_{m}")
            more, ramp = ramp_lines(f"q{n}", f"-{const_n} / ub{n}",
                                    f"(abs(ua{n}) + uw{n}) / abs(ub{n})", "        ",
                                    f"{present_n} and abs(ua{n}) < abs(ub{n})")
            cross += ramp
            names += more
        inner = ["wb = gb"] + along_block("")
        body_lines = ["    if across > 1:"] + cross + panel_loop(
            f"CONDE_{itg}", len(SPLIT_EDGES) - 1, f"CONDSX_{itg}", f"CONDSW_{itg}",
            SPLIT_ORDER[0], names, "        ", "b", "b", "gb", inner)
        body_lines += ["    else:", "        b = 0.0", "        wb = 1.0"]
        body_lines += along_block("        ")
    elif npiv:
        body_lines = ["    b = 0.0", "    wb = 1.0"] + along_block("    ")
    else:
        body_lines = ["    for k in range(across):",
                      f"        b = CONDBX_{itg}[k] if across > 1 else 0.0",
                      f"        wb = CONDBW_{itg}[k] if across > 1 else 1.0"]
        body_lines += along_block("        ")
    present = " or ".join([f"rn{n} < 1e300" for n in range(slots)]
                          + [f"pn{j} > 0.0" for j in range(npiv)]) or "False"
    split = ([f"    if {present}:"] + ["    " + ln for ln in rot + body_lines]
             + ["        return acc"])

    tri = [f"c{i}{j}" for i in range(dim) for j in range(i + 1)]
    lines += [jit, f"def {name}({', '.join(tri)}):"]
    lines += cholesky_lines("l", order) + fixed + ["    acc = 0.0"]
    lines += narrow + split
    if ns == 2:
        # a rank-1 pivot pair (identical points): the 1-D rule along w0, as the diagonal's
        # integral takes it
        lines += ["    if l11 == 0.0:"]
        lines += ["    " + ln for ln in loop(f"CONDLX_{itg}", f"CONDLW_{itg}", True)]
        lines += ["        return acc"]
    lines += loop(f"CONDX_{itg}", f"CONDW_{itg}", False) + ["    return acc", ""]
    return lines


def split_source(q: Integrand, printer: KernelPrinter, jit: str = JIT,
                  nodes: bool = False) -> list[str]:
    """Source of quad<dim>_<name> by the split rule (quadrature.split_nodes: the same panels,
    breaks and arithmetic): per axis a loop over the fixed panels, each cut at the breaks inside
    it by repeatedly taking the nearest break above (no arrays, no sorting: scalar code any
    numba target compiles), Gauss-Legendre on every piece; the inner axis' breaks are where
    each kink line crosses it, given the outer node. nodes=True: instead a function
    _nodes_<name>(lower triangle of C) returning the rule's nodes z (M, dim) and weights (M,)
    (CPU only: it allocates), whatever q.expr is: one per set of breaks, shared by the
    integrands that use them."""
    name, dim, itg = f"quad{q.dim}_{q.name}", q.dim, q.name
    if nodes:
        name = f"_nodes_{q.name}"
    piecewise = None if nodes else pieces(q.expr)
    pre_lines: list[str] = []
    if piecewise is not None:
        # the integrand per side of its kinks (quadrature.pieces), chosen per node
        pre_lines = pieces_source(itg, dim, *piecewise, printer, jit)
        temps, body = [], sp.Function(f"_pw_{itg}")(*(sp.Symbol(f"z{i}", real=True)
                                                      for i in range(dim)))
    else:
        temps, body = integrand_cse(q.expr)
    level = {f"z{i}": i for i in range(dim)}
    placed: dict[int, list[str]] = {}
    for sym, e in temps:
        lev = max([level[x.name] for x in e.free_symbols] or [0])
        level[sym.name] = lev
        placed.setdefault(lev, []).append(f"{sym} = {printer.doprint(e)}")
    value = printer.doprint(body)
    none = "1e300"  # no break on this axis: never inside a panel
    edges = np.array(SPLIT_EDGES)
    lines = pre_lines + [f"SPE_{itg} = {array_literal(edges)}"]
    for a in range(dim):
        x, w = legendre_rule(SPLIT_ORDER[a])
        lines += [f"SPX{a}_{itg} = {array_literal(x)}", f"SPW{a}_{itg} = {array_literal(w)}"]
    tri = [f"c{i}{j}" for i in range(dim) for j in range(i + 1)]
    lines += [jit, f"def {name}({', '.join(tri)}):"]
    lines += cholesky_lines("l", list(range(dim)))
    if nodes:
        # at most (panels + breaks) pieces per axis
        per_axis = [(len(SPLIT_EDGES) - 1 + len(q.breaks) * len(SPLIT_RAMP)) * SPLIT_ORDER[a]
                    for a in range(dim)]
        lines += [f"    zs = np.empty(({int(np.prod(per_axis))}, {dim}))",
                  f"    ws = np.empty({int(np.prod(per_axis))})", "    cnt = 0"]
        placed = {}
        store = ([f"zs[cnt, {i}] = z{i}" for i in range(dim)]
                 + [f"ws[cnt] = {' * '.join(f'g{i}' for i in range(dim))}", "cnt += 1"])
    outer: list[str] = []
    for j, row in enumerate(q.breaks):
        r, c = row[:dim], row[dim]
        for a in range(dim):  # beta = L^T r
            terms = " + ".join(f"{r[i]!r} * l{i}{a}" for i in range(a, dim))
            lines.append(f"    b{j}_{a} = {terms}")
        if dim == 1:
            lines.append(f"    o{j} = -({c!r}) / b{j}_0 if b{j}_0 != 0.0 else {none}")
            outer.append(f"o{j}")
            continue
        if is_soft(row, dim):  # no ramp around a soft break (quadrature.outer_breaks)
            lines.append(f"    o{j} = -({c!r}) / b{j}_0 if b{j}_0 != 0.0 and b{j}_1 == 0.0 "
                         f"else {none}")
            outer.append(f"o{j}")
            continue
        names, ramp = ramp_lines(f"o{j}", f"-({c!r}) / b{j}_0", f"abs(b{j}_1 / b{j}_0)",
                                 "    ", f"b{j}_0 != 0.0 and abs(b{j}_1) < abs(b{j}_0)")
        lines += ramp
        outer += names

    def axis(a: int, breaks: list[str], ind: str, target: str, inner: list[str]) -> list[str]:
        z = f"z{a} = " + " + ".join(f"l{a}{b} * n{b}" for b in range(a + 1))
        return [f"{ind}{target} = 0.0"] + panel_loop(
            f"SPE_{itg}", len(edges) - 1, f"SPX{a}_{itg}", f"SPW{a}_{itg}", SPLIT_ORDER[a],
            breaks, ind, str(a), f"n{a}", f"g{a}", [z] + placed.get(a, []) + inner)

    if dim == 1:
        lines += axis(0, outer, "    ", "acc", store if nodes else [f"acc += g0 * ({value})"])
    else:
        inner_breaks = []
        pre = []
        for j, row in enumerate(q.breaks):
            pre.append(f"t{j} = -({row[dim]!r} + b{j}_0 * n0) / b{j}_1 if b{j}_1 != 0.0 "
                       f"else {none}")
            inner_breaks.append(f"t{j}")
        body1 = axis(1, inner_breaks, "", "s1", store if nodes else [f"s1 += g1 * ({value})"])
        lines += axis(0, outer, "    ", "acc", pre + body1 + ([] if nodes else ["acc += g0 * s1"]))
    lines += ["    return zs[:cnt], ws[:cnt]" if nodes else "    return acc", ""]
    return lines


def pieces_source(itg: str, dim: int, kinks, forms: dict, printer: KernelPrinter,
                   jit: str) -> list[str]:
    """_pw_<itg>(z0, ...): the integrand's form on the side of each kink the node is on."""
    zs = ", ".join(f"z{i}" for i in range(dim))
    lines = [jit, f"def _pw_{itg}({zs}):"]
    lines += [f"    k{n} = ({printer.doprint(a)}) > 0.0" for n, a in enumerate(kinks)]

    def tree(prefix: tuple, ind: str) -> list[str]:
        if len(prefix) == len(kinks):
            temps, body = integrand_cse(forms[prefix])
            out = [f"{ind}{t} = {printer.doprint(e)}" for t, e in temps]
            return out + [f"{ind}return {printer.doprint(body)}"]
        n = len(prefix)
        return ([f"{ind}if k{n}:"] + tree(prefix + (True,), ind + "    ")
                + [f"{ind}else:"] + tree(prefix + (False,), ind + "    "))

    return lines + tree((), "    ") + [""]
