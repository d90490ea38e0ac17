"""`tpc`: the command line. Every TPError prints its message and exits 2, no traceback."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import TPError


def _load_data(path: str, net, flag: str):
    p = Path(path)
    if not p.exists():
        raise TPError(f"{flag}: no such file: {path}")
    try:
        obj = np.load(p, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise TPError(f"{flag}: cannot read {path} as .npy/.npz: {err}") from None
    if isinstance(obj, np.lib.npyio.NpzFile):
        with obj:
            return {k: obj[k] for k in obj.files}
    return obj


def _atomic_save(path: Path, arrays: dict, npz: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=".tpc-", suffix=path.suffix)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            if npz:
                np.savez(f, **arrays)
            else:
                np.save(f, next(iter(arrays.values())))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cmd_ir(args) -> int:
    from .lower import lower
    from .parse import parse_file

    print(lower(parse_file(args.file)).text(), end="")
    return 0


def cmd_kernel_program(args) -> int:
    from .api import compile

    print(compile(args.file).kernel_program.text(), end="")
    return 0


def cmd_latex(args) -> int:
    from .api import compile

    print(compile(args.file).latex())
    return 0


def cmd_kernel(args) -> int:
    from .api import compile

    out = Path(args.out)
    kinds = ("nngp", "ntk") if args.kind == "both" else (args.kind,)
    npz = len(kinds) > 1
    if npz and out.suffix != ".npz":
        raise TPError(f"--kind both writes an .npz archive; name the output {out.stem}.npz")
    if not npz and out.suffix != ".npy":
        raise TPError(f"--out {out}: a single kernel is written as .npy")
    if out.exists() and not args.force:
        raise TPError(f"{out} exists", hint="pass --force to overwrite it")
    if not out.parent.exists():
        raise TPError(f"--out: the folder {out.parent} does not exist")
    net = compile(args.file)
    x1 = _load_data(args.data, net, "--data")
    x2 = _load_data(args.data2, net, "--data2") if args.data2 else None
    bar = None
    progress = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=100, unit="%", desc="kernel", disable=None, leave=False)

        def progress(done, total):
            bar.n = int(100 * done / total)
            bar.refresh()

    try:
        res = net.kernels(x1, x2, kinds, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    _atomic_save(out, res, npz)
    shape = next(iter(res.values())).shape
    if not args.quiet:
        print(f"wrote {', '.join(kinds)} {shape[0]}x{shape[1]} to {out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tpc", description="Compile .tp networks to their infinite-width NNGP and NTK.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("ir", help="print the tensor-program IR of a .tp file")
    s.add_argument("file")
    s.set_defaults(fn=cmd_ir)

    s = sub.add_parser("kernel-program", help="print the kernel program (scalar recursion)")
    s.add_argument("file")
    s.set_defaults(fn=cmd_kernel_program)

    s = sub.add_parser("latex", help="print the NNGP and NTK recursions in LaTeX")
    s.add_argument("file")
    s.set_defaults(fn=cmd_latex)

    s = sub.add_parser("kernel", help="compute kernels on data and write .npy/.npz")
    s.add_argument("file")
    s.add_argument("--data", required=True,
                   help=".npy array (N, d) or (N, T, d); .npz with one array per input name")
    s.add_argument("--data2", help="second data set (default: --data with itself)")
    s.add_argument("--kind", choices=("nngp", "ntk", "both"), default="nngp")
    s.add_argument("--out", required=True, help="output .npy (.npz for --kind both)")
    s.add_argument("--force", action="store_true", help="overwrite an existing output")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    s.set_defaults(fn=cmd_kernel)

    for name, register in _extra_commands():
        register(sub)
    return p


def _extra_commands():
    """Subcommands from later stages (check, abc, coordcheck) register themselves here."""
    out = []
    for modname in ("tpcompiler.check_cli", "tpcompiler.abc_cli"):
        try:
            mod = __import__(modname, fromlist=["register"])
        except ImportError:
            continue
        out.append((modname, mod.register))
    return out


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except TPError as err:
        print(err.format(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
