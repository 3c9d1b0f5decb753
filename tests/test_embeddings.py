"""Embedding-quality evaluation: mean pooling on a tiny model, similarity, retrieval, plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specialize.errors import SpecializeError
from specialize.evaluate.embeddings import (
    compare_embeddings,
    evaluate_embeddings,
    mean_pooled_embeddings,
    retrieval_recall,
    similarity_stats,
)
from specialize.models.load import load_model, load_tokenizer, resolve
from specialize.report.plots import plot_similarity

TEXTS = [
    "A geostationary orbit is about 35,786 km above the equator.",
    "Low Earth orbit.",
    "The rocket equation links delta-v, exhaust velocity and mass ratio.",
    "Reaction wheels control attitude.",
    "The James Webb Space Telescope orbits the Sun-Earth L2 point.",
    "Star trackers",
    "What is the answer?",
]

ITEMS = [
    ("a1", "Geostationary orbit", "A geostationary orbit is about 35,786 km above the equator."),
    ("a2", "Low Earth orbit", "Low Earth orbit spans roughly 160 to 2,000 km in altitude."),
    ("a3", "The rocket equation", "The rocket equation links delta-v and mass ratio."),
    ("a4", "Attitude control", "Reaction wheels and star trackers control and measure attitude."),
    ("a5", "Webb at L2", "The James Webb Space Telescope orbits the Sun-Earth L2 point."),
]


@pytest.fixture(scope="module")
def llama(tiny_llama):
    source = resolve(str(tiny_llama))
    return load_model(source), load_tokenizer(source)


def embed(model, tok, texts, **kw):
    return mean_pooled_embeddings(model, tok, texts, progress=False, **kw)


def reference_embedding(model, ids: list[int], skip_first: bool = False) -> torch.Tensor:
    """One unpadded text through the model; mean of the last hidden layer, normalised."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    states = out.hidden_states[-1][0].float()
    if skip_first:
        states = states[1:]
    return torch.nn.functional.normalize(states.mean(0), dim=-1)


# --- mean pooling on a real (tiny, random) model -------------------------------------------


def test_embeddings_are_unit_norm_float32(llama):
    model, tok = llama
    emb = embed(model, tok, TEXTS)
    assert emb.shape == (len(TEXTS), model.config.hidden_size)
    assert emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)


def test_embedding_is_the_mean_of_the_last_hidden_layer(llama):
    model, tok = llama
    emb = embed(model, tok, TEXTS[:3], batch_size=3)
    for i, text in enumerate(TEXTS[:3]):
        ref = reference_embedding(model, tok(text)["input_ids"])
        assert torch.allclose(emb[i], ref, atol=1e-5)


def test_independent_of_batch_size(llama):
    model, tok = llama
    one = embed(model, tok, TEXTS, batch_size=1)
    for bs in (2, 3, 16):
        assert torch.allclose(embed(model, tok, TEXTS, batch_size=bs), one, atol=1e-5)


def test_independent_of_input_order(llama):
    model, tok = llama
    emb = embed(model, tok, TEXTS, batch_size=3)
    perm = [4, 0, 6, 2, 5, 1, 3]
    shuffled = embed(model, tok, [TEXTS[i] for i in perm], batch_size=3)
    assert torch.allclose(shuffled, emb[perm], atol=1e-5)


def test_padding_does_not_change_an_embedding(llama):
    model, tok = llama
    short, long = "Star trackers", TEXTS[4] * 3
    alone = embed(model, tok, [short])
    padded = embed(model, tok, [long, short], batch_size=2)  # short is padded to long's length
    assert len(tok(long)["input_ids"]) > 2 * len(tok(short)["input_ids"])
    assert torch.allclose(padded[1], alone[0], atol=1e-5)


def test_truncates_to_max_len_tokens(llama):
    model, tok = llama
    text = TEXTS[0]
    ids = tok(text)["input_ids"]
    assert len(ids) > 6
    emb = embed(model, tok, [text, TEXTS[1]], max_len=6)
    assert torch.allclose(emb[0], reference_embedding(model, ids[:6]), atol=1e-5)


def test_tokenizer_added_bos_is_fed_but_not_averaged(tiny_llama):
    """A BOS token is identical in every text; averaging it in would make all texts alike."""
    from tokenizers.processors import TemplateProcessing

    source = resolve(str(tiny_llama))
    model, tok = load_model(source), load_tokenizer(source)
    bos = "<|im_start|>"
    bos_id = tok.convert_tokens_to_ids(bos)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, bos_id)]
    )
    text = TEXTS[2]
    ids = tok(text)["input_ids"]
    assert ids[0] == bos_id
    emb = embed(model, tok, [text, TEXTS[5]], batch_size=2)
    assert torch.allclose(emb[0], reference_embedding(model, ids, skip_first=True), atol=1e-5)
    assert not torch.allclose(emb[0], reference_embedding(model, ids), atol=1e-3)


