"""Chunking: exact windows by hand, snapping to sentence and paragraph ends, tokens, and the
guarantees (provenance, coverage, size bound) on random texts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specialize.data.chunk import Chunk, chunk_documents, chunk_text
from specialize.data.documents import Document
from specialize.errors import SpecializeError


def words(n: int, sentence: int = 0) -> str:
    """``n`` words w0 w1 ...; with ``sentence``, every sentence-th word ends a sentence and the
    next starts with a capital."""
    out = []
    for i in range(n):
        w = f"w{i}"
        if sentence and i % sentence == 0:
            w = w.upper()
        if sentence and i % sentence == sentence - 1:
            w += "."
        out.append(w)
    return " ".join(out)


def check_invariants(text: str, chunks: list[Chunk], size: int) -> None:
    """Provenance, no whitespace at the ends, the size bound, and coverage."""
    covered = set()
    for k, c in enumerate(chunks):
        assert c.index == k
        assert c.text == text[c.start : c.end]
        assert c.text and c.text == c.text.strip()
        assert len(c.text.split()) <= size
        covered.update(range(c.start, c.end))
    assert {i for i, ch in enumerate(text) if not ch.isspace()} <= covered
    for prev, c in zip(chunks, chunks[1:], strict=False):
        assert prev.start < c.start and prev.end < c.end  # progress, no chunk inside another


def test_exact_windows_without_snapping():
    text = words(1200)
    chunks = chunk_text(text, "doc", snap=False)  # the seed: 500 words, 100 shared
    assert [len(c.text.split()) for c in chunks] == [500, 500, 400]
    assert [c.text.split()[0] for c in chunks] == ["w0", "w400", "w800"]
    assert [c.text.split()[-1] for c in chunks] == ["w499", "w899", "w1199"]
    assert [c.id for c in chunks] == ["doc#0", "doc#1", "doc#2"]
    check_invariants(text, chunks, 500)
    # No overlap: windows meet exactly.
    chunks = chunk_text(text, "doc", size=300, overlap=0, snap=False)
    assert [c.text.split()[0] for c in chunks] == ["w0", "w300", "w600", "w900"]


def test_a_sliver_of_a_last_window_is_avoided_by_splitting_the_rest_evenly():
    text = words(910)
    # Plain windows would end with [800, 910): 110 words, 100 of them already in [400, 900).
    chunks = chunk_text(text, "d", snap=False)
    assert [len(c.text.split()) for c in chunks] == [500, 305, 305]
    assert [c.text.split()[0] for c in chunks] == ["w0", "w400", "w605"]
    check_invariants(text, chunks, 500)
    chunks = chunk_text(words(510), "d", snap=False)
    assert [len(c.text.split()) for c in chunks] == [305, 305]


def test_short_blank_and_padded_documents():
    assert [c.text for c in chunk_text("  One short doc.  \n", "d")] == ["One short doc."]
    (c,) = chunk_text("\n\n  One short doc.  \n", "d")
    assert (c.start, c.end) == (4, 18)
    assert chunk_text(words(500), "d", snap=False)[0].text == words(500)
    assert chunk_text(" \n\t ", "d") == []
    assert chunk_text("", "d") == []


def test_snapping_ends_chunks_at_sentence_ends_and_starts_them_at_sentence_starts():
    text = words(200, sentence=10)
    chunks = chunk_text(text, "d", size=48, overlap=10)
    # Window [0, 48): the last sentence end within its last quarter is after word 39.
    assert chunks[0].text.split()[-1] == "w39."
    assert chunks[1].text.split()[0] == "W30"  # a sentence start near 40 - 10
    for c in chunks[:-1]:
        assert c.text.endswith(".")
    for c in chunks:
        assert c.text[0] == "W"
    check_invariants(text, chunks, 48)


def test_snapping_prefers_a_paragraph_break_and_cuts_at_words_when_no_boundary_is_near():
    ws = words(100).split()
    ws[37] += ".\n\n"  # a paragraph ends after word 37 ...
    ws[44] += "."  # ... and a later sentence after word 44; both in the last quarter of 48
    ws[24] += ".\n\n"  # a paragraph starts at word 25, near 38 - 10 (a sentence at 28: less)
    ws[27] += "."
    text = " ".join(ws).replace("\n\n ", "\n\n")
    chunks = chunk_text(text, "d", size=48, overlap=10)
    assert chunks[0].text.split()[-1] == "w37."
    assert chunks[1].text.split()[0] == "w25"
    check_invariants(text, chunks, 48)
    # No boundary at all: the same windows as without snapping.
    plain = words(300)
    assert chunk_text(plain, "d", size=48, overlap=10) == chunk_text(
        plain, "d", size=48, overlap=10, snap=False
    )


def test_abbreviation_before_a_lower_case_word_is_not_a_sentence_end():
    ws = words(60).split()
    ws[45] = "e.g."  # in the last quarter, but "e.g. w46" does not end a sentence
    chunks = chunk_text(" ".join(ws), "d", size=48, overlap=8)
    assert chunks[0].text.split()[-1] == "w47"


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"size": 100, "overlap": 100}, "synth.chunk.overlap"),
        ({"size": 100, "overlap": 150}, "synth.chunk.overlap"),
        ({"size": 0, "overlap": 0}, "synth.chunk.size"),
        ({"size": 10, "overlap": -1}, "synth.chunk.overlap"),
        ({"unit": "tokens"}, "synth.chunk.unit"),
        ({"unit": "lines"}, "synth.chunk.unit"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, field):
    with pytest.raises(SpecializeError) as e:
        chunk_text("some text", "d", **kwargs)
    assert e.value.field == field and "\n" not in str(e.value)
    with pytest.raises(SpecializeError):
        chunk_documents([Document("d", "x", "x.txt", {})], **kwargs)


def test_overlap_error_message():
    with pytest.raises(SpecializeError) as e:
        chunk_text("x", "d", size=100, overlap=100)
    assert str(e.value) == (
        "field 'synth.chunk.overlap': chunk overlap (100) must be smaller than the chunk size (100)"
    )


def test_token_unit_counts_tokens_of_a_fast_tokenizer(chatml_tok):
    text = (
        "The rocket equation links delta-v, exhaust velocity and mass ratio. "
        "Reaction wheels and star trackers control and measure attitude.\n\n"
    ) * 12
    offsets = chatml_tok(text, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    size = 80  # about two sentences of this tiny tokenizer
    chunks = chunk_text(text, "doc", size=size, overlap=12, unit="tokens", tokenizer=chatml_tok)
    assert len(chunks) > 5
    check_invariants(text, chunks, size)
    for c in chunks:
        inside = [(s, e) for s, e in offsets if s < c.end and e > c.start]
        assert len(inside) <= size
    assert all(c.text.endswith("attitude.") for c in chunks)  # snapped to paragraph ends
    # Unsnapped windows are tokens [68k, 68k + 80), their spans trimmed of whitespace.
    plain = chunk_text(
        text, "d", size=size, overlap=12, unit="tokens", tokenizer=chatml_tok, snap=False
    )
    for k, c in enumerate(plain[:-2]):
        start, end = offsets[68 * k][0], offsets[68 * k + size - 1][1]
        piece = text[start:end]
        assert c.text == piece.strip()
        assert c.start == start + len(piece) - len(piece.lstrip())


def test_chunk_documents_keeps_document_order_and_ids():
    docs = [Document("a", words(120), "a.txt", {}), Document("b/c", "Short.", "b/c.md", {})]
    chunks = chunk_documents(docs, size=50, overlap=10, snap=False)
    assert [c.id for c in chunks] == ["a#0", "a#1", "a#2", "b/c#0"]
    assert chunks[-1].text == "Short."


TEXTS = st.text(alphabet="ab .!?\n", max_size=400)


@settings(max_examples=300, deadline=None)
@given(
    text=TEXTS,
    size=st.integers(1, 40),
    overlap_share=st.floats(0, 0.99),
    snap=st.booleans(),
)
def test_any_text_gives_bounded_chunks_that_cover_it_and_point_into_it(
    text, size, overlap_share, snap
):
    overlap = min(size - 1, int(size * overlap_share))
    chunks = chunk_text(text, "d", size=size, overlap=overlap, snap=snap)
    check_invariants(text, chunks, size)
    n = len(text.split())
    assert bool(chunks) == bool(n)
    if 0 < n <= size:
        assert len(chunks) == 1
    if not snap and chunks:
        # Never a sliver at the end: at least a quarter window (or the whole text).
        assert len(chunks[-1].text.split()) >= min(n, size / 4)
