"""scikit-learn's kernel API over a compiled network (`pip install "tpcompiler[sklearn]"`).

TPKernel(net, kind="nngp") is a `sklearn.gaussian_process.kernels.Kernel`: it goes into
GaussianProcessRegressor / GaussianProcessClassifier, sums and products with scikit-learn's
kernels (`TPKernel(net) + WhiteKernel()`), `clone` and `get_params`. Its hyperparameters are the
program's params (`param sw = 2.0`, used in var= and bias=), in log space as scikit-learn's
optimiser expects, and eval_gradient returns their exact derivatives (passes/tangent.py): a GP
learns the network's variances by marginal likelihood.

`gram(net, X, Y=None, kind=...)` is the matrix for estimators that take
kernel="precomputed" (SVC, KernelRidge): their callable-kernel paths call the kernel once per
pair of points.

scikit-learn hands kernels 2-D arrays; for a network whose input is a sequence `s[T]` or an
image `img[H, W]`, rows are the flattened (T, d) or (H, W, C) arrays (X.reshape(len(X), -1)),
restored here.
"""

from __future__ import annotations

import numpy as np
from sklearn.gaussian_process.kernels import Hyperparameter, Kernel

from .errors import TPError


def _points(net, x) -> np.ndarray:
    x = np.asarray(x)
    if len(net.ir.inputs) != 1:
        raise TPError(f"scikit-learn passes one array; this network has {len(net.ir.inputs)} "
                      "inputs", hint="call net.kernels with a dict of arrays instead")
    inp = net.ir.inputs[0]
    if x.ndim != 2:
        raise TPError(f"scikit-learn kernels take 2-D arrays (N, features); got shape {x.shape}")
    lead = inp.axes
    if not lead:
        return x
    size = int(np.prod(lead))
    if x.shape[1] % size:
        grid = " x ".join(map(str, lead))
        raise TPError(f"rows of {x.shape[1]} features do not split into {grid} positions of "
                      f"input '{inp.name}'",
                      hint="flatten each point with X.reshape(len(X), -1)")
    return x.reshape((len(x), *lead, x.shape[1] // size))


def gram(net, x, y=None, kind: str = "ntk") -> np.ndarray:
    """The (len(x), len(y)) kernel `kind` between rows of x and y (y=None: x with itself), for
    estimators with kernel="precomputed": fit(gram(net, X), y), predict(gram(net, Xt, X))."""
    a = _points(net, x)
    b = None if y is None else _points(net, y)
    return net.kernels(a, b, get=kind)[kind]


class TPKernel(Kernel):
    """The NNGP or NTK of a compiled network as a scikit-learn kernel; its hyperparameters are
    the program's params (`param sw = 2.0`), in log space, with the symbolic derivatives.

    TPKernel(net, kind="nngp", param_bounds=(1e-5, 1e5), fixed=(), sw=1.5, ...): a param not
    given starts at its default. `fixed` names params the optimiser leaves alone; a param whose
    value is <= 0 (no logarithm) is fixed too."""

    def __init__(self, net, kind: str = "nngp", param_bounds=(1e-5, 1e5), fixed=(),
                 **values):
        self.net = net
        self.kind = kind
        self.param_bounds = param_bounds
        self.fixed = fixed
        unknown = sorted(set(values) - set(self._names()))
        if unknown:
            raise TPError(f"{', '.join(unknown)}: not params of this program",
                          hint="its params: " + (", ".join(self._names()) or "none"))
        for name, value in values.items():
            setattr(self, name, value)

    def _names(self) -> list[str]:
        return list(getattr(self.net, "params", {}))

    def get_params(self, deep: bool = True) -> dict:
        out = super().get_params(deep)
        for name in self._names():
            if name in out:
                raise TPError(f"the param '{name}' has the name of a TPKernel argument",
                              hint="rename it in the .tp file")
            out[name] = getattr(self, name, self.net.params[name])
        return out

    def _values(self) -> dict:
        return {name: float(getattr(self, name, self.net.params[name]))
                for name in self._names()}

    @property
    def hyperparameters(self) -> list[Hyperparameter]:
        values = self._values()
        return [Hyperparameter(name, "numeric",
                               "fixed" if name in self.fixed or values[name] <= 0
                               else self.param_bounds)
                for name in self._names()]

    def _check(self) -> None:
        if self.kind not in ("nngp", "ntk"):
            raise TPError(f"kind must be 'nngp' or 'ntk', got {self.kind!r}")
        unknown = set(self.fixed) - set(self._names())
        if unknown:
            raise TPError(f"fixed names {sorted(unknown)}, not params of this program",
                          hint="its params: " + (", ".join(self._names()) or "none"))

    def __call__(self, X, Y=None, eval_gradient: bool = False):
        self._check()
        if eval_gradient and Y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        values = self._values()
        if not eval_gradient:
            b = None if Y is None else _points(self.net, Y)
            return self.net.kernels(_points(self.net, X), b, get=self.kind,
                                    params=values)[self.kind]
        free = [i for i, h in enumerate(self.hyperparameters) if not h.fixed]
        if not free:
            k = self.net.kernels(_points(self.net, X), get=self.kind, params=values)[self.kind]
            return k, np.empty((len(k), len(k), 0))
        res = self.net.kernels(_points(self.net, X), get=self.kind, params=values, grad=True)
        scale = np.array([values[n] for n in self._names()])  # d/dlog theta = theta d/dtheta
        return res[self.kind], (res[self.kind + "_grad"] * scale)[..., free]

    def diag(self, X) -> np.ndarray:
        self._check()
        return self.net.kernels(_points(self.net, X), get=self.kind, diagonal=True,
                                params=self._values())[self.kind]

    def is_stationary(self) -> bool:
        return False

    @property
    def requires_vector_input(self) -> bool:
        return True

    def _identity(self):
        # a clone or an unpickled copy compiles the same text: the same kernel
        source = getattr(self.net, "_source", None)
        return (source, self.net.tol) if source is not None else id(self.net)

    def __eq__(self, other) -> bool:
        return (type(self) is type(other) and self.kind == other.kind
                and self._identity() == other._identity()
                and self._values() == other._values())

    def __hash__(self) -> int:
        return hash((self._identity(), self.kind, tuple(self._values().items())))

    def __repr__(self) -> str:
        shown = "".join(f", {n}={v:.3g}" for n, v in self._values().items())
        return f"TPKernel({self.net.name or 'network'}, kind={self.kind!r}{shown})"
