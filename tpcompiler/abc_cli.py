"""`tpc abc FILE`: the abc-parametrization table of a .tp program (tpcompiler.passes.abc), and
`tpc coordcheck FILE`: the coordinate check (tpcompiler.coordcheck).

Registered by tpcompiler.cli (`build_parser`); TPErrors propagate to cli.main, which prints
them and exits 2. The argument parsers only: the work is imported when a command runs, so
`tpc --help` loads neither sympy nor numba.
"""

from __future__ import annotations

FORMATS = ("text", "markdown", "latex", "json")
#: passes.abc.OPTIMIZERS and coordcheck.TOLERANCE, here without importing them (tests/test_cli.py
#: checks that they agree)
OPTIMIZERS = ("sgd", "adam")
TRANSFER_PRESETS = ("sp", "ntk", "mup", "mf")
COORDCHECK_TOLERANCE = 0.25


def cmd_abc(args) -> int:
    from . import abc_report
    from .lowering import lower
    from .parse import parse_file
    from .passes.abc import abc_table

    table = abc_table(lower(parse_file(args.file)), args.optimizer)
    render = {"json": lambda t: abc_report.json_text(t) + "\n", "markdown": abc_report.markdown,
              "latex": abc_report.latex, "text": abc_report.text}[args.format]
    print(render(table), end="")
    return 0


def register(subparsers) -> None:
    s = subparsers.add_parser(
        "abc", help="abc-parametrization table: stability, feature learning, kernel regime",
        description="Width exponents (a, b, c) of every weight and bias under the program's "
                    "parametrization, the quantities of Tensor Programs IV (r_l, r, stability, "
                    "nontriviality, feature learning vs kernel regime), which compiled kernels "
                    "are meaningful, and the practitioner's scalings. See docs/abc.md.")
    s.add_argument("file")
    s.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                   help="read the learning-rate exponents c as those of this optimizer "
                        "(default sgd)")
    s.add_argument("--format", choices=FORMATS, default="text", help="output format")
    s.set_defaults(fn=cmd_abc)

    s = subparsers.add_parser(
        "coordcheck", help="coordinate check: train the finite network at several widths",
        description="Train the finite network of the program (in its declared abc-"
                    "parametrization) a few steps at each width on a fixed batch, fit the width "
                    "exponent of every layer's mean |coordinate| and compare it with the abc "
                    "table's prediction. Exit status 0 when every layer agrees (within the "
                    f"tolerance {COORDCHECK_TOLERANCE}), 1 when one disagrees. See docs/abc.md.")
    s.add_argument("file")
    s.add_argument("--widths", default="128,256,512,1024,2048,4096",
                   help="comma-separated widths (default 128,...,4096)")
    s.add_argument("--steps", type=int, default=3, help="training steps (default 3)")
    s.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    s.add_argument("--lr", type=float, default=0.1, help="eta (default 0.1)")
    s.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--seeds", type=int, default=1,
                   help="networks per width, mean |coordinate| averaged over them (default 1)")
    s.add_argument("--dim", type=int, default=8,
                   help="the input's dimension d of the synthetic batch (default 8): a wide "
                        "input layer (--dim 512) tests the input's constants")
    s.add_argument("--plot", help="write the plot to this PNG")
    s.set_defaults(fn=cmd_coordcheck)

    s = subparsers.add_parser(
        "transfer", help="train finite networks across widths and learning rates: does the "
                         "optimal learning rate transfer (muP) or shift (SP)?",
        description="Trains the program's finite network at every width, learning rate and "
                    "seed (same data order and initial draws at every width) and fits the "
                    "optimal log2 learning rate per width; the slope of log2 lr* against "
                    "log2 width tells 'transfers' (|slope| <= 0.2 + 2 se) from 'shifts'.")
    s.add_argument("file")
    s.add_argument("--widths", default="64,128,256,512,1024",
                   help="comma-separated widths (default 64,128,256,512,1024)")
    s.add_argument("--lr", default="2^-12..2^2", help="log2-spaced learning rates A..B "
                   "(numbers or 2^k; default 2^-12..2^2)")
    s.add_argument("--points", type=int, default=15, help="grid points (default 15)")
    s.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    s.add_argument("--steps", type=int, default=100, help="training steps (default 100)")
    s.add_argument("--batch", type=int, default=32, help="minibatch size (default 32)")
    s.add_argument("--data", default="digits", help="'digits' (scikit-learn's bundled 8x8 "
                   "digits, target: digit >= 5) or X.npy with --labels y.npy")
    s.add_argument("--labels", help="targets (N,) for --data X.npy")
    s.add_argument("--seeds", type=int, default=2, help="networks per (width, lr) (default 2)")
    s.add_argument("--parametrization", choices=TRANSFER_PRESETS, default=None,
                   help="train in this preset instead of the file's parametrization")
    s.add_argument("--compare", help="comma-separated presets run side by side, e.g. sp,mup")
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.add_argument("--plot", help="write the loss-vs-learning-rate panels to this PNG")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_transfer)


def cmd_transfer(args) -> int:
    from .transfer_cli import cmd_transfer as run

    return run(args)


def cmd_coordcheck(args) -> int:
    from .coordcheck import cmd_coordcheck as run

    return run(args)
