"""Evaluate model variants on the same records, and compare them.

Per record and variant: the teacher-forced loss of the reference answer (local models), the
generated answer and the scores its task calls for (``tasks.py``): EM/F1 (+ BERTScore) for
open answers, accuracy with the parsed letter/boolean/number for the others, log-likelihood
choice accuracy for multiple choice and true/false, and optionally an LLM judge's 1-5 scores.
Per variant: token-weighted loss and perplexity, the mean of every per-record metric, a
classification report for labelled tasks, unparsed answers and backend errors, counted.

Comparisons (``compare_variants``): every metric of every variant against the first
(``base``), with paired bootstrap 95% CIs, and breakdowns by metadata fields.

Generated answers are appended to ``<cache_dir>/<variant>.partial.jsonl`` as records finish,
so an interrupted evaluation resumes where it stopped (only unfinished records are
generated again); everything else is cheap to recompute.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specialize.data.batches import collate, length_grouped_batches, to_examples
from specialize.data.read import Record
from specialize.evaluate.compare import breakdown, paired_bootstrap
from specialize.evaluate.generate import generate
from specialize.evaluate.metrics import classification_report, multiple_choice_loglik, perplexity
from specialize.evaluate.tasks import (
    LABELLED,
    option_conversations,
    option_label,
    references,
    required_fields,
    score_answer,
    task_of,
)
from specialize.models.chat import render_prompt, stop_token_ids
from specialize.train.loss import MaskedCausalLMLoss, evaluate_loss

log = logging.getLogger("specialize")

META_SKIP = {"messages", "answers", "context", "choices", "label", "answer", "task", "id"}
# Per-record numeric metrics that are averaged and compared (in this order in reports).
METRICS = (
    "exact_match",
    "f1",
    "bertscore_f1",
    "accuracy",
    "loglik_accuracy",
    "judge_correctness",
    "judge_faithfulness",
    "judge_relevance",
    "judge_completeness",
)

__all__ = [
    "METRICS",
    "check_records",
    "compare_variants",
    "compare_text_variants",
    "evaluate_text_variant",
    "evaluate_variant",
    "loss_deltas",
    "references",
    "side_by_side",
]


def check_records(records: list[Record], where: str = "records") -> None:
    """Every record has what its task needs; one line naming the first that does not."""
    from specialize.errors import SpecializeError

    for n, rec in enumerate(records, 1):
        msgs = rec.get("messages")
        if not msgs or msgs[-1].get("role") != "assistant":
            raise SpecializeError(
                f"record {n} ('{rec.get('id')}') has no reference answer (last message must "
                "be the assistant's)",
                path=where,
                field="messages",
            )
        for f in required_fields(task_of(rec)):
            if rec.get(f) in (None, ""):
                raise SpecializeError(
                    f"record {n} ('{rec.get('id')}', task {task_of(rec)}) has no '{f}'",
                    path=where,
                    field=f,
                )


# ---------------------------------------------------------------------------- pieces


def _record_losses(
    model: Any, tokenizer: Any, records: list[Record], fmt: str, batch_size: int, desc: str | None
) -> dict[str, tuple[float, int]]:
    examples, _ = to_examples(records, tokenizer, fmt, max_len=10**9)
    batches = length_grouped_batches(examples, batch_size, 0, shuffle=False)
    sums, counts = evaluate_loss(
        MaskedCausalLMLoss(model), [collate(b, tokenizer.pad_token_id) for b in batches], desc=desc
    )
    return {
        e.id: (s, n) for e, s, n in zip([e for b in batches for e in b], sums, counts, strict=True)
    }


def _loglik_choices(
    model: Any, tokenizer: Any, records: list[Record], fmt: str, batch_size: int, desc: str | None
) -> dict[str, str]:
    """The option each record's model finds most likely.

    The options' conversations (prompt + each option's answer) share everything up to the
    first answer token; when those first tokens differ (letters, True/False), one forward pass
    over the shared prefix gives every option's log-probability: the standard letter scoring,
    a quarter of the cost of scoring four full sequences. Records whose options share their
    first token fall back to the summed log-probability of each whole answer.
    """
    from specialize.models.chat import render_conversation

    prefixes: list[list[int]] = []
    candidates: list[tuple[str, list[int]]] = []
    full: list[Record] = []
    for rec in records:
        convs = option_conversations(rec)
        if not convs:
            continue
        ids = [render_conversation(c, tokenizer, fmt).input_ids for c in convs]
        n = 0
        while all(len(x) > n for x in ids) and len({x[n] for x in ids}) == 1:
            n += 1
        firsts = [x[n] if len(x) > n else -1 for x in ids]
        if n > 0 and -1 not in firsts and len(set(firsts)) == len(firsts):
            prefixes.append(ids[0][:n])
            candidates.append((rec["id"], firsts))
        else:
            full.append(rec)
    recs = {r["id"]: r for r in records}
    out: dict[str, str] = {}
    if prefixes:
        scores = _next_token_logprobs(
            model, tokenizer, prefixes, [c for _, c in candidates], batch_size, desc
        )
        for (rid, _), sc in zip(candidates, scores, strict=True):
            out[rid] = option_label(recs[rid], max(range(len(sc)), key=lambda k: sc[k]))
    if full:
        out |= _loglik_full(model, tokenizer, full, fmt, batch_size, desc)
    return out


@torch.inference_mode()
def _next_token_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    candidates: list[list[int]],
    batch_size: int,
    desc: str | None,
) -> list[list[float]]:
    """Log-probabilities of candidate next tokens after each prompt (left-padded batches)."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[float]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=desc is None):
            idx = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                attn[row, width - len(prompts[i]) :] = 1
            pos = (attn.cumsum(-1) - 1).clamp(min=0)
            logits = model(
                input_ids=ids.to(device),
                attention_mask=attn.to(device),
                position_ids=pos.to(device),
                logits_to_keep=1,
            ).logits[:, -1, :]
            logp = torch.log_softmax(logits.float(), dim=-1)
            for row, i in enumerate(idx):
                out[i] = [float(logp[row, t]) for t in candidates[i]]
    finally:
        model.train(was_training)
    return out


