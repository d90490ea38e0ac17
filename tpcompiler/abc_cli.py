"""`tpc abc FILE`: the abc-parametrization table of a .tp program (tpcompiler.passes.abc), and
`tpc coordcheck FILE`: the coordinate check (tpcompiler.coordcheck), registered alongside.

Registered by tpcompiler.cli (`_extra_commands`); TPErrors propagate to cli.main, which prints
them and exits 2.
"""

from __future__ import annotations

FORMATS = ("text", "markdown", "latex", "json")


def cmd_abc(args) -> int:
    from .lower import lower
    from .parse import parse_file
    from .passes.abc import abc_table

    table = abc_table(lower(parse_file(args.file)), args.optimizer)
    if args.format == "json":
        out = table.json() + "\n"
    elif args.format == "markdown":
        out = table.markdown()
    elif args.format == "latex":
        out = table.latex()
    else:
        out = table.text()
    print(out, end="")
    return 0


def register(subparsers) -> None:
    s = subparsers.add_parser(
        "abc", help="abc-parametrization table: stability, feature learning, kernel regime",
        description="Width exponents (a, b, c) of every weight and bias under the program's "
                    "parametrization, the quantities of Tensor Programs IV (r_l, r, stability, "
                    "nontriviality, feature learning vs kernel regime), which compiled kernels "
                    "are meaningful, and the practitioner's scalings. See docs/abc.md.")
    s.add_argument("file")
    s.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                   help="read the learning-rate exponents c as those of this optimizer "
                        "(default sgd)")
    s.add_argument("--format", choices=FORMATS, default="text", help="output format")
    s.set_defaults(fn=cmd_abc)

    from .coordcheck import register as register_coordcheck

    register_coordcheck(subparsers)
