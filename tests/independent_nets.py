"""An independent reference for the coordinate check (tpcompiler/coordcheck.py): three small
finite networks written by hand in plain numpy -- forward AND backward passes, no autodiff and
no code of tpcompiler's -- trained a few full-batch SGD/Adam steps in an abc-parametrization.

Parametrization of a tensor with exponents (a, b, c) and constant k at width n:
  preset "sp":  w ~ N(0, k^2 n^-2b), W_eff = n^-a w
  otherwise:    w ~ N(0, n^-2b),     W_eff = k n^-a w
k^2 = var / d for an input matrix (d = data dimension), var for hidden and readout tensors.
Learning rate eta n^-c; SGD w -= lr dL/dw, Adam (0.9, 0.999, 1e-8, bias-corrected) likewise.
Loss L = 1/(2N) sum_i (f(x_i) - y_i)^2 on a fixed batch drawn from `seed` (width-independent).

Architectures (rows = batch points):
  rnn:      h_0 = tanh(U s_0), h_t = tanh(W h_{t-1} + U s_t), f = R . h_{T-1}
            layers "U" (every U s_t), "W" (every W h_{t-1}), "out" (f)
  residual: z1 = A x, h1 = relu(z1), z2 = B h1, h2 = h1 + relu(z2), z3 = C h2,
            h3 = h2 + relu(z3), f = R . h3; layers "A", "B", "C", "out"
  gated:    z1 = A x, u = relu(z1), v = tanh(z1), za = B u, zb = C v, f = R . (za * zb);
            layers "A" (z1), "B" (za), "C" (zb), "out"

measure(...) returns mean|x_t - x_0| and mean|x_t| per layer, step and width; slopes(...) fits the
width exponent; check_gradients(...) compares the backward passes with central differences.
"""

from __future__ import annotations

from fractions import Fraction as F

import numpy as np

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
ROLES = ("input", "hidden", "readout")

# preset -> optimizer -> role -> (a, b, c)
PRESETS = {
    "sp": {"sgd": {"input": (0, 0, 0), "hidden": (0, F(1, 2), 0), "readout": (0, F(1, 2), 0)},
           "adam": {"input": (0, 0, 0), "hidden": (0, F(1, 2), 0), "readout": (0, F(1, 2), 0)}},
    "ntk": {"sgd": {"input": (0, 0, 0), "hidden": (F(1, 2), 0, 0), "readout": (F(1, 2), 0, 0)},
            "adam": {"input": (0, 0, F(1, 2)), "hidden": (F(1, 2), 0, 1),
                     "readout": (F(1, 2), 0, F(1, 2))}},
    "mup": {"sgd": {"input": (-F(1, 2), F(1, 2), 0), "hidden": (0, F(1, 2), 0),
                    "readout": (F(1, 2), F(1, 2), 0)},
            "adam": {"input": (-F(1, 2), F(1, 2), F(1, 2)), "hidden": (0, F(1, 2), 1),
                     "readout": (F(1, 2), F(1, 2), F(1, 2))}},
}

# arch -> [(name, role, declared variance)]; the readout is always "R"
TENSORS = {
    "rnn": [("U", "input", 1.0), ("W", "hidden", 1.5), ("R", "readout", 1.0)],
    "residual": [("A", "input", 2.0), ("B", "hidden", 2.0), ("C", "hidden", 2.0),
                 ("R", "readout", 1.0)],
    "gated": [("A", "input", 1.0), ("B", "hidden", 2.0), ("C", "hidden", 1.0),
              ("R", "readout", 1.0)],
}


def exponents(arch, preset, optimizer, custom=None):
    """name -> (a, b, c) as floats: `custom` (by layer name, then role) over the preset's table;
    a dict `preset` is a full custom table (layer name or role keys)."""
    base = preset if isinstance(preset, dict) else PRESETS[preset][optimizer]
    over = dict(custom or {})
    out = {}
    for name, role, _ in TENSORS[arch]:
        for table in (over, base):
            key = name if name in table else role if role in table else None
            if key is not None:
                out[name] = tuple(float(e) for e in table[key])
                break
        else:
            raise KeyError(f"no exponents for {name} ({role})")
    return out