def _loglik_full(
    model: Any, tokenizer: Any, records: list[Record], fmt: str, batch_size: int, desc: str | None
) -> dict[str, str]:
    """Summed answer log-probability of every option's whole conversation."""
    options: list[Record] = []
    owners: list[tuple[str, int]] = []
    for rec in records:
        for k, conv in enumerate(option_conversations(rec) or []):
            options.append({"id": f"{rec['id']}\x00{k}", "messages": conv})
            owners.append((rec["id"], k))
    if not options:
        return {}
    losses = _record_losses(model, tokenizer, options, fmt, batch_size, desc)
    by_rec: dict[str, list[tuple[float, int]]] = {}
    for opt, (rid, _) in zip(options, owners, strict=True):
        by_rec.setdefault(rid, []).append(losses[opt["id"]])
    recs = {r["id"]: r for r in records}
    out = {}
    for rid, vals in by_rec.items():
        best = multiple_choice_loglik([-s for s, _ in vals], [n for _, n in vals], normalize=False)
        out[rid] = option_label(recs[rid], best)
    return out


def _load_partial(path: Path | None, ids: set[str]) -> dict[str, dict[str, Any]]:
    """Answers an interrupted evaluation already finished (a torn last line is ignored)."""
    if path is None or not path.is_file():
        return {}
    done = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("id") in ids and not row.get("error"):
            done[row["id"]] = row
    return done


def _generate_answers(
    records: list[Record],
    name: str,
    max_new_tokens: int,
    batch_size: int,
    progress: bool,
    model: Any = None,
    tokenizer: Any = None,
    fmt: str = "chatml",
    backend: Any = None,
    partial: Path | None = None,
) -> list[dict[str, Any]]:
    """Answers for every record, reusing finished ones from ``partial`` and appending to it."""
    ids = [r["id"] for r in records]
    done = _load_partial(partial, set(ids))
    todo = [i for i, rid in enumerate(ids) if rid not in done]
    if done:
        log.info("%s: %d of %d answers reused from %s", name, len(done), len(ids), partial)
    sink = None
    if partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        sink = partial.open("a", encoding="utf-8")

    def save(indices: list[int], answers: list[dict[str, Any]]) -> None:
        for i, a in zip(indices, answers, strict=True):
            row = {"id": ids[todo[i]], **a}
            done[row["id"]] = row
            if sink is not None and not a.get("error"):
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
        if sink is not None:
            sink.flush()

    try:
        if todo and backend is not None:
            gens = backend.generate(
                [records[i]["messages"][:-1] for i in todo],
                max_new_tokens=max_new_tokens,
                progress=progress,
                desc=f"generate {name}",
            )
            save(
                list(range(len(todo))),
                [
                    {"text": g.text, "new_tokens": g.new_tokens, "stopped": g.stopped}
                    | ({"error": g.error} if g.error else {})
                    for g in gens
                ],
            )
        elif todo:
            prompts = [render_prompt(records[i]["messages"][:-1], tokenizer, fmt) for i in todo]
            generate(
                model,
                tokenizer,
                prompts,
                stop_token_ids(tokenizer, fmt),
                max_new_tokens,
                batch_size,
                desc=f"generate {name}",
                progress=progress,
                on_finish=save,
            )
    finally:
        if sink is not None:
            sink.close()
    return [done[rid] for rid in ids]


