"""The synthetic-data quality checks: words, support, refusals, copies, near-duplicates."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specialize.data.filters import (
    Deduper,
    content_words,
    is_copy,
    is_refusal,
    mentions,
    support,
)

PASSAGE = (
    "The Rhine rises in the Swiss Alps and flows north through Basel, Strasbourg and "
    "Cologne before reaching the North Sea near Rotterdam. It is 1,230 kilometres long."
)


def test_content_words_drop_stop_words_and_punctuation():
    assert content_words("The Rhine's source is in the Alps, isn't it?") == [
        "rhines",
        "source",
        "alps",
    ]
    assert content_words("It is 3 km.") == ["3", "km"]
    assert content_words("") == []


def test_support_is_the_share_of_content_words_in_the_passage():
    assert support("The Rhine flows through Basel", PASSAGE) == 1.0
    assert support("rivers of Europe", "a river in europe") == 1.0  # plural fold
    assert support("Rhine Danube", PASSAGE) == 0.5
    assert support("Paris and Madrid", PASSAGE) == 0.0
    assert support("It is.", PASSAGE) == 1.0  # nothing to check: vacuous


def test_mentions_needs_words_of_each_passage_own():
    a = "The Rhine flows through Basel and Cologne."
    b = "The Danube flows through Vienna and Budapest."
    assert mentions("The Rhine passes Basel while the Danube passes Vienna.", a, b)
    assert not mentions("Both rivers flow.", a, b)  # only shared words
    assert not mentions("The Rhine passes Basel.", a, b)


@pytest.mark.parametrize(
    "text",
    [
        "As an AI language model, I cannot browse the web.",
        "I'm sorry, but I can't help with that.",
        "I am unable to answer this.",
        "Here is a summary of the passage: the Rhine is long.",
        "Sure, here are the key points.",
        "Certainly! The passage says...",
        "I cannot determine that from the text.",
        "I\u2019m sorry, the passage does not say.",
    ],
)
def test_refusals_and_boilerplate(text):
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "The Rhine is 1,230 kilometres long.",
        "The captain said that here is where the ship sank.",
        "Basel lies on the Rhine; surely the largest port is Rotterdam.",
    ],
)
def test_answers_are_not_refusals(text):
    assert not is_refusal(text)


def test_is_copy_by_word_shingles():
    assert is_copy(PASSAGE, PASSAGE)
    assert is_copy(PASSAGE.upper() + " ", PASSAGE)  # normalised first
    rephrased = (
        "Starting in the Alps of Switzerland, the river runs northwards past Basel, "
        "Strasbourg and Cologne and ends in the North Sea by Rotterdam, 1,230 km in all."
    )
    assert not is_copy(rephrased, PASSAGE)
    assert is_copy(rephrased, PASSAGE, threshold=0.0)


def _words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(500)]
    return [rng.choice(vocab) for _ in range(n)]


def test_deduper_exact_and_near_duplicates():
    d = Deduper(0.8)
    base = _words(80, 1)
    assert d.add(" ".join(base)) is None
    assert d.add(" ".join(base).upper() + "!") == "exact_duplicate"
    near = list(base)
    near[40] = "changed"  # one word of 80: Jaccard of 3-shingles about 0.93
    assert d.add(" ".join(near)) == "near_duplicate"
    assert d.add(" ".join(_words(80, 2))) is None
    assert d.add(" ".join(base[:40])) is None  # half the text: Jaccard about 0.5
    assert len(d) == 3


def test_deduper_threshold_and_determinism():
    texts = [" ".join(_words(60, s)) for s in range(30)]
    texts += [t.replace(t.split()[30], "zz", 1) for t in texts[:10]]
    texts += texts[:5]
    first = [Deduper(0.85).add(t) for t in texts]  # fresh deduper per text: all new
    assert first == [None] * len(texts)
    d1, d2 = Deduper(0.85), Deduper(0.85)
    out1 = [d1.add(t) for t in texts]
    out2 = [d2.add(t) for t in texts]
    assert out1 == out2
    assert out1[:30] == [None] * 30
    assert out1[30:40] == ["near_duplicate"] * 10
    assert out1[40:] == ["exact_duplicate"] * 5
    strict = Deduper(0.99)
    assert [strict.add(t) for t in texts[:40]].count("near_duplicate") == 0


def test_deduper_short_and_empty_texts():
    d = Deduper()
    assert d.add("") is None
    assert d.add("  ") == "exact_duplicate"
    assert d.add("yes") is None
    assert d.add("no") is None
    with pytest.raises(ValueError):
        Deduper(0.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=40), min_size=1, max_size=12))
def test_deduper_property_repeats_are_exact_duplicates(texts):
    d = Deduper(0.9, num_perm=64)
    results = [d.add(t) for t in texts]
    assert results[0] is None
    # the same texts again are never kept, and a second deduper agrees exactly
    assert all(d.add(t) is not None for t in texts)
    d2 = Deduper(0.9, num_perm=64)
    assert [d2.add(t) for t in texts] == results