def init(arch, preset, optimizer, n, d, rng, custom=None, var=None):
    """Stored parameters w, multipliers and learning-rate factors n^-c, per tensor."""
    exps, in_std = exponents(arch, preset, optimizer, custom), preset == "sp"
    params, mult, lrf = {}, {}, {}
    for name, role, v in TENSORS[arch]:
        v = (var or {}).get(name, v)
        k2 = v / d if role == "input" else v
        shape = (n, d) if role == "input" else (n, n) if role == "hidden" else (n,)
        a, b, c = exps[name]
        if in_std:  # SP: the constant sits in the init std, the multiplier is a pure power
            std, mult[name] = np.sqrt(k2 / n ** (2 * b)), n ** -a
        else:       # abc: unit-constant init, the constant sits in the multiplier
            std, mult[name] = n ** -b, np.sqrt(k2) * n ** -a
        params[name] = std * rng.standard_normal(shape)
        lrf[name] = n ** -c
    return params, mult, lrf


# --- forward passes: return f, the measured layers, and what backward needs -------------------


def _relu(z):
    return np.maximum(z, 0.0)


def forward(arch, E, x):
    """E = effective tensors mult * w; x is (N, d) or, for the rnn, (N, T, d)."""
    if arch == "rnn":
        pu = [x[:, t] @ E["U"].T for t in range(x.shape[1])]
        hs, pw = [np.tanh(pu[0])], []
        for t in range(1, len(pu)):
            pw.append(hs[-1] @ E["W"].T)
            hs.append(np.tanh(pw[-1] + pu[t]))
        f = hs[-1] @ E["R"]
        layers = {"U": np.stack(pu), "W": np.stack(pw) if pw else np.zeros(0), "out": f}
        return f, layers, hs
    if arch == "residual":
        z1 = x @ E["A"].T
        h1 = _relu(z1)
        z2 = h1 @ E["B"].T
        h2 = h1 + _relu(z2)
        z3 = h2 @ E["C"].T
        h3 = h2 + _relu(z3)
        f = h3 @ E["R"]
        return f, {"A": z1, "B": z2, "C": z3, "out": f}, (z1, h1, z2, h2, z3, h3)
    if arch == "gated":
        z1 = x @ E["A"].T
        u, v = _relu(z1), np.tanh(z1)
        za, zb = u @ E["B"].T, v @ E["C"].T
        f = (za * zb) @ E["R"]
        return f, {"A": z1, "B": za, "C": zb, "out": f}, (z1, u, v, za, zb)
    raise ValueError(f"unknown architecture {arch!r}")


def backward(arch, E, x, cache, lf):
    """dL/dE for every effective tensor, given lf = dL/df = (f - y) / N (shape (N,))."""
    if arch == "rnn":
        hs = cache
        g = {"U": np.zeros_like(E["U"]), "W": np.zeros_like(E["W"]), "R": hs[-1].T @ lf}
        dh = np.outer(lf, E["R"])
        for t in range(len(hs) - 1, -1, -1):  # backprop through time, shared U and W
            dz = dh * (1.0 - hs[t] ** 2)
            g["U"] += dz.T @ x[:, t]
            if t > 0:
                g["W"] += dz.T @ hs[t - 1]
                dh = dz @ E["W"]
        return g
    if arch == "residual":
        z1, h1, z2, h2, z3, h3 = cache
        dh3 = np.outer(lf, E["R"])
        dz3 = dh3 * (z3 > 0)
        dh2 = dh3 + dz3 @ E["C"]           # skip connection + branch
        dz2 = dh2 * (z2 > 0)
        dh1 = dh2 + dz2 @ E["B"]
        dz1 = dh1 * (z1 > 0)
        return {"A": dz1.T @ x, "B": dz2.T @ h1, "C": dz3.T @ h2, "R": h3.T @ lf}
    if arch == "gated":
        z1, u, v, za, zb = cache
        dg = np.outer(lf, E["R"])
        dza, dzb = dg * zb, dg * za        # product rule of g = za * zb
        dz1 = (dza @ E["B"]) * (z1 > 0) + (dzb @ E["C"]) * (1.0 - v ** 2)
        return {"A": dz1.T @ x, "B": dza.T @ u, "C": dzb.T @ v, "R": (za * zb).T @ lf}
    raise ValueError(f"unknown architecture {arch!r}")


def loss_and_grads(arch, params, mult, x, y):
    """L and dL/dw for the stored w (chain rule through W_eff = mult * w)."""
    E = {k: mult[k] * w for k, w in params.items()}
    f, layers, cache = forward(arch, E, x)
    lf = (f - y) / len(y)
    gE = backward(arch, E, x, cache, lf)
    return 0.5 * np.mean((f - y) ** 2), {k: mult[k] * gE[k] for k in params}, layers


