"""The evaluator of spatial programs (passes/spatial.py): NumPy over blocks of points and
pairs, each value an array over position pairs.

Per-point stage, over chunks of points: per-point statements as arrays (n, P) (P = 1 for a
plain vector); the pair statements that a pooled per-point value reads at (x, x), as (n, P, P),
their position-diagonal replaced by the per-point values. Pair stage, over blocks of pairs:
arrays (b1, b2, P, P), the first point's per-point values as (b1, 1, P, 1), the second's as
(1, b2, 1, P). Memory is bounded by the block sizes, never N^2 P^2.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import numpy as np
import sympy as sp

from .. import ir
from ..kernel_program import QuadCall
from ..passes.spatial import SpatialOp, SpatialProgram
from ..verify import READS_PAIRS
from . import cache, stencil
from . import numpy as npb
from .coincident import coincident, repeats, settle
from .printer import KernelPrinter, runtime_lines
from .quadsource import quad_source
from .runner import pool_map

#: elements of one pair-stage array (b1 * b2 * P^2): ~16 MB of float64 per live value
BLOCK_ELEMENTS = 1 << 21
#: elements of one per-point-stage array (n * P^2)
POINT_ELEMENTS = 1 << 21


# --- the linear maps -------------------------------------------------------------------------

def _offsets(spec: ir.Stencil):
    return np.ndindex(*spec.size)


def _conv1(spec: ir.Stencil, x: np.ndarray) -> np.ndarray:
    """(..., P_in) -> (..., P_out): the position-diagonal of a conv."""
    x = _spread(x, math.prod(spec.grid_in), 1)
    lead = x.ndim - 1
    xp = stencil.pad_grid(x.reshape(x.shape[:-1] + spec.grid_in), [spec], lead)
    out = np.zeros(x.shape[:-1] + spec.grid_out)
    for o in _offsets(spec):
        out += xp[(Ellipsis, *(slice(i, i + g) for i, g in zip(o, spec.grid_out)))]
    return out.reshape(x.shape[:-1] + (-1,)) / spec.count


def _conv2(sa: ir.Stencil, sb: ir.Stencil, x: np.ndarray) -> np.ndarray:
    """(..., Pa_in, Pb_in) -> (..., Pa_out, Pb_out): both axes by the same filter offset."""
    x = _spread(x, math.prod(sa.grid_in), 2, math.prod(sb.grid_in))
    lead = x.ndim - 2
    xp = stencil.pad_grid(x.reshape(x.shape[:-2] + sa.grid_in + sb.grid_in), [sa, sb], lead)
    out = np.zeros(x.shape[:-2] + sa.grid_out + sb.grid_out)
    for o in _offsets(sa):
        out += xp[(Ellipsis, *(slice(i, i + g) for i, g in zip(o, sa.grid_out)),
                   *(slice(i, i + g) for i, g in zip(o, sb.grid_out)))]
    return out.reshape(x.shape[:-2] + (math.prod(sa.grid_out), math.prod(sb.grid_out))) \
        / sa.count


@functools.cache
def pool_matrix(spec: ir.Pool) -> np.ndarray:
    """(P_out, P_in): the block means (all positions for gap)."""
    members = stencil.pool_members(spec)
    out = np.zeros((members.shape[0], math.prod(spec.grid_in)))
    out[np.repeat(np.arange(members.shape[0]), members.shape[1]), members.ravel()] = \
        1.0 / members.shape[1]
    return out


def _spread(x, pa: int, axes: int, pb: int | None = None) -> np.ndarray:
    """x with its trailing position axes at full size (a constant is the same everywhere)."""
    x = np.asarray(x, dtype=np.float64)
    if axes == 1:
        return np.broadcast_to(x, x.shape[:-1] + (pa,)) if x.shape[-1] == 1 else x
    if x.shape[-2:] == (pa, pb):
        return x
    return np.broadcast_to(x, x.shape[:-2] + (pa, pb))


def softmax_rows(logits, spec: ir.Attend) -> np.ndarray:
    """(..., P, P) logits at one point -> (..., P * P) attention weights, each row p a
    softmax over j (the largest logit subtracted first: exp never overflows)."""
    p = math.prod(spec.grid)
    x = _spread(logits, p, 2, p)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).reshape(x.shape[:-2] + (p * p,))


def _weights(w, spec: ir.Attend, pair: bool) -> np.ndarray:
    """Attention weights as (..., P, P): from a per-point array (..., P * P), or (pair) from
    a pair's view of one (..., P * P, 1) for the first point or (..., 1, P * P) for the
    second; a number (constant logits) is the uniform average."""
    p = math.prod(spec.grid)
    if np.ndim(w) == 0:
        return np.full((p, p), 1.0 / p)
    w = np.asarray(w, dtype=np.float64)
    lead = w.shape[:-2] if pair else w.shape[:-1]
    return w.reshape(lead + (p, p))


def _attend(call: SpatialOp, args: list) -> np.ndarray:
    """att2: A M B^T of a pair's moment M; att1: its position-diagonal at one point (M the
    pair statement read at (x, x), then its per-point diagonal, unused here); a side whose
    spec is None is left as it is."""
    left, right = call.specs
    pair = call.op == "att2"
    args = list(args)
    a = _weights(args.pop(0), left, pair) if left is not None else None
    b = _weights(args.pop(), right, pair) if right is not None else None
    m = np.asarray(args[0], dtype=np.float64)
    m = m.reshape(m.shape if m.ndim >= 2 else (1, 1))
    p = math.prod((left or right).grid)
    m = _spread(m, p if a is not None or not pair else m.shape[-2], 2,
                p if b is not None or not pair else m.shape[-1])
    if a is not None:
        m = a @ m
    if b is not None:
        m = m @ np.swapaxes(b, -1, -2)
    return np.diagonal(m, axis1=-2, axis2=-1) if not pair else m


def apply(call: SpatialOp, args: list) -> np.ndarray:
    op, specs = call.op, call.specs
    if op == "attw1":
        return softmax_rows(args[0], specs[0])
    if op in ("att1", "att2"):
        return _attend(call, args)
    if op == "attm1":
        mean = _spread(np.asarray(args[1], dtype=np.float64), math.prod(specs[0].grid), 1)
        return np.einsum("...pj,...j->...p", _weights(args[0], specs[0], False), mean)
    if op == "conv1":
        return _conv1(specs[0], args[0])
    if op == "conv2":
        return _conv2(specs[0], specs[1], args[0])
    if op == "mean1":
        a = pool_matrix(specs[0])
        return _spread(args[0], a.shape[1], 1) @ a.T
    if op == "pool2":
        a, b = pool_matrix(specs[0]), pool_matrix(specs[1])
        return a @ _spread(args[0], a.shape[1], 2, b.shape[1]) @ b.T
    if op == "pool1":
        a = pool_matrix(specs[0])
        full = _spread(args[0], a.shape[1], 2, a.shape[1])
        return np.einsum("ip,...pq,iq->...i", a, full, a)
    if op == "flat2":
        p = math.prod(specs[0].grid_in)
        x = _spread(args[0], p, 2, p)
        return np.einsum("...pp->...", x)[..., None, None] / p
    if op == "flat1":
        p = math.prod(specs[0].grid_in)
        return _spread(args[0], p, 1).mean(axis=-1, keepdims=True)
    raise AssertionError(op)


# --- the two stages --------------------------------------------------------------------------

def _flat(arr: np.ndarray, inp: ir.Input, ref: ir.InputRef) -> np.ndarray:
    """(n, P, C) vectors of an input reference (P = 1 for one vector)."""
    if ref.index is not None:
        return arr[:, ref.index, None, :]
    if inp.grid or inp.length is not None:
        return arr.reshape(len(arr), -1, arr.shape[-1])
    return arr[:, None, :]


def _gram(entry, first: dict, second: dict, inputs: dict, spec: str) -> np.ndarray:
    """<x_a, x_b>/C over channels at positions (p, q) (einsum `spec` sets which)."""
    a = _flat(first[entry.a.input], inputs[entry.a.input], entry.a)
    b = _flat(second[entry.b.input], inputs[entry.b.input], entry.b)
    return np.einsum(spec, a, b) / a.shape[-1]


def _value(sprog: SpatialProgram, expr, env: dict, name: str | None = None):
    if isinstance(expr, SpatialOp):
        return apply(expr, [env[a.name] if not a.is_Number else float(a) for a in expr.args])
    ufunc = _ufuncs(sprog).get(name) if name is not None and _FAST.get() else None
    if ufunc is not None and not (ufunc[2] and npb.BOOST.get()):
        fn, args, quad = ufunc
        if quad and _SAMPLES.get() is not None:
            _sample(sprog, expr, env)
        return fn(*[env[a] for a in args])
    return npb.evaluate_expr(expr, env, sprog.kernel)


def ufunc_source(sprog: SpatialProgram) -> tuple[str, dict[str, tuple[str, ...]]]:
    """A module of one Numba ufunc per elementwise statement (the spatial arrays broadcast
    through it: no temporaries per operation, no Python per element), named after the IR's
    symbols; quadratures stay with the NumPy evaluator."""
    printer = KernelPrinter()
    body, table = [], {}
    stmts = [(s, e) for _, s, e in sprog.order if e is not None]
    stmts += [(sp.Symbol(f"out_{k}_{b}"), pair[b]) for k, pair in sprog.kernel.outputs.items()
              for b in (0, 1)]
    for s, e in stmts:
        if isinstance(e, SpatialOp) or not e.free_symbols or e.is_Symbol:
            continue
        args = tuple(sorted(x.name for x in e.free_symbols))
        sig = f"float64({', '.join(['float64'] * len(args))})"
        body += [f"@vectorize(['{sig}'], cache=True)", f"def f_{s.name}({', '.join(args)}):",
                 f"    return {printer.doprint(e)}", ""]
        table[s.name] = (args, e.has(QuadCall))
    quads = [line for q in sprog.kernel.integrands for line in quad_source(q, printer)]
    body = quads + [""] + body
    head = ["import math", "import numpy as np", "from numba import njit, vectorize", ""]
    return "\n".join(head + runtime_lines(body, "@njit(cache=True, error_model='numpy')")
                     + [""] + body), table


_UFUNCS: dict[int, tuple] = {}
_FAST: contextvars.ContextVar[bool] = contextvars.ContextVar("_FAST", default=True)
#: when set to a dict, every quadrature call of the fast path adds (up to SAMPLE_EACH of) the
#: covariance matrices it integrates at: integrand name -> list of (m, k, k) arrays
_SAMPLES: contextvars.ContextVar[dict | None] = contextvars.ContextVar("_SAMPLES", default=None)
SAMPLE_EACH = 24


def _sample(sprog: SpatialProgram, expr, env) -> None:
    """The covariances of expr's quadrature calls: the extremes of every entry and of the
    correlations, and evenly spaced others."""
    for call in expr.atoms(QuadCall):
        tri = [np.asarray(npb.evaluate_expr(a, env, sprog.kernel), dtype=np.float64)
               for a in call.args]
        shape = np.broadcast_shapes(*[t.shape for t in tri])
        tri = np.stack([np.broadcast_to(t, shape).reshape(-1) for t in tri], axis=1)
        k = call.dim
        pick = set(np.linspace(0, len(tri) - 1, SAMPLE_EACH // 2).astype(int).tolist())
        for col in range(tri.shape[1]):
            pick |= {int(np.argmax(tri[:, col])), int(np.argmin(tri[:, col]))}
        rows = tri[sorted(pick)][: SAMPLE_EACH * 4]
        c = np.zeros((len(rows), k, k))
        pos = 0
        for i in range(k):
            for j in range(i + 1):
                c[:, i, j] = c[:, j, i] = rows[:, pos]
                pos += 1
        _SAMPLES.get().setdefault(call.integrand, []).append(c)


def quadrature_changes(sprog: SpatialProgram, data: dict, get) -> dict[str, tuple]:
    """Integrand name -> (largest |production - raised orders|, largest |value|) over the
    covariances its calls meet on these data (sampled, `_sample`)."""
    samples: dict = {}
    token = _SAMPLES.set(samples)
    try:
        evaluate(sprog, data, None, get)
    finally:
        _SAMPLES.reset(token)
    out = {}
    for q in sprog.kernel.integrands:
        if q.name not in samples:
            continue
        c = np.concatenate(samples[q.name])
        with _no_series():
            base = npb.expectation(q, c)
            boost = npb.BOOST.set(True)
            try:
                high = npb.expectation(q, c)
            finally:
                npb.BOOST.reset(boost)
        out[q.name] = (float(np.abs(base - high).max()), float(np.abs(high).max()))
    return out


def _ufuncs(sprog: SpatialProgram) -> dict:
    hit = _UFUNCS.get(id(sprog))
    if hit is None or hit[0] is not sprog:
        source, table = ufunc_source(sprog)
        module = cache.load_module(source)
        hit = (sprog, {name: (getattr(module, f"f_{name}"), args, quad)
                       for name, (args, quad) in table.items()})
        _UFUNCS[id(sprog)] = hit
    return hit[1]


def per_point(sprog: SpatialProgram, data: dict) -> dict[str, np.ndarray]:
    """Per-point values, name -> (N, P), over chunks of points."""
    n = len(next(iter(data.values())))
    inputs = {i.name: i for i in sprog.inputs}
    biggest = max([1] + [math.prod(g) for gs in sprog.grids.values() for g in gs if g])
    step = max(1, POINT_ELEMENTS // (biggest * biggest))
    out: dict[str, list] = {}
    grams = {e.symbol.name: e for e in (*sprog.kernel.diag_gram, *sprog.kernel.cross_gram)}
    for lo in range(0, n, step):
        chunk = {k: v[lo:lo + step] for k, v in data.items()}
        m = len(next(iter(chunk.values())))
        env: dict[str, np.ndarray] = {}
        pair: dict[str, np.ndarray] = {}
        for block, s, expr in sprog.order:
            if block == "diag":
                if expr is None:
                    val = _gram(grams[s.name], chunk, chunk, inputs, "npc,npc->np")
                else:
                    val = _value(sprog, expr, env if not isinstance(expr, SpatialOp)
                                 or expr.op not in READS_PAIRS else {**env, **pair}, s.name)
                env[s.name] = np.broadcast_to(np.asarray(val, dtype=np.float64), (m, 1)) \
                    if np.ndim(val) == 0 else np.asarray(val, dtype=np.float64)
                if env[s.name].ndim == 1:
                    env[s.name] = env[s.name][:, None]
                continue
            if s.name not in sprog.pointwise:
                continue
            if expr is None:
                val = _gram(grams[s.name], chunk, chunk, inputs, "npc,nqc->npq")
            else:
                val = _value(sprog, expr, _pair_env(env, pair, None), s.name)
            val = np.array(np.broadcast_to(val, np.broadcast_shapes(np.shape(val), (m, 1, 1))))
            d = sprog.exact.get(s.name)
            if d is not None and val.shape[-1] == val.shape[-2] and d.name in env:
                diag = np.broadcast_to(env[d.name], val.shape[:-1])
                i = np.arange(val.shape[-1])
                val[..., i, i] = diag
            pair[s.name] = val
        for k, v in env.items():
            out.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in out.items()}


class _PairEnv(dict):
    """Symbol name -> array for a pair statement: pair values as they are, per-point values of
    the first point (d_i) as (..., P, 1) and of the second (e_i) as (..., 1, P)."""

    def __init__(self, first: dict, second: dict, pair: dict):
        super().__init__(pair)
        self.first, self.second = first, second

    def __missing__(self, name: str):
        if name[0] == "d" and name in self.first:
            v = self.first[name]
            return v[..., :, None]
        if name[0] == "e" and "d" + name[1:] in self.second:
            v = self.second["d" + name[1:]]
            return v[..., None, :]
        raise KeyError(name)


def _pair_env(first: dict, pair: dict, second: dict | None) -> _PairEnv:
    return _PairEnv(first, first if second is None else second, pair)


def _fused(sprog: SpatialProgram):
    hit = _STENCILS.get(id(sprog))
    if hit is None or hit[0] is not sprog:
        source, layout = stencil.render(sprog)
        hit = (sprog, cache.load_module(source), layout)
        _STENCILS[id(sprog)] = hit
    return hit[1], hit[2]


_STENCILS: dict[int, tuple] = {}
#: rows of the first data set per task of the pair stage's thread pool
ROWS_PER_TASK = 8


def _pairs_fused(sprog, data1, data2, d1, d2, get, out) -> None:
    module, layout = _fused(sprog)
    other = data1 if data2 is None else data2

    def xs(data):
        return [np.ascontiguousarray(_points(data[name])) for name in layout["inputs"]]

    def table(d, n):
        t = np.zeros((n, max(1, len(layout["reads"])), layout["width"]))
        for k, name in enumerate(layout["reads"]):
            v = np.asarray(d[name])
            t[:, k, :v.shape[1]] = v
        return t

    n1 = len(next(iter(data1.values())))
    n2 = len(next(iter(other.values())))
    x1, x2 = xs(data1), xs(other)
    t1 = table(d1, n1)
    t2 = t1 if data2 is None else table(d2, n2)
    ks = [out[k] for k in layout["kinds"]]
    tasks = [(lo, min(lo + ROWS_PER_TASK, n1)) for lo in range(0, n1, ROWS_PER_TASK)]
    pool_map(lambda lo, hi: module.pairs(*x1, *x2, t1, t2, *ks, lo, hi, data2 is None), tasks,
             None, n1)


def _points(arr: np.ndarray) -> np.ndarray:
    """(N, positions or steps, C) for the pair function (a plain vector: one position)."""
    return arr.reshape(len(arr), -1, arr.shape[-1]) if arr.ndim > 2 else arr[:, None, :]


def pairs(sprog: SpatialProgram, data1: dict, data2: dict | None, d1: dict, d2: dict | None,
          get) -> dict[str, np.ndarray]:
    """Kernels between the points of data1 and data2 (data2 None: data1 with itself)."""
    other = data1 if data2 is None else data2
    d2 = d1 if data2 is None else d2
    n1 = len(next(iter(data1.values())))
    n2 = len(next(iter(other.values())))
    if _FAST.get() and not npb.BOOST.get() and _SAMPLES.get() is None:
        out = {k: np.zeros((n1, n2)) for k in sprog.kinds}
        _pairs_fused(sprog, data1, data2, d1, d2, get, out)
        return _settled(sprog, out, data1, data2, d1, get)
    inputs = {i.name: i for i in sprog.inputs}
    grams = {e.symbol.name: e for e in sprog.kernel.cross_gram}
    biggest = max([1] + [math.prod(g) for gs in sprog.grids.values() for g in gs if g])
    side = max(1, int(math.sqrt(BLOCK_ELEMENTS / (biggest * biggest))))
    out = {k: np.zeros((n1, n2)) for k in get}
    cross = [(s, e) for block, s, e in sprog.order if block == "cross"]
    for i0 in range(0, n1, side):
        for j0 in range(i0 if data2 is None else 0, n2, side):
            a_pts = {k: v[i0:i0 + side] for k, v in data1.items()}
            b_pts = {k: v[j0:j0 + side] for k, v in other.items()}
            first = {k: v[i0:i0 + side][:, None] for k, v in d1.items()}
            second = {k: v[j0:j0 + side][None, :] for k, v in d2.items()}
            env = _PairEnv(first, second, {})
            for s, expr in cross:
                if expr is None:
                    env[s.name] = _gram(grams[s.name], a_pts, b_pts, inputs, "ipc,jqc->ijpq")
                else:
                    env[s.name] = _value(sprog, expr, env, s.name)
            for kind in get:
                v = _value(sprog, sprog.kernel.outputs[kind][1], env, f"out_{kind}_1")
                b1 = len(next(iter(a_pts.values())))
                b2 = len(next(iter(b_pts.values())))
                out[kind][i0:i0 + b1, j0:j0 + b2] = np.broadcast_to(
                    np.asarray(v, dtype=np.float64).reshape(np.shape(v)[:2] or (1, 1)),
                    (b1, b2))
    return _settled(sprog, out, data1, data2, d1, get)


def _settled(sprog, out, data1, data2, d1, get) -> dict[str, np.ndarray]:
    other = data1 if data2 is None else data2
    same, _ = coincident(data1, other, sprog.inputs)
    rows, cols = repeats(data1, data2, sprog.inputs)
    out = {k: out[k] for k in get}
    diagonals = _outputs(sprog, d1, data1, get)
    for kind in get:
        k = out[kind]
        if data2 is None:
            k[:] = np.triu(k, 1) + np.triu(k, 1).T
        settle(k, diagonals[kind], same, rows, cols)
    return out


def _outputs(sprog, d: dict, data: dict, get) -> dict[str, np.ndarray]:
    """The kernels at (x, x), kind -> (N,), from the per-point values d."""
    n = len(next(iter(data.values())))
    return {k: np.asarray(d[sprog.kernel.outputs[k][0].name]).reshape(n) for k in get}


@contextlib.contextmanager
def _mode(fast: bool):
    """fast: elementwise statements through the generated Numba ufuncs (else the NumPy
    reference evaluator walks them); no Mehler series either way."""
    token = _FAST.set(fast)
    try:
        with _no_series():
            yield
    finally:
        _FAST.reset(token)


def evaluate(sprog: SpatialProgram, data1: dict, data2: dict | None = None,
             get=("nngp", "ntk"), fast: bool = True) -> dict[str, np.ndarray]:
    """Kernels between the points of data1 and data2 (data2 None: data1 with itself); fast as
    in _mode."""
    with _mode(fast):
        d1 = per_point(sprog, data1)
        d2 = None if data2 is None else per_point(sprog, data2)
        return pairs(sprog, data1, data2, d1, d2, get)


def diagonal(sprog: SpatialProgram, data: dict, get=("nngp", "ntk"),
             fast: bool = True) -> dict[str, np.ndarray]:
    """K(x, x) per point (kind -> (N,)): the per-point stage alone."""
    with _mode(fast):
        d = per_point(sprog, data)
    return {k: v.copy() for k, v in _outputs(sprog, d, data, get).items()}


class _no_series:
    """The Mehler series plans read the scalar kernel program's layout: spatial programs take
    every expectation by its quadrature rule."""

    def __enter__(self):
        self.token = npb.SERIES.set(False)

    def __exit__(self, *exc):
        npb.SERIES.reset(self.token)

