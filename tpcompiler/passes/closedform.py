"""One row per nonlinearity: its closed-form Gaussian expectations.

Items are functions of ONE zero-mean Gaussian linear form L. For (u, v) ~ N(0, [[q1, k], [k, q2]])
the table gives E[phi(u)] and E[phi(u) psi(v)]; the helpers named here are implemented once in
tpcompiler/helpers.py (numerically careful, e.g. theta = atan2 for arc-cosine kernels).
Everything not in these tables is integrated by quadrature (passes/expect.py; the rules in
tpcompiler/quadrature.py).
"""

from __future__ import annotations

import sympy as sp

from ..functions import ABRelu, AbsF, DGelu, Erf, Gauss, Gelu, Relu, Sign, Step


def helper(name: str, *args) -> sp.Expr:
    """A call of the numeric helper `name` of tpcompiler.helpers (printed by every backend)."""
    return sp.Function(name)(*args)


#: function class -> item kind
ITEM_KINDS = {Relu: "relu", Step: "step", Erf: "erf", Gauss: "gauss", Gelu: "gelu",
              DGelu: "dgelu"}

def _rt(q1, q2, k):
    """The shared pieces of the arc-cosine kernels, as nodes that CSE computes once a layer."""
    r = helper("rootdet", q1, q2, k)
    return r, helper("angle", q1, q2, r, k)


#: E[phi(u)], u ~ N(0, q).  Source: direct integration (Cho & Saul 2009 for relu's moments).
SINGLE = {
    "id": lambda q: sp.S.Zero,
    "relu": lambda q: helper("relu_mean", q),
    "step": lambda q: helper("step_mean", q),
    "erf": lambda q: sp.S.Zero,
    "gauss": lambda q: 1 / sp.sqrt(1 + 2 * q),
    "gelu": lambda q: helper("gelu_mean", q),
    "dgelu": lambda q: sp.Rational(1, 2),
}

#: E[phi(u) psi(v)] for kinds (phi, psi) in sorted order; u has variance q1, v has q2.
#: Sources: Cho & Saul 2009 (relu, step), Williams 1997 (erf), neural-tangents' Gelu, Stein's
#: lemma E[u psi(v)] = k E[psi'(v)] for the 'id' rows.
PAIR = {
    ("id", "id"): lambda q1, q2, k: k,
    ("id", "relu"): lambda q1, q2, k: k / 2,
    ("id", "step"): lambda q1, q2, k: helper("lin_step", q2, k),
    ("erf", "id"): lambda q1, q2, k: helper("erf_lin", q1, q2, k),
    ("gelu", "id"): lambda q1, q2, k: helper("gelu_lin", q1, q2, k),
    ("dgelu", "id"): lambda q1, q2, k: sp.S.Zero,  # dgelu - 1/2 is even: the product is odd
    ("gauss", "id"): lambda q1, q2, k: sp.S.Zero,
    ("relu", "relu"): lambda q1, q2, k: helper("relu_relu_rt", *_rt(q1, q2, k), k),
    ("relu", "step"): lambda q1, q2, k: helper("relu_step", q1, q2, k),
    ("step", "step"): lambda q1, q2, k: helper("step_step_q", q1, q2, _rt(q1, q2, k)[1]),
    ("erf", "erf"): lambda q1, q2, k: helper("erf_erf", q1, q2, k),
    ("gauss", "gauss"): lambda q1, q2, k: helper("gauss_gauss", q1, q2, k),
    ("gelu", "gelu"): lambda q1, q2, k: helper("gelu_gelu", q1, q2, k),
    ("dgelu", "dgelu"): lambda q1, q2, k: helper("dgelu_dgelu", q1, q2, k),
}

#: LaTeX of the helpers that closed forms call (tpc latex defines each one it uses):
#: name -> (parameters as the helper takes them, body, auxiliary symbols the body uses)
def _positive(*qs) -> bool:
    return all(q.is_positive for q in qs)


