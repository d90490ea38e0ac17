"""Rolled loops: a `repeat` whose iterations are copies of one another stays a loop in the
kernel program, so its recursion is derived, printed and compiled once whatever the depth.

A top-level loop of the source (ir.LoopRecord) is rolled when, in a program whose every matrix
and bias makes one G-var (no weight sharing: fresh weights per iteration),
  - iteration k >= 1 reads only G-vars of iteration k - 1, of itself and from before the loop;
  - iteration k >= 2 is iteration k - 1 moved one iteration on (same ops and variances, the
    arguments shifted), so one derivation of iteration 1 holds for every k >= 1;
  - what comes after the loop reads only the last iteration's G-vars.
Covariances of different matrices vanish, so the recursion's state between iterations is, per
G-var position j that the next iteration (or the code after the loop) reads, its Sigma and its
forward tangent kernel T (passes/kernels.py `tangent`), at one point and across the pair. The
first iteration is derived as straight code (its inputs come from before the loop); iteration
1 is derived once with the state as symbols; the code after the loop reads the state.

Programs outside this class (weight sharing, skips across iterations, bodies that differ by
iteration) are derived unrolled, as before (`build_kernel_program`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import sympy as sp

from .. import ir
from ..kernel_program import KernelProgram, Label, Loop, PointValue
from .kernels import Builder, derive, refusals


@dataclass(frozen=True)
class _Plan:
    starts: tuple[int, ...]
    names: tuple[str, ...]  # every G-var's name, in SSA order
    carried: tuple[int, ...]  # positions whose state the next iteration or the code after reads
    invariant: tuple[str, ...]  # G-vars from before the loop that the body reads

    @property
    def count(self) -> int:
        return len(self.starts) - 1

    def iteration(self, k: int) -> tuple[str, ...]:
        return self.names[self.starts[k]:self.starts[k + 1]]


def _reads(g: ir.GVar) -> list[str]:
    return ir.gvars_of(g.arg) if g.op is ir.Op.MATMUL else []


def unshared(prog: ir.Program) -> bool:
    """Every matrix and bias makes exactly one G-var."""
    return all(n == 1 for n in collections.Counter(g.param for g in prog.gvars).values())


def plan(prog: ir.Program, rec: ir.LoopRecord) -> _Plan | None:
    """How to roll the loop `rec`, or None where its iterations are not copies of one
    another (then it stays unrolled)."""
    starts, count = rec.starts, rec.count
    size = starts[1] - starts[0]
    if count < 2 or size == 0 or any(b - a != size for a, b in zip(starts, starts[1:])):
        return None
    names = tuple(g.name for g in prog.gvars)
    where = {}  # loop G-var -> (iteration, position)
    for k in range(count):
        for j, name in enumerate(names[starts[k]:starts[k + 1]]):
            where[name] = (k, j)
    carried: set[int] = set()
    for k in range(1, count):
        for g in prog.gvars[starts[k]:starts[k + 1]]:
            for r in _reads(g):
                if r not in where:
                    continue  # from before the loop (SSA: nothing after it)
                kr, jr = where[r]
                if kr not in (k - 1, k):
                    return None  # a skip across iterations
                if kr == k - 1:
                    carried.add(jr)
    after = [r for g in prog.gvars[starts[-1]:] for r in _reads(g)]
    if not isinstance(prog.readout.arg, ir.InputRef):
        after += ir.gvars_of(prog.readout.arg)
    for r in after:
        if r in where:
            kr, jr = where[r]
            if kr != count - 1:
                return None
            carried.add(jr)
    for k in range(2, count):
        shift = {ir.gsym(names[starts[k - 1] + j]): ir.gsym(names[starts[k] + j])
                 for j in range(size)}
        shift.update({ir.gsym(names[starts[k - 2] + j]): ir.gsym(names[starts[k - 1] + j])
                      for j in range(size)})
        for j in range(size):
            a, b = prog.gvars[starts[k - 1] + j], prog.gvars[starts[k] + j]
            if a.op is not b.op or prog.param_var(a.param) != prog.param_var(b.param):
                return None
            if a.op is ir.Op.INPUT and a.arg != b.arg:
                return None
            if a.op is ir.Op.MATMUL and b.arg != a.arg.xreplace(shift):
                return None
    if not carried:
        return None
    # iteration 1's invariant reads, in SSA order
    invariant = {r for g in prog.gvars[starts[1]:starts[2]] for r in _reads(g)
                 if r not in where}
    return _Plan(starts, names, tuple(sorted(carried)),
                 tuple(n for n in names if n in invariant))


_QUANTITIES = (("S", "diag"), ("S", "cross"), ("T", "diag"), ("T", "cross"))


def _value(b: Builder, kind: str, block: str, name: str) -> sp.Expr:
    if kind == "T":
        return b.tangent(name, block)
    return b.cov_diag(name, name) if block == "diag" else b.cov_cross(name, name)


def _memo_key(kind: str, block: str, name: str) -> tuple:
    return ("T", block, name) if kind == "T" else ("S", block, name, name)


def _seed(b: Builder, p: _Plan, k: int, state: dict) -> None:
    """The builder's memo as iteration k's carried values being the state symbols: nothing
    else of the loop is known (so nothing derived for another iteration is read by mistake)."""
    loop = set(p.names[p.starts[0]:p.starts[-1]])
    for key in [key for key in b.memo if loop & set(key[2:])]:
        del b.memo[key]
    names = p.iteration(k)
    for (kind, block, j), sym in state.items():
        b.memo[_memo_key(kind, block, names[j])] = sym


def _body(b: Builder, p: _Plan, state: dict) -> tuple:
    """Iteration 1 derived once, reading iteration 0's carried values as `state` (symbols, or
    numbers where they are constant): (next values, diag body, cross body)."""
    at_d, at_c = len(b.diag), len(b.cross)
    _seed(b, p, 0, state)
    outer_values, b.values = b.values, {}  # value numbering stays inside the body
    second = p.iteration(1)
    nxt = {key: _value(b, key[0], key[1], second[key[2]]) for key in state}
    body_d, body_c = tuple(b.diag[at_d:]), tuple(b.cross[at_c:])
    del b.diag[at_d:], b.cross[at_c:]
    b.values = outer_values
    return nxt, body_d, body_c


def _fresh(b: Builder, block: str) -> sp.Symbol:
    if block == "diag":
        b.ndiag += 1
        return PointValue(b.ndiag - 1)
    b.ncross += 1
    return sp.Symbol(f"c{b.ncross - 1}", real=True)


def _roll(b: Builder, p: _Plan, quantities) -> Loop | None:
    first = p.iteration(0)
    init = {(kind, block, j): _value(b, kind, block, first[j])
            for j in p.carried for kind, block in quantities}
    for name in p.invariant:  # derived before the loop: the body reads them as they are
        for kind, block in quantities:
            _value(b, kind, block, name)
    state = {key: _fresh(b, key[1]) for key in init}
    nxt, body_d, body_c = _body(b, p, state)
    # a number that each iteration gives again (a bias's variance) is no state: derived again
    # with the number in its place, the body folds it
    fixed = {key: init[key] for key in state if init[key].is_Number and nxt[key] == init[key]}
    if fixed:
        state = {key: (init[key] if key in fixed else sym) for key, sym in state.items()}
        nxt, body_d, body_c = _body(b, p, state)
    live = [key for key in state if key not in fixed]
    for key in live:
        kind, block, j = key
        getattr(b, block).append((state[key], init[key]))
        b.labels[state[key].name] = (Label("tcov" if kind == "T" else "cov", first[j],
                                           first[j], block == "diag"),)
    _seed(b, p, p.count - 1, state)
    if not (body_d or body_c):
        return None
    return Loop(p.count - 1, body_d, body_c,
                tuple((state[k], nxt[k]) for k in live if k[1] == "diag"),
                tuple((state[k], nxt[k]) for k in live if k[1] == "cross"),
                len(b.diag), len(b.cross))


def build_rolled(prog: ir.Program) -> KernelProgram | None:
    """The kernel program with its rollable loops kept as loops, or None where no loop of the
    program can be rolled (then `build_kernel_program` derives it unrolled)."""
    refused = refusals(prog)
    if len(refused) >= 2 or not prog.loops or not unshared(prog):
        return None
    plans = [q for q in (plan(prog, rec) for rec in prog.loops) if q is not None]
    if not plans:
        return None
    quantities = _QUANTITIES if "ntk" not in refused else _QUANTITIES[:2]
    return derive(prog, lambda b: (lp for lp in (_roll(b, q, quantities) for q in plans)
                                   if lp is not None))
