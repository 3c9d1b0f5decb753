"""Every comparison between evaluated variants, with paired bootstrap confidence intervals.

Variants answer the *same* records, so the honest uncertainty of a difference comes from
resampling records and recomputing both means on each resample (paired bootstrap), not from
two independent intervals. This module holds all of them: variant against variant
(``compare_variants``; documents: ``compare_text_variants``), the per-record side-by-side rows,
the per-condition GGUF table of ablations, and the run directory's comparison files
(:func:`write_run_comparisons`: ``eval/compare.json``, ``eval/compare_gguf.json``,
``eval/side_by_side.jsonl``).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specialize.evaluate.metrics import METRICS
from specialize.evaluate.stage import EvalResults, EvalSettings
from specialize.io import write_json, write_jsonl

log = logging.getLogger("specialize")


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    weights: Sequence[float] | None = None,
    samples: int = 2000,
    seed: int = 0,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """``f(mean b) - f(mean a)`` with a 95% percentile interval from paired resamples.

    Means are weighted when ``weights`` are given (e.g. token counts for a token-weighted
    loss); ``transform`` is ``f`` (identity by default; ``np.exp`` turns a loss delta into a
    perplexity delta). Records are resampled once per bootstrap sample for both variants.
    """
    a_arr, b_arr = np.asarray(a, float), np.asarray(b, float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired samples differ in length: {len(a_arr)} vs {len(b_arr)}")
    n = len(a_arr)
    if n == 0:
        return {"delta": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    f = transform or (lambda x: x)
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    ws = w[idx]
    mean_a = (a_arr[idx] * ws).sum(1) / ws.sum(1)
    mean_b = (b_arr[idx] * ws).sum(1) / ws.sum(1)
    deltas = f(mean_b) - f(mean_a)
    point = float(
        f(np.array((b_arr * w).sum() / w.sum())) - f(np.array((a_arr * w).sum() / w.sum()))
    )
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {"delta": point, "ci_low": float(lo), "ci_high": float(hi), "n": int(n)}


def breakdown(
    records: Sequence[dict[str, Any]], values: dict[str, Sequence[float]], field: str
) -> dict[str, dict[str, Any]]:
    """Mean of each metric per value of a metadata field (records without it: '(none)')."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[str(r.get(field, "(none)"))].append(i)
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(groups):
        idx = groups[key]
        out[key] = {"n": len(idx)} | {
            name: float(np.mean([vals[i] for i in idx])) for name, vals in values.items()
        }
    return out


# ------------------------------------------------------------------------------ variants


