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
            where = self.path + (f":{self.line}" if self.line is not None else "")
        if self.field:
            where = f"{where} field '{self.field}'" if where else f"field '{self.field}'"
        text = " ".join(self.message.split())  # never more than one line
        return f"{where}: {text}" if where else text
