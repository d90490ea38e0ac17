"""The sections of benchmarks/results.md that scripts own: each between `<!-- NAME -->` and
`<!-- /NAME -->`, replaced whole by the script's next run (text outside the markers stays)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def machine(load: tuple) -> str:
    """When and where: the date, the CPU, the cores and the load average before the run."""
    cpu = platform.processor() or platform.machine()
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, {os.cpu_count()} "
            f"cores, load average before {load[0]:.2f}")


def replace(path: str | Path, name: str, lines: list[str]) -> None:
    """Put `lines` between the markers of section `name` (appended if it has none yet)."""
    path = Path(path)
    body = "\n".join([f"<!-- {name} -->", *lines, f"<!-- /{name} -->"])
    text = path.read_text() if path.exists() else ""
    if f"<!-- {name} -->" in text:
        head, rest = text.split(f"<!-- {name} -->", 1)
        text = head + body + rest.split(f"<!-- /{name} -->", 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.write_text(text)
