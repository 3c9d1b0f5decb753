"""Our EM / F1 must equal the official SQuAD v1.1 evaluation script, to the last bit.

Two kinds of check: tricky cases whose expected values are worked out by hand (as fractions,
with the normalised token lists in the comments), and a small faithful copy of the official
v1.1 functions run side by side with ours on generated strings. Published SQuAD numbers are
only comparable with ours if both agree on every quirk (an answer that normalises to nothing,
curly quotes that are not ASCII punctuation, repeated tokens).
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter

import pytest

from specialize.evaluate.metrics import best_over, exact_match, normalize_answer, token_f1

# --- the official SQuAD v1.1 evaluate-v1.1.py functions, re-typed from the public script ------


def official_normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def official_exact_match_score(prediction, ground_truth):
    return official_normalize_answer(prediction) == official_normalize_answer(ground_truth)


def official_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def f1_of(p: float, r: float) -> float:
    return 2 * p * r / (p + r)


# --- hand-checked tricky cases -----------------------------------------------------------------

CASES = [
    # articles: "the apollo 11" -> ["apollo", "11"] on both sides
    ("the Apollo 11", ["Apollo 11"], 1.0, 1.0),
    # punctuation is deleted, not replaced by a space: "U.S." -> "us"
    ("U.S.", ["US"], 1.0, 1.0),
    ("U.S. Army", ["the US army"], 1.0, 1.0),
    # ... so "U. S." -> ["u", "s"] shares no token with ["us"]
    ("U. S.", ["US"], 0.0, 0.0),
    # hyphen deleted: ["sunearth"] vs ["sun", "earth"]: nothing in common
    ("Sun-Earth", ["Sun Earth"], 0.0, 0.0),
    # comma deleted inside the number: ["35786", "km"] vs ["35786", "kilometres"]; P = R = 1/2
    ("35,786 km", ["35786 kilometres"], 0.0, f1_of(1 / 2, 1 / 2)),
    # several references, max over them: vs "Armstrong" P=1/3, R=1 -> 1/2;
    # vs "Neil Alden Armstrong": common {neil, armstrong}, P=2/3, R=2/3 -> 2/3; max 2/3
    ("Neil Armstrong walked", ["Armstrong", "Neil Alden Armstrong"], 0.0, f1_of(2 / 3, 2 / 3)),
    # EM and F1 maxima may come from different references: EM 1 from the second
    ("Apollo 11 mission", ["Apollo 11", "the Apollo 11 mission!"], 1.0, 1.0),
    # vs "Apollo 11": P = 2/3, R = 1 -> 0.8 (and no other reference to help)
    ("Apollo 11 mission", ["Apollo 11", "Gemini"], 0.0, f1_of(2 / 3, 1)),
    # empty prediction: [] vs ["apollo", "11"]; EM 0 and F1 0 (num_same = 0)
    ("", ["Apollo 11"], 0.0, 0.0),
    # prediction of only articles / punctuation normalises to "" -> no match with a real answer
    ("The.", ["Apollo 11"], 0.0, 0.0),
    ("a, an, the...", ["moon"], 0.0, 0.0),
    # ... but equals a reference that also normalises to "": EM 1 while F1 stays 0 (official
    # quirk: F1 returns 0 whenever there is no common token, even for two empty answers)
    ("The.", ["a"], 1.0, 0.0),
    # case
    ("APOLLO Eleven", ["apollo eleven"], 1.0, 1.0),
    # extra whitespace of every kind collapses
    ("  Apollo\t 11\n", ["Apollo   11"], 1.0, 1.0),
    # articles only as whole words: "theater", "anthem" keep their letters
    ("the theater anthem", ["Theater anthem"], 1.0, 1.0),
    # repeated tokens, bag of words: ["moon", "moon", "moon"] vs ["moon", "landing", "moon"];
    # Counter intersection {moon: 2} -> P = 2/3, R = 2/3
    ("the the moon moon moon", ["moon landing moon"], 0.0, f1_of(2 / 3, 2 / 3)),
    # repeated token in the reference only: ["moon"] vs ["moon", "moon"]; common 1 -> P=1, R=1/2
    ("moon", ["moon moon"], 0.0, f1_of(1, 1 / 2)),
    # curly quotes are not in string.punctuation: ["“apollo”"] vs ["apollo"] -> 0 overlap
    ("\u201capollo\u201d", ["apollo"], 0.0, 0.0),
    # apostrophe is punctuation: "moon's" -> "moons"; ["moons", "orbit"] vs ["moons", "orbit"]
    ("the Moon's orbit", ["moons orbit"], 1.0, 1.0),
]


@pytest.mark.parametrize(("pred", "refs", "em", "f1"), CASES)
def test_hand_checked_cases(pred: str, refs: list[str], em: float, f1: float) -> None:
    assert best_over(exact_match, pred, refs) == em
    assert best_over(token_f1, pred, refs) == pytest.approx(f1, abs=1e-12)
    # and the official script agrees with the hand numbers (checks the reference copy too)
    assert (
        float(official_metric_max_over_ground_truths(official_exact_match_score, pred, refs)) == em
    )
    assert official_metric_max_over_ground_truths(official_f1_score, pred, refs) == pytest.approx(
        f1, abs=1e-12
    )


def test_hand_fractions_are_what_the_comments_say() -> None:
    assert f1_of(2 / 3, 1) == pytest.approx(0.8)
    assert f1_of(2 / 3, 2 / 3) == pytest.approx(2 / 3)
    assert f1_of(1, 1 / 2) == pytest.approx(2 / 3)


# --- generated cases, side by side with the official functions ---------------------------------

POOL = [
    "the", "The", "a", "An", "an", "THE", "Apollo", "apollo", "11", "U.S.", "US", "u.s", "moon",
    "Moon,", "landing!", "(1969)", "moon's", "-", "...", "\u201cquoted\u201d", "a.m.", "theater",
    "35,786", "km", "Sun-Earth", "sun", "earth", "  ", "\t", "?", "Armstrong", "neil", "NEIL",
]  # fmt: skip


def _phrase(rng: random.Random) -> str:
    n = rng.randint(0, 6)
    return "".join(rng.choice(POOL) + rng.choice([" ", " ", "", "  "]) for _ in range(n))


def _generated(n: int = 30) -> list[tuple[str, list[str]]]:
    rng = random.Random(1234)
    cases = []
    for _ in range(n):
        pred = _phrase(rng)
        refs = [_phrase(rng) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.3:  # make some near-hits so EM = 1 and high F1 are exercised
            refs.append(rng.choice(["The ", "", " "]) + pred.upper() + rng.choice([".", "", "!"]))
        cases.append((pred, refs))
    return cases


@pytest.mark.parametrize(("pred", "refs"), _generated())
def test_equals_official_script(pred: str, refs: list[str]) -> None:
    for ref in refs:
        assert normalize_answer(ref) == official_normalize_answer(ref)
        assert exact_match(pred, ref) == float(official_exact_match_score(pred, ref))
        assert token_f1(pred, ref) == official_f1_score(pred, ref)  # exact, not approx
    em = official_metric_max_over_ground_truths(official_exact_match_score, pred, refs)
    f1 = official_metric_max_over_ground_truths(official_f1_score, pred, refs)
    assert best_over(exact_match, pred, refs) == float(em)
    assert best_over(token_f1, pred, refs) == f1


def test_generated_cases_are_not_trivial() -> None:
    """The generator must produce EM hits, partial F1 and zeros, or the comparison is weak."""
    f1s = [best_over(token_f1, p, r) for p, r in _generated()]
    ems = [best_over(exact_match, p, r) for p, r in _generated()]
    assert any(e == 1.0 for e in ems)
    assert any(0.0 < f < 1.0 for f in f1s)
    assert any(f == 0.0 for f in f1s)