#: helper -> its value as an exact sympy expression of exact arguments (None where the
#: helper's zero-variance convention applies: the caller then takes the numeric helper). The
#: limits of reports (tpcompiler/limits.py) stay exact through closed forms with these.
EXACT = {
    "relu_mean": lambda q: sp.sqrt(q / (2 * sp.pi)),
    "step_mean": lambda q: sp.S.Half if q.is_positive else None,
    "rootdet": lambda q1, q2, k: sp.sqrt(q1 * q2 - k ** 2) if q1 * q2 >= k ** 2 else None,
    "angle": lambda q1, q2, r, k: sp.atan2(r, k) if _positive(q1, q2) else None,
    "relu_relu_rt": lambda r, t, k: (r + (sp.pi - t) * k) / (2 * sp.pi),
    "step_step_t": lambda t: (sp.pi - t) / (2 * sp.pi),
    "step_step_q": lambda q1, q2, t: (sp.pi - t) / (2 * sp.pi) if _positive(q1, q2) else None,
    "relu_step": lambda q1, q2, k: (sp.sqrt(q1) * (1 + k / sp.sqrt(q1 * q2))
                                    / (2 * sp.sqrt(2 * sp.pi))) if _positive(q1, q2) else None,
    "lin_step": lambda q2, k: k / sp.sqrt(2 * sp.pi * q2) if _positive(q2) else None,
    "expm1h": lambda x: sp.exp(x) - 1,
    "erf_erf": lambda q1, q2, k: 2 / sp.pi * sp.asin(2 * k / sp.sqrt((1 + 2 * q1) * (1 + 2 * q2))),
    "gauss_gauss": lambda q1, q2, k: 1 / sp.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * k ** 2),
    "gelu_mean": lambda q: q / sp.sqrt(2 * sp.pi * (1 + q)),
    "gelu_lin": lambda q1, q2, k: k / 2,
    "erf_lin": lambda q1, q2, k: k * 2 / sp.sqrt(sp.pi) / sp.sqrt(1 + 2 * q1),
}


LATEX = {
    "rootdet": (("q_1", "q_2", "k"), r"\sqrt{q_1 q_2 - k^2}", ()),
    "angle": (("q_1", "q_2", "r", "k"),
              r"\operatorname{atan2}(r, k)\ (\tfrac{\pi}{2} \text{ if } q_1 q_2 = 0)", ()),
    "relu_relu_rt": ((r"r", r"\theta", "k"), r"\frac{r + (\pi - \theta) k}{2\pi}", ()),
    "step_step_q": (("q_1", "q_2", r"\theta"),
                    r"\frac{\pi - \theta}{2\pi}\ (0 \text{ if } q_1 q_2 = 0)", ()),
    "step_mean": (("q",), r"\tfrac12\ (0 \text{ if } q = 0)", ()),
    "expm1h": (("x",), r"e^{x} - 1", ()),
    "relu_step": (("q_1", "q_2", "k"),
                  r"\frac{\sqrt{q_1}\,(1 + k / \sqrt{q_1 q_2})}{2\sqrt{2\pi}}", ()),
    "lin_step": (("q_2", "k"), r"\frac{k}{\sqrt{2\pi q_2}}", ()),
    "relu_mean": (("q",), r"\sqrt{q/2\pi}", ()),
    "erf_erf": (("q_1", "q_2", "k"),
                r"\frac{2}{\pi}\arcsin\frac{2k}{\sqrt{(1+2q_1)(1+2q_2)}}", ()),
    "erf_lin": (("q_1", "q_2", "k"), r"\frac{2k}{\sqrt{\pi(1+2q_1)}}", ()),
    "gelu_gelu": (("q_1", "q_2", "k"),
                  r"\tfrac{k}{4} + \tfrac{1}{2\pi}\Big[k A + \tfrac{k^2 + q_1 q_2 \Delta}"
                  r"{P\sqrt{\Delta}}\Big]", ("P", "Delta", "A")),
    "dgelu_dgelu": (("q_1", "q_2", "k"),
                    r"\tfrac14 + \tfrac{A}{2\pi} + \tfrac{k}{2\pi\sqrt\Delta}\Big(\tfrac1\Delta"
                    r" + \tfrac{1 - q_1 q_2}{P} + 1\Big)", ("P", "Delta", "A")),
    "gelu_mean": (("q",), r"\frac{q}{\sqrt{2\pi(1+q)}}", ()),
    "gauss_gauss": (("q_1", "q_2", "k"),
                    r"\frac{1}{\sqrt{1 + 2(q_1 + q_2) + 4(q_1 q_2 - k^2)}}", ()),
    "gelu_lin": (("q_1", "q_2", "k"), r"\tfrac{k}{2}", ()),
}
#: the auxiliary symbols of LATEX's bodies (functions of the body's q_1, q_2, k)
LATEX_AUX = {"P": r"P = (1+q_1)(1+q_2)", "Delta": r"\Delta = P - k^2",
             "A": r"A = \arcsin(k/\sqrt{P})"}


def canonical(expr: sp.Expr) -> sp.Expr:
    """Rewrite the ReLU family onto relu and step, which have closed forms.

    abrelu(z; a, b) = a z + (b - a) relu(z),  |z| = relu(z) + relu(-z),
    sign(z) = step(z) - step(-z): identities everywhere, z = 0 included (a zero-variance
    argument is a point mass at 0, where sign is 0, not the a.e. form 2 step(z) - 1's -1).
    """
    return expr.replace(
        lambda e: isinstance(e, (ABRelu, AbsF, Sign)),
        lambda e: _rewrite(e),
    )


def _rewrite(e):
    if isinstance(e, ABRelu):
        z, a, b = e.args
        return a * z + (b - a) * Relu(z)
    if isinstance(e, AbsF):
        z = e.args[0]
        return Relu(z) + Relu(-z)
    z = e.args[0]
    return Step(z) - Step(-z)
