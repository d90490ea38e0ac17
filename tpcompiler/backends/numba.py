"""Renders a KernelProgram into one self-contained Numba module (backends/runner.py runs it).

Layout of the generated module: runtime functions and helpers, quadrature integrands and rules
(nodes inlined), and two drivers whose bodies are the kernel program's straight-line code:
`diag(G.., THETA, D, OUT, lo, hi)` (per point, from precomputed self-Gram entries) and
`rows(G.., D1, D2T, K.., THETA, lo, hi, col0, sym)` (per pair, over rows lo..hi and all columns,
or the columns right of the diagonal when sym); THETA holds the values of the program's params.
The Gram entries come from BLAS outside (row blocks), the second point's per-point values are
stored transposed and every kernel kind has its own 2-D
output: with contiguous loads and stores and no calls left after LLVM inlines the helpers, the
column loop vectorises (measured 7x on a depth-10 relu MLP: 66 against 470 ns a pair).
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import numba
import numpy as np
import sympy as sp

from .. import __version__, series
from ..kernel_program import (
    Integrand,
    KernelProgram,
    PointValue,
    is_first_point,
    quad_call,
    untwin,
)
from ..quadrature import (
    careful_rows,
)
from .printer import (
    KernelPrinter,
    first_point_loads,
    pair_body,
    per_point_body,
    runtime_lines,
)
from .quadsource import JIT, array_literal, integrand_cse, quad_source, split_source

# helpers are inlined into the per-pair code: LLVM does not inline across numba functions, and a
# call per layer costs more than the layer itself (measured: 10x on a relu MLP)
INLINE = "@njit(cache=True, error_model='numpy', inline='always')"
# drivers release the GIL and are run on a thread pool over row blocks: numba's parfor
# (parallel=True) costs about twice the compile time for no speed gain on this loop shape
PJIT = "@njit(cache=True, nogil=True, error_model='numpy')"


def _careful_source(plan: series.SeriesPlan, printer: KernelPrinter, jit: str) -> list[str]:
    """quad2_<name>fb for every integrand of the series plan: the careful split rule
    (quadrature.careful_rows) where the series is not accurate enough (large variance, |rho|
    near 1: where the integrand's production rule is least accurate too). The soft breaks are
    the same for all these smooth integrands, so one node function serves them all (a
    generated rule per integrand would cost seconds of compile time each)."""
    lines: list[str] = []
    shared = Integrand("careful2", 2, sp.S.Zero, breaks=careful_rows(sp.S.Zero, 2))
    lines += split_source(shared, printer, jit, nodes=True)
    for name, expr in dict.fromkeys((c.call.integrand, c.integrand) for c in plan.calls
                                    if not c.rhos):
        fb = Integrand(name + "fb", 2, expr, breaks=careful_rows(expr, 2))
        if fb.breaks != shared.breaks:  # kinks of its own: a rule of its own
            lines += split_source(fb, printer, jit)
            continue
        temps, body = integrand_cse(expr)
        lines += [jit, f"def quad2_{fb.name}(c00, c10, c11):",
                  "    zs, ws = _nodes_careful2(c00, c10, c11)",
                  "    acc = 0.0",
                  "    for m in range(ws.shape[0]):",
                  "        z0 = zs[m, 0]",
                  "        z1 = zs[m, 1]"]
        lines += [f"        {sym} = {printer.doprint(e)}" for sym, e in temps]
        lines += [f"        acc += ws[m] * ({printer.doprint(body)})", "    return acc", ""]
    return lines


#: what a generated series function reads besides the covariance: the per-point tables, the
#: pair and the offset of its factors' columns (a rolled loop's layer: names of the rows
#: driver's locals)
_SERIES_ARGS = tuple(sp.Symbol(n) for n in ("D1", "D2", "i", "j", "off"))


def _series_source(plan: series.SeriesPlan, printer: KernelPrinter, jit: str = JIT,
                   inline: str = INLINE) -> list[str]:
    """The Mehler-series path (series.py): its node arrays and fixed functions, one coefficient
    function _hc<m>(var, D, i, off) per distinct factor function, and one ser<n>(c00, c10, c11,
    D1, D2, i, j) per rewritten quad2 call, which falls back to that quadrature when the series
    is not accurate enough at this pair. The per-pair functions are inlined into the driver (a
    call passing arrays costs reference counting, more than the short series itself)."""
    if not plan.calls:
        return []
    lines = [f"SER_{n} = {array_literal(getattr(series, f'SER_{n}'))}" for n in "XWPQ"]
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
        quad = printer.doprint(quad_call(c.call.integrand + "fb", 2)(*sp.symbols("c00 c10 c11")))
        lines += [inline, f"def {c.name}(c00, c10, c11, D1, D2, i, j, off):",
                  "    rho = correlation(c00, c10, c11)",
                  f"    if abs(rho) >= {1.0 - series.UNIT!r}:",
                  f"        return _r1{type(c.call).__name__}(c00, c11, "
                  "1.0 if rho > 0.0 else -1.0)",
                  "    v = 0.0"]
        for t in c.terms:
            oa = plan.factors[t.a].column if t.a is not None else None
            ob = plan.factors[t.b].column if t.b is not None else None
            if oa is not None and ob is not None:
                val = (f"hdot(D1, i, SER_COL[{t.a}] + off, D2, j, SER_COL[{t.b}] + off, rho, "
                       "False)")
            elif oa is not None:
                val = f"D1[i, {oa + series.HEAD} + off]"  # alpha_0 = E[f(u)]
            elif ob is not None:
                val = f"D2[j, {ob + series.HEAD} + off]"
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
    lines = [inline, f"def {c.name}({', '.join(names)}, D1, D2, i, j, off):"]
    for m, (a, ab, b) in enumerate(c.rhos):
        lines.append(f"    r{m} = correlation({names[a]}, {names[ab]}, {names[b]})")
    lines.append("    v = 0.0")
    for t in c.terms:
        fa = plan.factors[t.a] if t.a is not None else None
        fb = plan.factors[t.b] if t.b is not None else None
        if fa is not None and fb is not None:
            if fa.kind == "2":
                val = f"hdot2(D1, i, SER_COL[{t.a}] + off, D2, j, SER_COL[{t.b}] + off, r0, r1)"
            else:
                val = f"hdot(D1, i, SER_COL[{t.a}] + off, D2, j, SER_COL[{t.b}] + off, r0, True)"
        elif fa is not None or fb is not None:
            f, idx, tab, row = (fa, t.a, "D1", "i") if fa is not None else (fb, t.b, "D2", "j")
            head = series.HEAD2 if f.kind == "2" else series.HEAD
            val = f"{tab}[{row}, SER_COL[{idx}] + {head} + off]"  # the mean: c_0(0)
        else:
            val = "1.0"
        lines.append(f"    v += {t.coef!r} * {val}")
    return lines + ["    return v", ""]


def render(kp: KernelProgram, use_series: bool = True) -> str:
    """The generated module's source. Names come from the kernel program, never user text.
    use_series=False keeps every quadrature (the NumPy reference's algorithm, for tests)."""
    pr = KernelPrinter()
    if kp.loops:
        lines: list[str] = []
        for q in kp.integrands:
            lines += quad_source(q, pr)
        return _module_text(lines + _render_rolled(kp, pr, use_series))
    kinds = list(kp.outputs)
    needed = kp.diag_needed()
    plan = series.plan(kp, len(needed)) if use_series else series.SeriesPlan((), ())
    lines: list[str] = []
    for q in kp.integrands:
        lines += quad_source(q, pr)
    lines += _series_source(plan, pr)

    outs = [sp.Symbol(f"out_{k}") for k in kinds]
    gd = [f"G{n}" for n in range(len(kp.diag_gram))]
    lines += [PJIT, f"def diag({', '.join(gd + ['THETA', 'D', 'OUT', 'lo', 'hi'])}):",
              "    for i in range(lo, hi):"]
    lines += per_point_body(kp, kinds, needed, outs, pr, "        ")
    for n, f in enumerate(plan.factors):
        var2 = "0.0" if f.var2 is None else pr.doprint(f.var2)
        lines.append(f"        _hc{plan.functions.index((f.fn, f.kind))}({pr.doprint(f.var)}, "
                     f"{var2}, D, i, SER_COL[{n}])")
    for n, o in enumerate(outs):
        lines.append(f"        OUT[i, {n}] = {o}")
    lines += ["    return", ""]

    gc = [f"C{n}" for n in range(len(kp.cross_gram))]
    ks = [f"K{n}" for n in range(len(kinds))]
    args = gc + ["D1", "D2T", "D2"] + ks + ["THETA", "lo", "hi", "col0", "sym"]
    lines += [PJIT, f"def rows({', '.join(args)}):",
              f"    n2 = {ks[0]}.shape[1]",
              "    off = 0  # the series' columns are where the plan put them",
              "    for i in range(lo, hi):"]
    lines += first_point_loads(kp, needed, "        ")
    lines.append("        for j in range(i + 1 if sym else 0, n2):")
    calls = {c.call: sp.Function(c.name)(*c.call.args, *_SERIES_ARGS) for c in plan.calls}
    lines += pair_body(kp, needed, outs, kinds, pr, "            ", "i - lo, j - col0", "i, j",
                       calls)
    lines += ["    return", ""]
    lines += _mirror_lines()
    lines.append(f"KINDS = {tuple(kinds)!r}")
    lines.append(f"N_SCALARS = {len(needed)}  # the columns D2T holds")
    lines.append(f"N_DIAG = {len(needed) + plan.width}")
    return _module_text(lines)


def _module_text(lines: list[str]) -> str:
    head = [f"# generated by tpcompiler {__version__}; do not edit",
            "import math", "", "import numpy as np", "from numba import njit", ""]
    return "\n".join(head + runtime_lines(lines, JIT) + lines) + "\n"


def _mirror_lines() -> list[str]:
    return [PJIT, "def mirror(K, lo, hi):",
            "    # lower triangle from the upper, in tiles so both sides stay in cache",
            "    n = K.shape[0]",
            "    for i0 in range(lo, hi, 64):",
            "        for j0 in range(0, i0 + 64, 64):",
            "            for i in range(i0, min(i0 + 64, hi)):",
            "                for j in range(j0, min(j0 + 64, i)):",
            "                    K[i, j] = K[j, i]",
            "    return", ""]


def _rolled_series(kp: KernelProgram, first_column: int):
    """One series plan for a rolled program: the straight code's calls (factors from
    first_column on), then each loop body's, whose factors' columns count from 0 within a
    layer's group (the generated code adds the layer's offset `off`). Returns the plan, the
    factor index ranges [start, stop) of each loop and, per loop, (first column, columns per
    layer)."""
    straight = series.plan(dataclasses.replace(kp, loops=()), first_column)
    factors, calls = list(straight.factors), list(straight.calls)
    column = first_column + straight.width
    ranges, groups = [], []
    for lp in kp.loops:
        body = series.plan(dataclasses.replace(kp, cross=lp.cross, outputs={}, loops=()), 0)
        shift = len(factors)
        factors += body.factors
        ranges.append((shift, len(factors)))
        for c in body.calls:
            terms = tuple(series.Term(t.coef, None if t.a is None else t.a + shift,
                                      None if t.b is None else t.b + shift) for t in c.terms)
            calls.append(dataclasses.replace(c, name=f"ser{len(calls)}", terms=terms))
        groups.append((column, body.width))
        column += lp.count * body.width
    return series.SeriesPlan(tuple(factors), tuple(calls)), ranges, groups, column


def numba_version() -> str:
    return numba.__version__


#: pairs per block of the rolled pair driver: every piece of straight code and every layer
#: runs over this many pairs at a time, its per-pair values in arrays (structure of arrays)
BLOCK = 256


def _point_reads(assigns, extra=()) -> set:
    names: set = set()
    for _, e in (*assigns, *((None, x) for x in extra)):
        names |= e.free_symbols
    return names


def _rolled_columns(kp: KernelProgram):
    """The per-point table of a rolled program: the fixed columns (per-point values that the
    straight pair code reads, or a loop's body reads unchanged), then per loop `count` groups
    of the values its pair body reads at each layer (the diag body's, and its state's at the
    layer's start). Returns (fixed, per_loop) as symbol lists."""
    def values_read(assigns, extra) -> set:
        return {untwin(s) for s in _point_reads(assigns, extra) if isinstance(s, PointValue)}

    loop_values, reads = [], values_read(kp.cross, [c for _, c in kp.outputs.values()])
    for lp in kp.loops:
        body_reads = values_read(lp.cross, [v for _, v in lp.cross_state])
        mine = [*(s for s, _ in lp.diag_state), *(s for s, _ in lp.diag if is_first_point(s))]
        loop_values.append([s for s in mine if s in body_reads])
        reads |= body_reads - set(mine)
    straight = [g.symbol for g in kp.diag_gram] + [s for s, _ in kp.diag if is_first_point(s)]
    fixed = [s for s in straight if s in reads]
    return fixed, loop_values


def _render_rolled(kp: KernelProgram, pr: KernelPrinter, use_series: bool) -> list[str]:
    """diag and rows drivers of a rolled program (KernelProgram.loops): each loop a `for`
    over its layers. The pair driver runs every piece of straight code and every layer over a
    block of BLOCK pairs of a row, its values carried between pieces in the array P (one row
    per carried value), so the pair loops vectorise at any depth."""
    kinds = list(kp.outputs)
    outs = [sp.Symbol(f"out_{k}") for k in kinds]
    fixed, per_loop = _rolled_columns(kp)
    col = {s: n for n, s in enumerate(fixed)}
    base, bases = len(fixed), []
    for lp, values in zip(kp.loops, per_loop):
        bases.append(base)
        base += lp.count * len(values)
    width = base
    if use_series:
        plan, ranges, groups, total = _rolled_series(kp, width)
    else:
        plan, ranges = series.SeriesPlan((), ()), [(0, 0)] * len(kp.loops)
        groups, total = [(width, 0)] * len(kp.loops), width
    calls = {c.call: sp.Function(c.name)(*c.call.args, *_SERIES_ARGS) for c in plan.calls}
    in_loop = {n for start, stop in ranges for n in range(start, stop)}

    def emit(assigns, indent):
        return [f"{indent}{s} = {pr.doprint(e.xreplace(calls))}" for s, e in assigns]

    def coefficients(numbers, indent, off):
        out = []
        for n in numbers:
            f = plan.factors[n]
            var2 = "0.0" if f.var2 is None else pr.doprint(f.var2)
            out.append(f"{indent}_hc{plan.functions.index((f.fn, f.kind))}({pr.doprint(f.var)}"
                       f", {var2}, D, i, SER_COL[{n}]{off})")
        return out

    lines = _series_source(plan, pr)

    # --- per point
    gd = [f"G{n}" for n in range(len(kp.diag_gram))]
    lines += [PJIT, f"def diag({', '.join(gd + ['THETA', 'D', 'OUT', 'lo', 'hi'])}):",
              "    for i in range(lo, hi):"]
    lines += [f"        {g.symbol} = G{n}[i]" for n, g in enumerate(kp.diag_gram)]
    n = 0
    for assigns, lp in kp.pieces("diag"):
        if lp is None:
            lines += emit(assigns, "        ")
            continue
        values, b, (start, stop), (fb, fw) = per_loop[n], bases[n], ranges[n], groups[n]
        n += 1
        lines.append(f"        for layer in range({lp.count}):")
        lines += emit(assigns, "            ")
        lines += [f"            D[i, {b + m} + layer * {len(values)}] = {s}"
                  for m, s in enumerate(values)]
        lines += coefficients(range(start, stop), "            ", f" + {fb} + layer * {fw}")
        if lp.diag_state:
            lines.append(f"            {', '.join(str(s) for s, _ in lp.diag_state)} = "
                         f"{', '.join(pr.doprint(v) for _, v in lp.diag_state)}")
    lines += emit([(o, kp.outputs[k][0]) for o, k in zip(outs, kinds)], "        ")
    lines += [f"        OUT[i, {n}] = {o}" for n, o in enumerate(outs)]
    lines += [f"        D[i, {n}] = {s}" for n, s in enumerate(fixed)]
    lines += coefficients([n for n in range(len(plan.factors)) if n not in in_loop], "        ",
                          "")
    lines += ["    return", ""]

    # --- per pair: the pieces of straight code between the loops, and the loop bodies
    pieces = []  # (assigns, stores after: [(symbol, value)], loop index or None)
    for m, (assigns, lp) in enumerate(kp.pieces("cross")):
        # straight and loop pieces alternate: the m-th piece is loop (m - 1) / 2 when m is odd
        pieces.append((list(assigns), [], None) if lp is None else
                      (list(assigns), list(lp.cross_state), m // 2))
    pieces[-1][0].extend((o, kp.outputs[k][1]) for o, k in zip(outs, kinds))
    gram = {g.symbol: n for n, g in enumerate(kp.cross_gram)}
    owner: dict = {}
    for p, (assigns, _, _) in enumerate(pieces):
        for s, _ in assigns:
            owner[s] = p
    reads = [_point_reads(a, [v for _, v in st]) for a, st, _ in pieces]
    spilled = sorted({s for p, r in enumerate(reads) for s in r
                      if s in owner and owner[s] != p}
                     | {s for lp in kp.loops for s, _ in lp.cross_state}, key=str)
    slot = {s: n for n, s in enumerate(spilled)}
    gc = [f"C{n}" for n in range(len(kp.cross_gram))]
    ks = [f"K{n}" for n in range(len(kinds))]
    args = gc + ["D1", "D2T", "D2"] + ks + ["THETA", "lo", "hi", "col0", "sym"]
    lines += [PJIT, f"def rows({', '.join(args)}):",
              f"    n2 = {ks[0]}.shape[1]",
              f"    P = np.empty(({max(1, len(spilled))}, {BLOCK}))",
              "    off = 0  # the straight code's series columns are where the plan put them",
              "    for i in range(lo, hi):"]
    first_reads = set().union(*reads)
    clobbered = {s for v in per_loop for s in v}
    lines += [f"        {s} = D1[i, {col[s]}]" for s in fixed if s in first_reads]
    # (measured: column blocks outermost, with the triangle's start max(jlo, i + 1) inside,
    # kept LLVM from vectorising the pair loops: 4.5x slower)
    lines += [f"        for jlo in range(i + 1 if sym else 0, n2, {BLOCK}):",
              f"            jhi = min(jlo + {BLOCK}, n2)"]
    for p, (assigns, stores, n) in enumerate(pieces):
        indent = "            "
        layer_cols = {}
        if n is not None:
            values, b = per_loop[n], bases[n]
            layer_cols = {s: f"{b + m} + layer * {len(values)}" for m, s in enumerate(values)}
        # a state's final value, where an earlier loop's layers loaded its per-layer ones
        lines += [f"{indent}{s} = D1[i, {col[s]}]" for s in fixed
                  if p > 0 and s in reads[p] and s in clobbered and s not in layer_cols]
        if n is not None:
            lines.append(f"{indent}for layer in range({kp.loops[n].count}):")
            indent += "    "
            lines += [f"{indent}{s} = D1[i, {c}]" for s, c in layer_cols.items()
                      if s in reads[p]]
            if groups[n][1]:
                lines.append(f"{indent}off = {groups[n][0]} + layer * {groups[n][1]}")
        elif p > 0 and any(width for _, width in groups):
            lines.append(f"{indent}off = 0")
        lines.append(f"{indent}for j in range(jlo, jhi):")
        indent += "    "
        own = {s for s, _ in assigns}
        for s in sorted(reads[p], key=str):
            if s in own:
                continue
            if s in slot:
                lines.append(f"{indent}{s} = P[{slot[s]}, j - jlo]")
            elif s in gram:
                lines.append(f"{indent}{s} = C{gram[s]}[i - lo, j - col0]")
            elif isinstance(s, PointValue) and s.point == 2:
                c = layer_cols.get(untwin(s))
                lines.append(f"{indent}{s} = D2T[{c if c is not None else col[untwin(s)]}, j]")
        lines += emit(assigns, indent)
        if p == len(pieces) - 1:
            lines += [f"{indent}K{m}[i, j] = {o}" for m, o in enumerate(outs)]
        lines += [f"{indent}P[{slot[s]}, j - jlo] = {s}" for s, _ in assigns
                  if s in slot and n is None]
        lines += [f"{indent}P[{slot[s]}, j - jlo] = {pr.doprint(v)}" for s, v in stores]
    lines += ["    return", ""]
    lines += _mirror_lines()
    lines.append(f"KINDS = {tuple(kinds)!r}")
    lines.append(f"N_SCALARS = {width}  # the columns D2T holds")
    lines.append(f"N_DIAG = {total}")
    return lines
