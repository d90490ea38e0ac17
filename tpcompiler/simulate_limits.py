"""Finite-width runs of a program's reports: every matrix drawn (entries N(0, var / columns)),
every vector computed in the program's order (transposes as transposes), each report the mean
of its vector's coordinates. What `tpc check` compares the limits with."""

from __future__ import annotations

import numpy as np
import sympy as sp

from . import ir
from .backends.numpy import evaluate_expr
from .errors import TPError


def size(width: sp.Expr, n: int) -> int:
    """The number of coordinates of a vector of width `width` n at base width n (rounded:
    the ratio is met up to O(1/n), below the O(n^-1/2) fluctuations)."""
    return max(1, int(round(float(width) * n)))


def _columns(prog: ir.Program) -> dict[str, sp.Expr]:
    """matrix -> the width (a multiple of n) of its columns, from its first use."""
    out: dict[str, sp.Expr] = {}
    for g in prog.gvars:
        if g.op is ir.Op.MATMUL and g.param not in out:
            m = prog.matrix(g.param)
            out[g.param] = g.width if g.transposed else g.width / m.ratio
    return out


def finite_reports(prog: ir.Program, n: int, seed=0) -> dict[str, float]:
    """The reports of one network of base width n (params at their defaults: bind first)."""
    if prog.inputs:
        raise TPError("finite runs of reports need a program without data (`vector` sources)")
    if prog.params:
        prog = prog.bind()
    rng = np.random.default_rng(seed)
    cols = _columns(prog)
    mats: dict[str, np.ndarray] = {}
    env: dict[str, np.ndarray] = {}
    for g in prog.gvars:
        m_rows = size(g.width, n)
        if g.op is ir.Op.VECTOR:
            env[g.name] = rng.standard_normal(m_rows)
        elif g.op is ir.Op.BIAS:
            env[g.name] = rng.standard_normal(m_rows) * float(prog.bias(g.param).var) ** 0.5
        elif g.op is ir.Op.MATMUL:
            m = prog.matrix(g.param)
            if g.param not in mats:
                c = size(cols[g.param], n)
                r = size(cols[g.param] * m.ratio, n)
                mats[g.param] = rng.standard_normal((r, c)) * (float(m.var) / c) ** 0.5
            a = mats[g.param]
            x = _value(g.arg, env, a.shape[0] if g.transposed else a.shape[1])
            env[g.name] = a.T @ x if g.transposed else a @ x
        else:
            raise TPError(f"finite runs of reports do not support {g.op.value}", g.span)
    return {r.name: float(np.mean(_value(r.expr, env, size(r.width, n))))
            for r in prog.reports}


def _value(expr: sp.Expr, env: dict, length: int) -> np.ndarray:
    v = evaluate_expr(expr, env)
    return np.broadcast_to(np.asarray(v, dtype=np.float64), (length,))