# ------------------------------------------------------------------------------ main


def evaluate_variant(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    fmt: str,
    max_new_tokens: int,
    batch_size: int,
    name: str,
    progress: bool = True,
    *,
    backend: Any = None,
    bertscorer: Any = None,
    judge_backend: Any = None,
    cache_dir: Path | None = None,
    loglik: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predictions (one dict per record, in order) and summary metrics for one variant.

    ``model`` is a local model (loss, generation, log-likelihood choices); with ``backend``
    (e.g. an OpenAI-compatible server) and no model, only generated-answer metrics apply.
    """
    t0 = time.perf_counter()
    check_records(records)
    losses: dict[str, tuple[float, int]] = {}
    picks: dict[str, str] = {}
    if model is not None:
        bar = (lambda what: f"{what} {name}") if progress else (lambda what: None)
        losses = _record_losses(model, tokenizer, records, fmt, batch_size, bar("loss"))
        if loglik:
            picks = _loglik_choices(model, tokenizer, records, fmt, batch_size, bar("options"))
    t_loss = time.perf_counter() - t0
    partial = cache_dir / f"{name}.partial.jsonl" if cache_dir is not None else None
    t_gen = time.perf_counter()
    answers = _generate_answers(
        records,
        name,
        max_new_tokens,
        batch_size,
        progress,
        model=model,
        tokenizer=tokenizer,
        fmt=fmt,
        backend=backend,
        partial=partial,
    )
    gen_s = time.perf_counter() - t_gen

    preds: list[dict[str, Any]] = []
    for rec, ans in zip(records, answers, strict=True):
        refs = references(rec)
        p: dict[str, Any] = {
            "id": rec["id"],
            "task": task_of(rec),
            "question": rec["messages"][-2]["content"] if len(rec["messages"]) > 1 else "",
            "reference": refs[0],
            "prediction": ans["text"],
            "stopped": ans["stopped"],
            "new_tokens": ans["new_tokens"],
        }
        if ans.get("error"):
            p["error"] = ans["error"]
        p |= score_answer(rec, ans["text"])
        if rec["id"] in picks:
            p["loglik_choice"] = picks[rec["id"]]
            p["loglik_accuracy"] = float(picks[rec["id"]] == rec["label"])
        if rec["id"] in losses:
            p["loss_sum"], p["loss_tokens"] = losses[rec["id"]]
        if "label" in rec:
            p["label"] = rec["label"]
        p["meta"] = {k: v for k, v in rec.items() if k not in META_SKIP}
        preds.append(p)

    qa = [i for i, p in enumerate(preds) if p["task"] == "qa"]
    if bertscorer is not None and qa:
        scores = bertscorer.score(
            [preds[i]["prediction"] for i in qa], [references(records[i]) for i in qa]
        )
        for i, s in zip(qa, scores, strict=True):
            preds[i]["bertscore_f1"] = s["f1"]
    judge_summary = None
    if judge_backend is not None:
        judge_summary = _judge(judge_backend, records, preds, progress)

    metrics = summarize(preds, name)
    metrics |= {
        "wall_s": time.perf_counter() - t0,
        "loss_wall_s": t_loss,
        "generate_wall_s": gen_s,
        "records_per_s": len(preds) / gen_s if gen_s > 0 else math.nan,
    }
    if judge_summary is not None:
        metrics["judge"] = judge_summary
    return preds, metrics


def _judge(backend: Any, records: list[Record], preds: list[dict[str, Any]], progress: bool):
    from specialize.evaluate.judge import judge

    items = [
        {
            "id": p["id"],
            "question": p["question"],
            "prediction": p["prediction"],
            "reference": p["reference"],
            "context": r.get("context"),
        }
        for r, p in zip(records, preds, strict=True)
    ]
    verdicts, summary = judge(backend, items, progress=progress)
    for p, v in zip(preds, verdicts, strict=True):
        p["judge"] = {k: v.get(k) for k in ("scores", "reason", "error")}
        for crit, score in (v.get("scores") or {}).items():
            if score is not None:
                p[f"judge_{crit}"] = float(score)
    return summary


def summarize(preds: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Variant-level metrics from per-record predictions."""
    out: dict[str, Any] = {"variant": name, "n": len(preds)}
    with_loss = [p for p in preds if "loss_sum" in p]
    if with_loss:
        s = sum(p["loss_sum"] for p in with_loss)
        n = sum(p["loss_tokens"] for p in with_loss)
        out["loss"] = s / n if n else math.nan
        out["perplexity"] = perplexity(s, n)
    for m in METRICS:
        vals = [p[m] for p in preds if m in p]
        if vals:
            out[m] = _mean(vals)
            if len(vals) != len(preds):
                out[f"{m}_n"] = len(vals)
    out["stopped_rate"] = _mean([float(p["stopped"]) for p in preds])
    out["mean_new_tokens"] = _mean([p["new_tokens"] for p in preds])
    out["unparsed"] = sum(bool(p.get("unparsed")) for p in preds)
    out["errors"] = sum(bool(p.get("error")) for p in preds)
    labelled = [p for p in preds if p["task"] in LABELLED and "label" in p]
    if labelled:
        out["classification"] = classification_report(
            [p["label"] for p in labelled], [p.get("parsed") for p in labelled]
        )
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def compare_variants(
    preds: dict[str, list[dict[str, Any]]],
    breakdown_by: list[str],
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every variant against the first: deltas with paired bootstrap CIs, and breakdowns.

    ``deltas`` holds the second variant's (the usual base -> tuned) for the model card;
    ``vs_reference`` holds every variant's.
    """
    names = list(preds)
    ref = names[0]
    ids = [p["id"] for p in preds[ref]]
    for name in names[1:]:
        if [p["id"] for p in preds[name]] != ids:
            raise ValueError(f"variants '{ref}' and '{name}' were evaluated on different records")
    out: dict[str, Any] = {"n": len(ids), "reference": ref, "vs_reference": {}, "breakdowns": {}}
    for name in names[1:]:
        d: dict[str, Any] = {}
        for m in METRICS:
            pairs = [
                (a[m], b[m])
                for a, b in zip(preds[ref], preds[name], strict=True)
                if m in a and m in b
            ]
            if pairs:
                d[m] = paired_bootstrap(*zip(*pairs, strict=True), samples=samples, seed=seed)
        if all("loss_sum" in p for p in preds[ref] + preds[name]):
            d.update(loss_deltas(preds[ref], preds[name], samples, seed))
        out["vs_reference"][name] = d
    out["deltas"] = out["vs_reference"][names[1]] if len(names) > 1 else {}
    records = [p["meta"] for p in preds[ref]]
    for field in breakdown_by:
        if not any(field in r for r in records):
            continue
        present = [m for m in METRICS if any(m in p for p in preds[ref])]
        out["breakdowns"][field] = {
            name: breakdown(
                records,
                {m: [p.get(m, math.nan) for p in vs] for m in present},
                field,
            )
            for name, vs in preds.items()
        }
    return out


SIDE_BY_SIDE = (
    "prediction",
    "parsed",
    "exact_match",
    "f1",
    "bertscore_f1",
    "accuracy",
    "loglik_choice",
    "judge",
    "error",
)


def side_by_side(preds: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per record: its question and reference, then each variant's answer and scores."""
    names = list(preds)
    rows = []
    for i, first in enumerate(preds[names[0]]):
        row = {k: first[k] for k in ("id", "task", "question", "reference") if k in first}
        for n in names:
            row[n] = {k: preds[n][i][k] for k in SIDE_BY_SIDE if k in preds[n][i]}
        rows.append(row)
    return rows


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
    deltas = loss_deltas(base, tuned, samples, seed)
    return {
        "n": len(base),
        "reference": "base",
        "vs_reference": {"tuned": deltas},
        "deltas": deltas,
        "breakdowns": {},
    }


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
