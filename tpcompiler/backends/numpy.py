"""The reference evaluator: walks the KernelProgram's sympy trees over NumPy arrays.

Slow and simple on purpose: it is the oracle the other backends are tested against. Every
point (diag) or pair (cross) is one element of a broadcast array; helpers run elementwise.
"""

from __future__ import annotations

import contextvars
import functools

import numpy as np
import sympy as sp

from .. import functions as F
from .. import helpers, series
from ..conditional import CUT_ACROSS, NARROW, RESIDUAL_FLOOR, conditional_grid
from ..kernel_program import KernelProgram, QuadCall, twin
from ..quadrature import (
    BOOSTED,
    DEFAULT_ORDER,
    MAX_SPLIT_DIM,
    SPLIT_ORDER,
    SPLIT_RAMP,
    arc_keep,
    careful_rows,
    cholesky_psd,
    grid,
    pieces,
    polar_nodes,
    polar_order,
    rule,
    split_axis,
    split_nodes,
    tensor_order,
    vanishing_arcs,
)
from .coincident import coincident, repeats, settle


def evaluate_expr(e: sp.Expr, env: dict, program: KernelProgram | None = None):
    """Value of a sympy expression over arrays in env (symbol name -> array)."""
    if e.is_Symbol:
        return env[e.name]
    if e.is_Number or e in (sp.pi, sp.E):
        return float(e)
    args = [evaluate_expr(a, env, program) for a in e.args]
    if e.is_Add:
        out = args[0]
        for a in args[1:]:
            out = out + a
        return out
    if e.is_Mul:
        out = args[0]
        for a in args[1:]:
            out = out * a
        return out
    if e.is_Pow:
        base, p = args
        if e.args[1].is_Integer:
            return np.power(base, int(e.args[1]))
        return np.power(base, p)
    fn = F.numpy_function(type(e))
    if fn is not None:
        return fn(*args)
    name = type(e).__name__
    if name in helpers.HELPERS:
        return np.vectorize(helpers.HELPERS[name], otypes=[np.float64])(*args)
    if isinstance(e, QuadCall) and program is not None:
        return _quadrature(program, e.integrand, args, e)
    raise NotImplementedError(f"no numeric rule for {name}")


def _quadrature(program: KernelProgram, qname: str, tri: list, call: sp.Expr | None = None):
    """quad<k>_<name>(lower triangle of C) elementwise over the broadcast pairs, by the
    integrand's rule (quadrature.py), in chunks of pairs that keep the node arrays small; a
    call that the series plan rewrites (series.py) takes the Mehler series as the Numba
    backend does."""
    itg = next(q for q in program.integrands if q.name == qname)
    k = itg.dim
    shape = np.broadcast(*[np.asarray(t) for t in tri]).shape
    c = np.zeros(shape + (k, k))
    pos = 0
    for i in range(k):
        for j in range(i + 1):
            c[..., i, j] = c[..., j, i] = tri[pos]
            pos += 1
    plan = None if not SERIES.get() else _series_calls(program).get(call)
    if BOOST.get() and plan is not None and not plan[0].rhos:
        plan = None  # the probe's reference for a 2-D series is the raised quadrature
    value = expectation(itg, c) if plan is None else _series(plan, itg, c)
    rec = RECORD.get()
    if rec is not None:
        rec.append((itg.name, c.reshape(-1, k, k), np.broadcast_to(value, shape).reshape(-1)))
    return value


#: when set, every quadrature uses the raised orders of quadrature.BOOSTED (and no series):
#: the accuracy probe (tpcompiler/accuracy.py) compares the two evaluations
BOOST: contextvars.ContextVar[bool] = contextvars.ContextVar("BOOST", default=False)
#: cleared, the Mehler series is not used (every expectation by its quadrature rule: what the
#: CUDA backend computes, which has no series)
SERIES: contextvars.ContextVar[bool] = contextvars.ContextVar("SERIES", default=True)
#: when set to a list, every quadrature call appends (integrand name, covariances (n, k, k),
#: values (n,))
RECORD: contextvars.ContextVar[list | None] = contextvars.ContextVar("RECORD", default=None)


_PLANS: dict[int, tuple] = {}


