"""`tpc diagnose`: signal propagation of the repeated block (tpcompiler/diagnose.py).

References, none of them the compiler's recursion:
- closed forms (Poole et al. 2016, Schoenholz et al. 2017): relu's variance map
  q' = sigma_w^2 q / 2 + sigma_b^2 (q* = sigma_b^2 / (1 - sigma_w^2 / 2), chi1 = sigma_w^2 / 2:
  critical at 2 without bias); tanh without bias critical at sigma_w^2 = 1 (q* = 0, chi1 =
  sigma_w^2 tanh'(0)^2); erf's variance map (2/pi) asin(2q / (1 + 2q)) (Williams 1997);
- the papers' integrals (q map, c map, chi1 = sigma_w^2 E[phi'(u)^2], the slopes behind xi_q and
  xi_c) by 2-D Gauss-Hermite with 120 nodes per axis here: smooth tanh integrands at q ~ 1 are
  exact to ~1e-14 with it, so 1e-9 leaves the fixed-point iterations' own 1e-13 room;
- the finite-width simulator of the same program (width 1024, 8 seeds, 30 layers): the
  variance, correlation and squared gradient norm per layer within 4 standard errors of the
  seeds' mean plus the O(1/n) bias of one network's estimates.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tpcompiler as tpc
from tpcompiler import ir
from tpcompiler.cli import main
from tpcompiler.diagnose import diagnose

DEEP = """
param sw = 2.5
param sb = 0.05
input x
h = dense(x, var=sw, bias=sb)
repeat 30 {{
    h = dense({act}(h), var=sw, bias=sb)
}}
y = readout({act}(h), var=1.0)
"""


@pytest.fixture(scope="module")
def tanh_net():
    return tpc.compile_source(DEEP.format(act="tanh"))


@pytest.fixture(scope="module")
def relu_net():
    return tpc.compile_source(DEEP.format(act="relu"))


def _gh(n: int = 120):
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return z, w / w.sum()


def _tanh_reference(sw: float, sb: float, c0: float = 0.5, pairs: bool = True) -> dict:
    """The papers' maps for tanh by Gauss-Hermite, iterated to their fixed points (pairs=False:
    the variance map and chi1 only)."""
    z, w = _gh()
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    ww = np.outer(w, w)
    q = 1.0
    for _ in range(5000):
        q = sw * np.sum(w * np.tanh(np.sqrt(q) * z) ** 2) + sb
    t = np.tanh(np.sqrt(q) * z)
    chi1 = sw * np.sum(w * (1 - t ** 2) ** 2)
    slope_q = chi1 + sw * np.sum(w * (-2 * t * (1 - t ** 2)) * t)
    if not pairs:
        return {"q_star": q, "chi1": chi1}

    def pair(c):
        u1, u2 = np.sqrt(q) * z1, np.sqrt(q) * (c * z1 + np.sqrt(1 - c * c) * z2)
        return u1, u2

    c = c0
    for _ in range(5000):
        u1, u2 = pair(c)
        c = (sw * np.sum(ww * np.tanh(u1) * np.tanh(u2)) + sb) / q
    u1, u2 = pair(c)
    chi_c = sw * np.sum(ww / np.cosh(u1) ** 2 / np.cosh(u2) ** 2)
    return {"q_star": q, "c_star": c, "chi1": chi1, "chi_c": chi_c,
            "xi_q": -1 / math.log(slope_q), "xi_c": -1 / math.log(chi_c)}


@pytest.mark.parametrize("sw, sb, phase", [(2.5, 0.05, "chaotic"), (1.2, 0.2, "ordered")])
def test_tanh_against_the_papers_integrals(tanh_net, sw, sb, phase):
    d = diagnose(tanh_net.ir, params={"sw": sw, "sb": sb})
    want = _tanh_reference(sw, sb)
    assert d.phase == phase and d.gradient_rate == d.chi1
    for key, value in want.items():
        got = getattr(d, key)
        if key.startswith("xi"):  # compare the slopes exp(-1/xi): -1/log amplifies near 1
            got, value = math.exp(-1 / got), math.exp(-1 / value)
        assert abs(got - value) <= 1e-9 * max(1.0, abs(value)), (key, got, value)


@pytest.mark.parametrize("sw, sb", [(1.5, 0.1), (1.0, 0.3)])
def test_relu_closed_forms(relu_net, sw, sb):
    d = diagnose(relu_net.ir, params={"sw": sw, "sb": sb})
    assert d.q_star == pytest.approx(sb / (1 - sw / 2), rel=1e-12)
    assert d.chi1 == pytest.approx(sw / 2, rel=1e-14)
    assert d.xi_q == pytest.approx(-1 / math.log(sw / 2), rel=1e-10)
    assert d.c_star == pytest.approx(1.0, abs=1e-12) and d.phase == "ordered"


def test_the_papers_critical_points(relu_net, tanh_net):
    # relu at sigma_w^2 = 2 without bias: chi1 = 1 exactly, every q a fixed point
    d = diagnose(relu_net.ir, params={"sw": 2.0, "sb": 0.0})
    assert d.phase == "critical" and d.chi1 == 1.0 and d.xi_c == math.inf
    assert d.c_star == 1.0 and d.q_star == pytest.approx(2.0)  # the unit input's 2 <x,x>/d
    # either side: the signal vanishes (q* = 0, ordered) or explodes
    below = diagnose(relu_net.ir, params={"sw": 1.5, "sb": 0.0})
    assert below.q_star == 0.0 and below.phase == "ordered" and below.chi1 == pytest.approx(0.75)
    above = diagnose(relu_net.ir, params={"sw": 2.5, "sb": 0.0})
    assert above.phase == "exploding" and above.chi1 == pytest.approx(1.25)
    # tanh without bias: q* = 0 and chi1 = sigma_w^2, critical at 1
    crit = diagnose(tanh_net.ir, params={"sw": 1.0, "sb": 0.0})
    assert crit.q_star == 0.0 and crit.phase == "critical"
    assert diagnose(tanh_net.ir, params={"sw": 0.8, "sb": 0.0}).chi1 == pytest.approx(0.8)


def test_critical_line_of_tanh_with_bias(tanh_net):
    """The reference's critical sigma_w^2 at sigma_b^2 = 0.05 (bisection on its chi1 = 1) is
    where ours is 1 too, and the phase there is critical: the line agrees to ~1e-10 in
    sigma_w^2 (d chi1 / d sigma_w^2 ~ 1)."""
    lo, hi = 1.0, 2.0
    for _ in range(45):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _tanh_reference(mid, 0.05, pairs=False)["chi1"] < 1 else (lo, mid)
    d = diagnose(tanh_net.ir, params={"sw": (lo + hi) / 2, "sb": 0.05})
    assert abs(d.chi1 - 1.0) <= 1e-9 and d.phase == "critical"
    assert diagnose(tanh_net.ir, params={"sw": lo - 1e-3, "sb": 0.05}).phase == "ordered"


def test_erf_variance_map_closed_form():
    net = tpc.compile_source(DEEP.format(act="erf"))
    d = diagnose(net.ir, params={"sw": 1.5, "sb": 0.1})
    q = 1.0
    for _ in range(5000):
        q = 1.5 * (2 / math.pi) * math.asin(2 * q / (1 + 2 * q)) + 0.1
    assert d.q_star == pytest.approx(q, rel=1e-12)
    # chi1 = sigma_w^2 E[erf'(u)^2] = sigma_w^2 (4 / pi) / sqrt(1 + 4 q)
    assert d.chi1 == pytest.approx(1.5 * 4 / math.pi / math.sqrt(1 + 4 * q), rel=1e-12)


def test_against_finite_networks(tanh_net):
    """Variance, correlation and gradient norm per layer of width-1024 networks (8 seeds)
    against the trajectories diagnose plots, started from the same two unit inputs."""
    d = diagnose(tanh_net.ir, depth=29)
    dim, c0 = 64, d.c0
    x = np.zeros((2, dim))
    x[0, 0] = math.sqrt(dim)
    x[1, :2] = math.sqrt(dim) * np.array([c0, math.sqrt(1 - c0 ** 2)])
    prog = tanh_net.ir
    matmul = [i for i, g in enumerate(prog.gvars) if g.op is ir.Op.MATMUL]
    q, c, g2 = [], [], []
    for seed in range(8):
        vals, grads = tanh_net.simulate(1024, seed=seed).signals(x)
        h = [vals[prog.gvars[i].name] + vals[prog.gvars[i - 1].name] for i in matmul]
        q.append([np.mean(v[0] ** 2) for v in h])
        c.append([np.mean(v[0] * v[1]) / math.sqrt(np.mean(v[0] ** 2) * np.mean(v[1] ** 2))
                  for v in h])
        g2.append([np.log(np.sum(grads[prog.gvars[i].name][0] ** 2)) for i in matmul])
    q, c, g2 = map(np.array, (q, c, g2))
    assert q.shape[1] == len(d.q) == 30
    for layer in (0, 10, 29):
        for sim, want in ((q[:, layer], d.q[layer]), (c[:, layer], d.c[layer])):
            se = sim.std(ddof=1) / math.sqrt(len(sim))
            assert abs(sim.mean() - want) <= 4 * se + 2 / 1024, (layer, sim.mean(), want, se)
    ratio = g2[:, 5] - g2[:, 29]
    se = ratio.std(ddof=1) / math.sqrt(len(ratio))
    want = d.log_grad[5] - d.log_grad[29]
    assert abs(ratio.mean() - want) <= 4 * se + 2 * 24 / 1024, (ratio.mean(), want, se)


def test_cli_json_and_plot(tmp_path, capsys):
    f = tmp_path / "deep.tp"
    f.write_text(DEEP.format(act="tanh"))
    png = tmp_path / "d.png"
    assert main(["diagnose", str(f), "--format", "json", "--param", "sw=1.2",
                 "--plot", str(png)]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("q_star", "c_star", "chi1", "xi_q", "xi_c", "phase", "gradient_rate"):
        assert key in out
    assert out["phase"] == "ordered" and png.read_bytes()[:4] == b"\x89PNG"
    assert main(["diagnose", str(f)]) == 0 and "chaotic" in capsys.readouterr().out


def test_phase_diagram_grid(relu_net, tmp_path, capsys):
    from tpcompiler.diagnose import Propagation, critical_line

    # relu: chi1 = sw / 2 whatever sb, so the chi1 = 1 line is sw = 2 on every row (linear in
    # sw: the interpolation is exact)
    xs, ys = np.linspace(1.0, 3.0, 5), np.array([0.0, 0.1, 0.3])
    chi = Propagation(relu_net.ir).grid("sw", xs, "sb", ys)
    assert np.allclose(chi, np.broadcast_to(xs / 2, chi.shape), rtol=1e-14)
    assert critical_line(xs, ys, chi) == pytest.approx([2.0, 2.0, 2.0], rel=1e-14)
    f = tmp_path / "deep.tp"
    f.write_text(DEEP.format(act="tanh"))
    png = tmp_path / "grid.png"
    assert main(["diagnose", str(f), "--grid", "sw=0.6:1.4,sb=0:0.02", "--grid-points", "5",
                 "--format", "json", "--plot", str(png)]) == 0
    grid = json.loads(capsys.readouterr().out)["grid"]
    # tanh without bias: chi1 = sw below 1 (q* = 0), so the first row crosses 1 between the
    # grid's 1.0 and 1.2 (exactly at 1: chi1(1.0) = 1)
    assert grid["chi1"][0][:3] == pytest.approx([0.6, 0.8, 1.0], rel=1e-12)
    assert grid["critical_x"][0] == pytest.approx(1.0, abs=1e-9)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["diagnose", str(f), "--grid", "sw=1:2,sq=0:1"]) == 2
    assert "sq not params" in capsys.readouterr().err


@pytest.mark.parametrize("src, message", [
    ("input x\nh = dense(x)\nrepeat 3 { h = h + dense(relu(h)) }\ny = readout(h)",
     "no repeated block"),
    ("input x\ny = readout(relu(dense(x)))", "no repeated block"),
    ("input x\ninput z\nh = dense(x) + dense(z)\nrepeat 3 { h = dense(relu(h)) }\n"
     "y = readout(h)", "one vector input"),
])
def test_programs_without_a_block(src, message):
    with pytest.raises(tpc.TPError, match=message):
        diagnose(tpc.compile_source(src).ir)
