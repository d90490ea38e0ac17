"""The elementwise functions of the language: the registry of nonlinearities.

Each primitive is a sympy Function class (the IR's vocabulary) that holds, in one place, all
that the stages need of it:
  - its sympy semantics: `eval` (simplifications) and `fdiff` (the derivative, for the NTK's
    backward program);
  - `numpy`: the float64 implementation over arrays (the reference backend, the simulator);
  - `scalar`: the source of the scalar function that generated code calls (backends/printer.py
    compiles it into every module that uses it), or `runtime`: a math-module name;
  - `branches`: for a kink or jump at 0 of its first argument, its value on each side, as
    functions of the arguments (quadrature.py splits there and integrates each side in closed
    form);
  - `latex_name`: how `tpc latex` writes it.
Its closed-form Gaussian expectations, where they exist, are rows of passes/closedform.py.
`BUILTINS` maps the language's names onto primitives and compositions of them: a builtin that
is a composition (silu, hardtanh, ...) touches that table only.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp

_ERF = np.frompyfunc(math.erf, 1, 1)
_fast_erf = None


def erf_array(x) -> np.ndarray:
    """math.erf over an array: NumPy has no erf, and math.erf is the one the generated code
    calls (bit-identical results); vectorised with Numba for large arrays (15x faster)."""
    global _fast_erf
    x = np.asarray(x, dtype=np.float64)
    if x.size < 4096:
        return np.asarray(_ERF(x), dtype=np.float64)
    if _fast_erf is None:
        from numba import float64, vectorize

        def verf(z):  # pragma: no cover - compiled
            return math.erf(z)

        try:
            _fast_erf = vectorize([float64(float64)], cache=True)(verf)
        except RuntimeError:  # no writable cache location: compile in memory
            _fast_erf = vectorize([float64(float64)])(verf)
    return _fast_erf(x)


def _phi_cdf(x):
    return 0.5 * (1.0 + erf_array(np.asarray(x) / math.sqrt(2.0)))


class Nonlinearity(sp.Function):
    """A primitive of the registry (see the module's docstring for the attributes)."""

    numpy = None
    scalar: str | None = None
    runtime: str | None = None
    branches: tuple | None = None
    latex_name: str = ""

    @classmethod
    def runtime_name(cls) -> str:
        """The name generated code calls."""
        if cls.scalar is not None:
            return cls.scalar.split("(", 1)[0].split()[-1]
        return cls.runtime

    def _latex(self, printer, exp=None):
        args = ", ".join(printer._print(a) for a in self.args)
        out = rf"{self.latex_name}\left({args}\right)"
        return out if exp is None else rf"{out}^{{{exp}}}"


class Relu(Nonlinearity):
    """max(z, 0)."""

    nargs = 1
    numpy = staticmethod(lambda x: np.maximum(x, 0.0))
    scalar = "def _relu(x):\n    return x if x > 0.0 else 0.0\n"
    branches = (lambda x: sp.S.Zero, lambda x: x)
    latex_name = r"\operatorname{relu}"

    @classmethod
    def eval(cls, z):
        # relu of a value >= 0 is the value: relu(relu(z)) = relu(z), relu(step(z)) = step(z),
        # relu(|z|) = |z|. Kept as one kink (an argument that is a kink function would make
        # the kink set a region, which no quadrature rule splits at)
        if isinstance(z, (Relu, Step, AbsF)):
            return z
        if z.is_Number:
            return z if z > 0 else sp.S.Zero
        return None

    def fdiff(self, argindex=1):
        return Step(self.args[0])


class Step(Nonlinearity):
    """1 for z > 0, else 0. Its derivative is a Dirac delta, taken as 0 (neural-tangents)."""

    nargs = 1
    numpy = staticmethod(lambda x: (np.asarray(x) > 0).astype(np.float64))
    scalar = "def _step(x):\n    return 1.0 if x > 0.0 else 0.0\n"
    branches = (lambda x: sp.S.Zero, lambda x: sp.S.One)
    latex_name = r"\operatorname{step}"

    @classmethod
    def eval(cls, z):
        # [relu(z) > 0] = [z > 0], [step(z) > 0] = step(z): the kink stays on z's line
        if isinstance(z, Relu):
            return Step(z.args[0])
        if isinstance(z, Step):
            return z
        if z.is_Number:
            return sp.S.One if z > 0 else sp.S.Zero
        return None

    def fdiff(self, argindex=1):
        return sp.S.Zero


class Sign(Nonlinearity):
    """sign(z) in {-1, 0, 1}; derivative taken as 0 like Step."""

    nargs = 1
    numpy = staticmethod(np.sign)
    scalar = "def _sign(x):\n    return 1.0 if x > 0.0 else (-1.0 if x < 0.0 else 0.0)\n"
    branches = (lambda x: -sp.S.One, lambda x: sp.S.One)
    latex_name = r"\operatorname{sign}"

    def fdiff(self, argindex=1):
        return sp.S.Zero


class AbsF(Nonlinearity):
    """|z|."""

    nargs = 1
    numpy = staticmethod(np.abs)
    runtime = "abs"
    branches = (lambda x: -x, lambda x: x)
    latex_name = r"\operatorname{abs}"

    def fdiff(self, argindex=1):
        return Sign(self.args[0])


class ABRelu(Nonlinearity):
    """a*min(z, 0) + b*max(z, 0); leaky_relu(z, s) is ABRelu(z, s, 1)."""

    nargs = 3
    numpy = staticmethod(lambda x, a, b: a * np.minimum(x, 0.0) + b * np.maximum(x, 0.0))
    scalar = "def _abrelu(x, a, b):\n    return b * x if x > 0.0 else a * x\n"
    branches = (lambda x, a, b: a * x, lambda x, a, b: b * x)
    latex_name = r"\operatorname{abrelu}"

    def fdiff(self, argindex=1):
        if argindex != 1:
            raise sp.ArgumentIndexError(self, argindex)
        z, a, b = self.args
        return a + (b - a) * Step(z)


class Erf(Nonlinearity):
    """The error function; its derivative is (2/sqrt(pi)) Gauss(z)."""

    nargs = 1
    numpy = staticmethod(erf_array)
    runtime = "math.erf"
    latex_name = r"\operatorname{erf}"

    def fdiff(self, argindex=1):
        return 2 / sp.sqrt(sp.pi) * Gauss(self.args[0])


class Gauss(Nonlinearity):
    """exp(-z^2): erf's derivative up to 2/sqrt(pi), kept whole for its closed form."""

    nargs = 1
    numpy = staticmethod(lambda x: np.exp(-x * x))
    scalar = "def _gauss(x):\n    return math.exp(-x * x)\n"
    latex_name = r"\operatorname{gauss}"

    def fdiff(self, argindex=1):
        return -2 * self.args[0] * Gauss(self.args[0])


class Sigmoid(Nonlinearity):
    """1 / (1 + exp(-z))."""

    nargs = 1
    numpy = staticmethod(lambda x: 0.5 * (1.0 + np.tanh(0.5 * x)))
    scalar = "def _sigmoid(x):\n    return 0.5 * (1.0 + math.tanh(0.5 * x))\n"
    latex_name = r"\sigma"

    def fdiff(self, argindex=1):
        s = Sigmoid(self.args[0])
        return s * (1 - s)


class Gelu(Nonlinearity):
    """z * Phi(z), the exact GELU (Phi the standard normal CDF)."""

    nargs = 1
    numpy = staticmethod(lambda x: x * _phi_cdf(x))
    scalar = ("def _gelu(x):\n    return 0.5 * x * (1.0 + math.erf(x * 0.7071067811865476))\n")
    latex_name = r"\operatorname{gelu}"

    def fdiff(self, argindex=1):
        return DGelu(self.args[0])


class DGelu(Nonlinearity):
    """Phi(z) + z phi(z), GELU's derivative, kept whole for its closed form."""

    nargs = 1
    numpy = staticmethod(lambda x: _phi_cdf(x) + x * np.exp(-0.5 * x * x)
                         / math.sqrt(2 * math.pi))
    scalar = ("def _dgelu(x):\n    return 0.5 * (1.0 + math.erf(x * 0.7071067811865476)) + "
              "x * math.exp(-0.5 * x * x) * 0.3989422804014327\n")
    latex_name = r"\operatorname{gelu}'"

    def fdiff(self, argindex=1):
        z = self.args[0]
        return (2 - z**2) * sp.exp(-(z**2) / 2) / sp.sqrt(2 * sp.pi)


class Softplus(Nonlinearity):
    """log(1 + exp(z))."""

    nargs = 1
    numpy = staticmethod(lambda x: np.logaddexp(0.0, x))
    scalar = "def _softplus(x):\n    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))\n"
    latex_name = r"\operatorname{softplus}"

    def fdiff(self, argindex=1):
        return Sigmoid(self.args[0])


#: the primitives, in the order generated code defines their scalar functions
PRIMITIVES: tuple[type[Nonlinearity], ...] = (Relu, Step, Sign, AbsF, ABRelu, Sigmoid, Gelu,
                                              DGelu, Softplus, Gauss, Erf)
#: sympy's own functions the language uses: their NumPy implementations (sympy prints them)
NATIVE = {sp.erf: erf_array, sp.tanh: np.tanh, sp.sin: np.sin, sp.cos: np.cos, sp.exp: np.exp}
#: every function class with a kink or jump at 0 of its first argument
KINKED: tuple[type[Nonlinearity], ...] = tuple(c for c in PRIMITIVES if c.branches)


def numpy_function(cls):
    """The NumPy implementation of an IR function class, or None."""
    if isinstance(cls, type) and issubclass(cls, Nonlinearity):
        return cls.numpy
    return NATIVE.get(cls)


#: every function a .tp file can call, with its keyword parameters and their defaults;
#: None marks a required keyword. The lowering builds the sympy expression from this table.
BUILTINS: dict[str, tuple[dict[str, object], object]] = {
    "identity": ({}, lambda z: z),
    "relu": ({}, Relu),
    "leaky_relu": ({"slope": sp.Rational(1, 100)}, lambda z, slope: ABRelu(z, slope, 1)),
    "abrelu": ({"a": None, "b": None}, lambda z, a, b: ABRelu(z, a, b)),
    "abs": ({}, AbsF),
    "step": ({}, Step),
    "sign": ({}, Sign),
    "erf": ({}, Erf),
    "tanh": ({}, sp.tanh),
    "sigmoid": ({}, Sigmoid),
    "gelu": ({}, Gelu),
    "softplus": ({}, Softplus),
    "sin": ({}, sp.sin),
    "cos": ({}, sp.cos),
    "exp": ({}, sp.exp),
    # compositions: the registry's primitives give them every stage's meaning
    # z sigmoid(z) (Hendrycks & Gimpel 2016; "swish" in Ramachandran et al. 2017, a name left
    # free for users' acts: the language reference defines `act swish` as its example)
    "silu": ({}, lambda z: z * Sigmoid(z)),
    "hardtanh": ({}, lambda z: Relu(z + 1) - Relu(z - 1) - 1),  # clip(z, -1, 1)
    "relu6": ({}, lambda z: Relu(z) - Relu(z - 6)),  # clip(z, 0, 6)
    "mish": ({}, lambda z: z * sp.tanh(Softplus(z))),  # Misra 2019
    "softsign": ({}, lambda z: z / (1 + AbsF(z))),
}
