"""Evaluation reports: one Markdown table over any variants, with deltas and CIs.

Rendered only from the metrics and comparison dicts (the same files that are saved as JSON),
so the Markdown can always be regenerated and never says what the files do not.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from specialize.io import atomic_path

LABELS = {
    "exact_match": "exact match",
    "f1": "token F1",
    "bertscore_f1": "BERTScore F1 (MiniLM-L6)",
    "accuracy": "accuracy (parsed answer)",
    "loglik_accuracy": "accuracy (option log-likelihood)",
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