def _series_calls(program: KernelProgram) -> dict:
    """The series plan's calls of this program: call expression -> (SeriesCall, factors)."""
    hit = _PLANS.get(id(program))
    if hit is None or hit[0] is not program:
        plan = series.plan(program, 0)
        hit = (program, {c.call: (c, plan.factors) for c in plan.calls})
        _PLANS.clear()  # one program at a time is enough (and keeps nothing alive)
        _PLANS[id(program)] = hit
    return hit[1]


def _factor_table(fn: sp.Expr, var: np.ndarray) -> np.ndarray:
    """series coefficient rows of fn at each variance (computed once per distinct value)."""
    uniq, inverse = np.unique(var, return_inverse=True)
    z = np.sqrt(np.maximum(uniq, 0.0))[:, None] * series.SER_X[None, :]
    fw = series.SER_W * np.broadcast_to(evaluate_expr(fn, {"z0": z}), z.shape)
    return series.coefficient_table(fw)[inverse.reshape(-1)]


def _vector_table(fn: sp.Expr, kind: str, va: np.ndarray, vb: np.ndarray | None, boost: bool):
    """Coefficient tables (series._vectors) of fn at each point's variances, by the same
    formulas as the Numba backend's _hc<m> and series.hermite_project2, at the production
    orders or (boost) at raised ones: 128 half-range nodes per half-axis and 128 x 128 terms,
    what the accuracy probe compares with. Returns (1-D coefficient rows (n, K), or 2-D tables
    (n, K, K))."""
    x, w = (rule(series.BOOST_NODE_ORDER) if boost else (series.SER_X, series.SER_W))
    vb = np.zeros_like(va) if vb is None else vb
    pairs = np.stack([va, vb], axis=1)
    uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
    sa = np.sqrt(np.maximum(uniq[:, 0], 0.0))[:, None, None]
    sb = np.sqrt(np.maximum(uniq[:, 1], 0.0))[:, None, None]
    if kind == "1":
        z = sa[:, :, 0] * x[None, :]
        fw = w * np.broadcast_to(evaluate_expr(fn, {"z0": z}), z.shape)
        out = fw @ series.hermite_matrix(x, series.K_MAX).T
    else:
        z0, z1 = sa * x[None, :, None], sb * x[None, None, :]
        shape = np.broadcast_shapes(z0.shape, z1.shape)
        grid = np.broadcast_to(evaluate_expr(fn, {"z0": z0, "z1": z1}), shape)
        if kind == "1m":
            out = (w * (grid @ w)) @ series.hermite_matrix(x, series.K_MAX).T
        else:
            h = series.hermite_matrix(x, series.BOOST_NODE_ORDER if boost else series.K2) * w
            out = h @ grid @ h.T
    return out[inverse.reshape(-1)]


def _vector_series(call, factors, c: np.ndarray) -> np.ndarray:
    """E[itg] per pair by the product of Mehler series of series._vectors (the Numba backend's
    ser<n> of a 3-D or 4-D call), every term summed in full (the Numba code cuts where the
    tail bound is below 5e-16 of the scale)."""
    k = c.shape[-1]
    c = c.reshape(-1, k, k)
    boost = BOOST.get()
    order1, order2 = call.order
    shared = len(call.rhos)
    rhos = []
    for m in range(shared):
        a, b = c[:, order1[m], order1[m]], c[:, order2[m], order2[m]]
        pos = (a > 0.0) & (b > 0.0)
        rhos.append(np.clip(np.where(pos, c[:, order1[m], order2[m]]
                                     / np.sqrt(np.where(pos, a * b, 1.0)), 0.0), -1.0, 1.0))
    tables: dict = {}

    def table(index, order):
        if (index, order) not in tables:
            f = factors[index]
            va = c[:, order[0], order[0]]
            vb = c[:, order[1], order[1]] if len(order) == 2 else None
            tables[index, order] = _vector_table(f.fn, f.kind, va, vb, boost)
        return tables[index, order]

    out = np.zeros(c.shape[0])
    for t in call.terms:
        ta = table(t.a, order1) if t.a is not None else None
        tb = table(t.b, order2) if t.b is not None else None
        if ta is not None and tb is not None:
            if ta.ndim == 3:
                v = np.empty(c.shape[0])
                kk = ta.shape[1]
                for lo in range(0, c.shape[0], 256):
                    sl = slice(lo, lo + 256)
                    pa = rhos[0][sl, None] ** np.arange(kk)
                    pb = rhos[1][sl, None] ** np.arange(kk)
                    v[sl] = np.einsum("pmn,pm,pn->p", ta[sl] * tb[sl], pa, pb)
            else:
                v = np.polynomial.polynomial.polyval(rhos[0], (ta * tb).T, tensor=False)
        elif ta is not None:
            v = ta[:, 0, 0] if ta.ndim == 3 else ta[:, 0]
        elif tb is not None:
            v = tb[:, 0, 0] if tb.ndim == 3 else tb[:, 0]
        else:
            v = 1.0
        out += t.coef * v
    return out


