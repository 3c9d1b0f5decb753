"""Evaluation reports: one Markdown table over any variants, with deltas and CIs.

Rendered only from the metrics and comparison dicts (the same files that are saved as JSON),
so the Markdown can always be regenerated and never says what the files do not:
:func:`write_eval_report` turns the ``report.json`` of ``specialize eval`` into ``report.md``,
``metrics.png`` and, for embedding quality, ``similarity.png``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from specialize.io import atomic_path, read_json
from specialize.report.per_task import task_table

LABELS = {
    "exact_match": "exact match",
    "f1": "token F1",
    "bertscore_f1": "BERTScore F1 (MiniLM-L6)",
    "accuracy": "accuracy (parsed answer)",
    "loglik_accuracy": "accuracy (option log-likelihood)",
    "schema_valid": "schema-valid answers",
    "field_f1": "field F1 (soft, token F1 per item)",
    "index_accuracy": "passage index accuracy",
    "judge_correctness": "judge: correctness (1-5)",
    "judge_faithfulness": "judge: faithfulness (1-5)",
    "judge_relevance": "judge: relevance (1-5)",
    "judge_completeness": "judge: completeness (1-5)",
    "loss": "loss (reference tokens)",
    "perplexity": "perplexity",
}
ORDER = list(LABELS)


def _num(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _ci(d: dict[str, float] | None, digits: int = 4) -> str:
    if not d:
        return ""
    return f"{d['delta']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"


def results_table(
    metrics: dict[str, dict[str, Any]],
    compare: dict[str, Any],
    against: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Rows: metrics present in any variant; columns: each variant, then each delta vs the
    reference variant with its paired-bootstrap 95% CI.

    ``against`` gives some variants another reference: a comparison dict (as from
    ``compare_variants``) per variant, e.g. each GGUF against the tuned model it came from
    rather than against the base model.
    """
    names = list(metrics)
    ref = compare.get("reference", names[0])
    against = against or {}
    others = [n for n in names if n != ref]
    refs = {o: against[o]["reference"] if o in against else ref for o in others}
    head = ["metric", *names, *[f"Δ {o} − {refs[o]} (95% CI)" for o in others]]
    lines = [
        "| " + " | ".join(head) + " |",
        "|---" + "|---:" * len(names) + "|---" * len(others) + "|",
    ]
    vs = {o: (against.get(o) or compare).get("vs_reference", {}).get(o, {}) for o in others}
    for key in ORDER:
        if not any(key in metrics[n] for n in names):
            continue
        digits = 3 if key == "perplexity" else 4
        cells = [LABELS[key]] + [_num(metrics[n].get(key), digits) for n in names]
        cells += [_ci(vs[o].get(key), digits) for o in others]
        lines.append("| " + " | ".join(cells) + " |")
    extra = [
        ("stopped_rate", "answers ending at end-of-turn"),
        ("unparsed", "unparsed answers"),
        ("errors", "backend errors"),
    ]
    for key, label in extra:
        if any(metrics[n].get(key) for n in names) or key == "stopped_rate":
            if all(key in metrics[n] for n in names):
                vals = [
                    _num(metrics[n][key], 3)
                    if isinstance(metrics[n][key], float)
                    else str(metrics[n][key])
                    for n in names
                ]
                lines.append("| " + " | ".join([label, *vals, *[""] * len(others)]) + " |")
    return lines


