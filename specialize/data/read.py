"""Read training data into chat records, naming the file and line of anything wrong.

A record is a plain dict: ``{"id": str, "messages": [{"role", "content"}, ...], **metadata}``.
Readers accept chat-record JSONL (``messages`` + metadata, as in the space-QA seed) and
prompt/response tables in JSONL, CSV or Parquet with a column mapping (as in the math seed's
``problem,solution`` CSV). Table rows with an empty prompt or response are counted and removed;
a chat record that is malformed is an error, since it means the file is not what the user
thinks it is.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.errors import SpecializeError

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
        for line, row in _rows(file):
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
            rec.setdefault("id", f"{file.stem}-{line}")
            rec["id"] = str(rec["id"])
            if rec["id"] in seen:
                raise SpecializeError(
                    f"duplicate id '{rec['id']}' (first at {seen[rec['id']]})",
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


def _rows(file: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if file.suffix == ".jsonl":
        with file.open(encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise SpecializeError(f"not valid JSON ({e.msg})", path=file, line=n) from None
                if not isinstance(row, dict):
                    raise SpecializeError("a record must be a JSON object", path=file, line=n)
                yield n, row
    elif file.suffix == ".csv":
        with file.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise SpecializeError("CSV file has no header row", path=file, line=1)
            start = reader.line_num
            for row in reader:
                # line_num counts physical lines read so far (quoted fields may span lines).
                yield start + 1, dict(row)
                start = reader.line_num
    elif file.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(file)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise SpecializeError(f"unreadable Parquet file ({e})", path=file) from None
        for n, row in enumerate(table.to_pylist(), 1):
            yield n, row  # "line" of a Parquet file is its 1-based row number


def _chat_record(row: dict[str, Any], where: tuple[Path, int]) -> Record:
    file, line = where
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise SpecializeError(
            "'messages' must be a non-empty list", path=file, line=line, field="messages"
        )
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise SpecializeError(
                "each message needs 'role' and 'content'",
                path=file,
                line=line,
                field=f"messages[{i}]",
            )
        if m["role"] not in ROLES:
            raise SpecializeError(
                f"unknown role '{m['role']}' (roles: {', '.join(ROLES)})",
                path=file,
                line=line,
                field=f"messages[{i}].role",
            )
        if not isinstance(m["content"], str):
            raise SpecializeError(
                "content must be a string", path=file, line=line, field=f"messages[{i}].content"
            )
        if m["role"] == "assistant" and not m["content"].strip():
            raise SpecializeError(
                "empty assistant message", path=file, line=line, field=f"messages[{i}].content"
            )
        clean.append({"role": m["role"], "content": m["content"]})
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
                f"column '{col}' not found (columns: {', '.join(map(str, row))}); "
                f"set data.columns.{name}",
                path=file,
                line=line,
                field=f"data.columns.{name}",
            )
    prompt, response = _text(row[p_col]), _text(row[r_col])
    if not prompt.strip() or not response.strip():
        return None
    msgs = []
    system = _text(row.get(s_col)) if s_col else ""
    if system.strip() or system_prompt:
        msgs.append({"role": "system", "content": system if system.strip() else system_prompt})
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    used = {p_col, r_col, s_col}
    rec: Record = {k: v for k, v in row.items() if k not in used}
    rec["messages"] = msgs
    return rec


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from a table
        return ""
    return str(value)


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
            rows: Any = [(1, {"id": file.stem, "text": file.read_text(encoding="utf-8")})]
            fields = ["text"]
        else:
            rows, fields = _rows(file), text_fields
        for line, row in rows:
            missing = [f for f in fields if f not in row]
            if missing:
                raise SpecializeError(
                    f"no column '{missing[0]}' (columns: {', '.join(map(str, row))}); set "
                    "data.columns.text",
                    path=file,
                    line=line,
                    field="data.columns.text",
                )
            text = "\n\n".join(_text(row[f]).strip() for f in fields if _text(row[f]).strip())
            if not text:
                stats.removed_empty += 1
                stats.removed_rows.append(f"{file.name}:{line}")
                continue
            rid = (
                str(row[id_field])
                if id_field and row.get(id_field)
                else str(row.get("id", f"{file.stem}-{line}"))
            )
            if rid in seen:
                raise SpecializeError(
                    f"duplicate id '{rid}' (first at {seen[rid]})", path=file, line=line, field="id"
                )
            seen[rid] = f"{file.name}:{line}"
            meta = {k: v for k, v in row.items() if k not in fields and k != "id"}
            docs.append({"id": rid, "text": text, **meta})
        stats.files[file.name] = len(docs) - n0
    if not docs:
        raise SpecializeError("no document has any text", path=path, field="data.columns.text")
    return docs, stats
