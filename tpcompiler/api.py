"""compile(): the one module that wires text -> AST -> IR -> KernelProgram -> backend."""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import numpy as np
import sympy as sp

from . import __version__, accuracy, batch_kernels, ir, passes, psd, warm
from .accuracy import DEFAULT_TOL
from .backends import cache, coincident, runner
from .backends import cuda as cuda_backend
from .backends import numba as numba_backend
from .backends import numpy as numpy_backend
from .backends.gram import GramLayout
from .data import DataSpec, prepare, prepare_pair
from .errors import TPError, warn
from .files import read_source
from .kernel_program import KernelProgram
from .lowering import lower
from .parse import parse_source
from .passes.tangent import grad_kind
from .ranges import ntk_caveats

KINDS = warm.KINDS  # the kernel kinds, in output order
#: points of each data set a spatial program's quadratures are probed on (every pair of them,
#: every position pair: thousands of covariances, at the raised orders' cost)
PROBE_POINTS = 3


class CompiledNetwork:
    """A .tp network compiled to its infinite-width kernels.

    Example:
        >>> net = compile_source("input x\\nh = dense(x)\\ny = readout(relu(h))")
        >>> K = net.nngp(np.eye(3))        # (3, 3)
    """

    def __init__(self, program: ir.Program, tol: float = DEFAULT_TOL):
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise TPError(f"tol={tol!r} is not a positive number",
                          hint="the default is 1e-10 (relative to the kernel's scale)")
        self.ir = program
        self.name = program.name
        self.tol = float(tol)
        self.spec = DataSpec.of(program)  # what checking data needs
        self._warm_key: str | None = None  # set by compile(): record the warm start
        # data fingerprint -> (report, what was said: kinds warned, ("psd", kind) projected)
        self._probed: dict[str, tuple] = {}
        self._ntk_caveats_told = False
        self._source: tuple[str, str] | None = None  # (text, path) when compiled from text

    def __reduce__(self):
        """Pickled as its source text (the compiled module comes from the cache on load):
        scikit-learn clones and pickles estimators that hold a TPKernel."""
        if self._source is None:
            raise TypeError("a CompiledNetwork built from an IR cannot be pickled; compile "
                            "it from its .tp text")
        return (compile_source, (*self._source, self.tol))

    # --- params ----------------------------------------------------------------------

    @property
    def params(self) -> dict[str, float]:
        """The program's params (`param sw = 2.0`) with their defaults, in declaration order:
        kernels(..., params={"sw": 1.5}) evaluates at other values without recompiling."""
        return {p.name: p.default for p in self.ir.params}

    def _values(self, params) -> dict:
        """symbol -> value of every param (the defaults overridden by `params`), checked."""
        if params is not None and not isinstance(params, dict):
            raise TPError(f"params must be a dict name -> value, got {type(params).__name__}",
                          hint="e.g. params={'sw': 1.5}")
        return self.ir.param_values(params)

    def _param_array(self, values: dict) -> np.ndarray:
        return np.array([values[p.symbol] for p in self.ir.params], dtype=np.float64)

    # --- stages ----------------------------------------------------------------------

    @functools.cached_property
    def spatial_program(self):
        """The NNGP/NTK recursion of a spatial program (conv, pooling, layernorm): arrays over
        positions (passes/spatial.py); a program with params at their defaults."""
        self._kernels_exist()
        return self._spatial_at(self._values(None))

    def _kernels_exist(self) -> None:
        """TPError for a program whose kernels are not derived: one without a readout, or a
        NETSOR-transpose program (transposes, `vector`, ratio=), whose limits are reports."""
        if self.ir.readout is None:
            raise TPError("this program has no readout, so no kernels: it reports limits",
                          hint="net.limits() (tpc limits FILE) computes its reports")
        if self.ir.netsor_t:
            raise TPError("kernels of programs with transpose(), `vector` or ratio= are not "
                          "derived: their Master theorem computes the reports' limits",
                          self.ir.readout.span,
                          "report the quantity instead, e.g. report q = mean(h ** 2), and "
                          "call net.limits() (tpc limits FILE)")

    def limits(self, params: dict | None = None) -> dict:
        """The limits of the program's reports (`report NAME = mean(expr)`): name -> an exact
        sympy number where every expectation is a closed form (polynomials, sin/cos/exp),
        else a float held to tol (a TPWarning says when it is not, or when Monte Carlo was
        needed). params: values of the program's params over their defaults."""
        return self.limit_values(params).as_dict()

    def limit_values(self, params: dict | None = None):
        """The limits with how each was computed and its estimated error
        (tpcompiler.limits.Limits; its .derivation is what net.latex() renders)."""
        from . import limits

        key = _values_key(self._values(params))
        made = self.__dict__.setdefault("_limits_made", {})
        if key not in made:
            made[key] = limits.compute(self.ir, self.tol, params)
        return made[key]

    def _spatial_at(self, values: dict):
        """The spatial program with the params at `values`: its arrays are compiled with their
        numbers (one module per set of values, each kept in the compile cache)."""
        from .passes import spatial

        if not self.ir.spatial:
            raise TPError("this network has no spatial vectors; see net.kernel_program")
        key = _values_key(values)
        made = self.__dict__.setdefault("_spatial_made", {})
        if key not in made:
            prog = self.ir.bind({p.name: values[p.symbol] for p in self.ir.params})
            sprog = spatial.derive(prog)
            _check_constants(sprog.kernel, prog)
            made[key] = sprog
        return made[key]

    @functools.cached_property
    def batch_evaluator(self):
        """The stages of a program with batchnorm (passes/batch.py) and their networks."""
        from .batch_kernels import BatchEvaluator

        self._kernels_exist()
        if not self.ir.batched:
            raise TPError("this network has no batchnorm")
        return BatchEvaluator(self.ir, self.tol)

    @property
    def recursion(self):
        """The derived recursion, whichever form it takes: the spatial program of a CNN, else
        the kernel program (both have .kinds and .refused); the batch stages of a program
        with batchnorm."""
        if self.ir.batched:
            return self.batch_evaluator
        return self.spatial_program if self.ir.gridded else self.kernel_program

    @functools.cached_property
    def rolled_program(self) -> KernelProgram:
        """The NNGP/NTK recursion, its loops kept rolled where their iterations are copies of
        one another (built on first use): what the Numba backend compiles."""
        self._kernels_exist()
        if self.ir.gridded:
            raise TPError("a spatial program (conv, pooling) has no scalar kernel "
                          "program: its recursion runs over arrays of positions",
                          hint="see net.spatial_program (`tpc kernel-program` prints it)")
        kp = passes.kernel_program(self.ir)
        _check_constants(kp, self.ir)
        return kp

    @functools.cached_property
    def kernel_program(self) -> KernelProgram:
        """The NNGP/NTK recursion as straight-line scalar code (the rolled program written
        out: what the NumPy, CUDA and LaTeX renderers read)."""
        return self.rolled_program.unrolled()

    @functools.cached_property
    def _cache_key(self) -> str:
        return (f"{self.ir.digest()[:40]}-{__version__}-{cache.compiler_fingerprint()}-"
                f"{numba_backend.numba_version()}")

    @functools.cached_property
    def _module(self):
        entry = cache.read_index(self._cache_key)
        if entry is not None:
            self._kinds, self._refused = tuple(entry["kinds"]), dict(entry["refused"])
            self._meta = GramLayout.from_json(entry["layout"])
            self._integrals = entry.get("integrals", True)
            self._record_warm()
            return cache.load_module(entry["source"])
        kp = self.rolled_program
        self._kinds, self._refused = kp.kinds, dict(kp.refused)
        self._meta = GramLayout.of(kp)
        self._integrals = bool(kp.integrands)
        if not kp.kinds:
            return None  # nothing to compute: every request is refused with its reason
        source = numba_backend.render(kp)
        module = cache.load_module(source)
        cache.write_index(self._cache_key, {"module": str(cache.module_path(source)),
                                            "kinds": list(kp.kinds), "refused": kp.refused,
                                            "integrals": bool(kp.integrands),
                                            "layout": self._meta.to_json()})
        self._record_warm()
        return module

    def _record_warm(self) -> None:
        """For a network compiled from a file: the record that lets `tpc kernel` run it next
        time without the front end (tpcompiler/warm.py)."""
        # what the record says follows from its key (file text, tol, compiler; another numba
        # only recompiles the same module source): once written, nothing to redo, not even
        # the NTK caveats' ranges analysis
        # (a program with params needs their values: it goes through the front end)
        if (self._warm_key is not None and not self._integrals and self._kinds
                and not self.ir.params and not warm.has_record(self._warm_key)):
            warm.record(self._warm_key, self._cache_key, self.name, self.spec, self._caveats)

    def prepare(self) -> CompiledNetwork:
        """Compile now (otherwise the first kernel call does it); returns self."""
        self._module  # noqa: B018 - the property compiles
        return self

    # --- kernels ---------------------------------------------------------------------

    def kernels(self, x1, x2=None, get=KINDS, *, dtype=None, backend: str = "numba",
                progress=None, device: str = "cpu", max_gpu_bytes: int | None = None,
                out: dict | None = None, diagonal: bool = False,
                params: dict | None = None, grad: bool = False,
                chunks: int | None = None) -> dict[str, np.ndarray]:
        """Kernels between the points of x1 and x2 (x2=None: x1 with itself).

        Arguments:
            x1, x2: (N, d) arrays (or (N, T, d) for a sequence input), or a dict
                input name -> array for a network with several inputs.
            get: "nngp", "ntk" or a tuple of them.
            dtype: the output dtype (computation is always float64).
            backend: "numba" (fast) or "numpy" (the reference evaluator).
            progress: callable(done, total) between row blocks.
            device: "cpu" (default), "cuda" (a TPError says what is missing without a usable
                GPU; the numba-cuda simulator, NUMBA_ENABLE_CUDASIM=1, counts as one) or
                "auto" (CUDA when usable, else the CPU). Applies to backend="numba".
            max_gpu_bytes: device-memory budget for one row tile on the GPU (default: half the
                free memory); a smaller value computes in more tiles.
            out: kind -> preallocated (N1, N2) float64 array to write into (e.g. a
                memory-mapped .npy); the GPU writes each row tile into it as it finishes.
            diagonal: only K(x, x) for each point of x1 (x2 must be None): the per-point
                stage alone, O(N) work and memory (on the CPU).
            params: name -> value of the program's params (`param sw = 2.0`); the others at
                their defaults. The compiled module is the same whatever the values.
            grad: also the derivatives in the params, kind + "_grad" -> (N1, N2, P) (P the
                params, in the order of net.params), from the symbolic derivative of the
                recursion (passes/tangent.py); on the CPU.
            chunks: lazy dask arrays instead, computed by blocks of chunks x chunks points
                (rounded up to a multiple of 256) by whichever Dask scheduler computes them
                (the `[dask]` extra; tpcompiler/dask_kernels.py): the same bits as in memory.
        Returns:
            dict kind -> (N1, N2) array ((N1,) with diagonal=True).
        """
        get = warm.check_get(get)
        self._kernels_exist()
        if chunks is not None:
            from . import dask_kernels

            if grad or diagonal or out is not None or device not in ("cpu", "auto") or \
                    backend != "numba" or dtype is not None:
                raise TPError("chunks= returns lazy float64 dask arrays computed by the "
                              "Numba backend on CPUs: no grad=, diagonal=, out=, dtype=, "
                              "device= or backend= with it")
            return dask_kernels.kernel_arrays(self, x1, x2, get, chunks=chunks, params=params)
        values = self._values(params)
        if self.ir.batched:
            if grad or diagonal or out is not None or device not in ("cpu", "auto"):
                raise TPError("a network with batchnorm computes its batch kernels on the CPU "
                              "into new arrays (no grad=, diagonal=, out= or GPU yet)")
            return batch_kernels.kernels(self, x1, x2, get, backend=backend, values=values,
                                         params=params, dtype=_out_dtype(dtype))
        if grad:
            if x2 is not None and diagonal:
                raise TPError("diagonal=True computes K(x, x) for the points of x1: pass no x2")
            if device not in ("cpu", "auto") or out is not None:
                raise TPError("grad=True computes on the CPU into new arrays",
                              hint="leave device= and out= at their defaults")
            return self._with_grad(x1, x2, get, backend, _out_dtype(dtype), values, diagonal,
                                   progress)
        if diagonal:
            if x2 is not None:
                raise TPError("diagonal=True computes K(x, x) for the points of x1: pass no x2")
            return self._diagonal(prepare(self.spec, x1, "X"), get, backend,
                                  _out_dtype(dtype), values)
        a, b = prepare_pair(self.spec, x1, x2)
        out_dtype = _out_dtype(dtype)
        if self.ir.gridded:
            res = self._spatial_kernels(a, b, get, backend, device, values)
            if out is not None:
                for kind in get:
                    out[kind][...] = res[kind]
                    res[kind] = out[kind]
            return {k: v.astype(out_dtype, copy=False) for k, v in res.items()}
        if backend == "numpy":
            kp = self.kernel_program.bind(values)
            warm.check_kinds(get, kp.kinds, kp.refused)
            self._tell_ntk_caveats(get)
            with np.errstate(over="ignore", invalid="ignore"):  # overflow: a TPError next
                res = numpy_backend.evaluate(kp, a, b, get)
            warm.check_finite(res, get)
            self._make_psd(res, a, b, *self._probe(a, b, get, values))
            return {k: v.astype(out_dtype, copy=False) for k, v in res.items()}
        _check_backend(backend)
        module = self._module
        warm.check_kinds(get, self._kinds, self._refused)
        self._tell_ntk_caveats(get)
        pv = self._param_array(values)
        if cuda_backend.resolve(device) == "cuda":
            cmod = cuda_backend.load(self._cache_key, lambda: self.kernel_program)
            res = cuda_backend.run(cmod, self._meta, a, b, progress=progress,
                                   max_gpu_bytes=max_gpu_bytes, out=out, get=get, params=pv)
        else:
            res = runner.run(module, self._meta, a, b, progress=progress, params=pv)
        warm.check_finite(res, get)
        self._make_psd(res, a, b, *self._probe(a, b, get, values))
        if out is not None:
            for kind in get:
                if res[kind] is not out[kind]:
                    out[kind][...] = res[kind]
                    res[kind] = out[kind]
        return {kind: res[kind].astype(out_dtype, copy=False) for kind in get}

    @property
    def tangent_program(self) -> KernelProgram:
        """The recursion with the derivatives of every kind in each param (passes/tangent.py):
        what kernels(..., grad=True) evaluates."""
        return self._tangent(KINDS)

    def _tangent(self, kinds) -> KernelProgram:
        """The tangent program of these kinds only (the others' statements left out)."""
        if not self.ir.params:
            raise TPError("this program has no params: there is nothing to differentiate",
                          hint="declare one, `param sw = 2.0`, and use it: dense(h, var=sw)")
        key = tuple(k for k in KINDS if k in kinds)
        made = self.__dict__.setdefault("_tangents", {})
        if key not in made:
            made[key] = passes.tangent_program(self.ir, key)
        return made[key]

    def _tangent_module(self, kp: KernelProgram):
        made = self.__dict__.setdefault("_tangent_modules", {})
        if kp.kinds not in made:
            made[kp.kinds] = cache.load_module(numba_backend.render(kp))
        return made[kp.kinds]

    def _with_grad(self, x1, x2, get, backend: str, out_dtype, values: dict, diagonal: bool,
                   progress) -> dict[str, np.ndarray]:
        _check_backend(backend)
        kp = self._tangent(get)
        warm.check_kinds(get, kp.kinds, kp.refused)
        kinds = list(get) + [grad_kind(k, m) for k in get
                             for m in range(len(self.ir.params))]
        a, b = prepare_pair(self.spec, x1, x2)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if backend == "numpy":
                bound = kp.bind(values)
                res = (numpy_backend.diagonal(bound, a, kinds) if diagonal else
                       numpy_backend.evaluate(bound, a, b, kinds))
            elif diagonal:
                res = runner.diagonal(self._tangent_module(kp), kp, a,
                                      self._param_array(values))
            else:
                res = runner.run(self._tangent_module(kp), kp, a, b, progress=progress,
                                 params=self._param_array(values))
        warm.check_finite(res, get)
        for kind in kinds[len(get):]:
            bad = np.argwhere(~np.isfinite(res[kind]))
            if len(bad):
                where = ", ".join(map(str, bad[0]))
                m, base = kind[1:].split("_", 1)
                name = self.ir.params[int(m)].name
                raise TPError(f"the derivative of the {base.upper()} in {name} does not exist "
                              f"(is infinite) at ({where}) of these data: two pre-activations "
                              f"that are parallel at this value of {name} stop being so when "
                              f"it moves, and the angle between them grows like a square root "
                              f"(e.g. antipodal inputs and a bias variance of 0)",
                              hint=f"move {name} off this value (a bias variance of 1e-6 "
                                   "instead of 0)")
        self._tell_ntk_caveats(get)
        self._probe(a, b, kinds, values, kp)  # the derivatives' integrals, as the kernels'
        out = {}
        for kind in get:
            out[kind] = res[kind].astype(out_dtype, copy=False)
            out[kind + "_grad"] = np.stack(
                [res[grad_kind(kind, m)] for m in range(len(self.ir.params))],
                axis=-1).astype(out_dtype, copy=False)
        return out

    def _diagonal(self, a: dict, get, backend: str, out_dtype,
                  values: dict) -> dict[str, np.ndarray]:
        _check_backend(backend)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if self.ir.gridded:
                from .backends import spatial as spatial_backend

                sprog = self._spatial_at(values)
                warm.check_kinds(get, sprog.kinds, sprog.refused)
                got = spatial_backend.diagonal(sprog, a, get, fast=backend == "numba")
            elif backend == "numpy":
                kp = self.kernel_program.bind(values)
                warm.check_kinds(get, kp.kinds, kp.refused)
                got = numpy_backend.diagonal(kp, a, get)
            else:
                module = self._module
                warm.check_kinds(get, self._kinds, self._refused)
                got = runner.diagonal(module, self._meta, a, self._param_array(values))
        self._tell_ntk_caveats(get)
        res = {k: got[k] for k in get}
        warm.check_finite(res, get)
        if not self.ir.gridded:
            self._probe(a, None, get, values)
        return {k: v.astype(out_dtype, copy=False) for k, v in res.items()}

    def _spatial_kernels(self, a: dict, b: dict | None, get, backend: str, device: str,
                         values: dict):
        from .backends import spatial as spatial_backend

        _check_backend(backend)
        if device not in ("cpu", "auto"):
            raise TPError("spatial programs (conv, pooling, layernorm) run on the CPU only: "
                          "the CUDA renderer has no spatial code yet", hint="use device='cpu'")
        sprog = self._spatial_at(values)
        warm.check_kinds(get, sprog.kinds, sprog.refused)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            res = spatial_backend.evaluate(sprog, a, b, get, fast=backend == "numba")
        warm.check_finite(res, get)
        if sprog.kernel.integrands:
            self._spatial_probe(sprog, a, b, get, values)
        return res

    def _spatial_probe(self, sprog, a: dict, b: dict | None, get, values: dict) -> None:
        """The quadratures of a spatial program against the raised orders of
        quadrature.BOOSTED, at a sample of the covariances they meet on (up to PROBE_POINTS
        of) these points: a TPWarning when an integral moves by more than tol of the largest
        value it takes (the kernels are sums of such values times variances and averages)."""
        from .backends import spatial as spatial_backend

        pick = {k: v[:PROBE_POINTS] for k, v in a.items()}
        if b is not None:
            pick = {k: np.concatenate([pick[k], b[k][:PROBE_POINTS]]) for k in a}
        key = accuracy.fingerprint(pick) + _values_key(values)
        if key in self._probed:
            return
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            changes = spatial_backend.quadrature_changes(sprog, pick, get)
        worst = max(changes.items(), key=lambda kv: kv[1][0] / max(kv[1][1], 1e-300),
                    default=None)
        self._probed[key] = (None, set())
        if worst is None:
            return
        name, (change, scale) = worst
        err = change / max(scale, np.finfo(float).tiny)
        if err > self.tol:
            q = next(q for q in sprog.kernel.integrands if q.name == name)
            warn(f"the kernels of {self.name or 'this network'} are accurate to about "
                 f"{err:.1e} of their scale, above tol={self.tol:g}: the {q.dim}-d integral "
                 f"{name} ({q.rule}) moves that much against raised quadrature orders on "
                 f"these data", hint="a closed-form nonlinearity (relu, erf, ...) needs no "
                 "quadrature; `tpc kernel-program` lists the integrals", stacklevel=4)

    # --- accuracy (tpcompiler/accuracy.py) -------------------------------------------

    def _probe(self, a: dict, b: dict | None, get, values: dict,
               program: KernelProgram | None = None) -> tuple[list[str], set]:
        """Warn (TPWarning) when a kernel just computed is not accurate to self.tol on these
        data; closed-form programs need no probe, and data seen before are not probed again.
        Returns the kinds of `get` above the tolerance and what was said about these data.
        program: what computed them when not the kernel program (the tangent program of
        kernels(grad=True), its kinds the kernels and their derivatives)."""
        if program is not None:
            integrals = bool(program.integrands)
        elif "kernel_program" in self.__dict__:  # built (the NumPy path): no Numba compile
            integrals = bool(self.kernel_program.integrands)
        else:
            self._module  # noqa: B018 - sets _integrals (from the cache index on a warm start)
            integrals = self._integrals
        if not integrals:
            return [], set()
        data = a if b is None else {k: np.concatenate([a[k], b[k]]) for k in a}
        key = ("grad" if program is not None else "") + accuracy.fingerprint(data) + \
            _values_key(values)
        if key not in self._probed:  # every kind at once: one run of the raised recursion
            kp = (program if program is not None else self.kernel_program).bind(values)
            self._probed[key] = (accuracy.estimate(kp, data, self.tol, kp.kinds), set())
        report, warned = self._probed[key]
        # about the kinds asked for, once each
        kinds = [k for k in get if k in report.kernels and k not in warned]
        warned.update(kinds)
        accuracy.warn_if_inaccurate(report, self.name, kinds)
        return [k for k in get if report.kernels.get(k, 0.0) > report.tol], warned

    def _make_psd(self, res: dict, a: dict, b: dict | None, inexact: list[str],
                  said: set) -> None:
        """Replace each square kernel the probe could not vouch for by its nearest PSD matrix
        when it is indefinite (tpcompiler/psd.py: never farther from the exact kernel), and say
        so once per data and kind (`said`: the probe's record for these data). A kernel between
        two sets of points has no such projection."""
        if b is not None or not inexact:
            return
        n = next(iter(a.values())).shape[0]
        first, inverse = psd.distinct_rows(n, coincident.repeated(a, self.ir.inputs))
        name = self.name or "this network"
        for kind in inexact:
            told = ("psd", kind)
            if len(first) > psd.MAX_POINTS:
                if told not in said:
                    said.add(told)
                    warn(f"the {kind.upper()} of {name} was not checked for positive "
                         f"semi-definiteness: an eigendecomposition is attempted for at most "
                         f"{psd.MAX_POINTS} distinct points, these data have {len(first)}",
                         hint="clip the negative eigenvalues of an inexact kernel before a "
                              "Cholesky", stacklevel=3)
                continue
            fixed, ratio = psd.nearest_psd(res[kind], first, inverse)
            if fixed is res[kind]:
                continue
            res[kind] = fixed
            if told not in said:
                said.add(told)
                warn(f"the {kind.upper()} of {name} came out indefinite (smallest eigenvalue "
                     f"{ratio:.1e} of the largest) and was replaced by the nearest positive "
                     f"semi-definite matrix, which is no farther from the exact kernel "
                     f"(Frobenius norm)",
                     hint="a kernel between two sets of points, kernels(X1, X2), is not "
                          "projected and may differ from this one by the warned error",
                     stacklevel=3)

    def accuracy(self, x=None, get=KINDS, params: dict | None = None) -> accuracy.AccuracyReport:
        """Every integral of the kernel program with its dimension, method and estimated error
        on the data x (default: 8 standard-normal points of dimension 8 per input), and the
        estimated error of each kernel relative to its scale (print it for a table), with the
        params at `params` (default: their defaults)."""
        get = (get,) if isinstance(get, str) else tuple(get)
        kp = self.kernel_program.bind(self._values(params))
        get = tuple(k for k in get if k in kp.kinds)
        if x is None:
            rng = np.random.default_rng(0)
            x = {i.name: rng.normal(size=(8, 8) if i.length is None else (8, i.length, 8))
                 for i in self.ir.inputs}
        data = prepare(self.spec, x, "X")
        return accuracy.estimate(kp, data, self.tol, get)

    def _tell_ntk_caveats(self, get) -> None:
        """Once per network, when its NTK is first computed: a TPWarning for each exp() whose
        argument is not bounded above (`_caveats`)."""
        if "ntk" not in get or self._ntk_caveats_told:
            return
        self._ntk_caveats_told = True
        warm.tell_caveats(self._caveats)

    @functools.cached_property
    def _caveats(self) -> list[tuple[str, str]]:
        """(message, hint) for each exp() of the NTK whose argument is not bounded above
        (ranges.ntk_caveats): its NTK is the formal limit, the one neural-tangents computes,
        but no Tensor Programs theorem covers it."""
        out = []
        for span, what in ntk_caveats(self.ir):
            where = f"{span.where}: " if span is not None else ""
            shown = f"\n{span.render()}" if span is not None else ""
            out.append((f"{where}the NTK goes through {what} here, and that argument is not "
                        f"bounded above: exp and its derivative are then not polynomially "
                        f"bounded, a hypothesis of the Tensor Programs NTK theorem (TP II, "
                        f"Cor. 7.3; TP IIb for training). The kernel is computed as the formal "
                        f"infinite-width limit (the recursion neural-tangents' stax.Exp "
                        f"computes), which that theorem does not guarantee{shown}",
                        "exp of an argument bounded above is inside the theorem: e.g. "
                        "exp(-h ** 2), exp(-(a * h + b) ** 2), exp(tanh(h))"))
        return out

    def nngp(self, x1, x2=None, **kw) -> np.ndarray:
        """The NNGP kernel (output covariance of the infinite-width network)."""
        return self.kernels(x1, x2, ("nngp",), **kw)["nngp"]

    def ntk(self, x1, x2=None, **kw) -> np.ndarray:
        """The neural tangent kernel (neural-tangents' 'ntk' parameterization)."""
        return self.kernels(x1, x2, ("ntk",), **kw)["ntk"]

    # --- predictions (tpcompiler/predict.py) -----------------------------------------

    def predict(self, x_train, y_train, x_test, *, kind: str = "ntk", t: float | None = None,
                learning_rate: float = 1.0, diag_reg: float = 0.0, absolute: bool = False,
                variance: bool = False, covariance: bool = False, progress=None,
                params: dict | None = None):
        """The infinite-width prediction on x_test given (x_train, y_train): a
        `predict.Gaussian` (mean; with variance=True its variance, with covariance=True the
        (M, M) covariance too).

        kind="ntk": an infinite ensemble trained by gradient flow on MSE for time t (None: to
        the end), neural-tangents' gradient_descent_mse_ensemble; kind="nngp": with t=None the
        Bayesian posterior (GP regression with noise diag_reg), with a time t gradient flow of
        the readout alone. diag_reg is relative to the mean diagonal of the train kernel
        unless absolute=True. progress: callable(done, total) of each kernel computed. params:
        values of the program's params (kernels(params=...))."""
        from . import predict

        if kind not in ("nngp", "ntk"):
            raise TPError(f"kind must be 'nngp' or 'ntk', got {kind!r}")
        predict.check_time(t, learning_rate)  # every argument checked before any kernel
        predict.check_reg(diag_reg)
        a = prepare(self.spec, x_train, "X_train")
        y_train = predict.check_targets(y_train, len(next(iter(a.values()))))
        spread = variance or covariance
        train = ("nngp", "ntk") if kind == "ntk" and spread else (kind,)
        self._values(params)  # checked before any kernel too
        k_train = self.kernels(a, get=train, progress=progress, params=params)
        k_cross = self.kernels(x_test, a, get=train, progress=progress, params=params)
        k_test = None
        if spread:
            k_test = self.kernels(x_test, get="nngp", progress=progress,
                                  diagonal=not covariance, params=params)["nngp"]
        if kind == "ntk":
            return predict.ntk_flow(k_train["ntk"], k_cross["ntk"], y_train, k_train.get("nngp"),
                                    k_cross.get("nngp"), k_test, t=t,
                                    learning_rate=learning_rate, diag_reg=diag_reg,
                                    absolute=absolute)
        if t is None:
            return predict.gp_posterior(k_train["nngp"], k_cross["nngp"], y_train, k_test,
                                        diag_reg=diag_reg, absolute=absolute)
        return predict.nngp_flow(k_train["nngp"], k_cross["nngp"], y_train, k_test, t=t,
                                 learning_rate=learning_rate, diag_reg=diag_reg,
                                 absolute=absolute)

    # --- finite width (tpcompiler/simulate.py) ---------------------------------------

    def simulate(self, width: int, seed=0, **kw):
        """The network instantiated at width n: a `simulate.FiniteNetwork` (call it on data;
        .ntk(X), .gradients(X), .nngp_hidden(X), .params). kw: dims=, weights=."""
        from .simulate import FiniteNetwork

        self._kernels_exist()
        return FiniteNetwork(self.ir, width, seed, **kw)

    def empirical_nngp(self, x, width: int, samples: int, seed=0, **kw) -> np.ndarray:
        """Monte Carlo mean of f(x) f(x)^T over `samples` random networks of width n."""
        from .simulate import empirical_nngp

        self._kernels_exist()
        return empirical_nngp(self.ir, x, width, samples, seed, **kw)

    def empirical_ntk(self, x, width: int, seed=0, x2=None) -> np.ndarray:
        """The exact NTK of one random network of width n."""
        from .simulate import empirical_ntk

        self._kernels_exist()
        return empirical_ntk(self.ir, x, width, seed, x2)

    # --- views -----------------------------------------------------------------------

    def latex(self) -> str:
        """The NNGP and NTK recursions in LaTeX; for a program with reports, how each
        limit was derived (the Zs of the Master theorem, then the expectations)."""
        from .latex import limits_latex, program_latex

        if self.ir.reports and (self.ir.readout is None or self.ir.netsor_t):
            return limits_latex(self.ir, self.limit_values())
        if self.ir.spatial:
            raise TPError("LaTeX of a spatial program (conv, pooling, layernorm, attend) is "
                          "not rendered yet", hint="`tpc kernel-program` prints its recursion")
        return program_latex(self.ir, self.kernel_program)

    def _repr_latex_(self) -> str:
        return "$$" + self.latex() + "$$"

    def __repr__(self) -> str:
        ins = ", ".join(i.name if i.length is None else f"{i.name}[{i.length}]"
                        for i in self.ir.inputs)
        if self.ir.readout is None:
            return (f"<CompiledNetwork {self.name or '<unnamed>'}, "
                    f"{len(self.ir.reports)} reports, {len(self.ir.gvars)} G-vars>")
        return f"<CompiledNetwork {self.name or '<unnamed>'}({ins}), {len(self.ir.gvars)} G-vars>"


def _check_constants(kp: KernelProgram, prog: ir.Program) -> None:
    """TPError, before any code is generated, for a number of the kernel program beyond
    float64. lowering.py bounds every constant of the program (1e100); their products (a variance
    times coefficients, the expansion of (h + c) ** k, Gaussian moments) are checked here."""
    pieces = [(str(kp.labels[s.name][0]) if s.name in kp.labels else str(s), e)
              for s, e in kp.assignments()]
    pieces += [(kind.upper(), e) for kind, pair in kp.outputs.items() for e in pair]
    pieces += [(f"the integrand {q.name}", q.expr) for q in kp.integrands]
    for label, expr in pieces:
        for n in expr.atoms(sp.Rational, sp.Float):
            try:
                if math.isfinite(float(n)):
                    continue
            except OverflowError:
                pass
            size = math.log10(abs(int(n.p))) - math.log10(int(n.q)) if n.is_Rational else math.inf
            found = re.search(r"\bg\d+\b", label)
            span = prog.gvar(found.group(0)).span if found else prog.readout.span
            raise TPError(f"the kernel program needs a constant of about 1e{size:.0f} in "
                          f"{label}, beyond float64 (1.8e308)", span,
                          "the program's constants multiply (a variance times coefficients, "
                          "a power of a sum expanded): make the variances and coefficients "
                          "smaller")


