"""Read training data into chat records, naming the file and line of anything wrong.

A record is a plain dict: ``{"id": str, "messages": [{"role", "content"}, ...], **metadata}``.
Readers accept chat-record JSONL (``messages`` + metadata, as in the space-QA seed) and
prompt/response tables in JSONL, CSV or Parquet with a column mapping (as in the math seed's
``problem,solution`` CSV). Table rows with an empty prompt or response are counted and removed;
a chat record that is malformed is an error, since it means the file is not what the user
thinks it is.

No input breaks a reader: any bytes give records or one :class:`SpecializeError` naming file,
line and field (tests/test_readers_fuzz.py proves it with hypothesis). Accepted on the way in:
a UTF-8 byte-order mark, CRLF line ends, OpenAI-style content-part lists (text parts joined
with a newline), ``NaN`` in JSONL (read as null, as pandas writes missing values), Parquet
columns of any type (binary as UTF-8 text, dates as ISO strings, NaN as null).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from specialize.errors import SpecializeError
from specialize.io import MAX_LINE_CHARS, read_text, text_lines

ROLES = ("system", "user", "assistant")
SUFFIXES = (".jsonl", ".csv", ".parquet")

Record = dict[str, Any]


@dataclass
class ReadStats:
    """What the readers saw: per file, records kept and rows removed (with the reason)."""

    files: dict[str, int] = field(default_factory=dict)
    removed_empty: int = 0
    removed_rows: list[str] = field(default_factory=list)  # "file:line" of each removed row

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "removed_empty_rows": self.removed_empty,
            "removed_row_locations": self.removed_rows[:50],
        }


def data_files(path: Path) -> list[Path]:
    """The data files at ``path``: the file itself or the sorted data files of a folder."""
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise SpecializeError(
                f"unsupported data file type '{path.suffix}' (use {', '.join(SUFFIXES)})",
                path=path,
                field="data.path",
            )
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise SpecializeError(
                f"no {', '.join(SUFFIXES)} files in folder", path=path, field="data.path"
            )
        return files
    raise SpecializeError("data file not found", path=path, field="data.path")


def read_records(
    path: Path,
    fmt: str = "auto",
    columns: dict[str, str | None] | None = None,
    system_prompt: str | None = None,
) -> tuple[list[Record], ReadStats]:
    """Read every data file at ``path`` into validated chat records."""
    columns = columns or {"prompt": "prompt", "response": "response", "system": None}
    stats = ReadStats()
    records: list[Record] = []
    seen: dict[str, str] = {}
    for file in data_files(path):
        n0 = len(records)
        for line, row in rows(file):
            where = (file, line)
            kind = fmt
            if kind == "auto":
                kind = "chat" if "messages" in row else "prompt-response"
            if kind == "chat":
                rec = _chat_record(row, where)
            else:
                rec = _table_record(row, where, columns, system_prompt)
                if rec is None:
                    stats.removed_empty += 1
                    stats.removed_rows.append(f"{file.name}:{line}")
                    continue
            rec["id"] = _record_id(rec.get("id"), f"{file.stem}-{line}", where, "id")
            if rec["id"] in seen:
                raise SpecializeError(
                    f"duplicate id {_short(rec['id'])} (first at {seen[rec['id']]})",
                    path=file,
                    line=line,
                    field="id",
                )
            seen[rec["id"]] = f"{file.name}:{line}"
            records.append(rec)
        stats.files[file.name] = len(records) - n0
    if not records:
        raise SpecializeError("no usable records", path=path, field="data.path")
    return records, stats


MAX_JSON_DEPTH = 100
"""Deepest nesting of arrays and objects a JSONL record may have."""


def rows(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, row)`` of a JSONL, CSV or Parquet file (by suffix, any case); a Parquet file's
    "line" is its 1-based row number. Bad bytes, bad JSON and malformed CSV are one-line
    errors (:class:`SpecializeError`) naming the file and line; other suffixes yield nothing."""
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        for n, text in text_lines(file):
            if text.strip():
                yield n, _json_object(text, file, n)
    elif suffix == ".csv":
        yield from _csv_rows(file)
    elif suffix == ".parquet":
        yield from _parquet_rows(file)