def test_eval_mode_is_set_and_restored(llama):
    model, tok = llama
    model.train()
    try:
        emb = embed(model, tok, TEXTS[:2])
        assert model.training
    finally:
        model.eval()
    assert torch.allclose(emb, embed(model, tok, TEXTS[:2]), atol=1e-6)
    embed(model, tok, TEXTS[:2])
    assert not model.training


def test_peft_wrapped_model(tiny_llama):
    from peft import LoraConfig, get_peft_model

    source = resolve(str(tiny_llama))
    model, tok = load_model(source), load_tokenizer(source)
    base = embed(model, tok, TEXTS[:3])
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    # LoRA starts as a no-op (B = 0), so the wrapped model embeds exactly like the base ...
    assert torch.allclose(embed(peft_model, tok, TEXTS[:3]), base, atol=1e-5)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    # ... and the adapter is part of the forward pass once it is trained.
    assert not torch.allclose(embed(peft_model, tok, TEXTS[:3]), base, atol=1e-3)


@pytest.mark.parametrize("bad", ["", "   \n"])
def test_empty_text_is_an_error_naming_its_index(llama, bad):
    model, tok = llama
    with pytest.raises(SpecializeError, match="text 2 is empty"):
        embed(model, tok, [TEXTS[0], TEXTS[1], bad])


# --- similarity statistics on hand-made vectors --------------------------------------------


def test_similarity_of_orthogonal_vectors_is_zero():
    stats = similarity_stats(torch.eye(4))
    assert stats["n"] == 4 and stats["pairs"] == 6
    for key in ("mean", "std", "p5", "p50", "p95", "anisotropy"):
        assert stats[key] == pytest.approx(0.0, abs=1e-7)
    assert len(stats["bins"]) == 21 and len(stats["counts"]) == 20
    assert sum(stats["counts"]) == 6


def test_similarity_of_identical_vectors_is_one():
    stats = similarity_stats(torch.tensor([[3.0, 4.0]] * 5))  # not unit length: normalised
    assert stats["mean"] == pytest.approx(1.0, abs=1e-6)
    assert stats["anisotropy"] == pytest.approx(1.0, abs=1e-6)
    assert stats["std"] == pytest.approx(0.0, abs=1e-6)
    assert sum(stats["counts"]) == 10


def test_similarity_hand_checked_and_diagonal_excluded():
    # pairs: (x, y) = 0, (x, x+y) = (y, x+y) = 1/sqrt(2)
    stats = similarity_stats(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    r = 1 / math.sqrt(2)
    assert stats["mean"] == pytest.approx(2 * r / 3, abs=1e-6)
    assert stats["p50"] == pytest.approx(r, abs=1e-6)
    assert stats["std"] == pytest.approx(np.std([0.0, r, r]), abs=1e-6)
    assert stats["bins"][0] == pytest.approx(0.0, abs=1e-6)
    assert stats["bins"][-1] == pytest.approx(r, abs=1e-6)
    assert stats["counts"][0] == 1 and stats["counts"][-1] == 2


def test_similarity_needs_two_texts():
    with pytest.raises(SpecializeError, match="at least 2"):
        similarity_stats(torch.ones(1, 3))


# --- retrieval -----------------------------------------------------------------------------


def test_retrieval_perfect():
    out = retrieval_recall(torch.eye(3), torch.eye(3) * 2)
    assert out["ranks"] == [1, 1, 1]
    assert out["recall@1"] == out["recall@5"] == out["mrr"] == 1.0


def test_retrieval_hand_checked_with_pessimistic_ties():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    out = retrieval_recall(queries, docs, ks=(1, 2, 3))
    # q0: doc 0 ties with doc 2 -> rank 2 (the tie counts against)
    # q1: doc 1 is the only best -> rank 1
    # q2: doc 2 (cos 0) ties with doc 0 and is beaten by doc 1 -> rank 3
    assert out["ranks"] == [2, 1, 3]
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["recall@2"] == pytest.approx(2 / 3)
    assert out["recall@3"] == pytest.approx(1.0)
    assert out["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 3) / 3)
    assert out["ks"] == [1, 2, 3] and out["n"] == 3


def test_retrieval_collapsed_embeddings_rank_last():
    out = retrieval_recall(torch.ones(4, 3), torch.ones(4, 3))
    assert out["ranks"] == [4, 4, 4, 4]
    assert out["recall@1"] == 0.0


def test_retrieval_with_distractor_documents():
    docs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])  # the last is a distractor
    out = retrieval_recall(torch.tensor([[1.0, 0.1], [0.0, 1.0]]), docs, ks=(1,))
    assert out["ranks"] == [2, 1]
    with pytest.raises(ValueError, match="queries but only"):
        retrieval_recall(torch.eye(3), torch.eye(3)[:2])