def _check_backend(backend: str) -> None:
    if backend not in ("numba", "numpy"):
        raise TPError(f"unknown backend '{backend}'", hint="use 'numba' or 'numpy'")


def _values_key(values: dict) -> str:
    """A key of params' values (symbol -> number) for the per-values memos."""
    return repr(sorted((s.index, v) for s, v in values.items()))


def _out_dtype(dtype) -> np.dtype:
    """The requested output dtype, checked before any work: an integer dtype would silently
    truncate the kernels."""
    if dtype is None:
        return np.dtype(np.float64)
    try:
        out = np.dtype(dtype)
    except TypeError:
        raise TPError(f"dtype={dtype!r} is not a NumPy dtype") from None
    if out.kind != "f":
        raise TPError(f"dtype={out} is not a floating-point type",
                      hint="use np.float64 (the default) or np.float32")
    return out


def compile(path: str | Path, tol: float = DEFAULT_TOL) -> CompiledNetwork:  # noqa: A001
    """Compile a .tp file. Raises TPError for any mistake in it. tol: the accuracy every
    kernel is held to, relative to its scale; a kernel that misses it comes with a
    TPWarning."""
    text = read_source(path)
    net = CompiledNetwork(lower(parse_source(text, str(path))), tol)
    net._warm_key = warm.key(str(path), text, net.tol)
    net._source = (text, str(path))
    return net


def compile_source(text: str, path: str = "<string>",
                   tol: float = DEFAULT_TOL) -> CompiledNetwork:
    """Compile .tp source text. Raises TPError for any mistake in it (tol: as compile)."""
    net = CompiledNetwork(lower(parse_source(text, path)), tol)
    net._source = (text, path)
    return net
