"""The NNGP and NTK of one batch through a program with batchnorm: the stages of
passes/batch.py evaluated in order.

Each stage is a pairwise sub-program, compiled and run like any network (the same backends,
accuracy probe and caches), on the real inputs and on the sources it reads, whose data are
factors X of their batch moments (X X^T / B = V, from V's eigen-decomposition). A batchnorm's
argument gets its covariance S (the stage's NNGP) and tangent kernel Theta (the stage's
NTK - NNGP, plus the carried M's); each source that reads it gets V(S) and M(S, Theta)
(batchnorm.py: the exact quadrature for abrelu-type f, Monte Carlo with a TPWarning otherwise).
"""

from __future__ import annotations

import functools

import numpy as np
import sympy as sp

from . import batchnorm, psd, simulate
from .backends import coincident
from .data import prepare
from .errors import TPError, warn
from .passes import batch as batch_pass


def _settle(mat: np.ndarray, twice: list) -> np.ndarray:
    for first, j in twice:
        mat[j, :] = mat[first, :]
        mat[:, j] = mat[:, first]
    return mat


def factor(v: np.ndarray) -> np.ndarray:
    """X with X X^T / B = V (V's negative round-off eigenvalues clipped to 0)."""
    lam, u = np.linalg.eigh((v + v.T) / 2)
    return np.ascontiguousarray(u * np.sqrt(np.clip(lam, 0.0, None) * v.shape[0]))


@functools.cache
def numeric_functions(body: sp.Expr):
    """f and f' of a source as NumPy functions of an array (the simulator's evaluator)."""
    deriv = sp.diff(body, batch_pass.X)

    def run(e):
        def f(z):
            out = simulate.evaluate(e, {batch_pass.X.name: z}, {})
            return np.broadcast_to(np.asarray(out, dtype=np.float64), z.shape)
        return f

    return run(body), run(deriv)


def source_moments(src: batch_pass.Source, eps: float, cov: np.ndarray,
                   theta=None) -> batchnorm.Moments:
    """V and M of one source from its batchnorm argument's S and Theta (Theta None: V alone):
    the exact quadrature for abrelu-type f, else Monte Carlo (its errors in the Moments)."""
    if src.slopes is not None:
        return batchnorm.moments(cov, *src.slopes, eps, theta)
    f, df = numeric_functions(src.body)
    return batchnorm.moments_mc(cov, f, df, eps, theta)


def warn_monte_carlo(src: batch_pass.Source, error: float, tol: float, what: str) -> None:
    """The TPWarning of a Monte Carlo batch moment whose standard error exceeds tol (the
    normalised coordinates are O(1): the tolerance is absolute)."""
    if error > tol:
        warn(f"batchnorm followed by {sp.sstr(src.body.xreplace({batch_pass.X: sp.Symbol('z')}))}"
             f": {what} Monte Carlo estimate ({batchnorm.MC_SAMPLES} samples, standard error "
             f"{error:.1e}), not within tol={tol:g}",
             "the exact quadrature covers relu, identity, leaky_relu and abrelu after "
             "batchnorm")