class _BadNumber(ValueError):
    pass


def _parse_int(s: str) -> int:
    if len(s.lstrip("-")) > 1000:
        raise _BadNumber(f"an integer with {len(s.lstrip('-')):,} digits")
    return int(s)


def _parse_float(s: str) -> float:
    value = float(s)
    if math.isinf(value):
        raise _BadNumber(f"the number {_short(s, 30, quote=False)} is out of range")
    return value


def _parse_constant(s: str) -> None:
    if s == "NaN":
        return None  # Python's json writes NaN for a missing float; pandas writes null
    raise _BadNumber(f"{s} is not a JSON number")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _json_object(text: str, file: Path, n: int) -> dict[str, Any]:
    """One JSONL line as a dict, or a SpecializeError naming the line (and field, if known)."""
    try:
        row = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except json.JSONDecodeError as e:
        raise SpecializeError(
            f"not valid JSON ({e.msg} at column {e.colno})", path=file, line=n
        ) from None
    except _BadNumber as e:
        raise SpecializeError(f"not valid JSON ({e})", path=file, line=n) from None
    except RecursionError:
        raise SpecializeError(
            f"not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels)", path=file, line=n
        ) from None
    if not isinstance(row, dict):
        raise SpecializeError(
            f"a record must be a JSON object, got {_kind(row)}", path=file, line=n
        )
    # Strict UTF-8 text has no surrogates, so only \\uD800-style escapes can put them in a
    # string; deep nesting needs many brackets. Walk the record only when either is possible.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH or _SURROGATE_ESCAPE.search(text):
        _check_json_tree(row, file, n)
    return row


def _check_json_tree(row: dict[str, Any], file: Path, n: int) -> None:
    """Reject nesting deeper than MAX_JSON_DEPTH and lone surrogates (not Unicode text)."""
    stack: list[tuple[Any, str, int]] = [(row, "", 1)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, str):
            _no_surrogate(value, file, n, where)
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise SpecializeError(
                f"nested deeper than {MAX_JSON_DEPTH} levels", path=file, line=n, field=where
            )
        if isinstance(value, dict):
            for k, v in value.items():
                _no_surrogate(k, file, n, where or None)
                stack.append((v, f"{where}.{k}" if where else k, depth + 1))
        else:
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))


def _no_surrogate(text: str, file: Path, n: int, where: str | None) -> None:
    bad = next((c for c in text if "\ud800" <= c <= "\udfff"), None)
    if bad is not None:
        raise SpecializeError(
            f"lone surrogate \\u{ord(bad):04x} in a string: not valid Unicode (a broken "
            "\\u escape?)",
            path=file,
            line=n,
            field=where or None,
        )


def _csv_rows(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    # The csv module's own limit (128 KiB) is below a long document; lines are capped anyway.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_CHARS))
    reader = csv.reader(line for _, line in text_lines(file))
    try:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)  # blank lines before the header
        if header is None:
            raise SpecializeError("CSV file has no header row", path=file, line=1)
        header_line = reader.line_num
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise SpecializeError(
                f"column {_short(dupes[0])} appears twice in the header",
                path=file,
                line=header_line,
            )
        start = reader.line_num
        for cells in reader:
            # line_num counts physical lines read so far (quoted fields may span lines).
            line, start = start + 1, reader.line_num
            if not cells:
                continue  # a blank line
            if len(cells) != len(header):
                raise SpecializeError(
                    f"row has {len(cells)} field{'s' * (len(cells) != 1)}, the header "
                    f"(line {header_line}) has {len(header)} (a quote or comma out of place?)",
                    path=file,
                    line=line,
                )
            yield line, dict(zip(header, cells, strict=True))
    except csv.Error as e:
        raise SpecializeError(f"malformed CSV ({e})", path=file, line=reader.line_num) from None


