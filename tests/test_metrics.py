"""EM / F1 against values computed by hand with the official SQuAD v1.1 rules."""

from __future__ import annotations

import math

import pytest

from specialize.evaluate.compare import paired_bootstrap
from specialize.evaluate.metrics import (
    best_over,
    exact_match,
    normalize_answer,
    perplexity,
    token_f1,
)


def test_normalisation_drops_case_punctuation_articles():
    assert normalize_answer("The  Sun-Earth L2 point!") == "sunearth l2 point"
    assert normalize_answer("An orbit, a day.") == "orbit day"


@pytest.mark.parametrize(
    ("pred", "ref", "em", "f1"),
    [
        ("the Hubble telescope", "Hubble Telescope.", 1.0, 1.0),
        ("Hubble", "Hubble Space Telescope", 0.0, 0.5),  # P=1, R=1/3 -> 2/(1+3)=0.5
        ("about 35,786 km", "35,786 km", 0.0, 0.8),  # P=2/3, R=1 -> 0.8
        ("", "Plutonium-238", 0.0, 0.0),
        ("a the an", "the", 1.0, 0.0),  # both normalise to "" -> EM 1, F1 0 (no tokens)
    ],
)
def test_em_f1_hand_checked(pred, ref, em, f1):
    assert exact_match(pred, ref) == em
    assert token_f1(pred, ref) == pytest.approx(f1)


def test_max_over_references():
    refs = ["X band", "the X-band"]
    assert best_over(exact_match, "X-band", refs) == 1.0
    assert best_over(token_f1, "X band downlink", refs) == pytest.approx(0.8)


def test_perplexity_token_weighted():
    assert perplexity(2 * math.log(4), 2) == pytest.approx(4.0)
    assert perplexity(0.0, 0) == math.inf


def test_paired_bootstrap_ci_contains_delta_and_is_paired():
    a = [0.0, 0.5, 0.2, 0.1] * 10
    b = [x + 0.3 for x in a]  # constant shift: a paired CI collapses onto it
    res = paired_bootstrap(a, b, samples=500)
    assert res["delta"] == pytest.approx(0.3)
    assert res["ci_low"] == pytest.approx(0.3) and res["ci_high"] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_bootstrap_transform_gives_perplexity_delta():
    import numpy as np

    a, b = [2.0, 2.2, 1.8, 2.0], [1.0, 1.1, 0.9, 1.0]
    res = paired_bootstrap(a, b, weights=[1, 1, 1, 1], samples=300, transform=np.exp)
    assert res["delta"] == pytest.approx(math.exp(1.0) - math.exp(2.0))
    assert res["ci_low"] <= res["delta"] <= res["ci_high"] < 0
