"""Checking user data before any compilation work: shapes, dtypes, finiteness, dimensions, and
a size the float64 kernel program can hold.

The size bound. The data enter the kernel program only through Gram entries
G(x, x') = <x, x'>/d, summed before the division (backends/numba.py). Every |G(x, x')| is at
most max_x <x, x>/d =: Q (Cauchy-Schwarz), and the sums are at most d * Q. An input matrix of
variance v turns them into covariances v G (+ a bias), and the recursion multiplies two of
those (sqrt(q q') and q q' in the closed forms, D * Cov in the NTK), so (v Q)^2 must stay in
float64: v Q <= MAX_INPUT_COVARIANCE = 1e150 (1e300 for the product, a factor 1e8 to spare);
with v <= 1e100 (lower.MAX_CONSTANT) the sums d Q stay finite for any d. Beyond the first layer
the kernels grow as the program makes them (depth, powers, exp): that is not bounded here;
a kernel that leaves float64 is a TPError once computed (warm.check_finite), never an inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import TPError

if TYPE_CHECKING:  # the IR is only read by DataSpec.of: a warm start checks data without it
    from . import ir

MAX_INPUT_COVARIANCE = 1e150  # v * <x, x>/d: its square must be a float64 (above)
HINT_SCALE = ("standardise the data (e.g. X = (X - X.mean(0)) / X.std(0)): the kernels see the "
              "data only through <x, x'>/d, so a common scale factor is a choice of units")


@dataclass(frozen=True)
class DataSpec:
    """What checking data needs from a program: its inputs (name, steps or None), the largest
    variance of a matrix that reads each, and the pairs of inputs one matrix reads (their
    dimensions must agree). Kept in the compile cache as JSON (tpcompiler/warm.py)."""

    inputs: tuple[tuple[str, int | None], ...]
    variances: tuple[tuple[str, float], ...]
    tied: tuple[tuple[str, str], ...]

    @staticmethod
    def of(prog: ir.Program) -> DataSpec:
        v = input_variances(prog.bind())  # the data's size bound at the params' defaults
        return DataSpec(tuple((i.name, i.shape) for i in prog.inputs),
                        tuple((i.name, v[i.name]) for i in prog.inputs),
                        tuple(input_dims_tied(prog)))

    def to_json(self) -> dict:
        return {"inputs": [list(i) for i in self.inputs],
                "variances": [list(v) for v in self.variances],
                "tied": [list(t) for t in self.tied]}

    @staticmethod
    def from_json(data: dict) -> DataSpec:
        return DataSpec(tuple((n, tuple(ln) if isinstance(ln, list) else ln)
                              for n, ln in data["inputs"]),
                        tuple((n, float(v)) for n, v in data["variances"]),
                        tuple((a, b) for a, b in data["tied"]))


def _spec(prog) -> DataSpec:
    return prog if isinstance(prog, DataSpec) else DataSpec.of(prog)


def input_variances(prog: ir.Program) -> dict[str, float]:
    """Input name -> the largest variance of a matrix that reads it (at least 1, so that the
    data bound never exceeds MAX_INPUT_COVARIANCE)."""
    from . import ir

    out = {i.name: 1.0 for i in prog.inputs}
    for g in prog.gvars:
        if g.op is ir.Op.INPUT:
            name = g.arg.input
            out[name] = max(out[name], float(prog.param_var(g.param)))
    r = prog.readout
    if r is not None and isinstance(r.arg, ir.InputRef):
        out[r.arg.input] = max(out[r.arg.input], float(prog.param_var(r.matrix)))
    return out


def input_dims_tied(prog: ir.Program) -> list[tuple[str, str]]:
    """Pairs of inputs that one input matrix reads, so they must share their dimension d."""
    from . import ir

    seen: dict[str, str] = {}
    pairs = []
    for g in prog.gvars:
        if g.op is ir.Op.INPUT:
            first = seen.setdefault(g.param, g.arg.input)
            if first != g.arg.input:
                pairs.append((first, g.arg.input))
    return pairs


def prepare(prog: ir.Program | DataSpec, data, which: str = "X") -> dict[str, np.ndarray]:
    """Validate one data set: input name -> float64 C-contiguous array."""
    spec = _spec(prog)
    names = [name for name, _ in spec.inputs]
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
    variances = dict(spec.variances)
    for name, length in spec.inputs:
        what = f"{which}['{name}']" if len(names) > 1 else which
        arr = data[name]
        if not isinstance(arr, np.ndarray):
            try:
                arr = np.asarray(arr)
            except Exception:  # noqa: BLE001 - any conversion failure is a data error
                raise TPError(f"{what} is not an array") from None
        if arr.dtype.kind not in "fiu":  # integers are numbers too, like a list of ints
            raise TPError(f"{what} has dtype {arr.dtype}; kernels need real numbers",
                          hint="convert it to floating point, e.g. X.astype(np.float64)")
        grid = length if isinstance(length, tuple) else ()
        want = 2 if length is None else 3 + len(grid) - bool(grid)
        if grid and arr.ndim == 3:  # one channel: (N, H, W)
            arr = np.asarray(arr)[..., None]
        if arr.ndim != want:
            shape = ("(N, d)" if want == 2 else f"(N, {length}, d)" if not grid else
                     f"(N, {grid[0]}, {grid[1]}, C)")
            hint = "for one point use X.reshape(1, -1)" if arr.ndim == 1 and want == 2 else None
            raise TPError(f"{what} has shape {arr.shape}; input '{name}' needs {shape}",
                          hint=hint)
        if grid and tuple(arr.shape[1:3]) != grid:
            raise TPError(f"{what} has images of {arr.shape[1]} x {arr.shape[2]}; input "
                          f"'{name}' is declared as {grid[0]} x {grid[1]}")
        if want == 3 and arr.shape[1] != length:
            raise TPError(f"{what} has {arr.shape[1]} steps; input '{name}' is declared "
                          f"with {length}")
        if arr.shape[0] == 0 or arr.shape[-1] == 0:
            raise TPError(f"{what} is empty (shape {arr.shape})")
        raw = arr
        with np.errstate(over="ignore"):  # a longdouble beyond float64 becomes inf: caught next
            arr = np.ascontiguousarray(arr, dtype=np.float64)
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            if np.isfinite(raw).all():
                raise TPError(f"{what} has values beyond float64's range, about 1.8e308 (first "
                              f"in row {row})", hint=HINT_SCALE)
            raise TPError(f"{what} contains NaN or infinity (first in row {row})")
        _check_size(arr, what, name, variances[name])
        if n_points is not None and arr.shape[0] != n_points:
            raise TPError(f"{which}: inputs have different numbers of points "
                          f"({n_points} and {arr.shape[0]})")
        n_points = arr.shape[0]
        out[name] = arr
    for a, b in spec.tied:
        if out[a].shape[-1] != out[b].shape[-1]:
            raise TPError(f"{which}: inputs '{a}' and '{b}' go through the same weight, so they "
                          f"need the same dimension, got {out[a].shape[-1]} and "
                          f"{out[b].shape[-1]}")
    return out


def _check_size(arr: np.ndarray, what: str, name: str, var: float) -> None:
    """TPError when var * <x, x>/d exceeds MAX_INPUT_COVARIANCE for some point x (one vector
    of a sequence point each): the module docstring derives the bound."""
    d = arr.shape[-1]
    with np.errstate(over="ignore"):  # an overflowing sum is inf, which fails the test anyway
        q = np.einsum("...d,...d->...", arr, arr) / d
    q = q.reshape(len(arr), -1).max(axis=1)
    limit = MAX_INPUT_COVARIANCE / var
    if q.max() <= limit:
        return
    row = int(np.argmax(q > limit))
    size = "beyond float64" if not math.isfinite(q[row]) else f"= {q[row]:.3g}"
    biggest = float(np.abs(arr[row]).max())
    by = "" if var == 1.0 else f" (var={var:.3g} of a matrix that reads '{name}' multiplies it)"
    raise TPError(f"{what} is too large for float64 kernels: row {row} has entries up to "
                  f"{biggest:.3g} and <x, x>/d {size}; the kernel program squares "
                  f"var * <x, x'>/d, so it needs <x, x>/d <= {limit:.3g}{by}", hint=HINT_SCALE)


def prepare_pair(prog: ir.Program | DataSpec, x1, x2) -> tuple[dict, dict | None]:
    """Both data sets of a kernel call, validated (x2 None: x1 with itself): (X1, X2 or None),
    their input dimensions checked against each other."""
    a = prepare(prog, x1, "X1" if x2 is not None else "X")
    if x2 is None:
        return a, None
    b = prepare(prog, x2, "X2")
    check_pair(prog, a, b)
    return a, b


def check_pair(prog: ir.Program | DataSpec, x1: dict, x2: dict) -> None:
    for name, _ in _spec(prog).inputs:
        d1, d2 = x1[name].shape[-1], x2[name].shape[-1]
        if d1 != d2:
            raise TPError(f"X1 and X2 differ in the dimension of input '{name}' "
                          f"({d1} and {d2})")