def _parquet_rows(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(file).to_pylist()
    except Exception as e:  # pyarrow raises many types (OSError, ArrowInvalid, ...) for a bad file
        msg = re.sub(r"^Could not open Parquet input source '.*?': ", "", str(e))
        raise SpecializeError(f"unreadable Parquet file ({msg})", path=file) from None
    for n, row in enumerate(rows, 1):
        yield n, {str(k): _plain(v, file, n, str(k)) for k, v in row.items()}


def _plain(value: Any, file: Path, n: int, where: str) -> Any:
    """A Parquet cell as plain JSON data (what the rest of the pipeline writes and reads)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # NaN: a missing value
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpecializeError(
                f"binary value that is not UTF-8 text (byte {e.start + 1})",
                path=file,
                line=n,
                field=where,
            ) from None
    if isinstance(value, dict):
        return {str(k): _plain(v, file, n, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        # A Parquet map column comes as a list of (key, value) tuples.
        return [_plain(v, file, n, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    return str(value)  # timedelta and anything newer: its text


def _chat_record(row: dict[str, Any], where: tuple[Path, int]) -> Record:
    file, line = where
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise SpecializeError(
            f"'messages' must be a non-empty list, got {_kind(msgs)}",
            path=file,
            line=line,
            field="messages",
        )
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            got = "" if isinstance(m, dict) else f", got {_kind(m)}"
            raise SpecializeError(
                f"each message needs 'role' and 'content'{got}",
                path=file,
                line=line,
                field=f"messages[{i}]",
            )
        role = m["role"]
        if not isinstance(role, str) or role not in ROLES:
            what = (
                f"unknown role {_short(role)}"
                if isinstance(role, str)
                else f"role must be a string, got {_kind(role)}"
            )
            raise SpecializeError(
                f"{what} (roles: {', '.join(ROLES)})",
                path=file,
                line=line,
                field=f"messages[{i}].role",
            )
        content = _content(m["content"], file, line, f"messages[{i}].content")
        if role == "assistant" and not content.strip():
            raise SpecializeError(
                "empty assistant message", path=file, line=line, field=f"messages[{i}].content"
            )
        clean.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in clean):
        raise SpecializeError(
            "record has no assistant turn", path=file, line=line, field="messages"
        )
    if clean[-1]["role"] != "assistant":
        raise SpecializeError(
            "the last message must be the assistant's answer",
            path=file,
            line=line,
            field="messages",
        )
    rec = {k: v for k, v in row.items() if k != "messages"}
    rec["messages"] = clean
    return rec


def _content(content: Any, file: Path, line: int, where: str) -> str:
    """A message's text: a string, or OpenAI-style parts ``[{"type": "text", "text": ...}]``
    whose text parts are joined with a newline (as vLLM does); other parts are an error."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise SpecializeError(
            f"content must be a string or a list of text parts, got {_kind(content)}",
            path=file,
            line=line,
            field=where,
        )
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise SpecializeError(
                'a content part must be an object like {"type": "text", "text": ...}, '
                f"got {_kind(part)}",
                path=file,
                line=line,
                field=f"{where}[{j}]",
            )
        if part.get("type") != "text":
            raise SpecializeError(
                f"only text content parts can be trained on, got type {_short(part.get('type'))}",
                path=file,
                line=line,
                field=f"{where}[{j}].type",
            )
        if not isinstance(part.get("text"), str):
            raise SpecializeError(
                f"a text part needs a string 'text', got {_kind(part.get('text'))}",
                path=file,
                line=line,
                field=f"{where}[{j}].text",
            )
        texts.append(part["text"])
    return "\n".join(texts)


def _table_record(
    row: dict[str, Any],
    where: tuple[Path, int],
    columns: dict[str, str | None],
    system_prompt: str | None,
) -> Record | None:
    file, line = where
    p_col, r_col, s_col = columns["prompt"], columns["response"], columns.get("system")
    for col, name in ((p_col, "prompt"), (r_col, "response")):
        if col not in row:
            raise SpecializeError(
                f"column '{col}' not found (columns: {_names(row)}); set data.columns.{name}",
                path=file,
                line=line,
                field=f"data.columns.{name}",
            )
    prompt, response = _text(row, p_col, where), _text(row, r_col, where)
    if not prompt.strip() or not response.strip():
        return None
    msgs = []
    system = _text(row, s_col, where) if s_col else ""
    if system.strip() or system_prompt:
        msgs.append({"role": "system", "content": system if system.strip() else system_prompt})
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    used = {p_col, r_col, s_col}
    rec: Record = {k: v for k, v in row.items() if k not in used}
    rec["messages"] = msgs
    return rec