def compare_variants(
    preds: dict[str, list[dict[str, Any]]],
    breakdown_by: Sequence[str],
    samples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every variant against the first: deltas with paired bootstrap CIs, and breakdowns.

    ``deltas`` holds the second variant's (the usual base -> tuned) for the model card;
    ``vs_reference`` holds every variant's. When the records are of more than one task,
    ``by_task`` (second variant) and ``by_task_vs_reference`` (every variant) hold the same
    deltas over each task's records: ``{task: {metric: {delta, ci_low, ci_high, n}}}``.
    Breakdowns are by fields of the records' metadata, or by ``task``.
    """
    names = list(preds)
    ref = names[0]
    ids = [p["id"] for p in preds[ref]]
    for name in names[1:]:
        if [p["id"] for p in preds[name]] != ids:
            raise ValueError(f"variants '{ref}' and '{name}' were evaluated on different records")
    out: dict[str, Any] = {"n": len(ids), "reference": ref, "vs_reference": {}, "breakdowns": {}}
    for name in names[1:]:
        out["vs_reference"][name] = _deltas(preds[ref], preds[name], samples, seed)
    out["deltas"] = out["vs_reference"][names[1]] if len(names) > 1 else {}
    tasks = list(dict.fromkeys(p.get("task") for p in preds[ref]))
    if len(tasks) > 1 and len(names) > 1:
        rows = {t: [i for i, p in enumerate(preds[ref]) if p.get("task") == t] for t in tasks}
        out["by_task_vs_reference"] = {
            name: {
                str(t): _deltas(
                    [preds[ref][i] for i in idx], [preds[name][i] for i in idx], samples, seed
                )
                for t, idx in rows.items()
            }
            for name in names[1:]
        }
        out["by_task"] = out["by_task_vs_reference"][names[1]]
    records = [p["meta"] | {"task": p["task"]} if "task" in p else p["meta"] for p in preds[ref]]
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


def _deltas(
    a: list[dict[str, Any]], b: list[dict[str, Any]], samples: int, seed: int
) -> dict[str, Any]:
    """Paired deltas (b - a) of every metric both rows of a record have, and of the loss."""
    d: dict[str, Any] = {}
    for m in METRICS:
        pairs = [(x[m], y[m]) for x, y in zip(a, b, strict=True) if m in x and m in y]
        if pairs:
            d[m] = paired_bootstrap(*zip(*pairs, strict=True), samples=samples, seed=seed)
    if all("loss_sum" in p for p in a + b):
        d.update(loss_deltas(a, b, samples, seed))
    return d


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


SIDE_BY_SIDE = (
    "prediction",
    "parsed",
    "exact_match",
    "f1",
    "bertscore_f1",
    "accuracy",
    "loglik_choice",
    "schema_valid",
    "field_f1",
    "index_accuracy",
    "invalid_reason",
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


QUANT_METRICS = ("accuracy", "f1", "exact_match", "bertscore_f1")


def quantization_by_condition(
    cond_preds: dict[str, dict[str, list[dict[str, Any]]]],
    cond_metrics: dict[str, dict[str, dict[str, Any]]],
    quantized: list[str],
    samples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Per ablation condition: each GGUF against the tuned model on that condition's records
    (paired bootstrap CIs), as ``{condition: {variant: {metric: {value, tuned, delta, ci}}}}``.
    ``cond_metrics`` are the metrics already computed per condition and variant.
    """
    out: dict[str, dict[str, Any]] = {}
    for cname, by_variant in cond_preds.items():
        present = [q for q in quantized if q in by_variant]
        if "tuned" not in by_variant or not present:
            continue
        comp = compare_variants({n: by_variant[n] for n in ["tuned", *present]}, [], samples, seed)
        tuned = cond_metrics[cname]["tuned"]
        row: dict[str, Any] = {"n": comp["n"]}
        for q in present:
            mine = cond_metrics[cname][q]
            row[q] = {
                m: {"tuned": tuned[m], "value": mine[m], **comp["vs_reference"][q][m]}
                for m in QUANT_METRICS
                if m in comp["vs_reference"][q] and m in tuned and m in mine
            }
        out[cname] = row
    return out


# --------------------------------------------------------------------------- run files


def write_run_comparisons(
    eval_dir: Path, results: EvalResults, settings: EvalSettings
) -> dict[str, dict[str, Any]]:
    """A run's comparison files, from every variant it evaluated.

    ``compare.json``: tuned against base (with the evaluated split); ``compare_gguf.json``:
    each ``gguf-*`` variant against the tuned model it was exported from, so the card can say
    what quantization cost; ``side_by_side.jsonl``: every variant's answer per record. Returns
    the comparisons by file stem (none without both base and tuned)."""
    if "base" not in results or "tuned" not in results:
        return {}
    preds = results.predictions()
    s = settings
    if s.mode == "cpt":
        comp = compare_text_variants(preds["base"], preds["tuned"], s.bootstrap, s.seed)
    else:
        pair = {"base": preds["base"], "tuned": preds["tuned"]}
        comp = compare_variants(pair, s.breakdown_by, s.bootstrap, s.seed)
    comp["split"] = s.split
    write_json(eval_dir / "compare.json", comp)
    out = {"compare": comp}
    _log_delta("tuned", "base", results, comp, s.split)
    if s.mode == "cpt":
        return out
    quantized = [n for n in results.variants if n.startswith("gguf-")]
    if quantized:
        group = {n: preds[n] for n in ["tuned", *quantized]}
        out["compare_gguf"] = compare_variants(group, s.breakdown_by, s.bootstrap, s.seed)
        write_json(eval_dir / "compare_gguf.json", out["compare_gguf"])
        for name in quantized:
            _log_delta(name, "tuned", results, out["compare_gguf"])
    write_jsonl(eval_dir / "side_by_side.jsonl", side_by_side(preds))
    return out


def _log_delta(
    name: str, ref: str, results: EvalResults, comp: dict[str, Any], split: str | None = None
) -> None:
    """One log line per headline metric: F1 (or the first compared metric), perplexity."""
    d = comp["vs_reference"][name]
    keys = ["f1" if "f1" in d else next((k for k in d if k != "perplexity"), "")]
    keys += ["perplexity"] if "perplexity" in d else []
    for key in [k for k in keys if k]:
        digits = 3 if key == "perplexity" else 4
        log.info(
            "%s%s %s %.*f -> %s %.*f (delta %+.*f, 95%% CI [%+.*f, %+.*f])",
            f"{split} " if split else "",
            "F1" if key == "f1" else key,
            ref,
            digits,
            results[ref].metrics[key],
            name,
            digits,
            results[name].metrics[key],
            digits,
            d[key]["delta"],
            digits,
            d[key]["ci_low"],
            digits,
            d[key]["ci_high"],
        )