def _series(plan, itg, c: np.ndarray) -> np.ndarray:
    """E[itg] per pair by the Mehler series (the Numba backend's ser<n>): the 1-D rule at
    |rho| = 1, the quadrature where the series' tail bound is not met."""
    call, factors = plan
    shape = c.shape[:-2]
    if call.rhos:
        return _vector_series(call, factors, c).reshape(shape)
    c = c.reshape(-1, 2, 2)
    a, ab, b = c[:, 0, 0], c[:, 1, 0], c[:, 1, 1]
    pos = (a > 0.0) & (b > 0.0)
    rho = np.where(pos, ab / np.sqrt(np.where(pos, a * b, 1.0)), 0.0)
    tables: dict = {}
    # terms pair the first point's factor (a) with the second's (b): their variances
    first, second = (b, a) if call.swapped else (a, b)

    def table(side: str, index: int | None, var: np.ndarray):
        if index is None:
            return None
        if (side, index) not in tables:  # a factor may appear in several terms
            tables[side, index] = _factor_table(factors[index].fn, var)
        return tables[side, index]

    out = np.zeros(len(rho))
    for t in call.terms:
        ta, tb = table("a", t.a, first), table("b", t.b, second)
        if ta is not None and tb is not None:
            v = series.hdot_array(ta, tb, rho)
        elif ta is not None:
            v = ta[:, series.HEAD]
        elif tb is not None:
            v = tb[:, series.HEAD]
        else:
            v = 1.0
        out += t.coef * v
    unit = np.abs(rho) >= 1.0 - series.UNIT
    if unit.any():
        sa = np.sqrt(np.maximum(a[unit], 0.0))[:, None] * series.SER_X
        sb = (np.sign(rho[unit]) * np.sqrt(np.maximum(b[unit], 0.0)))[:, None] * series.SER_X
        vals = np.broadcast_to(evaluate_expr(itg.expr, {"z0": sa, "z1": sb}), sa.shape)
        out[unit] = vals @ series.SER_W
    bad = np.isnan(out)
    if bad.any():
        out[bad] = _split(itg, c[bad], careful_rows(itg.expr, itg.dim))
    return out.reshape(shape)


