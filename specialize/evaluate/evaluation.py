"""Evaluate one model variant on records, and compare variants on the same records.

Per record: summed loss over the answer tokens (teacher forcing), the greedy answer, exact
match and token F1 against the reference (the last assistant message, plus any alternatives
in the record's ``answers`` list). Per variant: token-weighted loss and perplexity, mean EM and
F1. Comparisons: paired bootstrap 95% CIs on each delta and breakdowns by metadata fields.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from specialize.data.batches import collate, length_grouped_batches, to_examples
from specialize.data.read import Record
from specialize.evaluate.compare import breakdown, paired_bootstrap
from specialize.evaluate.generate import generate
from specialize.evaluate.metrics import best_over, exact_match, perplexity, token_f1
from specialize.models.chat import render_prompt, stop_token_ids
from specialize.train.loss import MaskedCausalLMLoss, evaluate_loss

META_SKIP = {"messages", "answers"}


def references(rec: Record) -> list[str]:
    refs = [rec["messages"][-1]["content"]]
    extra = rec.get("answers")
    if isinstance(extra, list):
        refs += [str(a) for a in extra if str(a).strip()]
    return refs


def evaluate_variant(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    fmt: str,
    max_new_tokens: int,
    batch_size: int,
    name: str,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predictions (one dict per record, in order) and summary metrics for one variant."""
    t0 = time.perf_counter()
    examples, _ = to_examples(records, tokenizer, fmt, max_len=10**9)
    loss_module = MaskedCausalLMLoss(model)
    batches = length_grouped_batches(examples, batch_size, 0, shuffle=False)
    sums, counts = evaluate_loss(
        loss_module, [collate(b, tokenizer.pad_token_id) for b in batches], desc=f"loss {name}"
    )
    by_id = {}
    flat = [e for b in batches for e in b]
    for e, s, n in zip(flat, sums, counts, strict=True):
        by_id[e.id] = (s, n)
    t_loss = time.perf_counter() - t0

    prompts = [render_prompt(r["messages"][:-1], tokenizer, fmt) for r in records]
    answers = generate(
        model,
        tokenizer,
        prompts,
        stop_token_ids(tokenizer, fmt),
        max_new_tokens,
        batch_size,
        desc=f"generate {name}",
        progress=progress,
    )
    preds: list[dict[str, Any]] = []
    for rec, ans in zip(records, answers, strict=True):
        refs = references(rec)
        s, n = by_id[rec["id"]]
        preds.append(
            {
                "id": rec["id"],
                "question": rec["messages"][-2]["content"],
                "reference": refs[0],
                "prediction": ans["text"],
                "stopped": ans["stopped"],
                "new_tokens": ans["new_tokens"],
                "exact_match": best_over(exact_match, ans["text"], refs),
                "f1": best_over(token_f1, ans["text"], refs),
                "loss_sum": s,
                "loss_tokens": n,
                "meta": {k: v for k, v in rec.items() if k not in META_SKIP | {"id"}},
            }
        )
    wall = time.perf_counter() - t0
    loss_sum, n_tok = sum(p["loss_sum"] for p in preds), sum(p["loss_tokens"] for p in preds)
    metrics = {
        "variant": name,
        "n": len(preds),
        "loss": loss_sum / n_tok if n_tok else math.nan,
        "perplexity": perplexity(loss_sum, n_tok),
        "exact_match": _mean([p["exact_match"] for p in preds]),
        "f1": _mean([p["f1"] for p in preds]),
        "stopped_rate": _mean([float(p["stopped"]) for p in preds]),
        "mean_new_tokens": _mean([p["new_tokens"] for p in preds]),
        "wall_s": wall,
        "loss_wall_s": t_loss,
        "records_per_s": len(preds) / (wall - t_loss) if wall > t_loss else math.nan,
    }
    return preds, metrics


def compare_variants(
    base: list[dict[str, Any]],
    tuned: list[dict[str, Any]],
    breakdown_by: list[str],
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Deltas tuned - base with paired bootstrap CIs, and per-field breakdowns."""
    if [p["id"] for p in base] != [p["id"] for p in tuned]:
        raise ValueError("variants were evaluated on different records")
    out: dict[str, Any] = {"n": len(base), "deltas": {}, "breakdowns": {}}
    for metric in ("exact_match", "f1"):
        out["deltas"][metric] = paired_bootstrap(
            [p[metric] for p in base], [p[metric] for p in tuned], samples=samples, seed=seed
        )
    out["deltas"].update(loss_deltas(base, tuned, samples, seed))
    records = [p["meta"] for p in base]
    for field in breakdown_by:
        if not any(field in r for r in records):
            continue
        out["breakdowns"][field] = {
            variant: breakdown(
                records, {m: [p[m] for p in preds] for m in ("exact_match", "f1")}, field
            )
            for variant, preds in (("base", base), ("tuned", tuned))
        }
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def evaluate_text_variant(
    model: Any, examples: list[Any], pad_id: int, batch_size: int, name: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Held-out perplexity of raw documents: per-document loss over all of its tokens."""
    t0 = time.perf_counter()
    loss_module = MaskedCausalLMLoss(model)
    batches = length_grouped_batches(examples, batch_size, 0, shuffle=False)
    sums, counts = evaluate_loss(
        loss_module, [collate(b, pad_id) for b in batches], desc=f"perplexity {name}"
    )
    per_doc: dict[str, list[float]] = {}
    for e, s, n in zip([e for b in batches for e in b], sums, counts, strict=True):
        acc = per_doc.setdefault(e.id.rsplit("#", 1)[0], [0.0, 0])
        acc[0] += s
        acc[1] += n
    order = list(dict.fromkeys(e.id.rsplit("#", 1)[0] for e in examples))
    preds = [{"id": d, "loss_sum": per_doc[d][0], "loss_tokens": per_doc[d][1]} for d in order]
    loss_sum, n_tok = sum(p["loss_sum"] for p in preds), sum(p["loss_tokens"] for p in preds)
    metrics = {
        "variant": name,
        "n": len(preds),
        "tokens": n_tok,
        "loss": loss_sum / n_tok if n_tok else math.nan,
        "perplexity": perplexity(loss_sum, n_tok),
        "wall_s": time.perf_counter() - t0,
    }
    return preds, metrics


def compare_text_variants(
    base: list[dict[str, Any]], tuned: list[dict[str, Any]], samples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Perplexity and loss deltas over documents with paired bootstrap CIs."""
    if [p["id"] for p in base] != [p["id"] for p in tuned]:
        raise ValueError("variants were evaluated on different documents")
    return {"n": len(base), "deltas": loss_deltas(base, tuned, samples, seed), "breakdowns": {}}


def loss_deltas(
    base: list[dict[str, Any]], tuned: list[dict[str, Any]], samples: int, seed: int
) -> dict[str, dict[str, float]]:
    """Token-weighted mean loss delta and the perplexity delta it implies, resampled together.

    Per-record mean losses are weighted by token counts, so the bootstrap mean is the
    token-weighted loss of the resampled records.
    """
    w = [p["loss_tokens"] for p in base]
    per_a = [p["loss_sum"] / max(p["loss_tokens"], 1) for p in base]
    per_b = [p["loss_sum"] / max(p["loss_tokens"], 1) for p in tuned]
    return {
        "loss": paired_bootstrap(per_a, per_b, w, samples, seed),
        "perplexity": paired_bootstrap(per_a, per_b, w, samples, seed, np.exp),
    }
