"""What one variant's answers and model are worth, record by record and in summary.

The pieces the evaluation stage (:mod:`specialize.evaluate.stage`) puts together:

- on a local model: the teacher-forced loss of each reference answer (:func:`example_losses`),
  the option it finds most likely for multiple choice and true/false (:func:`loglik_choices`),
  and the per-document loss of raw text (:func:`document_losses`, continued pretraining);
- on a generated answer: one prediction row with the scores its task calls for
  (:func:`prediction_row`, scores from ``tasks.py``; a synthetic-data catalog task's from
  ``task_scores.py``), BERTScore and an LLM judge's scores
  added over all rows at once;
- per variant: token-weighted loss and perplexity, the mean of every per-record metric, a
  classification report for labelled tasks, unparsed answers and backend errors, counted
  (:func:`summarize`).

Prediction rows and summaries are the JSON rows of ``predictions.jsonl`` and the content of
``metrics.json``: their keys are the file format the model card and reports read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from specialize.data.batches import Example, collate, length_grouped_batches, to_examples
from specialize.data.read import Record
from specialize.errors import SpecializeError
from specialize.evaluate.metrics import (
    METRICS,
    classification_report,
    multiple_choice_loglik,
    perplexity,
)
from specialize.evaluate.task_scores import catalog_task, is_open, parse
from specialize.evaluate.tasks import (
    LABELLED,
    TASKS,
    option_conversations,
    option_label,
    references,
    required_fields,
    score_answer,
    task_of,
)
from specialize.models.chat import render_conversation
from specialize.train.loss import MaskedCausalLMLoss, evaluate_loss

if TYPE_CHECKING:
    from specialize.data.tasks import Catalog

Prediction = dict[str, Any]  # one row of predictions.jsonl
Metrics = dict[str, Any]  # the content of metrics.json

META_SKIP = {"messages", "answers", "context", "choices", "label", "answer", "task", "id"}


def check_records(
    records: list[Record], where: str = "records", catalog: Catalog | None = None
) -> None:
    """Every record has what its task needs; one line naming the first that does not.

    With a task ``catalog``, a record may name a catalog task; a structured task's reference
    answer must then be a valid answer of that task (it is what answers are scored against).
    """
    shadowing = sorted(set(catalog.names if catalog is not None else []) & set(TASKS))
    if shadowing:
        raise SpecializeError(
            f"catalog task '{shadowing[0]}' has the name of an evaluation task; rename it",
            path=where,
            field="task",
        )
    for n, rec in enumerate(records, 1):
        msgs = rec.get("messages")
        if not msgs or msgs[-1].get("role") != "assistant":
            raise SpecializeError(
                f"record {n} ('{rec.get('id')}') has no reference answer (last message must "
                "be the assistant's)",
                path=where,
                field="messages",
            )
        task = task_of(rec, catalog)
        spec = catalog_task(rec, catalog)
        if spec is not None and spec.structured:
            _, reason = parse(spec, msgs[-1].get("content") or "")
            if reason is not None:
                raise SpecializeError(
                    f"record {n} ('{rec.get('id')}', task {task}): its reference answer is not "
                    f"a valid {task} answer ({reason})",
                    path=where,
                    field="messages",
                )
        for f in required_fields(task):
            if rec.get(f) in (None, ""):
                raise SpecializeError(
                    f"record {n} ('{rec.get('id')}', task {task}) has no '{f}'",
                    path=where,
                    field=f,
                )


# ------------------------------------------------------------------------ local model


def example_losses(
    model: Any, examples: Sequence[Example], pad_id: int, batch_size: int, desc: str | None
) -> dict[str, tuple[float, int]]:
    """``{example id: (summed loss, target tokens)}`` of already rendered examples."""
    batches = length_grouped_batches(list(examples), batch_size, 0, shuffle=False)
    sums, counts = evaluate_loss(
        MaskedCausalLMLoss(model), [collate(b, pad_id) for b in batches], desc=desc
    )
    return {
        e.id: (s, n) for e, s, n in zip([e for b in batches for e in b], sums, counts, strict=True)
    }


def loglik_choices(
    model: Any, tokenizer: Any, records: list[Record], fmt: str, batch_size: int, desc: str | None
) -> dict[str, str]:
    """The option each record's model finds most likely.

    The options' conversations (prompt + each option's answer) share everything up to the
    first answer token; when those first tokens differ (letters, True/False), one forward pass
    over the shared prefix gives every option's log-probability: the standard letter scoring,
    a quarter of the cost of scoring four full sequences. Records whose options share their
    first token fall back to the summed log-probability of each whole answer.
    """
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
        out |= loglik_full(model, tokenizer, full, fmt, batch_size, desc)
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


def loglik_full(
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
    examples, _ = to_examples(options, tokenizer, fmt, max_len=10**9)
    losses = example_losses(model, examples, tokenizer.pad_token_id, batch_size, desc)
    by_rec: dict[str, list[tuple[float, int]]] = {}
    for opt, (rid, _) in zip(options, owners, strict=True):
        by_rec.setdefault(rid, []).append(losses[opt["id"]])
    recs = {r["id"]: r for r in records}
    out = {}
    for rid, vals in by_rec.items():
        best = multiple_choice_loglik([-s for s, _ in vals], [n for _, n in vals], normalize=False)
        out[rid] = option_label(recs[rid], best)
    return out


def document_losses(
    model: Any, examples: list[Example], pad_id: int, batch_size: int, desc: str | None
) -> list[Prediction]:
    """Per-document loss over every token of its chunks (``id#k``), in document order."""
    per_doc: dict[str, list[float]] = {}
    for eid, (s, n) in example_losses(model, examples, pad_id, batch_size, desc).items():
        acc = per_doc.setdefault(eid.rsplit("#", 1)[0], [0.0, 0])
        acc[0] += s
        acc[1] += n
    order = list(dict.fromkeys(e.id.rsplit("#", 1)[0] for e in examples))
    return [{"id": d, "loss_sum": per_doc[d][0], "loss_tokens": per_doc[d][1]} for d in order]


# -------------------------------------------------------------------------- predictions


def prediction_row(
    rec: Record,
    answer: dict[str, Any],
    pick: str | None = None,
    loss: tuple[float, int] | None = None,
    catalog: Catalog | None = None,
) -> Prediction:
    """One record's row: question, reference, the answer and its scores, loss, metadata.

    ``catalog``: the run's task catalog, by which records of a catalog task are scored."""
    refs = references(rec)
    p: Prediction = {
        "id": rec["id"],
        "task": task_of(rec, catalog),
        "question": rec["messages"][-2]["content"] if len(rec["messages"]) > 1 else "",
        "reference": refs[0],
        "prediction": answer["text"],
        "stopped": answer["stopped"],
        "new_tokens": answer["new_tokens"],
    }
    if answer.get("error"):
        p["error"] = answer["error"]
    p |= score_answer(rec, answer["text"], catalog)
    if pick is not None:
        p["loglik_choice"] = pick
        p["loglik_accuracy"] = float(pick == rec["label"])
    if loss is not None:
        p["loss_sum"], p["loss_tokens"] = loss
    if "label" in rec:
        p["label"] = rec["label"]
    p["meta"] = {k: v for k, v in rec.items() if k not in META_SKIP}
    return p


def add_bertscore(
    scorer: Any, records: list[Record], preds: list[Prediction], catalog: Catalog | None = None
) -> None:
    """``bertscore_f1`` on every open-answer row (``qa``, a free-text catalog task), against
    all of its references."""
    qa = [i for i, p in enumerate(preds) if is_open(p["task"], catalog)]
    if scorer is None or not qa:
        return
    answers = [preds[i]["prediction"] for i in qa]
    scores = scorer.score(answers, [references(records[i]) for i in qa])
    for i, s in zip(qa, scores, strict=True):
        preds[i]["bertscore_f1"] = s["f1"]


def add_judge(
    backend: Any, records: list[Record], preds: list[Prediction], progress: bool
) -> dict[str, Any]:
    """An LLM judge's 1-5 scores on every row (``judge_<criterion>``); returns its summary."""
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


# ---------------------------------------------------------------------------- summaries


def summarize(preds: list[Prediction], name: str) -> Metrics:
    """Variant-level metrics from per-record predictions.

    Records of more than one task also get ``by_task``: ``{task: {"n", loss, perplexity,
    metric means, "unparsed"}}``, the same summary over each task's records."""
    out: Metrics = {"variant": name, "n": len(preds)}
    out |= _loss_and_means(preds)
    out["stopped_rate"] = _mean([float(p["stopped"]) for p in preds])
    out["mean_new_tokens"] = _mean([p["new_tokens"] for p in preds])
    out["unparsed"] = sum(bool(p.get("unparsed")) for p in preds)
    out["errors"] = sum(bool(p.get("error")) for p in preds)
    labelled = [p for p in preds if p["task"] in LABELLED and "label" in p]
    if labelled:
        out["classification"] = classification_report(
            [p["label"] for p in labelled], [p.get("parsed") for p in labelled]
        )
    tasks = list(dict.fromkeys(p["task"] for p in preds))
    if len(tasks) > 1:
        out["by_task"] = {}
        for task in tasks:
            mine = [p for p in preds if p["task"] == task]
            out["by_task"][task] = {"n": len(mine), **_loss_and_means(mine)} | {
                "unparsed": sum(bool(p.get("unparsed")) for p in mine)
            }
    return out


def _loss_and_means(preds: list[Prediction]) -> Metrics:
    """Token-weighted loss and perplexity (rows with a loss), and the mean of each metric
    (with ``<metric>_n`` where only some rows have it)."""
    out: Metrics = {}
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
    return out


def summarize_documents(preds: list[Prediction], name: str) -> Metrics:
    """Held-out perplexity of documents: token-weighted over all of them."""
    loss_sum = sum(p["loss_sum"] for p in preds)
    n_tok = sum(p["loss_tokens"] for p in preds)
    return {
        "variant": name,
        "n": len(preds),
        "tokens": n_tok,
        "loss": loss_sum / n_tok if n_tok else math.nan,
        "perplexity": perplexity(loss_sum, n_tok),
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan
