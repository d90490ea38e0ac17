"""`tpc`: the command line. Every TPError prints its message and exits 2, no traceback."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from .errors import TPError, TPWarning
from .files import atomic_path, load_data


def _atomic_save(path: Path, arrays: dict, npz: bool) -> None:
    try:
        _write_then_rename(path, arrays, npz)
    except OSError as err:  # a full disk, a folder that is a file, a directory named like --out
        raise TPError(f"--out: cannot write {path}: {err.strerror or err}") from None


def _write_then_rename(path: Path, arrays: dict, npz: bool) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        if npz:
            np.savez(f, **arrays)
        else:
            np.save(f, next(iter(arrays.values())))


#: the compiler's passes (passes.PASS_NAMES, named here without importing them: tests check)
PASSES = ("parse", "lower", "recursions", "cse")


def cmd_ir(args) -> int:
    from . import passes
    from .parse import parse_file

    module = parse_file(args.file)
    out = module if args.after == "parse" else passes.run(module, "lower", args.after)
    text = passes.PIPELINE[passes.PASS_NAMES.index(args.after)].show(out)
    print(text, end="" if text.endswith("\n") else "\n")
    return 0


def cmd_kernel_program(args) -> int:
    from .api import compile

    net = compile(args.file, tol=args.tol)
    for q in net.ir.params:  # the recursion names them as the IR does
        print(f"# param {q.symbol} = {q.name} (default {q.default:g})")
    if args.grad:
        print(net.tangent_program.text(), end="")
        return 0
    if net.ir.batched:  # stages of one batch, each a pairwise kernel program
        if args.accuracy:
            raise TPError("--accuracy is not available for programs with batchnorm yet",
                          hint="their stages' kernels warn (TPWarning) when they miss tol")
        print(net.batch_evaluator.text(), end="")
        return 0
    if net.ir.gridded:  # arrays over positions, conv/pool/flat between grids
        print(net.spatial_program.text(), end="")
        if args.accuracy:
            raise TPError("--accuracy is not available for spatial programs yet",
                          hint="their kernels warn (TPWarning) when a quadrature misses tol")
        return 0
    print(net.rolled_program.text(), end="")  # loops as loops: the same size at any depth
    if args.accuracy:
        x = load_data(args.data, "--data") if args.data else None
        print()
        print(net.accuracy(x))
    return 0


def cmd_limits(args) -> int:
    from .api import compile
    from .check_reports import limits_json

    net = compile(args.file, tol=args.tol)
    lim = net.limit_values(param_values(args.param))
    if args.format == "json":
        print(limits_json(lim))
        return 0
    width = max(len(v.name) for v in lim.values)
    for v in lim.values:
        if v.exact:
            shown = str(v.value)
            if not v.value.is_Rational:
                shown += f" = {float(v.value):.15g}"
            print(f"{v.name:>{width}} = {shown}    (exact)")
        else:
            print(f"{v.name:>{width}} = {float(v.value):.15g}    ({v.how}; estimated error "
                  f"{v.error:.1e}, size {v.scale:.3g})")
    return 0


def cmd_latex(args) -> int:
    from .api import compile

    print(compile(args.file).latex())
    return 0


def _writable_out(out: Path, force: bool) -> None:
    """Fail before any work when --out cannot be written (the suffix is each command's)."""
    if out.exists() and not force:
        raise TPError(f"{out} exists", hint="pass --force to overwrite it")
    if not out.parent.exists():
        raise TPError(f"--out: the folder {out.parent} does not exist")
    if not out.parent.is_dir():
        raise TPError(f"--out: {out.parent} is not a folder")


def progress_bar(quiet: bool, desc: str):
    """(tqdm bar or None, progress(done, total) callback or None) for row-block progress."""
    if quiet:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", desc=desc, disable=None, leave=False)

    def progress(done, total):
        bar.n = int(100 * done / total)
        bar.refresh()

    return bar, progress


def _time_arg(text: str) -> float | None:
    if text.lower() in ("inf", "infinity"):
        return None
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (or 'inf')") from None
    if not t >= 0:
        raise argparse.ArgumentTypeError(f"the training time must be >= 0, got {text}")
    return None if t == float("inf") else t


def cmd_predict(args) -> int:
    from .api import compile

    out = Path(args.out)
    if out.suffix != ".npz":
        raise TPError(f"--out {out}: predictions are written as .npz; name it {out.stem}.npz")
    _writable_out(out, args.force)
    net = compile(args.file, tol=args.tol)
    x_train = load_data(args.train, "--train")
    y = load_data(args.labels, "--labels")
    if isinstance(y, dict):
        raise TPError("--labels: expected one array (.npy) of N values or N x k targets")
    x_test = load_data(args.test, "--test")
    bar, progress = progress_bar(args.quiet, "kernels")
    try:
        res = net.predict(x_train, y, x_test, kind=args.kind, t=args.time,
                          learning_rate=args.learning_rate, diag_reg=args.diag_reg,
                          variance=args.variance, progress=progress,
                          params=param_values(args.param))
    finally:
        if bar is not None:
            bar.close()
    arrays = {"mean": res.mean}
    if args.variance:
        arrays["variance"] = res.variance
    _atomic_save(out, arrays, True)
    if not args.quiet:
        print(f"wrote {', '.join(arrays)} for {len(res.mean)} test points to {out}",
              file=sys.stderr)
    return 0


def cmd_kernel(args) -> int:
    out = Path(args.out)
    kinds = ("nngp", "ntk") if args.kind == "both" else (args.kind,)
    if out.suffix == ".zarr":
        return _kernel_store(args, out, kinds)
    if args.scheduler or args.workers or args.chunks:
        raise TPError("--chunks, --scheduler and --workers are for a Zarr store",
                      hint=f"name the output {out.stem}.zarr")
    npz = len(kinds) > 1
    if npz and out.suffix != ".npz":
        raise TPError(f"--kind both writes an .npz archive; name the output {out.stem}.npz")
    if not npz and out.suffix != ".npy":
        raise TPError(f"--out {out}: a single kernel is written as .npy")
    _writable_out(out, args.force)
    device = getattr(args, "device", "cpu")
    net = None
    params = param_values(args.param)
    if device == "cpu" and not params:  # compiled before with this text: from the cache
        # numba probes for a BLAS by importing scipy.linalg (0.15-0.2 s, a third of a warm
        # run) at the first call of any compiled function when scipy is installed; the
        # generated kernels call no BLAS (the Gram products are NumPy's), so this process
        # tells numba there is none. Nothing in tpcompiler imports scipy.
        sys.modules.setdefault("scipy.linalg.cython_blas", None)
        from .warm import load

        net = load(args.file, args.tol)
    if net is None:
        from .api import compile

        net = compile(args.file, tol=args.tol)
    x1 = load_data(args.data, "--data")
    x2 = load_data(args.data2, "--data2") if args.data2 else None
    bar, progress = progress_bar(args.quiet, "kernel")
    if device != "cpu":
        from .backends import cuda as cuda_backend

        device = cuda_backend.resolve(device)  # before any work: a missing GPU fails now
    try:
        if device == "cuda" and not npz:
            shape = _kernel_to_memmap(net, x1, x2, kinds[0], out, progress, params)
        else:
            res = net.kernels(x1, x2, kinds, progress=progress, device=device, params=params)
            shape = next(iter(res.values())).shape
    finally:
        if bar is not None:
            bar.close()
    if device != "cuda" or npz:
        _atomic_save(out, res, npz)
    if not args.quiet:
        print(f"wrote {', '.join(kinds)} {shape[0]}x{shape[1]} to {out}", file=sys.stderr)
    return 0


def _kernel_store(args, out: Path, kinds) -> int:
    """tpc kernel ... --out K.zarr: blocks on a Dask cluster into a resumable Zarr store."""
    import shutil

    from . import dask_kernels
    from .api import compile

    dask_kernels.require()
    if args.device != "cpu":
        raise TPError("a Zarr store is computed on the CPU workers of a Dask cluster",
                      hint="leave --device out")
    if out.exists() and args.force:
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    if not out.parent.is_dir():
        raise TPError(f"--out: the folder {out.parent} does not exist")
    if args.workers is not None and args.workers < 1:
        raise TPError("--workers must be at least 1")
    net = compile(args.file, tol=args.tol)
    x1 = load_data(args.data, "--data")
    x2 = load_data(args.data2, "--data2") if args.data2 else None
    bar, progress = progress_bar(args.quiet, "blocks")
    try:
        rep = dask_kernels.write_store(
            net, x1, x2, out, kinds, chunks=args.chunks or dask_kernels.CHUNKS,
            params=param_values(args.param), scheduler=args.scheduler, workers=args.workers,
            progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        n1, n2 = rep["shape"]
        print(f"wrote {', '.join(kinds)} {n1}x{n2} to {out}: {rep['computed']} block(s) "
              f"computed, {rep['reused']} verified and kept, {rep['wall_seconds']:.1f} s",
              file=sys.stderr)
    return 0


def _kernel_to_memmap(net, x1, x2, kind: str, out: Path, progress,
                      params: dict) -> tuple[int, int]:
    """The GPU path for one kernel: row tiles are written into a memory-mapped .npy in a temp
    file next to `out`, renamed over it at the end (atomic, and no full copy in memory)."""
    from .data import prepare

    n1 = len(next(iter(prepare(net.ir, x1, "X1" if x2 is not None else "X").values())))
    n2 = n1 if x2 is None else len(next(iter(prepare(net.ir, x2, "X2").values())))
    try:
        with atomic_path(out) as tmp:
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float64, shape=(n1, n2))
            res = net.kernels(x1, x2, (kind,), progress=progress, device="cuda", out={kind: mm},
                              params=params)
            mm.flush()
            shape = mm.shape
            del mm, res
    except OSError as err:
        raise TPError(f"--out: cannot write {out}: {err.strerror or err}") from None
    return shape


def _param_arg(text: str) -> tuple[str, float]:
    """--param NAME=VALUE (the program checks the name and the value's range)."""
    name, eq, value = text.partition("=")
    if not eq or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r} in {text!r}") from None