# --- whole evaluation and comparison -------------------------------------------------------


def test_evaluate_embeddings_on_tiny_model(llama):
    model, tok = llama
    res = evaluate_embeddings(model, tok, ITEMS, batch_size=2, progress=False)
    n = len(ITEMS)
    assert res["n"] == n and res["ids"] == [i for i, _, _ in ITEMS]
    assert res["abstracts"]["pairs"] == n * (n - 1) // 2
    assert len(res["ranks"]) == n and all(1 <= r <= n for r in res["ranks"])
    t2a = res["title_to_abstract"]
    assert "ranks" not in t2a
    assert t2a["recall@1"] == pytest.approx(np.mean([r <= 1 for r in res["ranks"]]))
    assert t2a["mrr"] == pytest.approx(np.mean([1 / r for r in res["ranks"]]))
    assert t2a["recall@5"] == 1.0  # only 5 abstracts


def test_evaluate_embeddings_names_the_bad_item(llama):
    model, tok = llama
    with pytest.raises(SpecializeError, match="item 'a3' has an empty title"):
        evaluate_embeddings(model, tok, [*ITEMS[:2], ("a3", " ", "text")], progress=False)
    with pytest.raises(SpecializeError, match="'a1' appears more than once"):
        evaluate_embeddings(model, tok, [*ITEMS, ITEMS[0]], progress=False)


def fake_result(ranks: list[int], mean: float) -> dict:
    ids = [f"x{i}" for i in range(len(ranks))]
    t2a = {"n": len(ranks), "ks": [1, 5, 10]}
    abstracts = {"mean": mean, "std": 0.1, "anisotropy": mean}
    return {
        "n": len(ranks),
        "ids": ids,
        "abstracts": abstracts,
        "title_to_abstract": t2a,
        "ranks": ranks,
    }


def test_compare_identical_results_gives_zero_deltas(llama):
    model, tok = llama
    res = evaluate_embeddings(model, tok, ITEMS, progress=False)
    cmp = compare_embeddings(res, res, samples=200)
    assert cmp["n"] == len(ITEMS)
    assert set(cmp["deltas"]) == {"recall@1", "recall@5", "recall@10", "mrr"}
    for d in cmp["deltas"].values():
        assert d["delta"] == d["ci_low"] == d["ci_high"] == 0.0
        assert d["base"] == d["tuned"]
    for s in cmp["similarity"].values():
        assert s["delta"] == 0.0


def test_compare_hand_checked():
    base = fake_result([1, 2, 3, 12], mean=0.9)
    tuned = fake_result([1, 1, 1, 1], mean=0.5)
    cmp = compare_embeddings(base, tuned, samples=500, seed=1)
    assert cmp["deltas"]["recall@1"]["delta"] == pytest.approx(0.75)
    assert cmp["deltas"]["recall@5"]["delta"] == pytest.approx(0.25)
    assert cmp["deltas"]["recall@10"]["delta"] == pytest.approx(0.25)
    assert cmp["deltas"]["mrr"]["delta"] == pytest.approx(1 - (1 + 1 / 2 + 1 / 3 + 1 / 12) / 4)
    d = cmp["deltas"]["recall@1"]
    assert d["ci_low"] <= d["delta"] <= d["ci_high"] and d["n"] == 4
    assert cmp["similarity"]["anisotropy"]["delta"] == pytest.approx(-0.4)


def test_compare_refuses_different_items():
    base, tuned = fake_result([1, 2], 0.5), fake_result([1, 2], 0.5)
    tuned["ids"] = ["x0", "other"]
    with pytest.raises(SpecializeError, match="different items"):
        compare_embeddings(base, tuned)


def test_plot_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    wide = similarity_stats(rng.normal(size=(30, 8)))
    narrow = similarity_stats(rng.normal(size=(30, 8)) * 0.1 + 1.0)
    out = tmp_path / "plots" / "similarity.png"
    plot_similarity({"base": wide, "tuned": narrow}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["similarity.png"]  # no temp file left
