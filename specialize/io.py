"""Atomic file writes, hashing, and reading user text files that no bytes can break.

Every artifact is written to a temporary name beside its target and renamed into place, so a
crash or a full disk never leaves a half-written file that a later stage would trust.

User files (data, configs) are read with :func:`read_text` or :func:`text_lines`: UTF-8 with an
optional byte-order mark, any line ending; anything else (invalid UTF-8, UTF-16, NUL bytes of a
binary file, an absurdly long line) is a :class:`SpecializeError` naming the line and byte.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from specialize.errors import SpecializeError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; match a plain open()
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; it replaces ``target`` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: str | Path) -> list[Any]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ------------------------------------------------------------------------- reading user text

MAX_LINE_CHARS = 64 * 2**20
"""Longest line :func:`text_lines` accepts (a guard against a binary file with no newline)."""

_BOM = "\ufeff"
# Bytes that are not UTF-8 decode to these under "surrogateescape"; strict UTF-8 text never
# contains surrogates, so any of them (or a NUL) marks the first byte that is not text.
_NOT_TEXT = re.compile("[\udc80-\udcff\x00]")


def read_text(path: str | Path) -> str:
    """The whole text of a UTF-8 file, without a leading byte-order mark.

    Invalid UTF-8, UTF-16 and NUL bytes are a :class:`SpecializeError` naming line and byte.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SpecializeError(f"cannot read file ({e.strerror or e})", path=path) from None
    text = data.decode("utf-8", "surrogateescape")
    _check_start(text, path)
    text = text.removeprefix(_BOM)
    bad = _NOT_TEXT.search(text)
    if bad is not None:
        start = text.rfind("\n", 0, bad.start()) + 1
        _not_text(text[start:], bad.start() - start, path, text.count("\n", 0, start) + 1)
    return text


def text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` of a UTF-8 file, line ends kept (as ``newline=""``).

    A leading byte-order mark is dropped; ``\\n``, ``\\r\\n`` and ``\\r`` all end a line.
    Invalid UTF-8, NUL bytes and lines longer than :data:`MAX_LINE_CHARS` are a
    :class:`SpecializeError` naming the line.
    """
    limit = MAX_LINE_CHARS
    try:
        raw = open(path, "rb")  # closed by the TextIOWrapper below
    except OSError as e:
        raise SpecializeError(f"cannot read file ({e.strerror or e})", path=path) from None
    with io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="") as f:
        n = 0
        while True:
            try:
                line = f.readline(limit + 1)
            except OSError as e:
                raise SpecializeError(f"cannot read file ({e.strerror or e})", path=path) from None
            if not line:
                return
            n += 1
            if n == 1:
                _check_start(line, path)
                line = line.removeprefix(_BOM)
            if len(line) > limit:
                raise SpecializeError(
                    f"line is longer than {limit:,} characters (not a text file?)",
                    path=path,
                    line=n,
                )
            bad = _NOT_TEXT.search(line)
            if bad is not None:
                _not_text(line, bad.start(), path, n)
            yield n, line


def _check_start(text: str, path: str | Path) -> None:
    if text.startswith(("\udcff\udcfe", "\udcfe\udcff")):
        raise SpecializeError(
            "the file is UTF-16 (it starts with a UTF-16 byte-order mark); save it as UTF-8",
            path=path,
            line=1,
        )


def _not_text(line: str, i: int, path: str | Path, n: int) -> None:
    """Raise the error for the character at ``line[i]`` (a NUL or an undecodable byte)."""
    at = len(line[:i].encode("utf-8", "surrogateescape")) + 1  # 1-based byte in the line
    if line[i] == "\x00":
        raise SpecializeError(
            f"NUL byte at byte {at} of the line: a binary file, or UTF-16 text? "
            "save it as UTF-8 text",
            path=path,
            line=n,
        )
    byte = ord(line[i]) - 0xDC00
    raise SpecializeError(
        f"not valid UTF-8 at byte {at} of the line (0x{byte:02x}); save the file as UTF-8",
        path=path,
        line=n,
    )