def breakdown_tables(compare: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for field, by_variant in compare.get("breakdowns", {}).items():
        names = list(by_variant)
        first = next(iter(by_variant.values()))
        if not first:
            continue
        metrics = [m for m in ORDER if m in next(iter(first.values()))]
        out += [f"### By {field}", ""]
        head = [field, "n"] + [f"{n} {LABELS[m]}" for m in metrics for n in names]
        out.append("| " + " | ".join(head) + " |")
        out.append("|---|---:" + "|---:" * (len(head) - 2) + "|")
        for key in first:
            cells = [str(key), str(first[key]["n"])]
            cells += [_num(by_variant[n][key].get(m), 3) for m in metrics for n in names]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return out


def classification_tables(metrics: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for name, m in metrics.items():
        rep = m.get("classification")
        if not rep:
            continue
        out += [
            f"### Per class ({name}): accuracy {rep['accuracy']:.3f}, macro-F1 "
            f"{rep['macro_f1']:.3f}, unparsed {rep['unparsed']}",
            "",
            "| class | support | precision | recall | F1 |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, c in rep["per_class"].items():
            out.append(
                f"| {label} | {c['support']} | {c['precision']:.3f} | {c['recall']:.3f} "
                f"| {c['f1']:.3f} |"
            )
        out.append("")
    return out


def write_report(
    out_dir: Path,
    title: str,
    metrics: dict[str, dict[str, Any]],
    compare: dict[str, Any],
    notes: list[str] | None = None,
) -> Path:
    lines = [f"# {title}", "", f"{compare.get('n', '?')} records.", ""]
    lines += results_table(metrics, compare)
    lines += [""]
    if (out_dir / "metrics.png").is_file():
        lines += ["![metrics](metrics.png)", ""]
    lines += notes or []
    lines += task_table(metrics, compare)
    lines += breakdown_tables(compare)
    lines += classification_tables(metrics)
    for name, m in metrics.items():
        j = m.get("judge")
        if j:
            lines.append(
                f"Judge ({name}): {j['parsed']} of {j['n']} verdicts parsed, "
                f"{j['unparseable']} unparseable, {j['errors']} backend errors."
            )
    lines += [
        "",
        "Per-record answers of every variant side by side: `side_by_side.jsonl`.",
        "",
    ]
    path = out_dir / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")
    return path


def metrics_chart(metrics: dict[str, dict[str, Any]], compare: dict[str, Any], out: Path) -> None:
    """Bars of the headline metrics per variant, deltas with CIs in the panel titles."""
    from specialize.report.plots import pyplot

    plt = pyplot()

    names = list(metrics)
    keys = [k for k in ORDER if k != "loss" and all(k in metrics[n] for n in names)][:5]
    if not keys:
        return
    ref = compare.get("reference", names[0])
    vs = compare.get("vs_reference", {})
    fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 3.6), squeeze=False)
    colors = ["#8a8a8a", "#2b7bb9", "#e08a2b", "#5aa02c", "#9b59b6"]
    for ax, key in zip(axes[0], keys, strict=True):
        bars = ax.bar(names, [metrics[n][key] for n in names], color=colors[: len(names)])
        ax.bar_label(bars, fmt="%.3g")
        title = LABELS[key]
        for o in names:
            d = vs.get(o, {}).get(key)
            if d:
                title += f"\n{o}: Δ {d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        ax.set_title(title, fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(
        f"{compare.get('n', '?')} records; Δ vs {ref}, paired-bootstrap 95% CI", fontsize=9
    )
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------- specialize eval


def write_eval_report(out_dir: Path) -> Path:
    """``report.md`` (and its charts) from the ``report.json`` of ``specialize eval``."""
    from specialize.report.plots import plot_similarity

    report = read_json(out_dir / "report.json")
    metrics, comparison = report["metrics"], report["compare"]
    metrics_chart(metrics, comparison, out_dir / "metrics.png")
    notes = quantization_notes(metrics, report.get("vs_tuned"))
    notes += ablation_notes(
        list(metrics), report.get("ablations"), report.get("ablations_vs_tuned")
    )
    emb = report.get("embeddings")
    if emb:
        stats = {k: v["abstracts"] for k, v in emb.items() if k != "compare"}
        plot_similarity(stats, out_dir / "similarity.png")
        notes += embedding_notes(emb)
    return write_report(out_dir, report["title"], metrics, comparison, notes)


def quantization_notes(
    metrics: dict[str, dict[str, Any]], vs_tuned: dict[str, Any] | None
) -> list[str]:
    """Each exported GGUF against the tuned model it came from."""
    if not vs_tuned:
        return []
    shown = {n: metrics[n] for n in ["tuned", *vs_tuned["vs_reference"]]}
    return ["## Exported GGUFs against the tuned model", "", *results_table(shown, vs_tuned), ""]


def ablation_notes(
    variants: list[str],
    ablations: dict[str, dict[str, Any]] | None,
    per_condition: dict[str, dict[str, Any]] | None,
) -> list[str]:
    """One condition table per variant, what each condition left out, and (with GGUFs) what
    quantization cost under each condition."""
    if not ablations:
        return []
    lines = ["## Ablation conditions", ""]
    for name in variants:
        by_cond = {c: a["metrics"][name] for c, a in ablations.items() if name in a["metrics"]}
        lines += [f"### {name}", "", condition_table(by_cond), ""]
    skipped = {c: a["report"]["skipped"] for c, a in ablations.items()}
    lines += [f"Records left out per condition (reason: count): {skipped}", ""]
    if per_condition:
        lines += ["### Exported GGUFs against the tuned model, per condition", ""]
        lines += condition_delta_table(per_condition) + [""]
    return lines


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or math.isnan(x):
        return None
    return float(x)


def _metric(metrics: Mapping[str, Any], name: str) -> float | None:
    """A metric from a condition's summary: top level, ``classification`` or
    ``conflict_following`` (where :func:`conflict_following`'s result is stored)."""
    if name == "macro_f1":
        return _number((metrics.get("classification") or {}).get("macro_f1"))
    if name in ("followed_evidence", "followed_conflict"):
        nested = metrics.get("conflict_following") or {}
        return _number(nested.get(name, metrics.get(name)))
    return _number(metrics.get(name))


