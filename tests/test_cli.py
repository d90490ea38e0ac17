"""`tpc` end to end: printing commands, `tpc kernel` (atomic writes, --force), and every user
mistake as a message without a traceback, status 2.

Every command and the errors the issue names run through the console script in subprocesses;
they are independent, so one module fixture runs them all at once (one per core), after a
warm-up that compiles relu_mlp here so that they load its kernels from the session's cache.
The rest of the error matrix calls main() (what the console script runs) in this process:
a subprocess costs a second of imports."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import tpcompiler as tp
from tpcompiler.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
RELU = ROOT / "examples" / "relu_mlp.tp"
MUP = ROOT / "examples" / "parametrization_mup.tp"

X = np.random.default_rng(0).normal(size=(6, 5))
X2 = np.random.default_rng(1).normal(size=(3, 5))
NAN = X.copy()
NAN[3, 2] = np.nan

# put into every case's folder before its command runs (None: a folder)
FILES = {"x.npy": X, "x2.npy": X2, "flat.npy": X[0], "nan.npy": NAN, "narrow.npy": X[:, :2],
         "empty.npy": b"", "broken.npz": b"PK\x03\x04 not really a zip archive",
         "bad.tp": "input x\nh = dense(x\ny = readout(h)\n", "afile": "not a folder",
         "folder.npy": None, "old.npy": b"precious", "old.npz": b"precious"}


def tpc_exe() -> str:
    """The console script of the Python running the tests (its venv's bin first)."""
    here = Path(sys.executable).parent / "tpc"
    found = str(here) if here.exists() else shutil.which("tpc")
    assert found, "the tpc console script is not installed"
    return found


def _populate(folder: Path) -> Path:
    folder.mkdir()
    for name, content in FILES.items():
        if content is None:
            (folder / name).mkdir()
        elif isinstance(content, np.ndarray):
            np.save(folder / name, content)
        elif isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    return folder


def _leftovers(folder: Path) -> list[str]:
    """Files in a case folder that the test did not put there."""
    return sorted(set(os.listdir(folder)) - set(FILES))


def _unchanged(folder: Path) -> bool:
    return all((folder / n).read_bytes() == b"precious" for n in ("old.npy", "old.npz"))


# name -> arguments of tpc
CASES = {
    "ir": ["ir", RELU],
    "latex": ["latex", RELU],
    "kernel-program": ["kernel-program", RELU],
    "help": ["--help"],
    # the README's command, as typed in a fresh clone ({dir}: the case's folder)
    "readme": ["kernel", "examples/relu_mlp.tp", "--data", "{dir}/x.npy", "--out", "{dir}/K.npy"],
    "both": ["kernel", RELU, "--data", "x.npy", "--data2", "x2.npy", "--kind", "both",
             "--out", "old.npz", "--force", "--quiet"],
    # failures: status 2, the message, no traceback, no file written or changed
    "exists": ["kernel", RELU, "--data", "x.npy", "--out", "old.npy"],
    "syntax": ["kernel", "bad.tp", "--data", "x.npy", "--out", "K.npy"],
    "missing-tp": ["ir", "nowhere.tp"],
    "shape": ["kernel", RELU, "--data", "flat.npy", "--out", "K.npy"],
    "nan": ["kernel", RELU, "--data", "nan.npy", "--out", "K.npy"],
    "both-npy": ["kernel", RELU, "--data", "x.npy", "--kind", "both", "--out", "K.npy"],
}
IN_PROCESS = {
    "missing-data": ["kernel", RELU, "--data", "nowhere.npy", "--out", "K.npy"],
    "d-mismatch": ["kernel", RELU, "--data", "x.npy", "--data2", "narrow.npy", "--out",
                   "K.npy"],
    "empty-file": ["kernel", RELU, "--data", "empty.npy", "--out", "K.npy"],
    "broken-npz": ["kernel", RELU, "--data", "broken.npz", "--out", "K.npy"],
    "npy-name": ["kernel", RELU, "--data", "x.npy", "--out", "K.npz"],
    "no-folder": ["kernel", RELU, "--data", "x.npy", "--out", "nowhere/K.npy"],
    "out-in-a-file": ["kernel", RELU, "--data", "x.npy", "--out", "afile/K.npy"],
    "out-is-a-folder": ["kernel", RELU, "--data", "x.npy", "--out", "folder.npy", "--force"],
    "refused": ["kernel", MUP, "--data", "x.npy", "--out", "K.npy"],
    "unknown-kind": ["kernel", RELU, "--data", "x.npy", "--kind", "ntkk", "--out", "K.npy"],
}
FAILURES = {
    "exists": ["old.npy exists", "hint: pass --force"],
    "syntax": ["bad.tp:2:12: error:", "    h = dense(x\n", "^"],
    "missing-tp": ["no such file: nowhere.tp"],
    "shape": ["has shape (5,)", "needs (N, d)"],
    "nan": ["contains NaN or infinity (first in row 3)"],
    "both-npy": ["--kind both writes an .npz archive", "K.npz"],
    "missing-data": ["--data: no such file: nowhere.npy"],
    "d-mismatch": ["differ in the dimension of input 'x' (5 and 2)"],
    "empty-file": ["cannot read empty.npy"],
    "broken-npz": ["cannot read broken.npz"],
    "npy-name": ["a single kernel is written as .npy"],
    "no-folder": ["the folder nowhere does not exist"],
    "out-in-a-file": ["--out: afile is not a folder"],
    "out-is-a-folder": ["--out: cannot write folder.npy"],
    "refused": ["NNGP of this network is not available", "parametrization mup"],
    "unknown-kind": ["invalid choice: 'ntkk'"],
}


@pytest.fixture(scope="module")
def net():
    """relu_mlp compiled here (both drivers), so the subprocesses find it in the cache."""
    net = tp.compile(RELU)
    net.kernels(X)
    net.kernels(X, X2)
    return net


def _tpc(args, folder: Path) -> subprocess.CompletedProcess:
    """tpc in the case's folder, or in the repository when the arguments name the folder."""
    argv = [str(a).format(dir=folder) for a in args]
    cwd = ROOT if any("{dir}" in str(a) for a in args) else folder
    return subprocess.run([tpc_exe(), *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def runs(net, tmp_path_factory):
    """name -> (folder, CompletedProcess) for every case of CASES, run concurrently."""
    base = tmp_path_factory.mktemp("cli")
    folders = {name: _populate(base / name) for name in CASES}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        futures = {n: pool.submit(_tpc, CASES[n], folders[n]) for n in CASES}
        return {n: (folders[n], f.result()) for n, f in futures.items()}


def _ok(proc):
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


# --- printing commands ----------------------------------------------------------------------


def test_ir(runs, net):
    _, p = runs["ir"]
    _ok(p)
    assert p.stdout == net.ir.text()


def test_kernel_program(runs, net):
    _, p = runs["kernel-program"]
    _ok(p)
    assert p.stdout == net.rolled_program.text()


def test_latex(runs, net):
    _, p = runs["latex"]
    _ok(p)
    assert p.stdout == net.latex() + "\n"


def test_top_level_help(runs):
    _, p = runs["help"]
    _ok(p)
    for command in ("ir", "latex", "kernel-program", "kernel"):
        assert command in p.stdout


def _subcommands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse exits 0 after printing the help
        main([command, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: tpc {command}")


def test_start_up_loads_no_symbolic_or_compiler_stack():
    """`import tpcompiler` and `tpc --help` stay light (issue 14: fast start): sympy, numba and
    mpmath load when a program is compiled, not before; every subcommand is still there (an
    import error in a command's module fails here, it does not drop the command)."""
    code = ("import sys, tpcompiler, tpcompiler.cli as c; p = c.build_parser(); "
            "heavy = [m for m in ('sympy', 'numba', 'mpmath', 'lark') if m in sys.modules]; "
            "assert not heavy, heavy; print(tpcompiler.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert set(_subcommands()) >= {"ir", "kernel-program", "latex", "kernel", "check", "abc",
                                   "coordcheck"}


def test_cli_constants_agree_with_the_modules_they_describe():
    from tpcompiler import abc_cli, cli, coordcheck, passes
    from tpcompiler.passes import abc

    assert abc_cli.OPTIMIZERS == abc.OPTIMIZERS
    assert abc_cli.COORDCHECK_TOLERANCE == coordcheck.TOLERANCE
    assert cli.PASSES == passes.PASS_NAMES


@pytest.mark.parametrize("after", ["parse", "lower", "recursions", "cse"])
def test_ir_after_each_pass(after, tmp_path, capsys):
    """`tpc ir --after PASS`: the AST (the source printed back), the IR, the kernel program
    before and after common subexpressions are shared."""
    from tpcompiler import passes

    src = tmp_path / "t.tp"
    src.write_text("input x\nh = dense(x, var=2.0)\nh = dense(tanh(h) * tanh(h))\n"
                   "y = readout(relu(h))\n")
    assert main(["ir", str(src), "--after", after]) == 0
    out = capsys.readouterr().out
    want = passes.run(passes.Source(src.read_text(), str(src)), stop=after)
    assert out.rstrip("\n") == passes.PIPELINE[passes.PASS_NAMES.index(after)].show(
        want).rstrip("\n")
    if after == "cse":  # shared subexpressions became temporaries
        assert "u0 = " in out or "t0 = " in out


# --- tpc kernel ------------------------------------------------------------------------------


def test_readme_command(runs, net):
    folder, p = runs["readme"]
    _ok(p)
    np.testing.assert_array_equal(np.load(folder / "K.npy"), net.nngp(X))
    assert _leftovers(folder) == ["K.npy"]  # and no temporary file
    umask = os.umask(0)
    os.umask(umask)
    # the mode of a plain open(), not the 0600 of the temporary file it was renamed from
    assert stat.S_IMODE((folder / "K.npy").stat().st_mode) == 0o666 & ~umask


def test_both_kinds_data2_and_force(runs, net):
    folder, p = runs["both"]
    _ok(p)
    assert p.stderr == ""  # --quiet
    want = net.kernels(X, X2)
    with np.load(folder / "old.npz") as k:
        assert sorted(k.files) == ["nngp", "ntk"]
        for kind in ("nngp", "ntk"):
            assert k[kind].shape == (6, 3)
            np.testing.assert_array_equal(k[kind], want[kind])
    assert _leftovers(folder) == []


def _check_failure(name, folder, code, err):
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith(("error:", "bad.tp:", "usage: tpc")), err  # usage: argparse's
    for part in FAILURES[name]:
        assert part in err, err
    assert _leftovers(folder) == [], "a failed run left a file"
    assert _unchanged(folder)


@pytest.mark.parametrize("name", [n for n in FAILURES if n in CASES])
def test_errors_through_the_console_script(name, runs):
    folder, p = runs[name]
    _check_failure(name, folder, p.returncode, p.stderr)


@pytest.mark.parametrize("name", list(IN_PROCESS))
def test_errors_through_main(name, net, tmp_path, monkeypatch, capsys):
    folder = _populate(tmp_path / "case")
    monkeypatch.chdir(folder)
    try:
        code = main([str(a) for a in IN_PROCESS[name]])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    _check_failure(name, folder, code, capsys.readouterr().err)