class BatchEvaluator:
    """The plan of a network with batchnorm and one compiled network per distinct stage."""

    def __init__(self, program, tol: float):
        from .api import CompiledNetwork

        self.plan = batch_pass.plan(program)
        self.tol = tol
        made: dict[str, CompiledNetwork] = {}
        self.networks = []
        for st in self.plan.stages:
            key = st.program.digest()
            if key not in made:
                made[key] = CompiledNetwork(st.program, tol)
            self.networks.append(made[key])

    def text(self) -> str:
        """The plan: each source's batch moment, then each stage's kernel program."""
        plan = self.plan
        lines = ["# a program with batchnorm: kernels of one batch, stage by stage "
                 "(passes/batch.py)"]
        for src in plan.sources:
            how = (f"exact: abrelu{src.slopes}" if src.slopes is not None else "Monte Carlo")
            lines.append(f"# source {src.name} = {sp.sstr(src.body)} at x = batchnorm "
                         f"{src.bn} (eps={plan.eps[src.bn]}): V, M by {how}")
        if plan.ntk_refusal:
            lines.append(f"# NTK refused: {plan.ntk_refusal}")
        for k, (st, net) in enumerate(zip(plan.stages, self.networks)):
            what = f"the argument of batchnorm {st.target}" if st.target else "the readout"
            reads = ", ".join(f"{loc} = {src}" for loc, src in st.sources) or "the data only"
            carry = "refused" if st.carry is None else (
                " + ".join(f"{sp.sstr(w)} M[{s}]" for s, w in st.carry) or "0")
            lines += [f"\n## stage {k}: {what}; reads {reads}; carried tangent {carry}",
                      net.rolled_program.text().rstrip("\n")]
        return "\n".join(lines) + "\n"

    def _psd(self, k: np.ndarray, twice: list, kind: str) -> np.ndarray:
        """The kernel, or its nearest PSD matrix when round-off and the quadrature's error
        left it indefinite (psd.py; repeated points kept identical); a TPWarning when that
        moved it by more than the tolerance."""
        first, inverse = psd.distinct_rows(len(k), twice)
        fixed, ratio = psd.nearest_psd(k, first, inverse)
        if fixed is not k and -ratio > self.tol:
            warn(f"the batch {kind.upper()} came out indefinite (smallest eigenvalue "
                 f"{ratio:.1e} of the largest), more than tol={self.tol:g}, and was replaced "
                 "by the nearest positive semi-definite matrix")
        return fixed

    @property
    def kinds(self) -> tuple[str, ...]:
        return ("nngp",) if self.plan.ntk_refusal else ("nngp", "ntk")

    @property
    def refused(self) -> dict[str, str]:
        return {"ntk": self.plan.ntk_refusal} if self.plan.ntk_refusal else {}

    def kernels(self, data: dict, get: tuple[str, ...], backend: str, params: dict,
                values: dict) -> dict[str, np.ndarray]:
        """kind -> (B, B) for the batch `data` (validated input arrays)."""
        plan = self.plan
        want_ntk = "ntk" in get
        if want_ntk and plan.ntk_refusal:
            raise TPError(plan.ntk_refusal, hint="ask for the NNGP alone: get='nngp'")
        kinds = ("nngp", "ntk") if want_ntk else ("nngp",)
        # a point given twice is one point: its rows and columns are its first occurrence's,
        # in every batch moment and in the kernels (not the same bits otherwise: the
        # centring and the eigenbasis mix the points' rows in different orders)
        twice = coincident.repeated(data, plan.inputs)
        got: dict[str, batchnorm.Moments] = {}
        for st, net in zip(plan.stages, self.networks):
            local = dict(st.sources)
            inputs = {inp.name: factor(got[local[inp.name]].v) if inp.name in local
                      else data[inp.name] for inp in st.program.inputs}
            res = net.kernels(inputs, get=kinds, backend=backend, params=params)
            cov = res["nngp"]
            carried = None
            if want_ntk:
                carried = np.zeros_like(cov)
                for src, w in st.weights(values):
                    carried += w * got[src].m
            if st.target:
                theta = None if not want_ntk else res["ntk"] - cov + carried
                eps = float(plan.eps[st.target])
                for src in plan.sources:
                    if src.bn == st.target:
                        mom = source_moments(src, eps, cov, theta)
                        warn_monte_carlo(src, max(mom.v_error, mom.m_error), self.tol,
                                         "its batch moments are a")
                        got[src.name] = batchnorm.Moments(
                            _settle(mom.v, twice), None if mom.m is None else
                            _settle(mom.m, twice), mom.v_error, mom.m_error)
                continue
            out = {"nngp": cov}
            if want_ntk:
                out["ntk"] = res["ntk"] + carried
            return {k: self._psd(_settle(out[k], twice), twice, k) for k in get}
        raise AssertionError("a batch plan ends with the readout's stage")


def kernels(net, x1, x2, get, *, backend: str, values: dict, params: dict | None,
            dtype) -> dict[str, np.ndarray]:
    """CompiledNetwork.kernels for a program with batchnorm: X is one batch."""
    if x2 is not None:
        raise TPError("a network with batchnorm has kernels within one batch: kernels(X) "
                      "treats the points of X as the batch; between two batches (the paper's "
                      "two-batch formula) is not implemented",
                      hint="put the points in one batch: K = net.kernels(np.concatenate([X1, "
                           "X2]))[kind][:len(X1), len(X1):]")
    data = prepare(net.spec, x1, "X")
    ev = net.batch_evaluator
    res = ev.kernels(data, get, backend, params, values)
    return {k: v.astype(dtype, copy=False) for k, v in res.items()}
