"""Files the package reads and writes: the cache folder, one atomic writer for every output, and
the reader of data files.

A neutral module (no stage of the pipeline): the parser's grammar cache, the backends'
generated modules and the commands' outputs all go through it, so a crash or a full disk never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import TPError


def cache_dir() -> Path:
    """$TPC_CACHE_DIR, else $XDG_CACHE_HOME/tpcompiler, else ~/.cache/tpcompiler (created)."""
    root = os.environ.get("TPC_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = Path(base) / "tpcompiler"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary file name in `path`'s folder; on a clean exit the file is renamed
    over `path` (os.replace: atomic on one file system), on any exception it is removed. The
    file gets the mode a plain open() would give it (mkstemp makes it private, 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=".tpc-",
                               suffix=path.suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically, byte for byte (no newline translation)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


# what np.load raises for a file that is not a sound .npy/.npz: an empty file (EOFError), a
# damaged archive (BadZipFile, zlib.error), a truncated array or a pickle (ValueError)
UNREADABLE = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a member first, or an empty archive
_FORMATS_HINT = ("tpc reads NumPy files: a .npy array (np.save('X.npy', X)) or, for a network "
                 "with several inputs, a .npz with one array per input name (np.savez('X.npz', "
                 "x=X, s=S)); a CSV converts with np.save('X.npy', np.loadtxt('X.csv', "
                 "delimiter=','))")


def load_data(path: str, flag: str):
    """The data of a .npy (an array) or .npz (input name -> array) file, or a TPError that
    names the flag it came from and how to make such a file."""
    p = Path(path)
    if not p.exists():
        raise TPError(f"{flag}: no such file: {path}")
    try:
        # our own handle: np.load leaks the one it opens when a zip archive is damaged
        with open(p, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
            f.seek(0)
            # np.load takes anything else for a pickle and says so, a riddle for a CSV file
            if not head.startswith(_ZIP_MAGIC) and head != _NPY_MAGIC:
                what = "it is empty" if not head else "it is not a NumPy .npy or .npz file"
                raise TPError(f"{flag}: cannot read {path}: {what}", hint=_FORMATS_HINT)
            obj = np.load(f, allow_pickle=False)
            if isinstance(obj, np.lib.npyio.NpzFile):
                with obj:  # members are read lazily: a damaged member fails here
                    return {k: obj[k] for k in obj.files}
            return obj
    except UNREADABLE as err:
        raise TPError(f"{flag}: cannot read {path} as .npy/.npz: {err}") from None


def read_source(path: str | Path) -> str:
    """The text of a .tp file; a missing or unreadable file is a TPError."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8-sig")  # -sig: drop a byte-order mark
    except FileNotFoundError:
        raise TPError(f"no such file: {p}", hint="check the path") from None
    except IsADirectoryError:
        raise TPError(f"{p} is a directory, not a .tp file") from None
    except UnicodeDecodeError:
        raise TPError(f"{p} is not UTF-8 text") from None
    except OSError as err:
        raise TPError(f"cannot read {p}: {err.strerror}") from None
