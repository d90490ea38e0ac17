"""The pair stage of a spatial program as one generated Numba function: per pair of points,
every statement of the cross block over its (P_a, P_b) array of position pairs, in order, the
conv / pool / flat maps as loops over index tables: O(statements x P^2) memory per thread,
never N^2 P^2 (neural-tangents materialises those and must be batched).

Names in the generated code are the kernel program's symbols (c<i>, d<i>, e<i>) and table
names made from them, never the user's text.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import sympy as sp

from .. import ir
from ..kernel_program import PointValue
from ..passes.spatial import SpatialOp, SpatialProgram
from .printer import KernelPrinter, runtime_lines
from .quadsource import quad_source

PJIT = "@njit(cache=True, nogil=True, error_model='numpy')"
# helpers inlined into the pair loops: a call per position pair costs more than the helper
INLINE = "@njit(cache=True, error_model='numpy', inline='always')"


def _size(grid: tuple[int, ...]) -> int:
    return math.prod(grid) if grid else 1


def shapes(sprog: SpatialProgram) -> tuple[dict, dict]:
    """(per-point symbol -> P, pair symbol -> (P_a, P_b)): the array size of every symbol."""
    point: dict[str, int] = {}
    pair: dict[str, tuple[int, int]] = {}
    for block, s, e in sprog.order:
        if e is None:  # a Gram entry
            ga, gb = sprog.grids[s.name]
            if block == "diag":
                point[s.name] = _size(ga)
            else:
                pair[s.name] = (_size(ga), _size(gb))
            continue
        if isinstance(e, SpatialOp) and e.op in ATTENTION:
            size = _size((e.specs[0] or e.specs[-1]).grid)
            if e.op == "attw1":
                point[s.name] = size * size  # the P x P weights, row by row
            elif e.op == "att2":
                qa, qb = pair[_moment_arg(e).name]
                pair[s.name] = (size if e.specs[0] else qa, size if e.specs[1] else qb)
            else:
                point[s.name] = size
            continue
        if isinstance(e, SpatialOp):
            spec_a, spec_b = e.specs[0], e.specs[-1]
            if e.op in ("flat1", "flat2"):
                out = (1, 1)
            else:
                out = (_size(spec_a.grid_out), _size(spec_b.grid_out))
            if block == "diag":
                point[s.name] = out[0]
            else:
                pair[s.name] = out
            continue
        pa = pb = 1
        for x in e.free_symbols:
            if isinstance(x, PointValue):
                n = point[x.name if x.point == 1 else f"d{x.index}"]
                if block == "diag" or x.point == 1:
                    pa = max(pa, n)
                else:
                    pb = max(pb, n)
            elif x.name in pair:
                pa, pb = max(pa, pair[x.name][0]), max(pb, pair[x.name][1])
        if block == "diag":
            point[s.name] = pa
        else:
            pair[s.name] = (pa, pb)
    return point, pair


#: the attention maps (passes/spatial.py): weights per point, mixes of moments
ATTENTION = ("attw1", "att1", "att2", "attm1")


def _moment_arg(e: SpatialOp) -> sp.Symbol:
    """The moment an att1 / att2 call mixes: the argument after the first side's weights."""
    return e.args[1 if e.specs[0] is not None else 0]


def pad_grid(x: np.ndarray, specs: list[ir.Stencil], lead: int) -> np.ndarray:
    """x (lead axes, then each spec's grid) padded so that output p reads p + o for offset o:
    zeros outside the grid, or the grid wrapped around for padding=circular."""
    widths = [(0, 0)] * lead
    for spec in specs:
        for g_in, g_out, k, low in zip(spec.grid_in, spec.grid_out, spec.size, spec.low):
            widths.append((low, max(0, g_out + k - 2 - low - (g_in - 1))))
    mode = "wrap" if specs[0].padding == "circular" else "constant"
    return np.pad(x, widths, mode=mode)


@functools.cache
def stencil_sources(spec: ir.Stencil) -> tuple[np.ndarray, np.ndarray]:
    """(K, P_out) tables of a stencil: the flat input position each output position reads
    for each filter offset, and whether it is inside the grid (not zero padding)."""
    mark = pad_grid(np.arange(_size(spec.grid_in)).reshape(spec.grid_in) + 1, [spec], 0)
    src, ok = [], []
    for o in np.ndindex(*spec.size):
        win = mark[tuple(slice(i, i + g) for i, g in zip(o, spec.grid_out))].reshape(-1)
        src.append(np.maximum(win - 1, 0))
        ok.append(win > 0)
    return np.array(src, dtype=np.int64), np.array(ok)


