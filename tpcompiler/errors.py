"""TPError and source spans: every user mistake ends here, with path:line:col and a caret."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    """The text of one .tp file and the name it is reported under."""

    text: str
    path: str = "<string>"

    def lines(self) -> list[str]:
        """The lines as the parser counts them: split at '\\n' only (str.splitlines would also
        split at '\\f', '\\x1c', '\\u2028', ... and show the wrong line), without a final '\\r'."""
        return [s[:-1] if s.endswith("\r") else s for s in self.text.split("\n")]

    def line(self, lineno: int) -> str:
        lines = self.lines()
        if 1 <= lineno <= len(lines):
            return lines[lineno - 1]
        return ""


@dataclass(frozen=True)
class Span:
    """A region of a source file, 1-based line and column; end is exclusive."""

    source: Source = field(repr=False, compare=False)
    line: int
    column: int
    end_line: int
    end_column: int

    def render(self) -> str:
        text = self.source.line(self.line).expandtabs(1)
        if self.end_line == self.line:
            width = max(1, self.end_column - self.column)
        else:
            width = max(1, len(text) - self.column + 1)
        return f"    {text}\n    {' ' * (self.column - 1)}{'^' * width}"

    @property
    def where(self) -> str:
        return f"{self.source.path}:{self.line}:{self.column}"


class TPError(Exception):
    """The one exception a user of tpcompiler sees for a mistake in a program or its data."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        self.message = message
        self.span = span
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        parts = []
        if self.span is not None:
            parts.append(f"{self.span.where}: error: {self.message}")
            parts.append(self.span.render())
        else:
            parts.append(f"error: {self.message}")
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)


class TPWarning(UserWarning):
    """A number tpcompiler computed but cannot vouch for to the stated tolerance (or a limit
    whose theorem's hypotheses are not met): the message says which integral or construct,
    why, and what would help."""


def warn(message: str, hint: str | None = None, stacklevel: int = 3) -> None:
    """Emit a TPWarning (the one way the package warns)."""
    import warnings

    text = message + (f"\nhint: {hint}" if hint else "")
    warnings.warn(text, TPWarning, stacklevel=stacklevel)


def did_you_mean(name: str, candidates) -> str | None:
    """A 'did you mean' hint for a misspelled name, or None when nothing is close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
