"""Split documents into overlapping chunks that point back into their document's text.

A chunk is the passage a teacher model turns into training records, so it must be
self-contained (whole sentences where possible), bounded (it fits the teacher's prompt), and
traceable: ``chunk.text == document.text[chunk.start:chunk.end]``, always, so every record can
be shown next to the exact passage it came from.

The default reproduces the seed: windows of 500 words, consecutive windows sharing 100 words.
Sizes can instead count tokens of the model's tokenizer (``unit="tokens"``), which bounds the
prompt exactly. With ``snap=True`` a window's end moves back, within its last quarter, to the
latest paragraph break (blank line), else sentence end, else line break, and the next window
starts at such a boundary near ``end - overlap``, so chunks rarely cut a sentence.

Guarantees (tests/test_chunk.py checks them on random texts with hypothesis): no chunk holds
more than ``size`` units; no chunk is empty or starts/ends with whitespace; consecutive chunks
leave no gap, so every non-space character of the document is in some chunk; a document of at
most ``size`` units is one chunk; and the last chunk is not a sliver: when the last window would
hold fewer than ``size / 4`` units, the last two windows split their units evenly instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

from specialize.data.documents import Document
from specialize.errors import SpecializeError

Unit = Literal["words", "tokens"]
Span = tuple[int, int]

FIELD = "synth.chunk"
_WORD = re.compile(r"\S+")
_SENTENCE_END = ".!?"
_CLOSERS = "\"')]}\u201d\u2019\u00bb"  # may follow a sentence end: ." .) .' .» .”
_SCAN = 64  # characters of whitespace examined on each side of a boundary

# How good a place to cut a boundary is, best first.
_PARAGRAPH, _SENTENCE, _LINE, _SPACE, _NONE = 4, 3, 2, 1, 0


@dataclass(frozen=True)
class Chunk:
    """Window ``index`` (0-based) of document ``doc_id``: ``text == document.text[start:end]``."""

    doc_id: str
    index: int
    start: int
    end: int
    text: str

    @property
    def id(self) -> str:
        """Unique in a corpus (document ids are): ``"<doc_id>#<index>"``."""
        return f"{self.doc_id}#{self.index}"


def chunk_text(
    text: str,
    doc_id: str,
    *,
    size: int = 500,
    overlap: int = 100,
    unit: Unit = "words",
    tokenizer: Any = None,
    snap: bool = True,
) -> list[Chunk]:
    """The chunks of one text (none if it is only whitespace); see the module docstring.

    ``unit="tokens"`` needs a fast Hugging Face ``tokenizer`` (one with offset mappings).
    """
    _check(size, overlap, unit, tokenizer)
    spans = _units(text, unit, tokenizer)
    if not spans:
        return []
    windows = _windows(_Boundaries(text, spans) if snap else None, len(spans), size, overlap)
    return _chunks(text, doc_id, spans, windows)


def chunk_documents(
    docs: Sequence[Document],
    *,
    size: int = 500,
    overlap: int = 100,
    unit: Unit = "words",
    tokenizer: Any = None,
    snap: bool = True,
) -> list[Chunk]:
    """The chunks of every document, in document order (see :func:`chunk_text`)."""
    _check(size, overlap, unit, tokenizer)
    chunks: list[Chunk] = []
    for doc in docs:
        chunks += chunk_text(
            doc.text,
            doc.id,
            size=size,
            overlap=overlap,
            unit=unit,
            tokenizer=tokenizer,
            snap=snap,
        )
    return chunks


def _check(size: int, overlap: int, unit: str, tokenizer: Any) -> None:
    """The config checks these too; a caller building chunks directly gets the same errors."""
    if size <= 0:
        raise SpecializeError(f"chunk size must be positive, got {size}", field=f"{FIELD}.size")
    if overlap < 0:
        raise SpecializeError(
            f"chunk overlap must be 0 or more, got {overlap}", field=f"{FIELD}.overlap"
        )
    if overlap >= size:
        raise SpecializeError(
            f"chunk overlap ({overlap}) must be smaller than the chunk size ({size})",
            field=f"{FIELD}.overlap",
        )
    if unit not in ("words", "tokens"):
        raise SpecializeError(
            f"unit must be 'words' or 'tokens', got '{unit}'", field=f"{FIELD}.unit"
        )
    if unit == "tokens" and not getattr(tokenizer, "is_fast", False):
        what = "no tokenizer was given" if tokenizer is None else "this tokenizer is a slow one"
        raise SpecializeError(
            f"counting tokens needs a fast tokenizer (for character offsets); {what}. "
            "Use unit: words",
            field=f"{FIELD}.unit",
        )


def _units(text: str, unit: Unit, tokenizer: Any) -> list[Span]:
    """Character spans of the text's words (runs of non-space) or tokens, in order.

    Tokens that are only whitespace (or map to no characters) at either end are dropped, so
    neither the first nor the last window can be all whitespace.
    """
    if unit == "words":
        return [m.span() for m in _WORD.finditer(text)]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    spans = [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    lo, hi = 0, len(spans)
    while lo < hi and not text[spans[lo][0] : spans[lo][1]].strip():
        lo += 1
    while hi > lo and not text[spans[hi - 1][0] : spans[hi - 1][1]].strip():
        hi -= 1
    return spans[lo:hi]


class _Boundaries:
    """How good a cut is between unit ``i - 1`` and unit ``i``, judged from the characters
    around where unit ``i`` starts (words: the space before it; tokens often begin with it)."""

    def __init__(self, text: str, spans: list[Span]) -> None:
        self.text = text
        self.spans = spans

    def strength(self, i: int) -> int:
        text, j = self.text, self.spans[i][0]
        left, right = text[max(0, j - _SCAN) : j], text[j : j + _SCAN]
        lo, hi = j - (len(left) - len(left.rstrip())), j + (len(right) - len(right.lstrip()))
        if lo == hi:
            return _NONE  # inside a word (a token boundary)
        gap = text[lo:hi]
        if gap.count("\n") >= 2:
            return _PARAGRAPH
        before = text[max(0, lo - 3) : lo].rstrip(_CLOSERS)
        # "e.g. the": a period before a lower-case word is rarely a sentence end.
        if before and before[-1] in _SENTENCE_END and not text[hi : hi + 1].islower():
            return _SENTENCE
        return _LINE if "\n" in gap else _SPACE

    def snap_end(self, a: int, b: int) -> int:
        """The best cut in the last quarter of window ``[a, b)`` (the latest of the best)."""
        lo = max(a + 1, b - (b - a) // 4)
        best, at = _NONE, b
        for i in range(b, lo - 1, -1):
            s = self.strength(i)
            if s > best:
                best, at = s, i
                if s == _PARAGRAPH:
                    break
        return at

    def snap_start(self, target: int, lo: int, hi: int, overlap: int) -> int:
        """The best cut in ``[lo, hi]`` near ``target``: up to half the overlap earlier (more
        shared context is harmless) or a quarter later; the nearest of the best, the earlier
        on a tie."""
        first, last = max(lo, target - overlap // 2), min(hi, target + overlap // 4)
        best, at = _NONE, target
        for i in sorted(range(first, last + 1), key=lambda i: (abs(i - target), i)):
            s = self.strength(i)
            if s > best:
                best, at = s, i
                if s == _PARAGRAPH:
                    break
        return at


def _windows(bounds: _Boundaries | None, n: int, size: int, overlap: int) -> list[Span]:
    """Unit ranges ``[a, b)`` of the chunks: at most ``size`` units each, each starting at or
    before the previous one's end, the first at 0 and the last ending at ``n``."""
    out: list[Span] = []
    a = 0
    while n - a > size:
        b = a + size
        if n - (b - overlap) < size / 4:
            # The next window would be the last and a sliver: split the rest evenly in two.
            b = a + -(-(n - a + overlap) // 2)
        if bounds is not None:
            b = bounds.snap_end(a, b)
        out.append((a, b))
        target = max(a + 1, b - overlap)
        a = target if bounds is None else bounds.snap_start(target, a + 1, b, overlap)
    out.append((a, n))
    return out


def _chunks(text: str, doc_id: str, spans: list[Span], windows: list[Span]) -> list[Chunk]:
    """Chunks from unit windows. The first chunk starts at 0, the last ends at ``len(text)``,
    and a chunk never starts after the previous one ended, so characters between units (or
    missed by a tokenizer) are never lost; then whitespace is trimmed off both ends."""
    ends = list(accumulate((e for _, e in spans), max))  # tokenizers' offsets may not be monotone
    out: list[Chunk] = []
    prev_end = 0
    for k, (a, b) in enumerate(windows):
        start = 0 if k == 0 else min(spans[a][0], prev_end)
        end = len(text) if k == len(windows) - 1 else ends[b - 1]
        prev_end = end
        piece = text[start:end]
        s = start + len(piece) - len(piece.lstrip())
        e = start + len(piece.rstrip())
        if s < e:
            out.append(Chunk(doc_id, len(out), s, e, text[s:e]))
    return out