def data(arch, batch, d, T, seed):
    """Fixed batch from `seed` alone (independent of the width and of the network seeds)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    x = rng.standard_normal((batch, T, d) if arch == "rnn" else (batch, d))
    return x, rng.standard_normal(batch)


def train(arch, params, mult, lrf, x, y, steps, lr, optimizer):
    """Full-batch training; returns the measured layers at t = 0..steps (t = 0 is init)."""
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer {optimizer!r}")
    m = {k: np.zeros_like(w) for k, w in params.items()}
    v = {k: np.zeros_like(w) for k, w in params.items()}
    b1, b2 = ADAM_BETAS
    history = []
    for t in range(1, steps + 2):
        _, grads, layers = loss_and_grads(arch, params, mult, x, y)
        history.append(layers)
        if t == steps + 1:  # the last forward only measures
            break
        for k, g in grads.items():
            step = lr * lrf[k]
            if optimizer == "sgd":
                params[k] = params[k] - step * g
            else:
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g ** 2
                mh, vh = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
                params[k] = params[k] - step * mh / (np.sqrt(vh) + ADAM_EPS)
    return history


def measure(arch, preset, optimizer, widths, steps=1, lr=0.1, batch=8, d=8, T=3, seeds=2,
            seed=0, custom=None, var=None):
    """{"change": {layer: (steps+1, len(widths))}, "size": {...}}: mean|x_t - x_0| and mean|x_t|
    averaged over `seeds` networks per width, on one width-independent batch.

    `preset`: "sp", "ntk", "mup" or a dict {role or layer name: (a, b, c)} (abc init, not SP);
    `custom` overrides entries of a named preset; `var` overrides declared variances by name."""
    x, y = data(arch, batch, d, T, seed)
    layers = _layer_names(arch)
    change = {k: np.zeros((steps + 1, len(widths))) for k in layers}
    size = {k: np.zeros((steps + 1, len(widths))) for k in layers}
    with np.errstate(all="ignore"):  # unstable parametrizations may overflow; that's data
        for j, n in enumerate(widths):
            for s in range(seeds):
                rng = np.random.default_rng(np.random.SeedSequence([seed, 1 + s, int(n)]))
                params, mult, lrf = init(arch, preset, optimizer, int(n), d, rng, custom, var)
                hist = train(arch, params, mult, lrf, x, y, steps, lr, optimizer)
                for t, h in enumerate(hist):
                    for k in layers:
                        change[k][t, j] += np.mean(np.abs(h[k] - hist[0][k])) / seeds
                        size[k][t, j] += np.mean(np.abs(h[k])) / seeds
    return {"change": change, "size": size}


def _layer_names(arch):
    """Measured layers: every input/hidden matrix's pre-activation, then the output."""
    return [name for name, role, _ in TENSORS[arch] if role != "readout"] + ["out"]


def slopes(values, widths):
    """Least-squares slope of log(values) against log(widths)."""
    return float(np.polyfit(np.log(np.asarray(widths, float)),
                            np.log(np.asarray(values, float)), 1)[0])


def check_gradients(arch, preset="mup", n=6, d=3, batch=4, T=3, optimizer="sgd", seed=0,
                    eps=1e-6, tol=1e-6, custom=None):
    """Max relative error (per tensor, norm-wise) of backward() against central differences of
    the loss in the stored w; raises AssertionError above `tol`. Returns {name: error}."""
    x, y = data(arch, batch, d, T, seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    params, mult, _ = init(arch, preset, optimizer, n, d, rng, custom)
    _, grads, _ = loss_and_grads(arch, params, mult, x, y)
    errors = {}
    for k, w in params.items():
        fd = np.zeros_like(w)
        for i in np.ndindex(w.shape):
            old = w[i]
            w[i] = old + eps
            lp = loss_and_grads(arch, params, mult, x, y)[0]
            w[i] = old - eps
            lm = loss_and_grads(arch, params, mult, x, y)[0]
            w[i] = old
            fd[i] = (lp - lm) / (2 * eps)
        scale = max(np.linalg.norm(fd), np.linalg.norm(grads[k]), 1e-300)
        errors[k] = float(np.linalg.norm(fd - grads[k]) / scale)
        assert errors[k] < tol, f"{arch}/{preset}: gradient of {k} off by {errors[k]:.2e}"
    return errors


if __name__ == "__main__":
    for a in TENSORS:
        for p in PRESETS:
            print(a, p, check_gradients(a, p))
