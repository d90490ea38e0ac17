"""The elementwise functions of the language as sympy Function classes (the IR's vocabulary).

Each class knows its derivative (for the NTK's backward program). Its closed-form Gaussian
expectations live in passes/closedform.py, its numeric code in backends/printer.py.
"""

from __future__ import annotations

import sympy as sp


class Relu(sp.Function):
    """max(z, 0)."""

    nargs = 1

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


class Step(sp.Function):
    """1 for z > 0, else 0. Its derivative is a Dirac delta, taken as 0 (neural-tangents)."""

    nargs = 1

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


class Sign(sp.Function):
    """sign(z) in {-1, 0, 1}; derivative taken as 0 like Step."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sp.S.Zero


class AbsF(sp.Function):
    """|z|."""

    nargs = 1

    def fdiff(self, argindex=1):
        return Sign(self.args[0])


class ABRelu(sp.Function):
    """a*min(z, 0) + b*max(z, 0); leaky_relu(z, s) is ABRelu(z, s, 1)."""

    nargs = 3

    def fdiff(self, argindex=1):
        if argindex != 1:
            raise sp.ArgumentIndexError(self, argindex)
        z, a, b = self.args
        return a + (b - a) * Step(z)


class Erf(sp.Function):
    """The error function; its derivative is (2/sqrt(pi)) Gauss(z)."""

    nargs = 1

    def fdiff(self, argindex=1):
        return 2 / sp.sqrt(sp.pi) * Gauss(self.args[0])


class Gauss(sp.Function):
    """exp(-z^2): erf's derivative up to 2/sqrt(pi), kept whole for its closed form."""

    nargs = 1

    def fdiff(self, argindex=1):
        return -2 * self.args[0] * Gauss(self.args[0])


class Sigmoid(sp.Function):
    """1 / (1 + exp(-z))."""

    nargs = 1

    def fdiff(self, argindex=1):
        s = Sigmoid(self.args[0])
        return s * (1 - s)


class Gelu(sp.Function):
    """z * Phi(z), the exact GELU (Phi the standard normal CDF)."""

    nargs = 1

    def fdiff(self, argindex=1):
        return DGelu(self.args[0])


class DGelu(sp.Function):
    """Phi(z) + z phi(z), GELU's derivative, kept whole for its closed form."""

    nargs = 1

    def fdiff(self, argindex=1):
        z = self.args[0]
        return (2 - z**2) * sp.exp(-(z**2) / 2) / sp.sqrt(2 * sp.pi)


class Softplus(sp.Function):
    """log(1 + exp(z))."""

    nargs = 1

    def fdiff(self, argindex=1):
        return Sigmoid(self.args[0])


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
}
