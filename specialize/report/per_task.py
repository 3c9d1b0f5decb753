"""The per-task results table of the eval report and the model card.

Rendered from the ``by_task`` summaries of each variant's ``metrics.json`` and the
``by_task_vs_reference`` (or ``by_task``) deltas of a comparison (``compare_variants``): one
row per task and metric, each variant's mean, then each variant's delta against the
reference with its paired-bootstrap 95% CI over that task's records.
"""

from __future__ import annotations

import math
from typing import Any

# The metrics a task's row shows, those its records have (in this order).
TASK_METRICS = ("schema_valid", "field_f1", "index_accuracy", "f1", "accuracy")
TASK_LABELS = {
    "schema_valid": "schema-valid",
    "field_f1": "field F1",
    "index_accuracy": "passage index accuracy",
    "f1": "token F1",
    "accuracy": "accuracy",
}


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _ci(d: dict[str, float] | None, digits: int = 3) -> str:
    if not d:
        return ""
    return f"{d['delta']:+.{digits}f} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"


def task_table(metrics: dict[str, dict[str, Any]], compare: dict[str, Any]) -> list[str]:
    """``### By task`` and its table, or nothing when no variant has a ``by_task`` summary."""
    names = [n for n in metrics if metrics[n].get("by_task")]
    if not names:
        return []
    ref = compare.get("reference", names[0])
    others = [n for n in names if n != ref]
    by_vs = dict(compare.get("by_task_vs_reference") or {})
    if others and others[0] not in by_vs and compare.get("by_task"):
        by_vs[others[0]] = compare["by_task"]
    tasks = list(dict.fromkeys(t for n in names for t in metrics[n]["by_task"]))
    head = ["task", "n", "metric", *names, *[f"Δ {o} − {ref} (95% CI)" for o in others]]
    lines = [
        "### By task",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---:|---" + "|---:" * len(names) + "|---" * len(others) + "|",
    ]
    for task in tasks:
        rows = {n: metrics[n]["by_task"].get(task, {}) for n in names}
        count = next((r["n"] for r in rows.values() if "n" in r), "?")
        for m in TASK_METRICS:
            if not any(m in r for r in rows.values()):
                continue
            cells = [task, str(count), TASK_LABELS[m]]
            cells += [_num(rows[n].get(m)) for n in names]
            cells += [_ci(by_vs.get(o, {}).get(task, {}).get(m)) for o in others]
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]
