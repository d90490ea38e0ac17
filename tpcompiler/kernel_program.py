"""KernelProgram: the backend-neutral straight-line scalar code that evaluates the kernels.

Two blocks of assignments:
  diag   per input point xi: Gram entries x_a(xi).x_b(xi)/d, then symbols d0, d1, ...
  cross  per pair (xi, xi'):  Gram entries x_a(xi).x_b(xi')/d, then symbols c0, c1, ...
The cross block reads the diag values of both points: d_i of xi as d_i, of xi' as e_i.
Quadratures are calls quad<k>_<name>(C[0][0], C[1][0], C[1][1], ...) of named integrands.

A rolled program (passes/loops.py) also has loops: each Loop's body runs `count` times at its
place in the two blocks, over state symbols that the straight code before it assigns and that
each iteration replaces (`unrolled()` writes the same program out as straight-line code).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import sympy as sp

from .ir import Input, InputRef


class QuadCall(sp.Function):
    """E[integrand(z)], z ~ N(0, C), as it appears in the kernel program: the arguments are the
    lower triangle of C, row by row. One subclass per integrand (`quad_call`), carrying the
    integrand's name and dimension as data: nothing reads them back out of the printed name
    (quad<dim>_<name>, what generated code calls)."""

    integrand: str = ""
    dim: int = 0


@functools.cache
def quad_call(name: str, dim: int) -> type[QuadCall]:
    """The QuadCall class of integrand `name` (one class per integrand: equal calls compare
    equal)."""
    return type(f"quad{dim}_{name}", (QuadCall,), {"integrand": name, "dim": dim})


@dataclass(frozen=True)
class Label:
    """What a symbol of the kernel program means, as data (latex.py and the text form render
    it): `kind` is "cov" (Sigma of two G-vars), "dcov" (their D, the NTK's backward
    covariance), "gram" (<x_a, x_b>/d of two input vectors), "nngp" or "ntk"; `a`, `b` the
    G-var or input names; `same_point` whether both sides are one point (the diag block)."""

    kind: str
    a: str = ""
    b: str = ""
    same_point: bool = True

    def __str__(self) -> str:
        prime = "" if self.same_point else "'"
        if self.kind == "cov":
            return f"Cov({self.a}, {self.b})" + (" at one point" if self.same_point else "'")
        if self.kind in ("dcov", "tcov"):
            return f"{'DT'[self.kind == 'tcov']}({self.a}, {self.b}{prime})"
        if self.kind == "gram":
            return f"<{self.a}, {self.b}{prime}>/d"
        return self.kind.upper()


@dataclass(frozen=True)
class GramEntry:
    symbol: sp.Symbol
    a: InputRef  # at the first point
    b: InputRef  # at the first point (diag) or the second point (cross)


@dataclass(frozen=True)
class Integrand:
    """E[expr(z)], z ~ N(0, C), and its quadrature rule (chosen by quadrature.plan).

    z = L w with L the Cholesky factor of C in the coordinate order kinked + pivot. kinked: ()
    or the two coordinates (s0, s1) whose whitened pair (w0, w1) is integrated by the polar
    wedge rule, split at the lines kink_forms (rows (a0, a1): {a0 s0 + a1 s1 = 0}); the other
    whitened coordinates by the tensor rule. The defaults are the tensor rule in order."""

    name: str
    dim: int
    expr: sp.Expr  # in z0 .. z{dim-1}
    pivot: tuple[int, ...] | None = None
    kinked: tuple[int, ...] = ()
    kink_forms: tuple[tuple[float, ...], ...] = ()
    #: the split rule (quadrature.split_nodes) when not empty: kinks {r . z + c = 0} as rows
    #: (r_0, ..., r_{dim-1}, c), integrated in natural order
    breaks: tuple[tuple[float, ...], ...] = ()
    #: per coordinate (point 1 or 2, the matrix or bias of its G-var) when the coordinates are
    #: G-vars of both points (passes/expect.py `_sources`), else (): series.py reads it
    layout: tuple[tuple[int, str], ...] = ()
    #: an integral over one point's coordinates (the diag block): O(N) of them, so its tensor
    #: rule takes the higher orders of quadrature.PER_POINT_ORDER
    per_point: bool = False
    #: the conditional rule (conditional.conditional) when not empty: these kinked coordinates
    #: are integrated in closed form given the pivot's (the tensor rule), the kink forms
    #: `given_forms` as rows (r_0, .., r_{dim-1}, c), and the integrand as `given_terms`
    #: (function of the pivot, f, p, i, g, q, j): a sum of E[X_f^p [X_f > 0]^i X_g^q
    #: [X_g > 0]^j | pivot] times functions of the pivot
    given: tuple[int, ...] = ()
    given_forms: tuple[tuple[float, ...], ...] = ()
    given_terms: tuple = ()
    #: kinks of the pivot alone under the conditional rule, rows (r_0, .., r_{dim-1}, c): the
    #: pivot's rule is cut at them (step(s - 1) of s = h + g, with relu(h) given s)
    pivot_breaks: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self):
        if self.pivot is None:
            object.__setattr__(self, "pivot", tuple(range(self.dim)))
        assert sorted(self.pivot + self.kinked + self.given) == list(range(self.dim))
        assert not self.given or not (self.kinked or self.breaks)
        assert len(self.kinked) in (0, 2) and (not self.kinked) == (not self.kink_forms)
        assert not self.breaks or (not self.kinked and self.pivot == tuple(range(self.dim)))

    @property
    def rule(self) -> str:
        """The rule in words (for listings)."""
        if self.breaks:
            return f"split at {len(self.breaks)} kink(s)"
        if self.given:
            over = "split" if self.pivot_breaks else "tensor"
            return (f"{over} over {', '.join(f'z{i}' for i in self.pivot)} x closed form in "
                    f"{', '.join(f'z{i}' for i in self.given)} ({len(self.given_forms)} "
                    "kink forms)")
        tensor = "tensor" + ("" if self.pivot == tuple(range(self.dim)) else
                             " over " + ", ".join(f"z{i}" for i in self.pivot))
        if not self.kinked:
            return tensor
        s0, s1 = self.kinked
        return (f"polar over z{s0}, z{s1} ({len(self.kink_forms)} lines)"
                + (f" x {tensor}" if self.pivot else ""))


@dataclass(frozen=True)
class Loop:
    """A body of assignments run `count` times, after the first `diag_at` assignments of the
    diag block (per point) and the first `cross_at` of the cross block (per pair). The body
    reads state symbols, which the straight code assigns before the loop; after each
    iteration every state symbol takes its `next` value (all at once: the next values are
    read before any is replaced). Straight code after the loop reads the state's final
    values and never a symbol the body assigns."""

    count: int
    diag: tuple[tuple[sp.Symbol, sp.Expr], ...]
    cross: tuple[tuple[sp.Symbol, sp.Expr], ...]
    diag_state: tuple[tuple[sp.Symbol, sp.Expr], ...]  # (state, next)
    cross_state: tuple[tuple[sp.Symbol, sp.Expr], ...]
    diag_at: int
    cross_at: int

    def __post_init__(self):
        assert self.count >= 1


@dataclass(frozen=True)
class KernelProgram:
    inputs: tuple[Input, ...]  # data binding order: generated code names them x0, x1, ...
    diag_gram: tuple[GramEntry, ...]
    diag: tuple[tuple[sp.Symbol, sp.Expr], ...]
    cross_gram: tuple[GramEntry, ...]
    cross: tuple[tuple[sp.Symbol, sp.Expr], ...]
    outputs: dict  # {"nngp": (diag expr, cross expr), "ntk": (...)}: only the kinds available
    integrands: tuple[Integrand, ...]
    #: symbol name -> its meanings (Label; several when value numbering shared the symbol)
    labels: dict = field(default_factory=dict, compare=False)
    refused: dict = field(default_factory=dict)  # kind -> why it is not available
    loops: tuple[Loop, ...] = ()  # in order of their places (diag_at and cross_at ascending)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.outputs)

    def pieces(self, block: str) -> list[tuple[tuple, Loop | None]]:
        """The block ("diag" or "cross") in order as (assignments, None) for each piece of
        straight code and (the body's assignments, the Loop) for each loop: straight and loop
        pieces alternate, starting and ending with straight ones (possibly empty)."""
        straight, done, out = getattr(self, block), 0, []
        for lp in self.loops:
            at = getattr(lp, block + "_at")
            out += [(straight[done:at], None), (getattr(lp, block), lp)]
            done = at
        return out + [(straight[done:], None)]

    def assignments(self):
        """Every assignment of both blocks, loop bodies and state updates included."""
        yield from self.diag
        yield from self.cross
        for lp in self.loops:
            yield from lp.diag + lp.cross + lp.diag_state + lp.cross_state

    def unrolled(self) -> KernelProgram:
        """The same program as straight-line code: each loop's body written out `count` times,
        its symbols renamed per iteration (fresh d_i for per-point values, name_k for the
        rest) and its state symbols replaced by the values of the iteration before."""
        if not self.loops:
            return self
        top = max([s.index for s, _ in self.diag if isinstance(s, PointValue)]
                  + [s.index for lp in self.loops for s, _ in lp.diag
                     if isinstance(s, PointValue)]
                  + [g.symbol.index for g in self.diag_gram], default=-1) + 1
        labels = dict(self.labels)
        now: dict = {}  # state symbol (and its twin) -> its value at this point
        diag: list = []
        cross: list = []

        def put(out, assigns, rename):
            for sym, e in assigns:
                e = e.xreplace(now).xreplace(rename)
                out.append((rename.get(sym, sym), e))

        for (d_piece, lp), (c_piece, _) in zip(self.pieces("diag"), self.pieces("cross")):
            if lp is None:
                put(diag, d_piece, {})
                put(cross, c_piece, {})
                continue
            for k in range(lp.count):
                rename: dict = {}
                for sym, _ in lp.diag:
                    if isinstance(sym, PointValue):
                        new = PointValue(top)
                        top += 1
                        rename[sym], rename[twin(sym)] = new, twin(new)
                    else:
                        rename[sym] = sp.Symbol(f"{sym.name}_{k}", real=True)
                for sym, _ in lp.cross:
                    rename[sym] = sp.Symbol(f"{sym.name}_{k}", real=True)
                for old, new in rename.items():
                    if old.name in labels:
                        labels[new.name] = labels[old.name]
                put(diag, lp.diag, rename)
                put(cross, lp.cross, rename)
                nxt = {}
                for state, value in lp.diag_state + lp.cross_state:
                    value = value.xreplace(now).xreplace(rename)
                    nxt[state] = value
                    if is_first_point(state):
                        nxt[twin(state)] = twin(value) if is_first_point(value) else value
                now.update(nxt)
        outputs = {k: (d.xreplace(now), c.xreplace(now)) for k, (d, c) in self.outputs.items()}
        return dataclasses.replace(self, diag=tuple(diag), cross=tuple(cross), outputs=outputs,
                                   labels=labels, loops=())

    def bind(self, values: dict) -> KernelProgram:
        """The program with its params (ir.ParamSymbol -> number) replaced by their values:
        what the NumPy evaluators run (they compile nothing, so a number costs nothing)."""
        if not values:
            return self
        sub = {s: sp.Float(v) for s, v in values.items()}

        def put(assigns):
            return tuple((s, e.xreplace(sub)) for s, e in assigns)

        return dataclasses.replace(
            self, diag=put(self.diag), cross=put(self.cross),
            outputs={k: (d.xreplace(sub), c.xreplace(sub)) for k, (d, c) in self.outputs.items()},
            loops=tuple(dataclasses.replace(lp, diag=put(lp.diag), cross=put(lp.cross),
                                            diag_state=put(lp.diag_state),
                                            cross_state=put(lp.cross_state))
                        for lp in self.loops))

    def cross_reads(self) -> set[str]:
        """Names of the symbols that the cross block and the off-diagonal outputs read."""
        names: set[str] = set()
        for _, e in self.cross:
            names |= {s.name for s in e.free_symbols}
        for _, c in self.outputs.values():
            names |= {s.name for s in c.free_symbols}
        return names

    def diag_needed(self) -> tuple[sp.Symbol, ...]:
        """Diag symbols that the cross block reads (as the twins e_i of the second point)."""
        names = self.cross_reads()
        out = [g.symbol for g in self.diag_gram] + [s for s, _ in self.diag
                                                    if is_first_point(s)]
        return tuple(s for s in out if s.name in names or twin(s).name in names)

    def _block_text(self, block: str) -> list[str]:
        def line(s, e, indent=""):
            return f"{indent}{s} = {sp.sstr(e)}{_comment(self.labels, s)}"

        out: list[str] = []
        for assigns, lp in self.pieces(block):
            if lp is None:
                out += [line(s, e) for s, e in assigns]
                continue
            state = getattr(lp, block + "_state")
            out.append(f"repeat {lp.count} times (state {', '.join(str(s) for s, _ in state)}):")
            out += [line(s, e, "    ") for s, e in assigns]
            out += [f"    {s} <- {sp.sstr(v)}" for s, v in state]
        return out

    def text(self) -> str:
        lines = ["# per point"]
        for g in self.diag_gram:
            lines.append(f"{g.symbol} = <{g.a}, {g.b}>/d")
        lines += self._block_text("diag")
        lines.append("# per pair (d_i of the first point, e_i of the second)")
        for g in self.cross_gram:
            lines.append(f"{g.symbol} = <{g.a}, {g.b}'>/d")
        lines += self._block_text("cross")
        for kind, (d, c) in self.outputs.items():
            lines.append(f"{kind}: diagonal {sp.sstr(d)}, off-diagonal {sp.sstr(c)}")
        for q in self.integrands:
            lines.append(f"integrand {q.name}(z0..z{q.dim - 1}) = {sp.sstr(q.expr)}")
        for kind, why in self.refused.items():
            lines.append(f"# {kind} not available: {why}")
        return "\n".join(lines) + "\n"


def _comment(labels, s) -> str:
    meanings = labels.get(s.name)
    return f"    # {'; '.join(map(str, meanings))}" if meanings else ""


def cse_block(assigns, prefix: str, start: int = 0) -> tuple[tuple[sp.Symbol, sp.Expr], ...]:
    """Straight-line code with common subexpressions as temporaries (prefix<start>,
    prefix<start+1>, ...), each placed right before its first use (a temporary may read
    earlier assignments)."""
    if not assigns:
        return ()
    temps, reduced = sp.cse([e for _, e in assigns],
                            symbols=sp.numbered_symbols(prefix, real=True, start=start),
                            order="none")
    temp_expr = dict(temps)
    placed: set = set()
    out: list = []

    def need(e):
        for s in sorted(e.free_symbols, key=lambda s: s.name):
            if s in temp_expr and s not in placed:
                need(temp_expr[s])
                placed.add(s)
                out.append((s, temp_expr[s]))

    for (sym, _), e in zip(assigns, reduced):
        need(e)
        out.append((sym, e))
    return tuple(out)


class PointValue(sp.Symbol):
    """A per-point value of the kernel program, its identity held as fields: `index` i and
    `point` 1 (d_i, the first point of a pair: the per-point block computes it) or 2 (e_i, its
    twin, the same value at the second point)."""

    __slots__ = ("index", "point")

    def __new__(cls, index: int, point: int = 1):
        if point not in (1, 2):
            raise ValueError(f"point {point}: a pair has points 1 and 2")
        obj = sp.Symbol.__xnew__(cls, f"{'de'[point - 1]}{index}", real=True)
        obj.index, obj.point = index, point
        return obj

    def __getnewargs_ex__(self):
        return (self.index, self.point), {}


def is_first_point(s: sp.Basic) -> bool:
    """A per-point value of the first point (d_i), not a temporary or a pair's value."""
    return isinstance(s, PointValue) and s.point == 1


def twin(s: PointValue) -> PointValue:
    """The second point's copy of a per-point value d_i (e_i)."""
    if not is_first_point(s):
        raise TypeError(f"{s!r} is not a per-point value of the first point")
    return PointValue(s.index, 2)


def untwin(s: PointValue) -> PointValue:
    """The first point's d_i for the second point's e_i (and d_i itself)."""
    if not isinstance(s, PointValue):
        raise TypeError(f"{s!r} is not a per-point value")
    return PointValue(s.index, 1)
