"""One error type for every bad input the user can fix.

The CLI turns a :class:`SpecializeError` into a single line on stderr and exit code 2, so a
message must say *where* (file, line, field) and *what*; tracebacks are for our bugs only.
"""

from __future__ import annotations

from pathlib import Path


class SpecializeError(Exception):
    """A problem with the user's input (config, data, model choice), reported in one line."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.message = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = ""
        if self.path:
            where = _printable(self.path) + (f":{self.line}" if self.line is not None else "")
        if self.field:
            field = _printable(self.field)
            where = f"{where} field '{field}'" if where else f"field '{field}'"
        text = _printable(" ".join(self.message.split()))  # never more than one line
        return f"{where}: {text}" if where else text


def _printable(text: str) -> str:
    """``text`` with every character a terminal cannot show (control characters, NUL, lone
    surrogates from broken input, zero-width marks) written as a Python escape such as
    ``\\x00`` or ``\\ud800``, so the message can always be printed and is never split."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )
