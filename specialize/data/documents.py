"""Read a corpus of documents (the input of synthetic-data generation) with provenance.

A corpus is one file or a folder of them: ``.txt`` / ``.md`` / ``.pdf`` files are one document
each, and every row of a ``.jsonl`` / ``.csv`` / ``.parquet`` table is one document (its
``text_fields`` joined with a blank line). Every :class:`Document` keeps where it came from
(``source``: the file, or ``file:line`` for a row), because each generated training record is
traced back to a chunk of a document, and a user checking a strange record must be able to
open the passage it was made from.

Real corpora hold junk: an empty export, a ``.txt`` that is really a binary, a Latin-1 file, a
scanned PDF with no text layer, a truncated PDF. Each is either a one-line
:class:`SpecializeError` naming the file and what to do (``on_bad_file="error"``, the default:
the user should know their corpus is not what they think), or counted under a reason in
:class:`CorpusStats` and skipped (``"skip"``), so a run over thousands of files is not stopped
by one and the skipped files are still listed in the run's stats. Nothing is dropped silently:
files of other types in a folder, hidden files and empty table rows are counted too.

Text is kept as read, except that a UTF-8 byte-order mark is dropped and ``\\r\\n`` becomes
``\\n``: chunk spans (:mod:`specialize.data.chunk`) index into ``Document.text``.
"""

from __future__ import annotations

import codecs
import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from specialize.data.read import SUFFIXES as TABLE_SUFFIXES
from specialize.data.read import _names, _short, _text, rows
from specialize.errors import SpecializeError

TEXT_SUFFIXES = (".txt", ".md")
PDF_SUFFIXES = (".pdf",)
DOCUMENT_SUFFIXES = TEXT_SUFFIXES + PDF_SUFFIXES + TABLE_SUFFIXES
"""File types :func:`read_corpus` reads (matched without regard to case)."""

MAX_SKIPPED_SOURCES = 20
"""Sources listed per reason in :meth:`CorpusStats.as_dict` (the counts are always complete)."""


@dataclass(frozen=True)
class Document:
    """One document: ``id`` is unique in the corpus, ``source`` says where the text was read."""

    id: str
    text: str
    source: str
    meta: dict[str, Any]


@dataclass
class CorpusStats:
    """What :func:`read_corpus` saw: documents per file and what it skipped, by reason."""

    files: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able summary (for the run's stats file): counts, and the first sources."""
        return {
            "files": dict(self.files),
            "documents": sum(self.files.values()),
            "skipped": {reason: len(srcs) for reason, srcs in self.skipped.items()},
            "skipped_sources": {
                reason: srcs[:MAX_SKIPPED_SOURCES] for reason, srcs in self.skipped.items()
            },
        }

    def _skip(self, reason: str, source: str) -> None:
        self.skipped.setdefault(reason, []).append(source)


class _BadFile(Exception):
    """A file that cannot give a document: ``reason`` is the stats key, ``detail`` the why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _Options:
    text_fields: tuple[str, ...]
    id_field: str | None
    field: str

    @property
    def prefix(self) -> str:
        """The config section the options live in ("synth" for "synth.documents")."""
        head, dot, _ = self.field.rpartition(".")
        return f"{head}." if dot else ""


def read_corpus(
    path: Path,
    *,
    text_fields: Sequence[str] = ("text",),
    id_field: str | None = None,
    on_bad_file: Literal["error", "skip"] = "error",
    field: str = "synth.documents",
    max_documents: int | None = None,
) -> tuple[list[Document], CorpusStats]:
    """Every document at ``path`` (a file, or a folder read recursively in sorted order).

    ``field`` is the config key named in errors (and its section prefixes the hints, e.g.
    ``synth.on_bad_file``). ``max_documents`` stops after that many documents in reading
    order; the files after are not opened. Raises :class:`SpecializeError` for a missing path,
    an unsupported single file, a bad file (unless ``on_bad_file="skip"``), a duplicate id, or
    when no document is left.
    """
    path = Path(path)
    opts = _options(text_fields, id_field, on_bad_file, field, max_documents)
    stats = CorpusStats()
    docs: list[Document] = []
    seen: dict[str, str] = {}
    for file, rel in _corpus_files(path, stats, field):
        if max_documents is not None and len(docs) >= max_documents:
            break
        try:
            found = _file_documents(file, rel, opts, stats)
        except _BadFile as bad:
            if on_bad_file == "error":
                raise SpecializeError(
                    f"{bad.detail}; set {opts.prefix}on_bad_file: skip to count and skip "
                    "such files",
                    path=file,
                    field=field,
                ) from None
            stats._skip(bad.reason, str(file))
            continue
        n0, table = len(docs), file.suffix.lower() in TABLE_SUFFIXES
        for doc in found:
            _check_unique(doc, seen, opts, table)
            docs.append(doc)
            if max_documents is not None and len(docs) >= max_documents:
                break
        stats.files[rel] = len(docs) - n0
    if not docs:
        raise SpecializeError(
            f"no document with text{_skipped_note(stats)}", path=path, field=field
        )
    return docs, stats


def _options(
    text_fields: Sequence[str],
    id_field: str | None,
    on_bad_file: str,
    field: str,
    max_documents: int | None,
) -> _Options:
    """Check the arguments the config normally checks (callers may not come from a config)."""
    fields = (text_fields,) if isinstance(text_fields, str) else tuple(text_fields)
    opts = _Options(fields, id_field, field)
    if not fields:
        raise SpecializeError("name at least one text column", field=f"{opts.prefix}text_fields")
    if on_bad_file not in ("error", "skip"):
        raise SpecializeError(
            f"must be 'error' or 'skip', got {_short(on_bad_file)}",
            field=f"{opts.prefix}on_bad_file",
        )
    if max_documents is not None and max_documents <= 0:
        raise SpecializeError(
            f"must be positive, got {max_documents}", field=f"{opts.prefix}max_documents"
        )
    return opts


def _skipped_note(stats: CorpusStats) -> str:
    """`` (skipped: 2 empty, 1 unsupported type)`` for the nothing-left error, or ''."""
    if not stats.skipped:
        return ""
    parts = [f"{len(srcs)} {reason}" for reason, srcs in stats.skipped.items()]
    return f" (skipped: {', '.join(parts)})"


def _check_unique(doc: Document, seen: dict[str, str], opts: _Options, table: bool) -> None:
    """Ids key chunks and records back to their document, so two documents cannot share one."""
    first = seen.setdefault(doc.id, doc.source)
    if first == doc.source:
        return
    where = opts.field
    if table and opts.id_field:
        where = f"{opts.prefix}id_field"
        hint = "the id column must hold a different id on every row"
    elif table:
        hint = f"set {opts.prefix}id_field to a column of unique ids"
    else:
        hint = "a file's id is its path without the suffix: rename one of the two"
    raise SpecializeError(
        f"duplicate document id {_short(doc.id)} (first at {first}); {hint}",
        path=doc.source,
        field=where,
    )


def _corpus_files(path: Path, stats: CorpusStats, field: str) -> list[tuple[Path, str]]:
    """``(file, relative name)`` of each document file: the file itself, or a folder's files
    depth-first in name order (so ids and reading order never depend on the file system)."""
    if path.is_file():
        if path.suffix.lower() not in DOCUMENT_SUFFIXES:
            raise SpecializeError(
                f"unsupported document type '{path.suffix or '(none)'}' "
                f"(use {', '.join(DOCUMENT_SUFFIXES)}, or a folder of them)",
                path=path,
                field=field,
            )
        return [(path, path.name)]
    if path.is_dir():
        found: list[tuple[Path, str]] = []
        _walk(path, path, stats, found)
        return found
    what = "not a file or folder" if path.exists() else "no such file or folder"
    raise SpecializeError(what, path=path, field=field)


def _walk(folder: Path, root: Path, stats: CorpusStats, found: list[tuple[Path, str]]) -> None:
    """Collect ``folder``'s document files; count everything else under a reason."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as e:
        raise SpecializeError(f"cannot list folder ({e.strerror or e})", path=folder) from None
    for entry in entries:
        if entry.name.startswith("."):
            stats._skip("hidden", str(entry))  # .git, .DS_Store: never documents
        elif entry.is_dir():
            if entry.is_symlink():
                stats._skip("linked folder", str(entry))  # may loop back; link files instead
            else:
                _walk(entry, root, stats, found)
        elif entry.is_file() and entry.suffix.lower() in DOCUMENT_SUFFIXES:
            found.append((entry, entry.relative_to(root).as_posix()))
        else:
            stats._skip("unsupported type", str(entry))


def _file_documents(file: Path, rel: str, opts: _Options, stats: CorpusStats) -> Iterable[Document]:
    """The documents of one file. A bad file raises :class:`_BadFile` here, before any
    document is returned (table rows are then read lazily, so max_documents stops early)."""
    suffix = file.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        _check_table_file(file)
        return _table_documents(file, rel, opts, stats)
    text = _pdf_text(file) if suffix in PDF_SUFFIXES else _text_file(file)
    doc_id = rel[: -len(file.suffix)] if file.suffix else rel
    return [Document(id=doc_id, text=text, source=str(file), meta={})]


def _normalise(text: str) -> str:
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def _text_file(file: Path) -> str:
    """A ``.txt`` / ``.md`` file's text; empty, binary or non-UTF-8 files are bad files."""
    data = _read_bytes(file)
    if b"\x00" in data:
        raise _BadFile(
            "binary",
            "a binary file, not text (it has NUL bytes; UTF-16 text must be saved as UTF-8)",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise _BadFile(
            "not UTF-8",
            f"not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); save it as UTF-8",
        ) from None
    text = _normalise(text)
    if not text.strip():
        raise _BadFile("empty", "the file is empty" if not data else "the file has only whitespace")
    return text


def _read_bytes(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as e:
        raise _BadFile("unreadable", f"cannot read the file ({e.strerror or e})") from None


def _check_table_file(file: Path) -> None:
    """Classify an empty, binary or non-UTF-8 table file before its rows are parsed (the row
    readers would stop at it with an error, which ``on_bad_file: skip`` must turn into a
    count). Streams the file: tables can be larger than memory allows twice."""
    if file.suffix.lower() == ".parquet":
        _check_parquet(file)
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    has_text, lines, size = False, 1, 0
    try:
        with file.open("rb") as f:
            while block := f.read(1 << 20):
                if b"\x00" in block:
                    raise _BadFile("binary", "a binary file, not a text table (it has NUL bytes)")
                try:
                    text = decoder.decode(block)
                except UnicodeDecodeError as e:
                    # e.object: the bytes held back from the last block (never a newline) + block
                    line = lines + bytes(e.object).count(b"\n", 0, e.start)
                    raise _BadFile(
                        "not UTF-8",
                        f"not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line}); "
                        "save it as UTF-8",
                    ) from None
                has_text = has_text or bool(_normalise(text).strip())
                lines += block.count(b"\n")
                size += len(block)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise _BadFile("not UTF-8", "not UTF-8 text (it ends inside a character)") from None
    except OSError as e:
        raise _BadFile("unreadable", f"cannot read the file ({e.strerror or e})") from None
    if not has_text:
        raise _BadFile("empty", "the file is empty" if not size else "the file has only whitespace")


def _check_parquet(file: Path) -> None:
    import pyarrow.parquet as pq

    if not _read_size(file):
        raise _BadFile("empty", "the file is empty")
    try:
        pq.ParquetFile(file).close()
    except Exception as e:  # pyarrow raises OSError, ArrowInvalid, ... for a corrupt file
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise _BadFile("unreadable Parquet", f"unreadable Parquet file ({first})") from None


def _read_size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError as e:
        raise _BadFile("unreadable", f"cannot read the file ({e.strerror or e})") from None


def _table_documents(
    file: Path, rel: str, opts: _Options, stats: CorpusStats
) -> Iterator[Document]:
    """One document per row with text; rows with none are counted under "empty row"."""
    stem = rel[: -len(file.suffix)]
    for line, row in rows(file):
        missing = [f for f in opts.text_fields if f not in row]
        if missing:
            raise SpecializeError(
                f"no column {_short(missing[0])} (columns: {_names(row)}); set "
                f"{opts.prefix}text_fields",
                path=file,
                line=line,
                field=f"{opts.prefix}text_fields",
            )
        parts = (_text(row, f, (file, line)).strip() for f in opts.text_fields)
        text = _normalise("\n\n".join(p for p in parts if p))
        if not text:
            stats._skip("empty row", f"{file}:{line}")
            continue
        used = {*opts.text_fields, opts.id_field}
        yield Document(
            id=_row_id(row, f"{stem}-{line}", file, line, opts),
            text=text,
            source=f"{file}:{line}",
            meta={k: v for k, v in row.items() if k not in used},
        )


def _row_id(row: dict[str, Any], default: str, file: Path, line: int, opts: _Options) -> str:
    """The row's ``id_field`` value as text, or ``default`` without one (or when empty)."""
    if opts.id_field is None:
        return default
    if opts.id_field not in row:
        raise SpecializeError(
            f"no column {_short(opts.id_field)} (columns: {_names(row)}); set "
            f"{opts.prefix}id_field",
            path=file,
            line=line,
            field=f"{opts.prefix}id_field",
        )
    value = row[opts.id_field]
    if isinstance(value, dict | list):
        raise SpecializeError(
            "an id must be text or a number, not a list or object",
            path=file,
            line=line,
            field=opts.id_field,
        )
    text = "" if value is None else str(value).strip()
    return text or default


@contextmanager
def _quiet_pypdf() -> Iterator[None]:
    """Silence pypdf: it logs and warns about every oddity of a broken PDF, while what the user
    needs is one line per bad file (which :func:`_pdf_text` gives)."""
    logger = logging.getLogger("pypdf")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _pdf_text(file: Path) -> str:
    """A PDF's text layer, pages joined with a blank line. Any failure of pypdf (a corrupt,
    truncated or encrypted file; pypdf raises many exception types) is an "unreadable PDF";
    pages with no text at all (a scan) are "no text layer"."""
    from pypdf import PdfReader

    if not _read_size(file):
        raise _BadFile("empty", "the file is empty")
    try:
        with _quiet_pypdf():
            reader = PdfReader(file)
            if reader.is_encrypted and not reader.decrypt(""):
                raise _BadFile("unreadable PDF", "the PDF is encrypted with a password")
            pages = [page.extract_text() or "" for page in reader.pages]
    except _BadFile:
        raise
    except Exception as e:  # a broken PDF must never end in a traceback
        first = (str(e).splitlines() or [""])[0][:200] or type(e).__name__
        raise _BadFile("unreadable PDF", f"unreadable PDF ({first})") from None
    text = _normalise("\n\n".join(p for p in pages if p.strip()))
    if not text.strip():
        raise _BadFile(
            "no text layer",
            f"the PDF has no text layer ({len(pages)} page{'s' * (len(pages) != 1)} without "
            "text: a scan?); run OCR on it first (e.g. ocrmypdf)",
        )
    return text
