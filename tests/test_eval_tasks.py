"""Task-aware scoring: parsed answers, option log-likelihood, and the per-class report."""

from __future__ import annotations

import torch

from specialize.evaluate.scoring import loglik_choices, loglik_full
from specialize.evaluate.stage import EvalSettings, Variant, evaluate
from specialize.evaluate.tasks import score_answer
from specialize.models.chat import render_conversation
from specialize.models.load import load_model, load_tokenizer, resolve


def _mc(i: int, label: str) -> dict:
    q = f"Question {i}: which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Mercury"
    return {
        "id": f"m{i}",
        "task": "mc",
        "choices": ["Mars", "Jupiter", "Venus", "Mercury"],
        "label": label,
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": label}],
    }


def _tf(i: int, label: str) -> dict:
    return {
        "id": f"t{i}",
        "task": "tf",
        "label": label,
        "messages": [
            {"role": "user", "content": f"Statement {i}: the Sun is a star. True or false?"},
            {"role": "assistant", "content": label},
        ],
    }


def test_score_answer_per_task():
    assert score_answer(_mc(0, "B"), "The answer is (B).")["accuracy"] == 1.0
    assert score_answer(_mc(0, "B"), "I am not sure")["unparsed"] is True
    assert score_answer(_tf(0, "True"), "True.")["accuracy"] == 1.0
    math = {"task": "math", "answer": "42", "messages": [{"role": "assistant", "content": ""}]}
    assert score_answer(math, "6*7 = 42\n#### 42")["accuracy"] == 1.0
    cls = {"task": "classify", "choices": ["storm", "clear"], "label": "storm", "messages": []}
    assert score_answer(cls, "Storm.")["parsed"] == "storm"


def test_first_token_option_scoring_matches_direct_forward(tiny_llama):
    src = resolve(str(tiny_llama))
    model, tok = load_model(src).eval(), load_tokenizer(src)
    records = [_mc(i, "ABCD"[i % 4]) for i in range(5)] + [_tf(i, "True") for i in range(3)]
    fast = loglik_choices(model, tok, records, "chatml", 3, "options")
    for rec in records:
        letters = ["A", "B", "C", "D"] if rec["task"] == "mc" else ["True", "False"]
        scores = []
        for a in letters:
            conv = rec["messages"][:-1] + [{"role": "assistant", "content": a}]
            ids = render_conversation(conv, tok, "chatml").input_ids
            others = [
                render_conversation(
                    rec["messages"][:-1] + [{"role": "assistant", "content": b}], tok, "chatml"
                ).input_ids
                for b in letters
            ]
            n = next(k for k in range(len(ids)) if len({o[k] for o in others}) > 1)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids[:n]])).logits[0, -1]
            scores.append(float(torch.log_softmax(logits, -1)[ids[n]]))
        assert fast[rec["id"]] == letters[max(range(len(scores)), key=scores.__getitem__)]
    # The whole-answer fallback gives a choice for every record too.
    assert set(loglik_full(model, tok, records, "chatml", 4, "full")) == {r["id"] for r in records}


def test_evaluate_variant_reports_accuracies_and_classes(tiny_llama):
    src = resolve(str(tiny_llama))
    model, tok = load_model(src).eval(), load_tokenizer(src)
    records = [_mc(i, "ABCD"[i % 4]) for i in range(8)]
    settings = EvalSettings(fmt="chatml", max_new_tokens=4, batch_size=4)
    got = evaluate([Variant("base", model=model, tokenizer=tok)], records, settings, progress=False)
    preds, metrics = got["base"].predictions, got["base"].metrics
    assert {"accuracy", "loglik_accuracy", "loss", "perplexity"} <= set(metrics)
    rep = metrics["classification"]
    assert rep["n"] == 8 and set(rep["per_class"]) >= {"A", "B", "C", "D"}
    assert metrics["unparsed"] == sum(p["unparsed"] for p in preds)
    assert all(p["loglik_choice"] in "ABCD" for p in preds)
