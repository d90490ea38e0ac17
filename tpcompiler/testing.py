"""Testing tools for users' own architectures: a finite-width check of the limit kernels
(`assert_limit`, the detector of `tpc check`) and hypothesis strategies for random programs
(`programs`) and hard data (`adversarial_data`). See docs/testing.md.

hypothesis is needed only by the strategies (`pip install hypothesis`); it is imported when one
is built, so `assert_limit` works without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .check_cli import (
    KINDS,
    METRICS,
    MIN_OFFSET,
    OffsetFit,
    Z,
    check_kernels,
    finite_errors,
    fit_offset,
    fit_table,
    judge,
    load_against,
    rule_text,
)
from .errors import TPError

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from .api import CompiledNetwork

__all__ = ["assert_limit", "programs", "adversarial_data", "DEFAULT_ACTS", "SHIFTED_KINKS"]


# --- the finite-width check ----------------------------------------------------------------------


def assert_limit(net: CompiledNetwork, x, widths: Sequence[int] = (64, 256, 1024),
                 seeds: int = 6, kinds: Sequence[str] = KINDS,
                 against: Mapping[str, np.ndarray] | str | Path | None = None, *,
                 seed: int = 0, z: float = Z, min_offset: float = MIN_OFFSET,
                 metric: str = "normalized", backend: str = "numba") -> dict[str, OffsetFit]:
    """Assert that finite networks of `net` converge to its limit kernels on the points `x`.

    At every width, `seeds` networks are simulated; the relative error of each one's kernel
    estimate (hidden-layer NNGP, empirical NTK) is fitted as err(n) = a n^-1/2 + b, and the
    assertion fails when the offset b is significantly above zero (b > z se(b) and
    b > min_offset): the rule of `tpc check` (tpcompiler/check_cli.py, docs/testing.md).

    Arguments:
        net: a compiled network (`tp.compile(...)`, `tp.compile_source(...)`).
        x: (N, d) points, (N, T, d) for a sequence input, or a dict input name -> array.
        widths: at least two widths; seeds: networks per width, at least 2.
        kinds: the kernels to check, among "nngp" and "ntk".
        against: the limit to check instead of the compiled kernels: a mapping or an .npz path
            holding "nngp" and/or "ntk" arrays, (N, N); the kinds it lacks are not checked.
        seed: network s at width n has seed (seed, 1, s), as in `tpc check`.
        z, min_offset: the gate (defaults 4 and 0.01).
        metric: "normalized" (default: every entry scaled by sqrt(K_ii K_jj), so rows of very
            different sizes weigh alike) or "frobenius" (`tpc check`'s default).
        backend: of the compiled kernels, "numba" or "numpy".
    Returns:
        kind -> OffsetFit (means, standard errors, a, b, se_b, slope) for the kinds checked.
    Raises:
        AssertionError with the table of errors and the verdicts when an offset is significant
        (or a kernel is not finite); TPError for invalid arguments or data.

    Example:
        >>> net = tp.compile("examples/relu_mlp.tp")
        >>> fits = assert_limit(net, np.random.default_rng(0).normal(size=(6, 4)))
        >>> fits["ntk"].b, fits["ntk"].se_b
    """
    from .data import prepare

    widths = _check_widths(widths)
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 2:
        raise TPError(f"assert_limit: seeds must be an integer >= 2 (their spread gives the "
                      f"standard errors), got {seeds!r}")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds or any(k not in KINDS for k in kinds):
        raise TPError(f"assert_limit: kinds must be among 'nngp', 'ntk', got {kinds!r}")
    if metric not in METRICS:
        raise TPError(f"assert_limit: unknown metric '{metric}'",
                      hint=f"use one of {', '.join(METRICS)}")
    data = prepare(net.ir, x, "X")
    n_points = next(iter(data.values())).shape[0]
    x_in = data if len(data) > 1 else next(iter(data.values()))

    if against is None:
        kp = net.recursion
        for k in kinds:
            if k not in kp.kinds:
                raise TPError(f"assert_limit: the {k.upper()} of this network is not available: "
                              f"{kp.refused.get(k, 'not computed')}",
                              hint=f"check the others only: kinds={tuple(set(kinds) - {k})!r}")
        limit = net.kernels(x_in, get=kinds, backend=backend)
        source = "the compiled kernels"
    else:
        if isinstance(against, (str, Path)):
            given = load_against(str(against), n_points, "against")
            source = f"the kernels of {against}"
        else:
            given = check_kernels(against, n_points, "against")
            source = "the given kernels"
        limit = {k: v for k, v in given.items() if k in kinds}
        if not limit:
            raise TPError(f"assert_limit: against holds none of the kinds to check {kinds!r}")
        if "ntk" in limit and net.ir.parametrization.preset != "ntk":
            raise TPError("assert_limit: an NTK is compared only under parametrization ntk "
                          f"(this network is {net.ir.parametrization.preset})",
                          hint="check kinds=('nngp',)")

    bad = [k for k, v in limit.items() if not np.all(np.isfinite(v))]
    if bad:
        raise AssertionError(f"assert_limit: the limit {bad[0].upper()} contains NaN or infinity")
    errors = finite_errors(net.ir, x_in, limit, widths, int(seeds), seed, metric)
    fits = {k: fit_offset(widths, v) for k, v in errors.items()}
    verdicts = {k: judge(f, z, min_offset) for k, f in fits.items()}
    if not all(ok for ok, _ in verdicts.values()):
        failed = ", ".join(k.upper() for k, (ok, _) in verdicts.items() if not ok)
        lines = [f"assert_limit: finite networks of {net.name or 'the network'} do not converge "
                 f"to {source} ({failed})",
                 f"{n_points} points, {seeds} networks per width, relative error ({metric})"]
        lines += fit_table(widths, {k.upper(): f for k, f in fits.items()})
        lines.append(rule_text(z, min_offset, min(f.dof for f in fits.values())))
        lines += [f"{k.upper()}: {'ok' if ok else 'FAIL'} ({why})"
                  for k, (ok, why) in verdicts.items()]
        raise AssertionError("\n".join(lines))
    return fits


def _check_widths(widths) -> list[int]:
    try:
        out = sorted(int(w) for w in widths)
    except (TypeError, ValueError):
        raise TPError(f"assert_limit: widths must be integers, got {widths!r}") from None
    if len(out) < 2 or len(set(out)) != len(out) or out[0] < 1:
        raise TPError(f"assert_limit: widths must be at least two distinct positive integers, "
                      f"got {widths!r}")
    return out


def assert_gradients(fn, x, *, entries: int = 4, step: float = 1e-6, rtol: float = 1e-6,
                     atol: float = 1e-7, seed: int = 0) -> dict:
    """A finite network's per-example gradients (fn.gradients(x), the simulator's transpose
    program) against central differences of its forward pass, at `entries` random entries of
    every trainable tensor. With O(1) parameters the differences are off by O(step^2) plus
    rounding ~1e-16 / step, far below rtol at the default step. Returns the gradients."""
    grads = fn.gradients(x)
    rng = np.random.default_rng(seed)
    n = len(fn(x))
    for name, g in grads.items():
        flat = fn.param(name).reshape(-1)  # a view: the network's live parameter
        for i in rng.choice(flat.size, size=min(entries, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + step
            up = fn(x)
            flat[i] = old - step
            down = fn(x)
            flat[i] = old
            np.testing.assert_allclose(g.reshape(n, -1)[:, i], (up - down) / (2 * step),
                                       rtol=rtol, atol=atol, err_msg=f"{name}[{i}]")
    return grads


# --- hypothesis strategies -----------------------------------------------------------------------

# argument templates: "{}" is the argument; C is a drawn constant
DEFAULT_ACTS = ("relu({})", "tanh({})", "erf({})", "sin({})", "cos({})", "step({})", "gelu({})",
                "sigmoid({})", "softplus({})", "abs({})", "sign({})",
                "leaky_relu({}, slope=0.1)", "abrelu({}, a=-0.5, b=1.5)", "({}) ** 2")
# kinks and jumps away from the origin (hardtanh, a shifted relu/step/leaky relu)
SHIFTED_KINKS = ("relu({} + C)", "relu({} - C)", "relu({} + C) - relu({} - C) - C",
                 "step({} - C)", "leaky_relu({} + C, slope=0.2)", "abs({} - C)")
# bodies of user acts (in z): smooth products, shifted arguments, sums of built-ins
ACT_BODIES = ("z * sigmoid(z)", "z * sigmoid(C * z)", "relu(z) ** 2 + 0.5 * z", "tanh(z + C)",
              "z * erf(z)", "gelu(z) - 0.5 * relu(z)", "relu(z - C) + 0.1 * z",
              "softplus(z) * tanh(z)", "sin(C * z) + cos(z)")


def programs(*, acts: Sequence[str] = DEFAULT_ACTS, max_layers: int = 3,
             variances: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 10.0),
             biases: Sequence[float] = (0.0, 0.05, 0.1, 1.0),
             constants: Sequence[float] = (0.5, 1.0, 2.0), products: bool = True,
             shifted_kinks: bool = True, user_acts: bool = True,
             residuals: bool = True) -> SearchStrategy[str]:
    """A hypothesis strategy for .tp program texts with one vector input `x`.

    Every program starts `h = dense(x, var=V, bias=B)`, has 1..max_layers hidden layers
    `h = dense(E, var=V, bias=B)` (or a residual `h = h + C * dense(E, var=V)`) and ends
    `y = readout(E, var=V, bias=B)`, where each E is drawn from: one activation of h, a nested
    activation, a sum `act(h) + C * act(h)`, a product of activations of h, of h and an
    independent g = dense(act(h)), or of h and h + g (correlated), a shifted kink
    (`relu(h + 1) - relu(h - 1) - 1`, `step(h - C)`, ...) and user `act`s (`z * sigmoid(z)`,
    `tanh(z + C)`, ...) declared at the top. `acts` are templates with "{}" for the argument.

    Arguments:
        acts: activation templates, e.g. ("relu({})", "leaky_relu({}, slope=0.1)").
        max_layers: at most this many hidden layers (>= 1).
        variances, biases, constants: the values var=, bias= and C are drawn from.
        products, shifted_kinks, user_acts, residuals: include those constructs.
    Returns:
        a strategy of program texts (str), accepted by `tp.compile_source`.

    Example:
        >>> @given(src=programs(max_layers=2))
        ... def test_parses(src):
        ...     tp.compile_source(src)
    """
    from hypothesis import strategies as st

    acts = tuple(acts)
    if not acts or any("{}" not in a for a in acts):
        raise TPError("programs: acts must be non-empty templates with '{}' for the argument")
    if max_layers < 1:
        raise TPError(f"programs: max_layers must be at least 1, got {max_layers}")
    num = st.sampled_from([_num(v) for v in constants])
    var = st.sampled_from([_num(v) for v in variances])
    bias = st.sampled_from([_num(v) for v in biases])

    @st.composite
    def draw_program(draw) -> str:
        head = ["input x"]
        users: list[str] = []
        if user_acts and draw(st.booleans()):
            for i in range(draw(st.integers(1, 2))):
                body = draw(st.sampled_from(ACT_BODIES)).replace("C", draw(num))
                head.append(f"act u{i}(z) = {body}")
                users.append(f"u{i}({{}})")
        menu = acts + tuple(users)
        if shifted_kinks:
            menu += SHIFTED_KINKS

        def act(arg: str) -> str:
            template = draw(st.sampled_from(menu))
            return template.replace("C", draw(num)).replace("{}", arg)

        def expr(lines: list[str]) -> str:
            kinds = ["act", "nested", "sum"] + (["product", "independent", "correlated"]
                                                if products else [])
            kind = draw(st.sampled_from(kinds))
            if kind == "act":
                return act("h")
            if kind == "nested":
                return act(act("h"))
            if kind == "sum":
                return f"{act('h')} + {draw(num)} * {act('h')}"
            if kind == "product":
                return f"({act('h')}) * ({act('h')})"
            lines.append(f"g = dense({act('h')}, var={draw(var)})")
            if kind == "independent":
                return f"({act('h')}) * ({act('g')})"
            return f"({act('h')}) * ({act('h + g')})"

        body = [f"h = dense(x, var={draw(var)}, bias={draw(bias)})"]
        for _ in range(draw(st.integers(1, max_layers))):
            e = expr(body)
            if residuals and draw(st.booleans()):
                body.append(f"h = h + {draw(num)} * dense({e}, var={draw(var)})")
            else:
                body.append(f"h = dense({e}, var={draw(var)}, bias={draw(bias)})")
        body.append(f"y = readout({expr(body)}, var={draw(var)}, bias={draw(bias)})")
        return "\n".join(head + body) + "\n"

    return draw_program()


def _num(v: float) -> str:
    """A constant as the language spells it (unsigned decimal: no '.5', no '1e-08')."""
    if v < 0:
        raise TPError(f"programs: constants must be non-negative, got {v}")
    text = repr(float(v))
    return text if "e" not in text else np.format_float_positional(v, trim="-")


SPECIAL_ROWS = ("collinear", "duplicate", "antipodal", "zero", "tiny", "huge")


def adversarial_data(d: int, *, base: tuple[int, int] = (2, 4),
                     specials: Sequence[str] = SPECIAL_ROWS, correlation: float = 0.99999,
                     tiny: float = 1e-8, huge: float = 1e8) -> SearchStrategy[np.ndarray]:
    """A hypothesis strategy for (N, d) float64 arrays: a few standard-normal rows plus rows
    that break careless kernels, in a drawn order.

    Specials (a non-empty subset is drawn): "collinear" (a row at cosine `correlation` with
    another: same norm, rotated in the plane of a random orthogonal direction; for d = 1 a copy
    scaled by `correlation`, the nearest one dimension allows), "duplicate" (an exact copy),
    "antipodal" (the negation of a row), "zero", "tiny" and "huge" (a row scaled to norm
    `tiny` or `huge` times sqrt(d)). A finite-width check (assert_limit) of a saturating
    activation (erf, tanh, sigmoid, ...) cannot resolve a "huge" row's NTK at any simulated
    width (docs/testing.md): leave it out of `specials` there.

    Arguments:
        d: the dimension of the points (>= 1).
        base: (min, max) number of standard-normal rows (at least 1).
        specials: the kinds of special rows to draw from.
    Returns:
        a strategy of arrays with base + len(drawn specials) rows.
    """
    from hypothesis import strategies as st

    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise TPError(f"adversarial_data: d must be a positive integer, got {d!r}")
    unknown = [s for s in specials if s not in SPECIAL_ROWS]
    if unknown or not specials:
        raise TPError(f"adversarial_data: specials must be among {', '.join(SPECIAL_ROWS)}, "
                      f"got {list(specials)!r}")
    if not 0 < correlation < 1:
        raise TPError(f"adversarial_data: correlation must be in (0, 1), got {correlation}")
    lo, hi = base
    if lo < 1 or hi < lo:
        raise TPError(f"adversarial_data: base must be (min, max) with 1 <= min <= max, got "
                      f"{base!r}")

    @st.composite
    def draw_data(draw) -> np.ndarray:
        # numbers from one drawn seed: hypothesis shrinks the structure (which specials, how
        # many rows, their order), not the floats, which are not where the difficulty is
        rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
        n_base = draw(st.integers(lo, hi))
        rows = list(rng.standard_normal((n_base, d)))
        chosen = draw(st.lists(st.sampled_from(tuple(specials)), min_size=1, unique=True))
        for kind in chosen:
            # a special row is made from a normal one (an antipode of the zero row is no test)
            ref = rows[draw(st.integers(0, n_base - 1))]
            rows.append(_special(kind, ref, rng, correlation, tiny, huge))
        order = draw(st.permutations(range(len(rows))))
        return np.array([rows[i] for i in order], dtype=np.float64)

    return draw_data()


def _special(kind: str, ref: np.ndarray, rng: np.random.Generator, correlation: float,
             tiny: float, huge: float) -> np.ndarray:
    d = ref.shape[0]
    if kind == "duplicate":
        return ref.copy()
    if kind == "antipodal":
        return -ref
    if kind == "zero":
        return np.zeros(d)
    if kind in ("tiny", "huge"):
        u = rng.standard_normal(d)
        return u * ((tiny if kind == "tiny" else huge) * np.sqrt(d) / np.linalg.norm(u))
    # collinear: ref rotated by angle arccos(correlation) towards a direction orthogonal to it
    norm = np.linalg.norm(ref)
    if d == 1 or norm == 0:
        return ref * correlation
    u = rng.standard_normal(d)
    u -= (u @ ref) / norm ** 2 * ref
    u *= norm / np.linalg.norm(u)
    return correlation * ref + np.sqrt(1.0 - correlation ** 2) * u
