"""The accuracy probe: an error estimate for every integral of a kernel program, on given data.

Closed forms are exact to rounding. Every other expectation (a quadrature rule of
tpcompiler/quadrature.py, or a Mehler series of series.py) is re-evaluated by the reference
backend with its rule at raised orders (quadrature.BOOSTED; series replaced by quadrature), on a
few points of the data chosen where rules are hardest: the largest and smallest norms, the
most nearly collinear (not identical) pairs and an antipodal pair if the data have one. Each
rule converges geometrically on what reaches it, so the raised rule is far more accurate and
the change estimates the production rule's error; the change of the whole kernel (the
recursion run twice) is the estimate that counts, relative to the kernel's scale (its largest
diagonal entry). Where it exceeds the tolerance the user gets a TPWarning naming the integral
that moved most.

The estimate is a measurement, not a bound: it is as good as the probe points are
representative of the data and as the raised rule is of the truth.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from .backends import numpy as ref
from .errors import warn
from .kernel_program import KernelProgram, QuadCall

#: default tolerance, relative to the kernel's scale
DEFAULT_TOL = 1e-10
#: points the probe takes from the data (pairs: n (n - 1) / 2), and 2 more for an antipodal pair
PROBE_POINTS = 4


@dataclass(frozen=True)
class IntegralReport:
    """One expectation that is not closed form."""

    name: str
    dim: int
    method: str
    calls: int  # covariances it was evaluated at in the probe
    change: float  # largest |production - raised| over them
    scale: float  # largest |value| over them


@dataclass(frozen=True)
class AccuracyReport:
    tol: float
    points: int  # probe points taken from the data
    kernels: dict  # kind -> estimated error relative to the kernel's scale
    integrals: tuple[IntegralReport, ...]
    closed_forms: tuple[str, ...]  # helpers used (exact to rounding)
    uses: dict = field(default_factory=dict)  # kind -> names of the integrals it reads

    @property
    def ok(self) -> bool:
        return all(e <= self.tol for e in self.kernels.values())

    def __str__(self) -> str:
        lines = [f"accuracy probe on {self.points} points, tolerance {self.tol:.1e} "
                 f"(relative to the kernel's largest diagonal entry)"]
        for kind, e in self.kernels.items():
            verdict = "ok" if e <= self.tol else "ABOVE TOLERANCE"
            lines.append(f"  {kind.upper():5s} estimated error {e:.1e}  {verdict}")
        if self.closed_forms:
            lines.append("  closed forms (exact to rounding): " + ", ".join(self.closed_forms))
        if not self.integrals:
            lines.append("  no integrals: every expectation is in closed form")
            return "\n".join(lines)
        lines.append(f"  {'integral':8s} {'dim':>3s}  {'method':44s} {'calls':>5s} "
                     f"{'change':>8s} {'scale':>8s}")
        for r in self.integrals:
            lines.append(f"  {r.name:8s} {r.dim:3d}  {r.method:44s} {r.calls:5d} "
                         f"{r.change:8.1e} {r.scale:8.1e}")
        return "\n".join(lines)


def method(program: KernelProgram, itg) -> str:
    """How an integrand is evaluated, in words."""
    from .conditional import conditional_order
    from .quadrature import SPLIT_ORDER, polar_order, tensor_order

    series = {call.integrand for call in ref._series_calls(program)}
    if itg.breaks:
        base = (f"split rule at {len(itg.breaks)} kink(s), Legendre "
                f"{'x'.join(str(o) for o in SPLIT_ORDER[:itg.dim])}/piece")
    elif itg.given and itg.pivot_breaks:
        base = (f"split rule at {len(itg.pivot_breaks)} kink(s) of the pivot, Legendre "
                f"{SPLIT_ORDER[0]}x{SPLIT_ORDER[0]}/piece x closed form in "
                f"{len(itg.given_forms)} given form(s)")
    elif itg.given:
        base = (f"tensor {conditional_order(len(itg.pivot))}/half-axis x closed form in "
                f"{len(itg.given_forms)} given form(s)")
    elif itg.kinked:
        nleg, nrad = polar_order(len(itg.pivot))
        base = f"polar wedge {nleg}x{nrad}/arc"
        if itg.pivot:
            base += f" x tensor {tensor_order(len(itg.pivot), True)}/half-axis"
    else:
        base = f"tensor {tensor_order(itg.dim, False, per_point=itg.per_point)}/half-axis"
    return f"Mehler series (else {base})" if itg.name in series else base


def probe_indices(arrays: dict, n: int = PROBE_POINTS) -> np.ndarray:
    """Rows of the data where rules are hardest: the largest and smallest norms and the most
    nearly collinear pairs (|cos| closest to 1 without being 1), then evenly spread rows."""
    flat = np.hstack([np.asarray(a, dtype=np.float64).reshape(len(a), -1)
                      for a in arrays.values()])
    total = len(flat)
    if total <= n:
        return np.arange(total)
    pool = np.arange(total) if total <= 2000 else \
        np.random.default_rng(0).choice(total, 2000, replace=False)
    sub = flat[pool]
    norms = np.sqrt(np.einsum("ij,ij->i", sub, sub))
    chosen = [int(pool[np.argmax(norms)]), int(pool[np.argmin(norms)])]
    safe = np.where(norms > 0, norms, 1.0)
    signed = (sub / safe[:, None]) @ (sub / safe[:, None]).T
    np.fill_diagonal(signed, 0.0)
    cos = np.abs(signed)
    cos[signed >= 1.0 - 1e-15] = -1.0  # identical: the diagonal's value, no rule error
    # antipodal pairs are exact in the closed forms and the 1-D series, not in the double
    # series (a truncated sum at |rho| = 1): one such pair is probed on top of the n points
    anti = np.argwhere(signed <= -1.0 + 1e-15)
    cos[signed <= -1.0 + 1e-15] = -1.0
    for flat_i in np.argsort(cos, axis=None)[::-1][: 2 * n]:
        i, j = np.unravel_index(flat_i, cos.shape)
        new = [r for r in (int(pool[i]), int(pool[j])) if r not in chosen]
        if len(chosen) + len(new) <= n:  # a pair whole, or not at all
            chosen += new
    if len(anti):
        chosen += [int(pool[r]) for r in anti[0] if int(pool[r]) not in chosen]
    for r in np.linspace(0, total - 1, n).astype(int):
        if len(chosen) >= n:
            break
        if int(r) not in chosen:
            chosen.append(int(r))
    return np.array(sorted(chosen))


def estimate(program: KernelProgram, arrays: dict, tol: float = DEFAULT_TOL,
             kinds=None) -> AccuracyReport:
    """Estimate the error of the kernels of `program` on the data `arrays` (prepared: input
    name -> float64 array)."""
    kinds = tuple(kinds or program.kinds)
    idx = probe_indices(arrays)
    sub = {k: np.ascontiguousarray(v[idx]) for k, v in arrays.items()}
    runs = []
    for boost in (False, True):
        calls: list = []
        tokens = ref.RECORD.set(calls), ref.BOOST.set(boost)
        try:
            runs.append((ref.evaluate(program, sub, None, kinds), calls))
        finally:
            ref.RECORD.reset(tokens[0])
            ref.BOOST.reset(tokens[1])
    (low, calls_low), (high, calls_high) = runs
    errors = {}
    for kind in kinds:
        scale = float(np.max(np.abs(np.diag(high[kind])))) if len(idx) else 0.0
        scale = scale or float(np.max(np.abs(high[kind]), initial=0.0)) or 1.0
        diff = np.abs(low[kind] - high[kind])
        errors[kind] = float(np.max(diff, initial=0.0)) / scale
        if not np.all(np.isfinite(low[kind])):
            errors[kind] = float("inf")
    # per integral: the two runs make the same calls in the same order, at covariances that
    # differ only by the upstream change; the values' difference is the integral's share
    stats: dict[str, list] = {}
    for (name, c, a), (_, _, b) in zip(calls_low, calls_high):
        st = stats.setdefault(name, [0, 0.0, 0.0])
        st[0] += len(c)
        st[1] = max(st[1], float(np.max(np.abs(a - b), initial=0.0)))
        st[2] = max(st[2], float(np.max(np.abs(b), initial=0.0)))
    by_name = {q.name: q for q in program.integrands}
    reports = [IntegralReport(name, by_name[name].dim, method(program, by_name[name]), *st)
               for name, st in stats.items()]
    return AccuracyReport(tol, len(idx), errors, tuple(reports), _closed_forms(program),
                          {kind: _integrals_of(program, kind) for kind in kinds})


def _integrals_of(program: KernelProgram, kind: str) -> frozenset[str]:
    """Names of the integrals a kernel reads, through every assignment it depends on."""
    defs = dict(program.diag + program.cross)
    seen: set = set()
    names: set[str] = set()
    todo = list(program.outputs[kind])
    while todo:
        e = todo.pop()
        names |= {f.integrand for f in e.atoms(QuadCall)}
        for s in e.free_symbols:
            if s not in seen and s in defs:
                seen.add(s)
                todo.append(defs[s])
    return frozenset(names)


def _closed_forms(program: KernelProgram) -> tuple[str, ...]:
    """The closed-form helpers the kernel program calls."""
    from . import helpers

    names: set[str] = set()
    for _, e in program.diag + program.cross:
        names |= {type(f).__name__ for f in e.atoms(sp.Function)}
    return tuple(sorted(names & set(helpers.HELPERS)))


def fingerprint(arrays: dict) -> str:
    """A key for the data the probe saw (so that a repeated call is not probed twice)."""
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def warn_if_inaccurate(report: AccuracyReport, name: str | None, kinds=None) -> None:
    """A TPWarning per kernel (of `kinds`, default all) whose estimated error exceeds the
    tolerance."""
    for kind, err in report.kernels.items():
        if err <= report.tol or (kinds is not None and kind not in kinds):
            continue
        used = report.uses.get(kind)
        worst = max((r for r in report.integrals if used is None or r.name in used),
                    key=lambda r: r.change, default=None)
        where = ""
        if worst is not None:
            where = (f"; the largest change is in integral {worst.name} ({worst.dim}-D, "
                     f"{worst.method}): {worst.change:.1e} on values up to {worst.scale:.1e}")
        hint = ("a dense() between nonlinearities that mix several vectors lowers the "
                "integrals' dimension; smaller variances make smooth integrands easier; "
                "net.accuracy(X) lists every integral; pass tol= to accept a looser "
                "tolerance")
        warn(f"the {kind.upper()} of {name or 'this network'} is accurate only to about "
             f"{err:.1e} relative to its scale (tolerance {report.tol:.1e}), estimated on "
             f"{report.points} points of the data by raising every rule's order{where}",
             hint=hint, stacklevel=4)
