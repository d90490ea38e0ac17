"""Renders a KernelProgram into one self-contained Numba module and runs it.

Layout of the generated module: runtime functions and helpers, quadrature integrands and rules
(nodes inlined), and two drivers whose bodies are the kernel program's straight-line code:
`diag(G.., D, OUT, lo, hi)` (per point, from precomputed self-Gram entries) and
`rows(G.., D1, D2T, K.., lo, hi, col0, sym)` (per pair, over rows lo..hi and all columns, or the
columns right of the diagonal when sym). The Gram entries come from BLAS outside (row blocks), the
second point's per-point values are stored transposed and every kernel kind has its own 2-D
output: with contiguous loads and stores and no calls left after LLVM inlines the helpers, the
column loop vectorises (measured 7x on a depth-10 relu MLP: 66 against 470 ns a pair).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import math
import os

import numba
import numpy as np
import sympy as sp

from .. import __version__, series
from ..kernel_program import Integrand, KernelProgram, twin
from ..quadrature import (
    DEFAULT_ORDER,
    SNAP,
    SPLIT_EDGES,
    SPLIT_ORDER,
    SPLIT_RAMP,
    careful_rows,
    is_soft,
    legendre_rule,
    pieces,
    polar_order,
    rayleigh_rule,
    rule,
    tensor_order,
    vanishing_arcs,
)
from .coincident import coincident as _coincident
from .printer import KernelPrinter, emit_block, runtime_lines

JIT = "@njit(cache=True, error_model='numpy')"
# helpers are inlined into the per-pair code: LLVM does not inline across numba functions, and a
# call per layer costs more than the layer itself (measured: 10x on a relu MLP)
INLINE = "@njit(cache=True, error_model='numpy', inline='always')"
# drivers release the GIL and are run on a thread pool over row blocks: numba's parfor
# (parallel=True) costs about twice the compile time for no speed gain on this loop shape
PJIT = "@njit(cache=True, nogil=True, error_model='numpy')"


def _array_literal(a: np.ndarray) -> str:
    return "np.array([" + ", ".join(repr(float(v)) for v in a.ravel()) + f"]).reshape({a.shape})"


def _cholesky_lines(prefix: str, coords, cov: str = "c") -> list[str]:
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


def _integrand_cse(expr: sp.Expr):
    """Temporaries and the final expression of an integrand: common subexpressions once, every
    function call its own temporary (so that _quad_source can hoist it out of the loops that do
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


def _quad_source(q: Integrand, printer: KernelPrinter, jit: str = JIT) -> list[str]:
    """Source of quad<dim>_<name>(lower triangle of C) for one integrand, by its rule
    (quadrature.py): z = L w with L the Cholesky factor in the order q.kinked + q.pivot; the
    tensor rule over the pivot's whitened coordinates as nested loops, one per axis, inside the
    polar wedge rule over the kinked pair when there is one (its rays computed and sorted per
    call). The integrand is inlined: each of its common subexpressions is computed in the
    outermost loop where its coordinates are known (tanh(z2 + relu(z0)) once per (polar node,
    first tensor axis), not once per node). Scalar code and module-level constant arrays only
    (no allocation), so that any numba target can compile it; `jit` is the decorator."""
    if q.breaks:
        return _split_source(q, printer, jit)
    name, dim, itg = f"quad{q.dim}_{q.name}", q.dim, q.name
    order = list(q.kinked) + list(q.pivot)
    npol = len(q.kinked)  # the pair's whitened coordinates are w0, w1 (positions 0, 1)
    ntens = len(q.pivot)
    temps, body = _integrand_cse(q.expr)
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
        lines += [f"RULEX_{itg} = {_array_literal(x)}", f"RULEW_{itg} = {_array_literal(w)}"]

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
            lines += [f"LINEX_{itg} = {_array_literal(xline)}",
                      f"LINEW_{itg} = {_array_literal(wline)}",
                      jit, f"def _line_{itg}(l00, l10):", "    acc = 0.0",
                      f"    for k in range({len(xline)}):",
                      f"        z{order[0]} = l00 * LINEX_{itg}[k]",
                      f"        z{order[1]} = l10 * LINEX_{itg}[k]"]
            lines += [f"        {ln}" for lev in (-1, 0, 1) for ln in placed.get(lev, [])]
            lines += [f"        acc += LINEW_{itg}[k] * ({value})", "    return acc", ""]
            rank1 = ["    if l11 == 0.0:", f"        return _line_{itg}(l00, l10)"]
        lines += [jit, f"def {name}({', '.join(tri)}):"]
        lines += _cholesky_lines("l", order) + rank1 + inner("    ", "acc") + ["    return acc", ""]
        return lines

    nleg, nrad = polar_order(ntens)
    xl, wl = legendre_rule(nleg)
    r, wr = rayleigh_rule(nrad)
    lines += [f"LEGX_{itg} = {_array_literal(xl)}", f"LEGW_{itg} = {_array_literal(wl)}",
              f"RADX_{itg} = {_array_literal(r)}", f"RADW_{itg} = {_array_literal(wr)}"]
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
    lines += [f"LINEX_{itg} = {_array_literal(xline)}", f"LINEW_{itg} = {_array_literal(wline)}",
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
    lines += _cholesky_lines("l", order)
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


def _split_source(q: Integrand, printer: KernelPrinter, jit: str = JIT,
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
        pre_lines = _pieces_source(itg, dim, *piecewise, printer, jit)
        temps, body = [], sp.Function(f"_pw_{itg}")(*(sp.Symbol(f"z{i}", real=True)
                                                      for i in range(dim)))
    else:
        temps, body = _integrand_cse(q.expr)
    level = {f"z{i}": i for i in range(dim)}
    placed: dict[int, list[str]] = {}
    for sym, e in temps:
        lev = max([level[x.name] for x in e.free_symbols] or [0])
        level[sym.name] = lev
        placed.setdefault(lev, []).append(f"{sym} = {printer.doprint(e)}")
    value = printer.doprint(body)
    none = "1e300"  # no break on this axis: never inside a panel
    edges = np.array(SPLIT_EDGES)
    lines = pre_lines + [f"SPE_{itg} = {_array_literal(edges)}"]
    for a in range(dim):
        x, w = legendre_rule(SPLIT_ORDER[a])
        lines += [f"SPX{a}_{itg} = {_array_literal(x)}", f"SPW{a}_{itg} = {_array_literal(w)}"]
    tri = [f"c{i}{j}" for i in range(dim) for j in range(i + 1)]
    lines += [jit, f"def {name}({', '.join(tri)}):"]
    lines += _cholesky_lines("l", list(range(dim)))
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
        lines += [f"    if b{j}_0 != 0.0 and abs(b{j}_1) < abs(b{j}_0):",
                  f"        a{j} = -({c!r}) / b{j}_0",
                  f"        v{j} = abs(b{j}_1 / b{j}_0)",
                  "    else:", f"        a{j} = {none}", f"        v{j} = 0.0"]
        for m, f in enumerate(SPLIT_RAMP):
            lines.append(f"    o{j}_{m} = a{j} + {f!r} * v{j}")
            outer.append(f"o{j}_{m}")

    def axis(a: int, breaks: list[str], ind: str, target: str, inner: list[str]) -> list[str]:
        out = [f"{ind}{target} = 0.0",
               f"{ind}for p{a} in range({len(edges) - 1}):",
               f"{ind}    lo{a} = SPE_{itg}[p{a}]",
               f"{ind}    top{a} = SPE_{itg}[p{a} + 1]",
               f"{ind}    while lo{a} < top{a}:",
               f"{ind}        hi{a} = top{a}"]
        for b in breaks:
            out += [f"{ind}        if {b} > lo{a} and {b} < hi{a}:",
                    f"{ind}            hi{a} = {b}"]
        out += [f"{ind}        half{a} = 0.5 * (hi{a} - lo{a})",
                f"{ind}        mid{a} = 0.5 * (hi{a} + lo{a})",
                f"{ind}        for i{a} in range({SPLIT_ORDER[a]}):",
                f"{ind}            n{a} = mid{a} + half{a} * SPX{a}_{itg}[i{a}]",
                f"{ind}            g{a} = half{a} * SPW{a}_{itg}[i{a}] * "
                f"math.exp(-0.5 * n{a} * n{a}) * {1.0 / math.sqrt(2.0 * math.pi)!r}",
                f"{ind}            z{a} = " + " + ".join(f"l{a}{b} * n{b}" for b in range(a + 1))]
        out += [f"{ind}            {line}" for line in placed.get(a, [])]
        out += [f"{ind}            {line}" for line in inner]
        out.append(f"{ind}        lo{a} = hi{a}")
        return out

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


def _pieces_source(itg: str, dim: int, kinks, forms: dict, printer: KernelPrinter,
                   jit: str) -> list[str]:
    """_pw_<itg>(z0, ...): the integrand's form on the side of each kink the node is on."""
    zs = ", ".join(f"z{i}" for i in range(dim))
    lines = [jit, f"def _pw_{itg}({zs}):"]
    lines += [f"    k{n} = ({printer.doprint(a)}) > 0.0" for n, a in enumerate(kinks)]

    def tree(prefix: tuple, ind: str) -> list[str]:
        if len(prefix) == len(kinks):
            temps, body = _integrand_cse(forms[prefix])
            out = [f"{ind}{t} = {printer.doprint(e)}" for t, e in temps]
            return out + [f"{ind}return {printer.doprint(body)}"]
        n = len(prefix)
        return ([f"{ind}if k{n}:"] + tree(prefix + (True,), ind + "    ")
                + [f"{ind}else:"] + tree(prefix + (False,), ind + "    "))

    return lines + tree((), "    ") + [""]


def _careful_source(plan: series.SeriesPlan, printer: KernelPrinter, jit: str) -> list[str]:
    """quad2_<name>fb for every integrand of the series plan: the careful split rule
    (quadrature.careful_rows) where the series is not accurate enough (large variance, |rho|
    near 1: where the integrand's production rule is least accurate too). The soft breaks are
    the same for all these smooth integrands, so one node function serves them all (a
    generated rule per integrand would cost seconds of compile time each)."""
    lines: list[str] = []
    shared = Integrand("careful2", 2, sp.S.Zero, breaks=careful_rows(sp.S.Zero, 2))
    lines += _split_source(shared, printer, jit, nodes=True)
    for quad, expr in dict.fromkeys((type(c.call).__name__, c.integrand) for c in plan.calls
                                    if not c.rhos):
        fb = Integrand(quad.split("_", 1)[1] + "fb", 2, expr, breaks=careful_rows(expr, 2))
        if fb.breaks != shared.breaks:  # kinks of its own: a rule of its own
            lines += _split_source(fb, printer, jit)
            continue
        temps, body = _integrand_cse(expr)
        lines += [jit, f"def quad2_{fb.name}(c00, c10, c11):",
                  "    zs, ws = _nodes_careful2(c00, c10, c11)",
                  "    acc = 0.0",
                  "    for m in range(ws.shape[0]):",
                  "        z0 = zs[m, 0]",
                  "        z1 = zs[m, 1]"]
        lines += [f"        {sym} = {printer.doprint(e)}" for sym, e in temps]
        lines += [f"        acc += ws[m] * ({printer.doprint(body)})", "    return acc", ""]
    return lines


#: what a generated series function reads besides the covariance: the per-point tables and the
#: pair (names of the rows driver's locals)
_SERIES_ARGS = tuple(sp.Symbol(n) for n in ("D1", "D2", "i", "j"))


def _series_source(plan: series.SeriesPlan, printer: KernelPrinter, jit: str = JIT,
                   inline: str = INLINE) -> list[str]:
    """The Mehler-series path (series.py): its node arrays and fixed functions, one coefficient
    function _hc<m>(var, D, i, off) per distinct factor function, and one ser<n>(c00, c10, c11,
    D1, D2, i, j) per rewritten quad2 call, which falls back to that quadrature when the series
    is not accurate enough at this pair. The per-pair functions are inlined into the driver (a
    call passing arrays costs reference counting, more than the short series itself)."""
    if not plan.calls:
        return []
    lines = [f"SER_{n} = {_array_literal(getattr(series, f'SER_{n}'))}" for n in "XWPQ"]
    # each factor's first column, read from an array: numba would compile a specialisation
    # of the callee for every distinct integer literal argument (measured: 16 s for 18 calls)
    cols = np.array([f.column for f in plan.factors], dtype=np.int64)
    lines.append(f"SER_COL = np.array({cols.tolist()!r}, dtype=np.int64)")
    for n in ("K2", "K2_EXT", "HEAD2", "CHECKPOINTS2", "TOL"):
        lines.append(f"{n} = {getattr(series, n)!r}")
    for fn in series.SOURCES:
        # reassociation lets the node sums vectorise (a reordered sum, not a less accurate one)
        deco = jit.replace(")", ", fastmath={'reassoc'})") \
            if fn in (series.hermite_project, series.hermite_project2) else inline
        lines += [deco, inspect.getsource(fn)]
    for m, (fn, kind) in enumerate(plan.functions):
        lines += [jit, f"def _hc{m}(var, var2, D, i, off):",
                  "    s = math.sqrt(var) if var > 0.0 else 0.0",
                  "    s2 = math.sqrt(var2) if var2 > 0.0 else 0.0",
                  "    n = SER_X.shape[0]"]
        value = printer.doprint(fn)
        if kind == "1":
            lines += ["    fw = np.empty(n)",
                      "    for m in range(n):",
                      "        z0 = s * SER_X[m]",
                      f"        fw[m] = SER_W[m] * ({value})",
                      "    hermite_project(fw, D, i, off)", ""]
        elif kind == "1m":  # z1 is integrated out first (the other point does not read it)
            lines += ["    fw = np.empty(n)",
                      "    for m in range(n):",
                      "        z0 = s * SER_X[m]",
                      "        acc = 0.0",
                      "        for q in range(n):",
                      "            z1 = s2 * SER_X[q]",
                      f"            acc += SER_W[q] * ({value})",
                      "        fw[m] = SER_W[m] * acc",
                      "    hermite_project(fw, D, i, off)", ""]
        else:
            lines += ["    fw = np.empty((n, n))",
                      "    for m in range(n):",
                      "        z0 = s * SER_X[m]",
                      "        for q in range(n):",
                      "            z1 = s2 * SER_X[q]",
                      f"            fw[m, q] = SER_W[m] * SER_W[q] * ({value})",
                      "    hermite_project2(fw, D, i, off)", ""]
    z0, z1 = series.Z0, series.Z1
    # |rho| = 1 (identical points, antipodal ones without a bias; within series.UNIT, the
    # rounding of a deep recursion's c and d for one point): v = +-sqrt(c11 / c00) u, a 1-D
    # integral, by the rule of the diagonal's quad1 (the series converges slowest there, and
    # the 2-D fallback would be the 1-D rule at the 2-D order); one routine per integrand
    classic = [c for c in plan.calls if not c.rhos]
    for quad, expr in dict.fromkeys((type(c.call).__name__, c.integrand) for c in classic):
        lines += [jit, f"def _r1{quad}(c00, c11, sg):",
                  "    sa = math.sqrt(c00) if c00 > 0.0 else 0.0",
                  "    sb = sg * (math.sqrt(c11) if c11 > 0.0 else 0.0)",
                  "    acc = 0.0",
                  "    for m in range(SER_X.shape[0]):",
                  f"        {z0} = sa * SER_X[m]",
                  f"        {z1} = sb * SER_X[m]",
                  f"        acc += SER_W[m] * ({printer.doprint(expr)})",
                  "    return acc", ""]
    # where the series is not accurate enough (large variance, |rho| near 1), the careful
    # split rule (quadrature.careful_rows), not the integrand's production rule, which is
    # least accurate exactly there
    lines += _careful_source(plan, printer, jit)
    for c in plan.calls:
        if c.rhos:
            lines += _vectors_source(c, plan, inline)
            continue
        quad = printer.doprint(sp.Function(type(c.call).__name__ + "fb")(
            *sp.symbols("c00 c10 c11")))
        lines += [inline, f"def {c.name}(c00, c10, c11, D1, D2, i, j):",
                  "    rho = correlation(c00, c10, c11)",
                  f"    if abs(rho) >= {1.0 - series.UNIT!r}:",
                  f"        return _r1{type(c.call).__name__}(c00, c11, "
                  "1.0 if rho > 0.0 else -1.0)",
                  "    v = 0.0"]
        for t in c.terms:
            oa = plan.factors[t.a].column if t.a is not None else None
            ob = plan.factors[t.b].column if t.b is not None else None
            if oa is not None and ob is not None:
                val = f"hdot(D1, i, SER_COL[{t.a}], D2, j, SER_COL[{t.b}], rho, False)"
            elif oa is not None:
                val = f"D1[i, {oa + series.HEAD}]"  # alpha_0 = E[f(u)]
            elif ob is not None:
                val = f"D2[j, {ob + series.HEAD}]"
            else:
                val = "1.0"
            lines.append(f"    v += {t.coef!r} * {val}")
        lines += ["    if math.isnan(v):", f"        return {quad}", "    return v", ""]
    return lines


def _tri_names(dim: int) -> list[str]:
    """The lower-triangle arguments of a quad<dim> call, in order: c00, c10, c11, c20, ..."""
    return [f"c{i}{j}" for i in range(dim) for j in range(i + 1)]


def _vectors_source(c: series.SeriesCall, plan: series.SeriesPlan, inline: str) -> list[str]:
    """ser<n> for a 3-D or 4-D call of series._vectors: one correlation per vector both points
    read, then per term the one- or two-vector series (never a fallback: the truncated series
    stays a positive semi-definite kernel, and the accuracy probe reports its error)."""
    dim = int(round((math.sqrt(8 * len(c.call.args) + 1) - 1) / 2))
    names = _tri_names(dim)
    lines = [inline, f"def {c.name}({', '.join(names)}, D1, D2, i, j):"]
    for m, (a, ab, b) in enumerate(c.rhos):
        lines.append(f"    r{m} = correlation({names[a]}, {names[ab]}, {names[b]})")
    lines.append("    v = 0.0")
    for t in c.terms:
        fa = plan.factors[t.a] if t.a is not None else None
        fb = plan.factors[t.b] if t.b is not None else None
        if fa is not None and fb is not None:
            if fa.kind == "2":
                val = f"hdot2(D1, i, SER_COL[{t.a}], D2, j, SER_COL[{t.b}], r0, r1)"
            else:
                val = f"hdot(D1, i, SER_COL[{t.a}], D2, j, SER_COL[{t.b}], r0, True)"
        elif fa is not None or fb is not None:
            f, idx, tab, row = (fa, t.a, "D1", "i") if fa is not None else (fb, t.b, "D2", "j")
            head = series.HEAD2 if f.kind == "2" else series.HEAD
            val = f"{tab}[{row}, SER_COL[{idx}] + {head}]"  # the mean: c_0(0)
        else:
            val = "1.0"
        lines.append(f"    v += {t.coef!r} * {val}")
    return lines + ["    return v", ""]


def render(kp: KernelProgram, use_series: bool = True) -> str:
    """The generated module's source. Names come from the kernel program, never user text.
    use_series=False keeps every quadrature (the NumPy reference's algorithm, for tests)."""
    pr = KernelPrinter()
    kinds = list(kp.outputs)
    needed = kp.diag_needed()
    plan = series.plan(kp, len(needed)) if use_series else series.SeriesPlan((), ())
    lines: list[str] = []
    for q in kp.integrands:
        lines += _quad_source(q, pr)
    lines += _series_source(plan, pr)

    outs = [sp.Symbol(f"out_{k}") for k in kinds]
    gd = [f"G{n}" for n in range(len(kp.diag_gram))]
    lines += [PJIT, f"def diag({', '.join(gd + ['D', 'OUT', 'lo', 'hi'])}):",
              "    for i in range(lo, hi):"]
    for name, g in zip(gd, kp.diag_gram):
        lines.append(f"        {g.symbol} = {name}[i]")
    lines += emit_block(list(kp.diag) + [(o, kp.outputs[k][0]) for o, k in zip(outs, kinds)],
                        pr, "        ")
    for n, s in enumerate(needed):
        lines.append(f"        D[i, {n}] = {s}")
    for n, f in enumerate(plan.factors):
        var2 = "0.0" if f.var2 is None else pr.doprint(f.var2)
        lines.append(f"        _hc{plan.functions.index((f.fn, f.kind))}({pr.doprint(f.var)}, "
                     f"{var2}, D, i, SER_COL[{n}])")
    for n, o in enumerate(outs):
        lines.append(f"        OUT[i, {n}] = {o}")
    lines += ["    return", ""]

    used = kp.cross_reads()
    gc = [f"C{n}" for n in range(len(kp.cross_gram))]
    ks = [f"K{n}" for n in range(len(kinds))]
    lines += [PJIT, f"def rows({', '.join(gc + ['D1', 'D2T', 'D2'] + ks)}, lo, hi, col0, sym):",
              f"    n2 = {ks[0]}.shape[1]",
              "    for i in range(lo, hi):"]
    for n, s in enumerate(needed):
        if s.name in used:
            lines.append(f"        {s} = D1[i, {n}]")
    lines.append("        for j in range(i + 1 if sym else 0, n2):")
    for n, s in enumerate(needed):
        if twin(s).name in used:
            lines.append(f"            {twin(s)} = D2T[{n}, j]")
    for name, g in zip(gc, kp.cross_gram):
        lines.append(f"            {g.symbol} = {name}[i - lo, j - col0]")
    calls = {c.call: sp.Function(c.name)(*c.call.args, *_SERIES_ARGS) for c in plan.calls}
    lines += emit_block([(s, e.xreplace(calls)) for s, e in kp.cross]
                        + [(o, kp.outputs[k][1].xreplace(calls)) for o, k in zip(outs, kinds)],
                        pr, "            ")
    for k, o in zip(ks, outs):
        lines.append(f"            {k}[i, j] = {o}")
    lines += ["    return", ""]
    lines += [PJIT, "def mirror(K, lo, hi):",
              "    # lower triangle from the upper, in tiles so both sides stay in cache",
              "    n = K.shape[0]",
              "    for i0 in range(lo, hi, 64):",
              "        for j0 in range(0, i0 + 64, 64):",
              "            for i in range(i0, min(i0 + 64, hi)):",
              "                for j in range(j0, min(j0 + 64, i)):",
              "                    K[i, j] = K[j, i]",
              "    return", ""]
    head = [f"# generated by tpcompiler {__version__}; do not edit",
            "import math", "", "import numpy as np", "from numba import njit", ""]
    lines = head + runtime_lines(lines, JIT) + lines
    lines.append(f"KINDS = {tuple(kinds)!r}")
    lines.append(f"N_SCALARS = {len(needed)}  # the columns D2T holds")
    lines.append(f"N_DIAG = {len(needed) + plan.width}")
    return "\n".join(lines) + "\n"


def threads() -> int:
    return max(1, int(os.environ.get("TPC_NUM_THREADS", 0)) or numba.config.NUMBA_NUM_THREADS)


def _pool_map(fn, blocks, progress, total):
    """fn(lo, hi) for every block on a thread pool (the drivers release the GIL)."""
    if len(blocks) == 1 or threads() == 1:
        done = 0
        for lo, hi in blocks:
            fn(lo, hi)
            done += hi - lo
            if progress:
                progress(done, total)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads()) as pool:
        futures = [pool.submit(fn, lo, hi) for lo, hi in blocks]
        done = 0
        for fut, (lo, hi) in zip(futures, blocks):
            fut.result()
            done += hi - lo
            if progress:
                progress(done, total)


def _row_blocks(n1: int, n2: int, sym: bool, n_gram: int, progress) -> list[tuple[int, int]]:
    """Row blocks of about equal work (the triangle's rows shrink), each small enough that its
    Gram blocks stay under ~32 MB, and enough of them to balance the threads."""
    per_row = max(1, n_gram) * n2 * 8
    max_rows = max(1, (32 << 20) // per_row)
    want = max(4 * threads(), 50 if progress else 1)
    if sym:
        work = np.arange(n1, 0, -1, dtype=np.float64)  # row i has n - i pairs
    else:
        work = np.ones(n1)
    cum = np.concatenate([[0.0], np.cumsum(work)])
    target = cum[-1] / want
    blocks, lo = [], 0
    while lo < n1:
        hi = int(np.searchsorted(cum, cum[lo] + target, side="left"))
        hi = min(max(hi, lo + 1), lo + max_rows, n1)
        blocks.append((lo, hi))
        lo = hi
    return blocks


def _vec(arrays: dict, ref) -> np.ndarray:
    a = arrays[ref.input]
    return a if ref.index is None else a[:, ref.index, :]


def _self_gram(arrays: dict, ga, gb) -> np.ndarray:
    """<x_a, x_b>/d at each point: the one routine for the per-point Gram entries, so that a
    pair of identical points gets bit-identical values on both sides."""
    a, b = _vec(arrays, ga), _vec(arrays, gb)
    return np.einsum("nd,nd->n", a, b) / a.shape[-1]


def run(module, kp_or_meta, arrays1: dict, arrays2: dict | None, progress=None) -> dict:
    """Evaluate every kind the module computes: kind -> (N1, N2) float64 array.

    kp_or_meta: the KernelProgram, or the cached metadata (inputs, diag_gram, cross_gram).
    progress: callable(done, total) as row blocks finish (for a progress bar).
    """
    meta = kp_or_meta
    inputs, dgram, cgram = meta.inputs, meta.diag_gram, meta.cross_gram
    kinds = module.KINDS
    sym = arrays2 is None
    a2 = arrays1 if sym else arrays2
    n1 = len(next(iter(arrays1.values())))
    n2 = len(next(iter(a2.values())))

    def per_point(arrays, n):
        gd = [np.ascontiguousarray(_self_gram(arrays, g.a, g.b)) for g in dgram]
        d = np.empty((n, module.N_DIAG))
        out = np.empty((n, len(kinds)))
        _pool_map(lambda lo, hi: module.diag(*gd, d, out, lo, hi),
                  [(0, n)] if n < 32 else _row_blocks(n, 1, False, 1, None), None, n)
        return d, out

    d1, o1 = per_point(arrays1, n1)
    d2, o2 = (d1, o1) if sym else per_point(a2, n2)
    d2t = np.ascontiguousarray(d2[:, :module.N_SCALARS].T)
    ks = [np.empty((n1, n2)) for _ in kinds]
    same, anti = _coincident(arrays1, a2, inputs)
    exact = [(_self_gram(arrays1, g.a, g.b), g) for g in cgram] if (same or anti) else []

    def block(lo, hi):
        col0 = lo if sym else 0
        grams = []
        for g in cgram:
            a, b = _vec(arrays1, g.a)[lo:hi], _vec(a2, g.b)[col0:]
            grams.append(a @ b.T / a.shape[-1])
        for (vals, _), gram in zip(exact, grams):
            for i, j in same:
                if lo <= i < hi and j >= col0:
                    gram[i - lo, j - col0] = vals[i]
            for i, j in anti:
                if lo <= i < hi and j >= col0:
                    gram[i - lo, j - col0] = -vals[i]
        grams = [np.ascontiguousarray(g) for g in grams]
        module.rows(*grams, d1, d2t, d2, *ks, lo, hi, col0, sym)

    _pool_map(block, _row_blocks(n1, n2, sym, len(cgram), progress), progress, n1)
    if sym:
        for k, o in zip(ks, o1.T):
            _pool_map(lambda lo, hi, k=k: module.mirror(k, lo, hi),
                      _row_blocks(n1, n1, False, 1, None), None, n1)
            np.fill_diagonal(k, o)
    # a point given twice is one point: its pairs take the diagonal's value, which the
    # per-point code computes by the integrals of one point (a pair's integrals of twice the
    # dimension, or a series cut short, may differ from it in the last digits or more)
    for k, o in zip(ks, o1.T):
        for i, j in same:
            k[i, j] = o[i]
    return dict(zip(kinds, ks))


def numba_version() -> str:
    return numba.__version__