@functools.cache
def pool_members(spec: ir.Pool) -> np.ndarray:
    """(P_out, m): the flat input positions of each pooling window (all of them for gap)."""
    p_in = _size(spec.grid_in)
    if not spec.size:
        return np.arange(p_in)[None, :]
    blocks = np.arange(p_in).reshape(spec.grid_in)
    for axis, k in enumerate(spec.size):
        shape = blocks.shape
        blocks = blocks.reshape(shape[:axis] + (shape[axis] // k, k) + shape[axis + 1:])
        blocks = np.moveaxis(blocks, axis + 1, -1)
    return blocks.reshape(_size(spec.grid_out), -1)


def _conv_tables(name: str, spec: ir.Stencil) -> tuple[list[str], str, str]:
    """SRC/OK tables (K, P_out) of a stencil as module constants."""
    src, ok = stencil_sources(spec)
    s, k = f"SRC_{name}", f"OK_{name}"
    # OK as 0.0 / 1.0: a multiplication, not a branch, in the innermost loop
    return ([f"{s} = np.array({src.tolist()!r}, dtype=np.int64)",
             f"{k} = np.array({ok.astype(np.float64).tolist()!r}, dtype=np.float64)"], s, k)


def _pool_table(name: str, spec: ir.Pool) -> tuple[list[str], str]:
    """MEM table (P_out, m): the input positions of each window, as a module constant."""
    t = f"MEM_{name}"
    return [f"{t} = np.array({pool_members(spec).tolist()!r}, dtype=np.int64)"], t


def render(sprog: SpatialProgram) -> tuple[str, dict]:
    """The module source and its layout: the per-point symbols the pair block reads (their
    slots in D1/D2), the Gram inputs in argument order, the kinds in output order."""
    pr = KernelPrinter()
    point, pair = shapes(sprog)
    reads: list[str] = []
    for block, s, e in sprog.order:
        if block == "cross" and e is not None and (not isinstance(e, SpatialOp)
                                                   or e.op == "att2"):
            for x in e.free_symbols:
                if isinstance(x, PointValue):
                    name = f"d{x.index}"
                    if name not in reads:
                        reads.append(name)
    for _, (_, c) in sprog.kernel.outputs.items():
        for x in c.free_symbols:
            if isinstance(x, PointValue) and f"d{x.index}" not in reads:
                reads.append(f"d{x.index}")
    slot = {name: k for k, name in enumerate(reads)}
    grams = list(sprog.kernel.cross_gram)
    inputs = sorted({g.a.input for g in grams} | {g.b.input for g in grams})
    kinds = list(sprog.kernel.outputs)

    head: list[str] = []
    body: list[str] = []
    tables: list[str] = []
    ind = " " * 12
    if diagonal_only(sprog):
        body, head, tables = _render_diagonal(sprog, pair, point, slot, grams, inputs, pr, ind)
    for block, s, e in sprog.order:
        if block != "cross" or diagonal_only(sprog):
            continue
        pa, pb = pair[s.name]
        body.append(f"{ind}# {s.name}: {pa} x {pb}")
        if e is None:
            g = next(g for g in grams if g.symbol == s)
            body += [f"{ind}for p in range({pa}):", f"{ind}    for q in range({pb}):"]
            body += _gram_lines(g, inputs, "q", f"{s.name}[p, q]", ind + "        ")
            head.append(f"    {s.name} = np.empty(({pa}, {pb}))")
            continue
        head.append(f"    {s.name} = np.empty(({pa}, {pb}))")
        if isinstance(e, SpatialOp) and e.op == "att2":
            body += _mix_lines(s.name, e, pair, slot, head, ind)
            continue
        if isinstance(e, SpatialOp):
            src = e.args[0].name
            qa, qb = pair[src]
            if e.op == "conv2":
                la, sa, oka = _conv_tables(f"{s.name}a", e.specs[0])
                lb, sb, okb = _conv_tables(f"{s.name}b", e.specs[1])
                head_tables = la + lb
                body += [f"{ind}{s.name}[:, :] = 0.0",
                         f"{ind}for o in range({e.specs[0].count}):",
                         f"{ind}    for p in range({pa}):",
                         f"{ind}        if {oka}[o, p] == 0:",
                         f"{ind}            continue",
                         f"{ind}        u = {sa}[o, p] if {qa} > 1 else 0",
                         f"{ind}        for q in range({pb}):",
                         f"{ind}            {s.name}[p, q] += {okb}[o, q] * {src}[u, {sb}[o, q]"
                         f" if {qb} > 1 else 0]",
                         f"{ind}{s.name}[:, :] *= {1.0 / e.specs[0].count!r}"]
                tables.extend(head_tables)
            elif e.op == "pool2":
                la, ma = _pool_table(f"{s.name}a", e.specs[0])
                lb, mb = _pool_table(f"{s.name}b", e.specs[1])
                tables.extend(la + lb)
                body += [f"{ind}for p in range({pa}):",
                         f"{ind}    for q in range({pb}):",
                         f"{ind}        acc = 0.0",
                         f"{ind}        for u in {ma}[p]:",
                         f"{ind}            for v in {mb}[q]:",
                         f"{ind}                acc += {src}[u if {qa} > 1 else 0, "
                         f"v if {qb} > 1 else 0]",
                         f"{ind}        {s.name}[p, q] = acc / ({ma}.shape[1] * {mb}.shape[1])"]
            elif e.op == "flat2":
                n = max(qa, qb)
                body += [f"{ind}acc = 0.0",
                         f"{ind}for p in range({n}):",
                         f"{ind}    acc += {src}[p if {qa} > 1 else 0, p if {qb} > 1 else 0]",
                         f"{ind}{s.name}[0, 0] = acc / {n}"]
            else:
                raise AssertionError(e.op)
            continue
        loads = _loads(e, pair, point, slot)
        value = pr.doprint(e.xreplace({x: sp.Symbol(f"{x.name}_", real=True)
                                       for x in e.free_symbols}))
        body += [f"{ind}for p in range({pa}):",
                 f"{ind}    for q in range({pb}):"]
        body += [f"{ind}        {line}" for line in loads]
        body += [f"{ind}        {s.name}[p, q] = {value}"]
    outs = []
    for n, kind in enumerate(kinds):
        c = sprog.kernel.outputs[kind][1]
        loads = _loads(c, pair, point, slot, diag=diagonal_only(sprog))
        value = pr.doprint(c.xreplace({x: sp.Symbol(f"{x.name}_", real=True)
                                       for x in c.free_symbols}))
        outs += [f"{ind}p = 0", f"{ind}q = 0"] + [f"{ind}{line}" for line in loads]
        outs.append(f"{ind}K{n}[i, j] = {value}")
    args = [f"X1_{k}" for k in range(len(inputs))] + [f"X2_{k}" for k in range(len(inputs))]
    args += ["D1", "D2"] + [f"K{n}" for n in range(len(kinds))] + ["lo", "hi", "sym"]
    fn = [PJIT, f"def pairs({', '.join(args)}):"] + head + [
        "    n2 = X2_0.shape[0]" if inputs else "    n2 = D2.shape[0]",
        "    for i in range(lo, hi):",
        "        for j in range(i if sym else 0, n2):"] + body + outs
    quads = [line for q in sprog.kernel.integrands for line in quad_source(q, pr)]
    gen = quads + fn
    text = "\n".join(["import math", "import numpy as np", "from numba import njit", ""]
                     + runtime_lines(gen, INLINE) + [""]
                     + tables + [""] + gen) + "\n"
    return text, {"reads": reads, "inputs": inputs, "kinds": kinds,
                  "width": max([point[r] for r in reads] or [1])}


def _mix_lines(name: str, e: SpatialOp, pair: dict, slot: dict, head: list,
               ind: str) -> list[str]:
    """name = A M B^T for a pair (att2): A the first point's weights (row p at D1[i, slot,
    p * P:(p + 1) * P]), B the second's; a side without attention is left as it is, and
    weights given as a number (constant logits) are the uniform 1 / P."""
    left, right = e.specs
    args = list(e.args)
    wa = args.pop(0) if left is not None else None
    wb = args.pop() if right is not None else None
    src = args[0].name
    qa, qb = pair[src]
    pa, pb = pair[name]
    size = _size((left or right).grid)

    def weight(w, table: str, row: str, col: str) -> str:
        if w.is_Number:
            return repr(1.0 / size)
        point = "i" if table == "D1" else "j"
        return f"{table}[{point}, {slot[f'd{w.index}']}, {row} * {size} + {col}]"

    lines = [f"{ind}# {name}: attention, {pa} x {pb}"]
    m = f"{src}[u if {qa} > 1 else 0, v if {qb} > 1 else 0]"
    if wa is not None:
        nb = size if wb is not None else qb
        head.append(f"    T_{name} = np.empty(({pa}, {nb}))")
        lines += [f"{ind}for p in range({pa}):",
                  f"{ind}    for v in range({nb}):",
                  f"{ind}        acc = 0.0",
                  f"{ind}        for u in range({size}):",
                  f"{ind}            acc += {weight(wa, 'D1', 'p', 'u')} * {m}",
                  f"{ind}        T_{name}[p, v] = acc"]
        m = f"T_{name}[p, v]"
    else:
        m = f"{src}[p if {qa} > 1 else 0, v if {qb} > 1 else 0]"
    if wb is None:
        return lines + [f"{ind}for p in range({pa}):",
                        f"{ind}    for v in range({pb}):",
                        f"{ind}        {name}[p, v] = {m}"]
    return lines + [f"{ind}for p in range({pa}):",
                    f"{ind}    for q in range({pb}):",
                    f"{ind}        acc = 0.0",
                    f"{ind}        for v in range({size}):",
                    f"{ind}            acc += {m} * {weight(wb, 'D2', 'q', 'v')}",
                    f"{ind}        {name}[p, q] = acc"]


def _loads(e: sp.Expr, pair: dict, point: dict, slot: dict, diag: bool = False) -> list[str]:
    """Scalar loads of an elementwise statement's symbols at position pair (p, q); in the
    diagonal mode every pair array is 1-D over p = q."""
    out = []
    for x in sorted(e.free_symbols, key=lambda s: s.name):
        if isinstance(x, PointValue):
            base = f"d{x.index}"
            n = point[base]
            if x.point == 1:
                out.append(f"{x.name}_ = D1[i, {slot[base]}, {'p' if n > 1 else '0'}]")
            else:
                out.append(f"{x.name}_ = D2[j, {slot[base]}, {'q' if n > 1 else '0'}]")
        elif diag:
            out.append(f"{x.name}_ = {x.name}[{'p' if max(pair[x.name]) > 1 else '0'}]")
        else:
            pa, pb = pair[x.name]
            out.append(f"{x.name}_ = {x.name}[{'p' if pa > 1 else '0'}, "
                       f"{'q' if pb > 1 else '0'}]")
    return out


def _gram_lines(g, inputs: list, second: str, target: str, ind: str) -> list[str]:
    """target = <x_a(i) at p, x_b(j) at `second`>/C (a sequence step's index when fixed)."""
    a, b = f"X1_{inputs.index(g.a.input)}", f"X2_{inputs.index(g.b.input)}"
    ra = "p" if g.a.index is None else str(g.a.index)
    rb = second if g.b.index is None else str(g.b.index)
    return [f"{ind}acc = 0.0",
            f"{ind}for k in range({a}.shape[2]):",
            f"{ind}    acc += {a}[i, {ra}, k] * {b}[j, {rb}, k]",
            f"{ind}{target} = acc / {a}.shape[2]"]


def diagonal_only(sprog: SpatialProgram) -> bool:
    """Whether the pair block needs only each pair's position-diagonal: no pooling (a conv
    maps position pairs (p, q) from (p + o, q + o), keeping q - p; flat reads q = p), every
    conv the same filter on both sides and every pair array on one grid (Novak et al. 2019's
    Flatten networks: P values per pair, not P^2)."""
    for block, s, e in sprog.order:
        if block != "cross":
            continue
        if e is None:
            ga, gb = sprog.grids[s.name]
            if ga != gb:
                return False
        elif isinstance(e, SpatialOp) and (e.op in ("pool2", "att2")
                                           or e.specs[0] != e.specs[-1]):
            return False
    return True


def _render_diagonal(sprog, pair, point, slot, grams, inputs, pr, ind):
    body: list[str] = []
    head: list[str] = []
    tables: list[str] = []
    for block, s, e in sprog.order:
        if block != "cross":
            continue
        n = max(pair[s.name])
        head.append(f"    {s.name} = np.empty({n})")
        body.append(f"{ind}# {s.name}: the diagonal, {n}")
        if e is None:
            g = next(g for g in grams if g.symbol == s)
            body += [f"{ind}for p in range({n}):"]
            body += _gram_lines(g, inputs, "p", f"{s.name}[p]", ind + "    ")
        elif isinstance(e, SpatialOp):
            src = e.args[0].name
            m = max(pair[src])
            if e.op == "conv2":
                lines, st, ok = _conv_tables(s.name, e.specs[0])
                tables.extend(lines)
                body += [f"{ind}for p in range({n}):",
                         f"{ind}    acc = 0.0",
                         f"{ind}    for o in range({e.specs[0].count}):",
                         f"{ind}        if {ok}[o, p] != 0:",
                         f"{ind}            acc += {src}[{st}[o, p] if {m} > 1 else 0]",
                         f"{ind}    {s.name}[p] = acc * {1.0 / e.specs[0].count!r}"]
            else:  # flat2
                body += [f"{ind}acc = 0.0",
                         f"{ind}for p in range({m}):",
                         f"{ind}    acc += {src}[p if {m} > 1 else 0]",
                         f"{ind}{s.name}[0] = acc / {m}"]
        else:
            loads = _loads(e, pair, point, slot, diag=True)
            value = pr.doprint(e.xreplace({x: sp.Symbol(f"{x.name}_", real=True)
                                           for x in e.free_symbols}))
            body += [f"{ind}for p in range({n}):", f"{ind}    q = p"]
            body += [f"{ind}    {line}" for line in loads]
            body += [f"{ind}    {s.name}[p] = {value}"]
    return body, head, tables

