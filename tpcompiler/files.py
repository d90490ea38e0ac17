"""Files the package writes: the cache folder, and one atomic writer for every output.

A neutral module (no stage of the pipeline): the parser's grammar cache, the backends'
generated modules and the commands' outputs all go through it, so a crash or a full disk never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
def atomic_path(path: str | os.PathLike, public: bool = True) -> Iterator[str]:
    """Yields a temporary file name in `path`'s folder; on a clean exit the file is renamed
    over `path` (os.replace: atomic on one file system), on any exception it is removed.
    public: give it the mode a plain open() would (mkstemp makes it private, 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=".tpc-",
                               suffix=path.suffix)
    os.close(fd)
    try:
        if public:
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
