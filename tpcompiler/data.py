"""Checking user data before any compilation work: shapes, dtypes, finiteness, dimensions."""

from __future__ import annotations

import numpy as np

from . import ir
from .errors import TPError


def input_dims_tied(prog: ir.Program) -> list[tuple[str, str]]:
    """Pairs of inputs that one input matrix reads, so they must share their dimension d."""
    seen: dict[str, str] = {}
    pairs = []
    for g in prog.gvars:
        if g.op is ir.Op.INPUT:
            first = seen.setdefault(g.param, g.arg.input)
            if first != g.arg.input:
                pairs.append((first, g.arg.input))
    return pairs


def prepare(prog: ir.Program, data, which: str = "X") -> dict[str, np.ndarray]:
    """Validate one data set: input name -> float64 C-contiguous array."""
    names = [i.name for i in prog.inputs]
    if not isinstance(data, dict):
        if len(names) != 1:
            raise TPError(f"{which}: this network has {len(names)} inputs ({', '.join(names)}); "
                          f"pass a dict mapping each input name to its array")
        data = {names[0]: data}
    missing = [n for n in names if n not in data]
    if missing:
        raise TPError(f"{which}: no data for input '{missing[0]}'",
                      hint=f"the network's inputs are: {', '.join(names)}")
    extra = [k for k in data if k not in names]
    if extra:
        raise TPError(f"{which}: '{extra[0]}' is not an input of this network",
                      hint=f"the network's inputs are: {', '.join(names)}")
    out: dict[str, np.ndarray] = {}
    n_points = None
    for inp in prog.inputs:
        what = f"{which}['{inp.name}']" if len(names) > 1 else which
        arr = data[inp.name]
        if not isinstance(arr, np.ndarray):
            try:
                arr = np.asarray(arr)
            except Exception:  # noqa: BLE001 - any conversion failure is a data error
                raise TPError(f"{what} is not an array") from None
        if arr.dtype.kind != "f":
            raise TPError(f"{what} has dtype {arr.dtype}; kernels need floating-point data",
                          hint="convert it, e.g. X.astype(np.float64)")
        want = 2 if inp.length is None else 3
        if arr.ndim != want:
            shape = "(N, d)" if want == 2 else f"(N, {inp.length}, d)"
            hint = "for one point use X.reshape(1, -1)" if arr.ndim == 1 and want == 2 else None
            raise TPError(f"{what} has shape {arr.shape}; input '{inp.name}' needs {shape}",
                          hint=hint)
        if want == 3 and arr.shape[1] != inp.length:
            raise TPError(f"{what} has {arr.shape[1]} steps; input '{inp.name}' is declared "
                          f"with {inp.length}")
        if arr.shape[0] == 0 or arr.shape[-1] == 0:
            raise TPError(f"{what} is empty (shape {arr.shape})")
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise TPError(f"{what} contains NaN or infinity (first in row {row})")
        if n_points is not None and arr.shape[0] != n_points:
            raise TPError(f"{which}: inputs have different numbers of points "
                          f"({n_points} and {arr.shape[0]})")
        n_points = arr.shape[0]
        out[inp.name] = np.ascontiguousarray(arr, dtype=np.float64)
    for a, b in input_dims_tied(prog):
        if out[a].shape[-1] != out[b].shape[-1]:
            raise TPError(f"{which}: inputs '{a}' and '{b}' go through the same weight, so they "
                          f"need the same dimension, got {out[a].shape[-1]} and "
                          f"{out[b].shape[-1]}")
    return out


def check_pair(prog: ir.Program, x1: dict, x2: dict) -> None:
    for inp in prog.inputs:
        d1, d2 = x1[inp.name].shape[-1], x2[inp.name].shape[-1]
        if d1 != d2:
            raise TPError(f"X1 and X2 differ in the dimension of input '{inp.name}' "
                          f"({d1} and {d2})")