def _text(row: dict[str, Any], col: str | None, where: tuple[Path, int]) -> str:
    """The text in ``row[col]``: a string, a number's digits, or "" for missing / NaN."""
    value = row.get(col) if col is not None else None
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, float) and value != value:  # NaN from a table
        return ""
    if isinstance(value, dict | list):
        raise SpecializeError(
            f"expected text, got {_kind(value)}", path=where[0], line=where[1], field=col
        )
    return str(value)


def _record_id(value: Any, default: str, where: tuple[Path, int], name: str) -> str:
    if value is None or value == "":
        return default
    if isinstance(value, dict | list):
        raise SpecializeError(
            f"an id must be a string or a number, got {_kind(value)}",
            path=where[0],
            line=where[1],
            field=name,
        )
    return str(value)


def _kind(value: Any) -> str:
    """How a JSON value reads in an error: ``a list``, ``the string 'x'``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, int | float):
        return f"the number {_short(value, quote=False)}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return f"a {type(value).__name__}"


def _short(value: Any, limit: int = 60, quote: bool = True) -> str:
    """``value`` for an error message: quoted and cut to ``limit`` characters."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**limit:
        text = f"{str(value)[:limit]}..."  # str() of a huge int is slow and capped
    else:
        text = str(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"'{text}'" if quote else text


def _names(row: dict[str, Any], limit: int = 20) -> str:
    names = [_short(k, quote=False) for k in list(row)[:limit]]
    return ", ".join(names) + (f", ... ({len(row)} in all)" if len(row) > limit else "")


TEXT_SUFFIXES = (".txt", ".md")


def read_documents(
    path: Path, text_fields: list[str], id_field: str | None = None
) -> tuple[list[Record], ReadStats]:
    """Read raw documents for continued pre-training: ``{"id", "text", **metadata}``.

    JSONL / CSV / Parquet rows join ``text_fields`` with a blank line; ``.txt`` / ``.md`` files
    are one document each. Rows whose text is empty are counted and removed; a source with
    no text at all is an error.
    """
    stats = ReadStats()
    docs: list[Record] = []
    seen: dict[str, str] = {}
    files = [path] if path.is_file() else []
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES + TEXT_SUFFIXES)
    elif not path.exists():
        raise SpecializeError("data file not found", path=path, field="data.path")
    if not files or any(f.suffix not in SUFFIXES + TEXT_SUFFIXES for f in files):
        raise SpecializeError(
            f"no {', '.join(SUFFIXES + TEXT_SUFFIXES)} files", path=path, field="data.path"
        )
    for file in files:
        n0 = len(docs)
        if file.suffix in TEXT_SUFFIXES:
            found: Any = [(1, {"id": file.stem, "text": read_text(file)})]
            fields = ["text"]
        else:
            found, fields = rows(file), text_fields
        for line, row in found:
            missing = [f for f in fields if f not in row]
            if missing:
                raise SpecializeError(
                    f"no column '{missing[0]}' (columns: {_names(row)}); set data.columns.text",
                    path=file,
                    line=line,
                    field="data.columns.text",
                )
            where = (file, line)
            text = "\n\n".join(t for t in (_text(row, f, where).strip() for f in fields) if t)
            if not text:
                stats.removed_empty += 1
                stats.removed_rows.append(f"{file.name}:{line}")
                continue
            default = f"{file.stem}-{line}"
            if id_field and row.get(id_field) not in (None, ""):
                rid = _record_id(row[id_field], default, where, id_field)
            else:
                rid = _record_id(row.get("id"), default, where, "id")
            if rid in seen:
                raise SpecializeError(
                    f"duplicate id {_short(rid)} (first at {seen[rid]})",
                    path=file,
                    line=line,
                    field="id",
                )
            seen[rid] = f"{file.name}:{line}"
            meta = {k: v for k, v in row.items() if k not in fields and k != "id"}
            docs.append({"id": rid, "text": text, **meta})
        stats.files[file.name] = len(docs) - n0
    if not docs:
        raise SpecializeError("no document has any text", path=path, field="data.columns.text")
    return docs, stats
