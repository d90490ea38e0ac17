"""scikit-learn's kernel API over a compiled network (`pip install "tpcompiler[sklearn]"`).

TPKernel(net, kind="nngp") is a `sklearn.gaussian_process.kernels.Kernel`: it goes into
GaussianProcessRegressor / GaussianProcessClassifier, sums and products with scikit-learn's
kernels (`TPKernel(net) + WhiteKernel()`), `clone` and `get_params`. It has no hyperparameters
of its own yet (the network's variances are fixed by its .tp file), so eval_gradient returns an
(n, n, 0) array and the optimiser of a GP learns only the other kernels' hyperparameters.

`gram(net, X, Y=None, kind=...)` is the matrix for estimators that take
kernel="precomputed" (SVC, KernelRidge): their callable-kernel paths call the kernel once per
pair of points.

scikit-learn hands kernels 2-D arrays; for a network whose input is a sequence `s[T]` or an
image `img[H, W]`, rows are the flattened (T, d) or (H, W, C) arrays (X.reshape(len(X), -1)),
restored here.
"""

from __future__ import annotations

import numpy as np
from sklearn.gaussian_process.kernels import Kernel

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
    """The NNGP or NTK of a compiled network as a scikit-learn kernel."""

    def __init__(self, net, kind: str = "nngp"):
        self.net = net
        self.kind = kind

    def _check(self) -> None:
        if self.kind not in ("nngp", "ntk"):
            raise TPError(f"kind must be 'nngp' or 'ntk', got {self.kind!r}")

    def __call__(self, X, Y=None, eval_gradient: bool = False):
        self._check()
        if eval_gradient and Y is not None:
            raise ValueError("Gradient can only be evaluated when Y is None.")
        k = gram(self.net, X, Y, self.kind)
        if eval_gradient:
            return k, np.empty((len(k), len(k), 0))
        return k

    def diag(self, X) -> np.ndarray:
        self._check()
        return self.net.kernels(_points(self.net, X), get=self.kind,
                                diagonal=True)[self.kind]

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
                and self._identity() == other._identity())

    def __hash__(self) -> int:
        return hash((self._identity(), self.kind))

    def __repr__(self) -> str:
        return f"TPKernel({self.net.name or 'network'}, kind={self.kind!r})"