def condition_table(per_condition_metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of the conditions, with deltas against the first (full) condition.

    One row per condition in the given order. Columns appear only for metrics some condition
    has: ``n``, ``accuracy`` and ``macro_f1`` (from ``metrics["classification"]``), each with
    its change vs the first row in percentage points, and ``followed_evidence`` /
    ``followed_conflict`` (from ``metrics["conflict_following"]`` or the top level) for
    conflict conditions. Rates are shown in percent; "—" marks a value a condition lacks.
    Deltas in points, not relative percent, because "accuracy fell 12 points without the
    observation" is what the protocol is read for and does not swell when the base is small.
    """
    if not per_condition_metrics:
        raise ValueError("no conditions to tabulate")
    rows = list(per_condition_metrics.items())
    ref = rows[0][1]

    def has(name: str) -> bool:
        return any(_metric(m, name) is not None for _, m in rows)

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{100 * x:.1f}"

    def delta(x: float | None, base: float | None) -> str:
        return "—" if x is None or base is None else f"{100 * (x - base):+.1f}"

    header = ["condition"]
    cells: list[list[str]] = [[name.replace("|", "\\|")] for name, _ in rows]
    if any(_number(m.get("n")) is not None for _, m in rows):
        header.append("n")
        for cell, (_, m) in zip(cells, rows, strict=True):
            n = _number(m.get("n"))
            cell.append("—" if n is None else str(int(n)))
    for name in ("accuracy", "macro_f1"):
        if not has(name):
            continue
        header += [f"{name} (%)", f"Δ {name} (pp)"]
        base = _metric(ref, name)
        for i, (cell, (_, m)) in enumerate(zip(cells, rows, strict=True)):
            value = _metric(m, name)
            cell += [pct(value), "ref" if i == 0 else delta(value, base)]
    for name in ("followed_evidence", "followed_conflict"):
        if has(name):
            header.append(f"{name} (%)")
            for cell, (_, m) in zip(cells, rows, strict=True):
                cell.append(pct(_metric(m, name)))
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(cell) + " |" for cell in cells]
    return "\n".join(lines) + "\n"


QUANT_METRICS = ("accuracy", "f1", "exact_match", "bertscore_f1")


def condition_delta_table(per_cond: dict[str, dict[str, Any]]) -> list[str]:
    """Rows: conditions; per metric: the tuned value, then each GGUF's value and Δ (95% CI)."""
    first = next(iter(per_cond.values()), {})
    variants = [k for k in first if k != "n"]
    metrics = [m for m in QUANT_METRICS if any(m in first[q] for q in variants)]
    head = ["condition", "n"]
    for m in metrics:
        head.append(f"tuned {m}")
        for q in variants:
            head += [f"{q} {m}", f"Δ {q} − tuned (95% CI)"]
    per_metric = 1 + 2 * len(variants)
    lines = [
        "| " + " | ".join(head) + " |",
        "|---|---:" + ("|---:" + "|---:|---" * len(variants)) * len(metrics) + "|",
    ]
    for cname, row in per_cond.items():
        cells = [cname.replace("|", "\\|"), str(row["n"])]
        for m in metrics:
            group = ["-"] * per_metric
            for i, q in enumerate(variants):
                d = row.get(q, {}).get(m)
                if d is None:
                    continue
                group[0] = f"{d['tuned']:.4f}"
                group[1 + 2 * i] = f"{d['value']:.4f}"
                group[2 + 2 * i] = f"{d['delta']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
            cells += group
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def embedding_notes(emb: dict[str, Any] | None) -> list[str]:
    """Markdown for the embedding-quality results (title -> abstract retrieval, similarity)."""
    if not emb or "compare" not in emb:
        return []
    comp = emb["compare"]
    lines = [
        "## Embedding quality",
        "",
        f"Mean-pooled last-layer hidden states of {comp['n']} held-out abstracts and their "
        "titles; each title must retrieve its own abstract among all of them (ties count "
        "against the model).",
        "",
        "| metric | base | tuned | Δ tuned − base (95% CI) |",
        "|---|---:|---:|---|",
    ]
    for key, d in comp["deltas"].items():
        lines.append(
            f"| title→abstract {key} | {d['base']:.3f} | {d['tuned']:.3f} | "
            f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] |"
        )
    for key, d in comp["similarity"].items():
        if key == "anisotropy":  # the same number as the mean; named in the text below
            continue
        lines.append(
            f"| abstract cosine similarity {key} | {d['base']:.3f} | {d['tuned']:.3f} | "
            f"{d['delta']:+.3f} |"
        )
    return lines + [
        "",
        "The mean pairwise cosine similarity is the anisotropy: the closer to 1, the more "
        "every abstract looks like every other one.",
        "",
        "![similarity](similarity.png)",
        "",
    ]
