"""A hypothesis strategy for random valid .tp programs (shared by the test modules)."""

from __future__ import annotations

from hypothesis import strategies as st

CLOSED_ACTS = ("relu", "erf", "gelu", "abs", "leaky_relu", "sin", "identity", "step")
SMOOTH_ACTS = ("tanh", "sigmoid", "softplus")


@st.composite
def programs(draw, acts=CLOSED_ACTS + SMOOTH_ACTS, max_depth=3, sequences=True):
    """(source, input shapes) for a random program: MLP layers, residual sums, products,
    a named weight reused, optionally a sequence input with shared weights."""
    lines = []
    seq = sequences and draw(st.booleans())
    length = draw(st.integers(2, 3)) if seq else None
    lines.append(f"input s[{length}]" if seq else "input x")
    w = draw(st.sampled_from(["1.0", "1.5", "2.0"]))
    b = draw(st.sampled_from(["0.0", "0.1"]))
    lines.append(f"weight W(var={w}, bias={b})")
    act = draw(st.sampled_from(acts))
    if seq:
        lines.append("weight U(var=1.0, bias=0.1)")
        lines.append(f"h = {act}(dense(s[0], U))")
        lines.append(f"for t in 1..{length - 1} {{ h = {act}(dense(h, W) + dense(s[t], U)) }}")
    else:
        lines.append(f"h = dense(x, var={w}, bias={b})")
        for _ in range(draw(st.integers(1, max_depth))):
            kind = draw(st.sampled_from(["mlp", "residual", "product", "shared"]))
            a2 = draw(st.sampled_from(acts))
            if kind == "mlp":
                lines.append(f"h = dense({a2}(h), var={w}, bias={b})")
            elif kind == "residual":
                lines.append(f"h = h + 0.5 * dense({a2}(h), var={w})")
            elif kind == "product":
                lines.append(f"h = dense({a2}(h)) * dense(relu(h), var=0.5)")
            else:
                lines.append(f"h = dense({a2}(h), W)")
    final = draw(st.sampled_from(acts))
    lines.append(f"y = readout({final}(h), var=1.0, bias=0.05)")
    shape = (length, 3) if seq else (3,)
    return "\n".join(lines) + "\n", shape