def add_param_argument(parser) -> None:
    """--param NAME=VALUE, repeatable: the commands that evaluate a program's params."""
    parser.add_argument("--param", type=_param_arg, action="append", metavar="NAME=VALUE",
                        help="the value of a `param` of the program (repeat for several; the "
                             "others keep their defaults); no recompilation")


def param_values(pairs) -> dict:
    """The --param pairs as a dict name -> value (a name given twice is an error)."""
    out: dict = {}
    for name, value in pairs or ():
        if name in out:
            raise TPError(f"--param {name} is given twice")
        out[name] = value
    return out


def _tol(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return v


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """TPWarnings as `warning: ...` lines (not Python's file:line form, meant for code)."""
    if issubclass(category, TPWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _default_show(message, category, filename, lineno, file, line)


_default_show = warnings.showwarning


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tpc", description="Compile .tp networks to their infinite-width NNGP and NTK.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("ir", help="print the tensor-program IR of a .tp file (or the program "
                                  "after any pass)")
    s.add_argument("file")
    s.add_argument("--after", choices=PASSES, default="lower",
                   help="print the program after this pass (default lower: the IR); each "
                        "pass's output is verified first (tpcompiler/verify.py)")
    s.set_defaults(fn=cmd_ir)

    s = sub.add_parser("kernel-program", help="print the kernel program (scalar recursion)")
    s.add_argument("file")
    s.add_argument("--grad", action="store_true",
                   help="the recursion with the derivatives in the params (d<m>_nngp, ...)")
    s.add_argument("--accuracy", action="store_true",
                   help="also list every integral: dimension, method, estimated error (on "
                        "--data, default 8 standard-normal points of dimension 8)")
    s.add_argument("--data", help="data for --accuracy (.npy)")
    s.add_argument("--tol", type=_tol, default=1e-10,
                   help="tolerance relative to the kernel's scale (default 1e-10)")
    s.set_defaults(fn=cmd_kernel_program)

    s = sub.add_parser("limits", help="print the limits of a program's reports "
                                      "(report NAME = mean(expr)) by the Master theorem",
                       description="The infinite-width limit of every `report` of the "
                                   "program: exact (a fraction, or a closed form) where every "
                                   "expectation is polynomial or sin/cos/exp, else a number "
                                   "held to --tol (a warning says when it is not).")
    s.add_argument("file")
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.add_argument("--tol", type=_tol, default=1e-10,
                   help="tolerance relative to a report's size (default 1e-10)")
    add_param_argument(s)
    s.set_defaults(fn=cmd_limits)

    s = sub.add_parser("latex", help="print the NNGP and NTK recursions in LaTeX (for a "
                                     "program with reports: how each limit was derived)")
    s.add_argument("file")
    s.set_defaults(fn=cmd_latex)

    s = sub.add_parser("kernel", help="compute kernels on data and write .npy/.npz, or a "
                                      "resumable Zarr store on a Dask cluster (--out K.zarr)")
    s.add_argument("file")
    s.add_argument("--data", required=True,
                   help=".npy array (N, d) or (N, T, d); .npz with one array per input name")
    s.add_argument("--data2", help="second data set (default: --data with itself)")
    s.add_argument("--kind", choices=("nngp", "ntk", "both"), default="nngp")
    s.add_argument("--tol", type=_tol, default=1e-10,
                   help="tolerance relative to the kernel's scale (default 1e-10): a kernel "
                        "whose estimated error exceeds it comes with a warning")
    s.add_argument("--out", required=True,
                   help="output .npy (.npz for --kind both), or a .zarr store (one array per "
                        "kind; a rerun resumes it)")
    add_param_argument(s)
    s.add_argument("--force", action="store_true", help="overwrite an existing output")
    s.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    s.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                   help="where to compute: cpu (default), cuda (an error without a usable GPU) "
                        "or auto (CUDA when usable, else the CPU)")
    s.add_argument("--chunks", type=int, default=None,
                   help="with --out K.zarr: block size (default 4096, rounded up to a multiple "
                        "of 256)")
    s.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --out K.zarr: a running dask.distributed scheduler "
                        "(tcp://host:8786); default: a LocalCluster on this machine")
    s.add_argument("--workers", type=int, default=None,
                   help="with --out K.zarr: worker processes of the LocalCluster (default: the "
                        "cores)")
    s.set_defaults(fn=cmd_kernel)

    s = sub.add_parser("predict", help="infinite-width predictions: GP posterior (nngp) or "
                                       "gradient-flow ensemble (ntk); writes an .npz")
    s.add_argument("file")
    s.add_argument("--train", required=True, help="training inputs (.npy, or .npz per input)")
    s.add_argument("--labels", required=True, help="training targets (.npy): N or N x k")
    s.add_argument("--test", required=True, help="test inputs (.npy, or .npz per input)")
    s.add_argument("--kind", choices=("nngp", "ntk"), default="ntk",
                   help="ntk (default): networks trained by gradient flow on MSE; nngp: the "
                        "Bayesian posterior (with --time: only the readout trained)")
    s.add_argument("--time", type=_time_arg, default=None,
                   help="training time in neural-tangents' units (default inf: the end of "
                        "training)")
    s.add_argument("--learning-rate", type=float, default=1.0,
                   help="the learning rate multiplying --time (default 1)")
    s.add_argument("--diag-reg", type=float, default=0.0,
                   help="added to the train kernel's diagonal, relative to its mean diagonal "
                        "(default 0)")
    s.add_argument("--variance", action="store_true",
                   help="also write the predictive variance per test point")
    s.add_argument("--tol", type=_tol, default=1e-10,
                   help="tolerance relative to the kernel's scale (default 1e-10)")
    s.add_argument("--out", required=True, help="output .npz: 'mean' (and 'variance')")
    add_param_argument(s)
    s.add_argument("--force", action="store_true", help="overwrite an existing output")
    s.add_argument("--quiet", action="store_true", help="no summary line")
    s.set_defaults(fn=cmd_predict)

    # the later stages' commands (check, abc, coordcheck): parsers only, nothing heavy; an
    # import error here is a bug to see, not a command to drop
    from . import abc_cli, check_cli, diagnose_cli

    for module in (check_cli, abc_cli, diagnose_cli):
        module.register(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():  # restores the caller's filters and showwarning
        # a TPWarning is part of the command's answer: always shown, never an exception
        warnings.simplefilter("always", TPWarning)
        warnings.showwarning = _show_warning
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