def expectation(itg, c: np.ndarray) -> np.ndarray:
    """E[itg.expr(z)], z ~ N(0, C), for covariances c (..., k, k), by the integrand's rule."""
    shape = c.shape[:-2]
    k = itg.dim
    c = np.asarray(c, dtype=np.float64).reshape(-1, k, k)
    if BOOST.get() and k <= MAX_SPLIT_DIM:
        # raised, the careful split rule is the reference for every rule in 1-D and 2-D:
        # small Gauss-Legendre panels, cut at every affine kink and where smooth functions
        # turn, resolve what the half-range tensor rule does not at large variance
        return _split(itg, c, careful_rows(itg.expr, k)).reshape(shape)
    if itg.breaks:
        return _split(itg, c, itg.breaks).reshape(shape)
    if itg.given:
        step = max(1, _CHUNK // len(conditional_grid(len(itg.pivot), BOOST.get())[1]))
        return np.concatenate([_conditional(itg, c[lo:lo + step])
                               for lo in range(0, c.shape[0], step)]).reshape(shape)
    polar = bool(itg.kinked)
    boost = BOOST.get()
    tnodes, tweights = grid(len(itg.pivot), tensor_order(len(itg.pivot), polar, boost,
                                                         itg.per_point)) \
        if itg.pivot else (np.zeros((1, 0)), np.ones(1))
    per_pair = len(tweights) * (_polar_size(itg) if polar else 1)
    step = max(1, _CHUNK // per_pair)
    out = np.empty(c.shape[0])
    for lo in range(0, c.shape[0], step):
        out[lo:lo + step] = _quad_chunk(itg, c[lo:lo + step], tnodes, tweights)
    return out.reshape(shape)


#: node values evaluated at once (per temporary array of the tree-walk)
_CHUNK = 1 << 21


def _polar_size(itg) -> int:
    nleg, nrad = polar_order(len(itg.pivot), BOOST.get())
    return 2 * len(itg.kink_forms) * nleg * nrad


def _quad_chunk(itg, c: np.ndarray, tnodes: np.ndarray, tweights: np.ndarray) -> np.ndarray:
    """E[f(z)] for covariances c (n, k, k): z = L w, L the Cholesky factor in the order
    kinked + pivot; pairs on axis 0, then polar nodes (if any), then tensor nodes."""
    n = c.shape[0]
    order = list(itg.kinked) + list(itg.pivot)
    low = cholesky_psd(c[:, order][:, :, order])  # (n, k, k)
    env = {}
    if itg.kinked:
        line = low[:, 1, 1] == 0.0
        if line.any() and not BOOST.get():
            # a rank-1 pair: the 1-D rule along w0 (as backends/numba.py's _line_)
            out = np.empty(n)
            out[line] = _line_chunk(itg, low[line], tnodes, tweights)
            if (~line).any():
                out[~line] = _quad_chunk(itg, c[~line], tnodes, tweights)
            return out
        w, wp = polar_nodes(low[:, :2, :2], np.array(itg.kink_forms),
                            polar_order(len(itg.pivot), BOOST.get()))
        zs = np.einsum("nij,npj->npi", low[:, :, :2], w)  # (n, P, k): the pair's part of z
        zt = np.einsum("nij,mj->nmi", low[:, 2:, 2:], tnodes)  # (n, M, t)
        for a, i in enumerate(order):
            if a < 2:
                env[f"z{i}"] = zs[:, :, None, a]  # (n, P, 1)
            else:
                env[f"z{i}"] = zs[:, :, None, a] + zt[:, None, :, a - 2]  # (n, P, M)
        weights = wp[:, :, None] * tweights  # (n, P, M)
        vanishing = vanishing_arcs(itg.expr, itg.kinked, itg.kink_forms)
        if vanishing:  # arcs on which the integrand is 0: no contribution (not even 0 * inf)
            keep = arc_keep(low[:, :2, :2], np.array(itg.kink_forms), vanishing)  # (n, A)
            per_arc = weights.shape[1] // keep.shape[1]
            weights = np.where(np.repeat(keep, per_arc, axis=1)[:, :, None], weights, 0.0)
            env = {name: np.where(np.repeat(keep, per_arc, axis=1)[:, :, None], v, 0.0)
                   for name, v in env.items()}
    else:
        line = low[:, 1, 1] == 0.0 if itg.dim == 2 else np.zeros(n, dtype=bool)
        if line.any() and not BOOST.get():
            # a rank-1 covariance: the 1-D rule along w0 (as backends/numba.py's _line_)
            out = np.empty(n)
            x, wx = rule(DEFAULT_ORDER[1])
            z = low[line][:, :, 0, None] * x  # (m, 2, P)
            env = {f"z{i}": z[:, a, :] for a, i in enumerate(order)}
            out[line] = np.broadcast_to(evaluate_expr(itg.expr, env), z[:, 0, :].shape) @ wx
            if (~line).any():
                out[~line] = _quad_chunk(itg, c[~line], tnodes, tweights)
            return out
        zt = np.einsum("nij,mj->nmi", low, tnodes)  # (n, M, k)
        for a, i in enumerate(order):
            env[f"z{i}"] = zt[:, :, a]
        weights = np.broadcast_to(tweights, (n, len(tweights)))
    vals = np.broadcast_to(evaluate_expr(itg.expr, env), weights.shape)
    return np.sum((vals * weights).reshape(n, -1), axis=-1)


@functools.cache
def _truncated_ufuncs():
    """kink_moment and kink_low of tpcompiler/truncated.py as NumPy ufuncs, compiled by Numba
    from the same sources the generated modules copy (printer.runtime_lines), in a generated
    module of the kernel cache (backends/cache.py), so the compilation is cached across
    processes (np.vectorize over the Python functions took ~10 us a call: minutes for the
    accuracy probe's raised conditional rule)."""
    from . import cache
    from .printer import runtime_lines

    body = ['@vectorize(["f8(' + ", ".join(["f8"] * 10) + ')"], cache=True)',
            "def kink_moment_u(mx, sx, my, ty, uy, p, q, i, j, low):",
            "    return kink_moment(mx, sx, my, ty, uy, p, q, i, j, low)",
            '@vectorize(["f8(f8, f8, f8, f8, f8)"], cache=True)',
            "def kink_low_u(mx, sx, my, ty, uy):",
            "    return kink_low(mx, sx, my, ty, uy)", ""]
    head = ["# generated by tpcompiler: the truncated moments as ufuncs (backends/numpy.py)",
            "import math", "", "from numba import njit, vectorize", ""]
    module = cache.load_module("\n".join(head + runtime_lines(body, "@njit(cache=True)")
                                         + body))
    return module.kink_moment_u, module.kink_low_u


def _kink_moment(*args):
    return _truncated_ufuncs()[0](*(np.asarray(a, dtype=np.float64) for a in args))


def _kink_low(*args):
    return _truncated_ufuncs()[1](*(np.asarray(a, dtype=np.float64) for a in args))


def _conditional(itg, c: np.ndarray) -> np.ndarray:
    """The conditional rule (conditional.conditional) for covariances c (n, k, k): the tensor
    rule over the pivot's whitened coordinates (the 1-D rule along the first when a pair of
    them is rank 1, as the diagonal's integral takes identical points), the given coordinates
    in closed form (truncated.kink_moment): z_given = m + L_gg e, m = L_gp w."""
    n = c.shape[0]
    ns = len(itg.pivot)
    order = list(itg.pivot) + list(itg.given)
    low = cholesky_psd(c[:, order][:, :, order])
    x, wx = conditional_grid(ns, BOOST.get())
    out = np.empty(n)
    line = low[:, 1, 1] == 0.0 if ns == 2 and not BOOST.get() else np.zeros(n, dtype=bool)
    cuts = [_narrow_lines(itg, low[m]) + _pivot_lines(itg, low[m]) for m in range(n)]
    cut = np.array([bool(c) for c in cuts], dtype=bool)
    for sel, (nodes, weights) in ((line & ~cut, _line_nodes()), (~line & ~cut, (x, wx))):
        if sel.any():
            out[sel] = _conditional_at(itg, low[sel], nodes, weights)
    for m in np.flatnonzero(cut):
        nodes = _cut_nodes(cuts[m], ns, line[m], bool(itg.pivot_breaks))
        out[m] = _conditional_at(itg, low[m:m + 1], *nodes)[0]
    return out


def _pivot_lines(itg, low: np.ndarray) -> list:
    """The pivot's own kinks (Integrand.pivot_breaks) in its whitened coordinates w: (beta, c,
    0.0) of {beta . w + c = 0}; a kink constant at this covariance (beta = 0) is none."""
    ns = len(itg.pivot)
    out = []
    for row in itg.pivot_breaks:
        beta = np.array([row[i] for i in itg.pivot]) @ low[:ns, :ns]
        if np.any(beta != 0.0):
            out.append((beta, row[-1], 0.0))
    return out


def _narrow_lines(itg, low: np.ndarray) -> list:
    """The kink forms of the integrand that are narrow in the smooth whitened coordinates w
    at this covariance (conditional.NARROW), narrowest first: (beta, c, width)
    of {beta . w + c = 0}, width = the form's conditional standard deviation / |beta|."""
    ns = len(itg.pivot)
    used = sorted({t[1] for t in itg.given_terms if t[1] >= 0}
                  | {t[4] for t in itg.given_terms if t[4] >= 0})
    out = []
    forms = {}
    for f in used:
        row = np.array([itg.given_forms[f][i] for i in itg.given])
        own = np.array([itg.given_forms[f][i] for i in itg.pivot]) @ low[:ns, :ns]
        forms[f] = (row @ low[ns:, :ns] + own, itg.given_forms[f][-1], row @ low[ns:, ns:])
    candidates = [(beta, c, float(np.sqrt(np.sum(ell * ell))))
                  for beta, c, ell in forms.values()]
    # Y given X for a pair of forms in one term: its residual Y - (ty / sx) X, of standard
    # deviation uy, is narrow where Y is nearly a function of X (nearly collinear points)
    for f, g in sorted({(t[1], t[4]) for t in itg.given_terms if t[1] >= 0 and t[4] >= 0}):
        (bf, cf, lf), (bg, cg, lg) = forms[f], forms[g]
        sf = float(np.sqrt(np.sum(lf * lf)))
        if sf > 0.0:
            ty, uy = _pair_loadings(lf[None], lg[None], np.array([sf]),
                                    np.array([np.sqrt(np.sum(lg * lg))]))
            k = float(ty[0]) / sf
            beta = bg - k * bf
            # two forms that are one form here (identical points) leave a residual of
            # rounding, no line
            scale = float(np.sqrt(np.sum(bg * bg))) + abs(k) * float(np.sqrt(np.sum(bf * bf)))
            if float(np.sqrt(np.sum(beta * beta))) > RESIDUAL_FLOOR * scale:
                candidates.append((beta, cg - k * cf, float(uy[0])))
    for beta, c, size in candidates:
        nb = float(np.sqrt(np.sum(beta * beta)))
        if nb > 0.0 and size <= NARROW * nb:
            out.append((size / nb, beta, c))
    out.sort(key=lambda t: t[0])
    return [(beta, c, width) for width, beta, c in out]


def _ramp(t: float, width: float) -> list[float]:
    """Breaks of a transition of this width centred at t (quadrature.SPLIT_RAMP)."""
    return [t] if width == 0.0 else [t + m * width for m in SPLIT_RAMP]


def _cut_nodes(lines: list, ns: int, line: bool, kinks: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """The smooth coordinates' nodes at the lines {beta . w + c = 0} of relative width W
    (_narrow_lines, then _pivot_lines: kinks, W = 0): rotated so that the first one's normal
    u is an axis, and along u, per node across, the split rule cut at every line's crossing
    and around it (SPLIT_RAMP times the width). Across (ns = 2): the half-range rule where
    the lines are narrow transitions only; where there are kinks (`kinks`), the split rule
    cut where two lines cross and around lines steep across (the along integral has a kink
    or a narrow step there: quadrature.outer_breaks). A rank-1 pair (line): along w0 alone."""
    boost = BOOST.get()
    order = BOOSTED["split"][0] if boost else SPLIT_ORDER[0]
    if line or ns == 1:
        u, perp = np.eye(ns)[0], None
        xb, wb = np.zeros(1), np.ones(1)
    else:
        beta = lines[0][0]
        u = beta / np.sqrt(np.sum(beta * beta))
        perp = np.array([-u[1], u[0]])
        if kinks:
            xb, wb = split_axis(np.array([_across_breaks(lines, u, perp)]).reshape(1, -1),
                                order)
            xb, wb = xb[0], wb[0]
        else:
            xb, wb = rule(CUT_ACROSS + 16 if boost else CUT_ACROSS)
    rows = []
    for b in xb:
        cuts = []
        for beta, c, width in lines:
            along = float(beta @ u)
            if along == 0.0:
                continue
            shift = c + (b * float(beta @ perp) if perp is not None else 0.0)
            cuts += _ramp(-shift / along, width * float(np.sqrt(np.sum(beta * beta)))
                          / abs(along))
        rows.append(cuts)
    size = max(len(r) for r in rows)
    breaks = np.array([r + [np.inf] * (size - len(r)) for r in rows]).reshape(len(rows), -1)
    xa, wa = split_axis(breaks, order)  # (B, M)
    nodes = xa[:, :, None] * u
    if perp is not None:
        nodes = nodes + xb[:, None, None] * perp
    return nodes.reshape(-1, ns), (wa * wb[:, None]).reshape(-1)


def _across_breaks(lines: list, u: np.ndarray, perp: np.ndarray) -> list[float]:
    """Where the integral along u of a function cut at `lines` is not smooth across: where
    two lines cross, and around a line steep across (|along| < |across|: its crossing sweeps
    the along axis within a width |along / across|, plus its own width)."""
    parts = [(float(beta @ u), float(beta @ perp), c, width * float(np.sqrt(np.sum(beta * beta))))
             for beta, c, width in lines]
    out = []
    for i, (ai, bi, ci, _) in enumerate(parts):
        for aj, bj, cj, _ in parts[i + 1:]:
            det = ai * bj - aj * bi
            if det != 0.0:
                out.append((aj * ci - ai * cj) / det)
        if abs(ai) < abs(bi):
            out += _ramp(-ci / bi, (abs(ai) + parts[i][3]) / abs(bi))
    return out


def _line_nodes() -> tuple[np.ndarray, np.ndarray]:
    x, wx = rule(DEFAULT_ORDER[1])
    return np.stack([x, np.zeros_like(x)], axis=1), wx


def _conditional_at(itg, low: np.ndarray, nodes: np.ndarray, weights: np.ndarray):
    ns = len(itg.pivot)
    zt = np.einsum("nij,mj->nmi", low[:, :ns, :ns], nodes)  # (n, M, ns)
    env = {f"z{i}": zt[:, :, a] for a, i in enumerate(itg.pivot)}
    mean = np.einsum("nij,mj->nmi", low[:, ns:, :ns], nodes)  # (n, M, given)
    rows = np.array([[r[i] for i in itg.given] for r in itg.given_forms])  # (F, given)
    const = np.array([r[-1] for r in itg.given_forms])
    own = np.array([[r[i] for i in itg.pivot] for r in itg.given_forms])  # (F, ns)
    mu = mean @ rows.T + zt @ own.T + const  # (n, M, F)
    ell = np.einsum("fa,nab->nfb", rows, low[:, ns:, ns:])  # (n, F, given): loadings
    size = np.sqrt(np.sum(ell * ell, axis=-1))  # (n, F)
    total = np.zeros(zt.shape[:2])
    for rest, f, p, i, g, q, j in itg.given_terms:
        fac = np.broadcast_to(evaluate_expr(rest, env), total.shape)
        if f < 0:
            total += fac
            continue
        sx = size[:, f, None]
        if g < 0:
            total += fac * _kink_moment(mu[:, :, f], sx, 0.0, 0.0, 0.0, p, 0, i, 0, 0.0)
            continue
        ty, uy = _pair_loadings(ell[:, f], ell[:, g], size[:, f], size[:, g])
        forms = (mu[:, :, f], sx, mu[:, :, g], ty[:, None], uy[:, None])
        low = _kink_low(*forms) if i and j else 0.0
        total += fac * _kink_moment(*forms, p, q, i, j, low)
    return total @ weights


def _pair_loadings(lf: np.ndarray, lg: np.ndarray, sf: np.ndarray, sg: np.ndarray):
    """(ty, uy) of Y = my + ty e0 + uy e1 for X = mx + sf e0 (backends/quadsource.py's
    arithmetic): uy from the 2 x 2 determinant, not as a difference of squares."""
    safe = np.where(sf > 0.0, sf, 1.0)
    ty = np.where(sf > 0.0, np.sum(lf * lg, axis=-1) / safe, 0.0)
    if lf.shape[-1] == 1:
        uy = np.where(sf > 0.0, 0.0, sg)
    elif lf.shape[-1] == 2:
        uy = np.where(sf > 0.0, np.abs(lf[:, 0] * lg[:, 1] - lf[:, 1] * lg[:, 0]) / safe, sg)
    else:
        uy = np.where(sf > 0.0, np.sqrt(np.maximum(sg * sg - ty * ty, 0.0)), sg)
    return ty, uy


def _line_chunk(itg, low: np.ndarray, tnodes: np.ndarray, tweights: np.ndarray) -> np.ndarray:
    """A polar integrand at rank-1 pair covariances: w0 by the 1-D rule, w1 = 0, the tensor
    block as in the polar rule."""
    n = low.shape[0]
    order = list(itg.kinked) + list(itg.pivot)
    x, wx = rule(DEFAULT_ORDER[1])
    w = np.zeros((len(x), 2))
    w[:, 0] = x
    zs = np.einsum("nij,pj->npi", low[:, :, :2], w)  # (n, P, k)
    zt = np.einsum("nij,mj->nmi", low[:, 2:, 2:], tnodes)  # (n, M, t)
    env = {}
    for a, i in enumerate(order):
        env[f"z{i}"] = zs[:, :, None, a] if a < 2 else zs[:, :, None, a] + zt[:, None, :, a - 2]
    weights = np.broadcast_to(wx[None, :, None] * tweights, (n, len(x), len(tweights)))
    vals = np.broadcast_to(evaluate_expr(itg.expr, env), weights.shape)
    return np.sum((vals * weights).reshape(n, -1), axis=-1)


def _split(itg, c: np.ndarray, breaks) -> np.ndarray:
    """The split rule (quadrature.split_nodes) at these breaks, one covariance at a time: its
    nodes depend on where each covariance puts the breaks."""
    low = cholesky_psd(c)
    out = np.empty(c.shape[0])
    pending: list = []  # covariances whose nodes wait for one batched evaluation

    def flush():
        z = np.concatenate([p[1] for p in pending])
        vals = _piecewise_values(itg.expr, z)
        at = 0
        for n, zn, wn in pending:
            out[n] = vals[at:at + len(wn)] @ wn
            at += len(wn)
        pending.clear()

    size = 0
    for n in range(c.shape[0]):
        w, wts = split_nodes(low[n], breaks, BOOST.get())
        pending.append((n, w @ low[n].T, wts))
        size += len(wts)
        if size >= _CHUNK:
            flush()
            size = 0
    if pending:
        flush()
    return out


def _piecewise_values(expr: sp.Expr, z: np.ndarray) -> np.ndarray:
    """expr at the nodes z (M, dim), by its form on each node's side of every kink
    (quadrature.pieces) where it has them, as the Numba backend's split rule evaluates it."""
    env = {f"z{i}": z[:, i] for i in range(z.shape[1])}
    forms = pieces(expr)
    if forms is None:
        return np.broadcast_to(evaluate_expr(expr, env), (len(z),))
    kinks, by_side = forms
    sides = np.stack([np.broadcast_to(evaluate_expr(a, env), (len(z),)) > 0.0 for a in kinks])
    code = np.zeros(len(z), dtype=np.int64)
    for row in sides:
        code = 2 * code + row
    out = np.empty(len(z))
    for pattern, form in by_side.items():
        sel = code == int("".join("1" if p else "0" for p in pattern) or "0", 2)
        if sel.any():
            sub = {k: v[sel] for k, v in env.items()}
            out[sel] = np.broadcast_to(evaluate_expr(form, sub), (int(sel.sum()),))
    return out


def _vectors(data: dict, ref):
    arr = data[ref.input]
    return arr if ref.index is None else arr[:, ref.index, :]


def _run(assigns, env, program):
    for s, e in assigns:
        env[s.name] = evaluate_expr(e, env, program)


def diag_values(program: KernelProgram, data: dict) -> dict:
    env = {}
    for g in program.diag_gram:
        a, b = _vectors(data, g.a), _vectors(data, g.b)
        env[g.symbol.name] = np.einsum("nd,nd->n", a, b) / a.shape[-1]
    _run(program.diag, env, program)
    n = next(iter(data.values())).shape[0]
    return {k: np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)) for k, v in env.items()}


def diagonal(program: KernelProgram, data: dict, get=("nngp", "ntk"),
             values: dict | None = None) -> dict[str, np.ndarray]:
    """K(x, x) per point (kind -> (N,)) from the per-point values (diag_values, computed here
    unless given)."""
    values = diag_values(program, data) if values is None else values
    n = next(iter(data.values())).shape[0]
    return {kind: np.array(np.broadcast_to(evaluate_expr(program.outputs[kind][0], values,
                                                         program), (n,)), dtype=np.float64)
            for kind in get}


def evaluate(program: KernelProgram, data1: dict, data2: dict | None = None,
             get=("nngp", "ntk")) -> dict[str, np.ndarray]:
    """Kernels between the points of data1 and data2 (data2=None: data1 with itself).

    data: input name -> (N, d) array for a vector input, (N, T, d) for a sequence input.
    """
    d1 = diag_values(program, data1)
    d2 = d1 if data2 is None else diag_values(program, data2)
    other = data1 if data2 is None else data2
    env = {k: np.asarray(v)[:, None] for k, v in d1.items()}
    env.update({twin(s).name: np.asarray(d2[s.name])[None, :] for s in program.diag_needed()})
    for g in program.cross_gram:
        a, b = _vectors(data1, g.a), _vectors(other, g.b)
        env[g.symbol.name] = a @ b.T / a.shape[-1]
    _run(program.cross, env, program)
    n1 = next(iter(data1.values())).shape[0]
    n2 = next(iter(other.values())).shape[0]
    same, _ = coincident(data1, other, program.inputs)
    rows, cols = repeats(data1, data2, program.inputs)
    out = {}
    diagonals = diagonal(program, data1, get, d1)
    for kind in get:
        cexpr = program.outputs[kind][1]
        k = np.broadcast_to(evaluate_expr(cexpr, env, program), (n1, n2)).astype(np.float64)
        diag = diagonals[kind]
        if data2 is None:
            # the kernel is symmetric; quadratures are not exactly symmetric under swapping the
            # two points (Cholesky order), so take the upper triangle as every backend does
            k = np.triu(k, 1) + np.triu(k, 1).T
        settle(k, diag, same, rows, cols)  # a point given twice is one point
        out[kind] = k
    return out
