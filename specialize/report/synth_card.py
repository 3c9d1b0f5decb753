"""The model card's "Synthetic training data" section, read from the generator's files.

A run whose training records were generated from documents has ``data/synth_stats.json``
(what was planned, asked, validated, filtered and kept, per task), ``data/synth_samples.jsonl``
(kept and removed records with the reason) and ``tasks.json`` (the task catalog, at the top
of the run directory or beside the data). This
section says where the records came from, what happened to them per task, and shows a few,
good and bad, so a reader can judge the data without opening the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specialize.data.tasks import PLACEHOLDERS
from specialize.io import read_json, read_jsonl

SPLITS = ("train", "validation", "test")
KEPT_SAMPLES, REMOVED_SAMPLES = 2, 1  # shown per task
USER_CHARS, ASSISTANT_CHARS = 360, 480  # sample text shown before it is cut


def synth_section(run: Path) -> list[str]:
    """The section's Markdown lines; nothing when the run has no ``data/synth_stats.json``."""
    path = run / "data" / "synth_stats.json"
    if not path.is_file():
        return []
    stats = read_json(path)
    # the run's catalog; the generator's own copy beside its data otherwise
    tasks_path = next(
        (p for p in (run / "tasks.json", run / "data" / "tasks.json") if p.is_file()), None
    )
    catalog = catalog_entries(read_json(tasks_path)) if tasks_path else []
    samples_path = run / "data" / "synth_samples.jsonl"
    samples = read_jsonl(samples_path) if samples_path.is_file() else []
    return synth_markdown(stats, catalog, samples)


def synth_markdown(
    stats: dict[str, Any], catalog: list[dict[str, Any]], samples: list[dict[str, Any]]
) -> list[str]:
    """The section from the generator's stats, catalog entries and samples (the model card's
    section, and ``report.md`` beside a dataset made by ``specialize data generate``)."""
    order = list(dict.fromkeys([e["name"] for e in catalog] + list(stats.get("tasks", {}))))
    L = ["## Synthetic training data", ""]
    L += _provenance(stats)
    L += _catalog_lines(catalog)
    L += _task_table(stats, [t for t in order if t in stats.get("tasks", {})])
    L += _samples(samples, order)
    return L


def catalog_entries(data: Any) -> list[dict[str, Any]]:
    """The task entries of a ``tasks.json`` (``Catalog.to_json()``: ``{"tasks": [{"name",
    "instruction", "input_kind", "schema", ...}]}``), read as plain data: the card needs their
    text, not the tasks rebuilt (a Python task's module need not be importable here)."""
    entries = data.get("tasks") if isinstance(data, dict) else None
    return [t for t in entries or [] if isinstance(t, dict) and "name" in t]


def _teacher_note(teacher: str) -> str:
    small = (
        f"`{teacher}` is a small model, bundled with specialize so that runs work offline, and "
        "a small teacher like it writes shallow, sometimes wrong answers."
        if teacher.startswith("bundled:")
        else f"The teacher was `{teacher}`: the records are only as good as it is, and a small "
        "teacher writes shallow, sometimes wrong answers."
    )
    return (
        "The training records were not written by people: a teacher model wrote them from "
        f"the documents below. {small} Each answer was checked against its task's schema "
        "and filtered (the counts are below), but a record that passed can still be wrong. "
        "The samples at the end include removed records, with the reason each was removed."
    )


def _provenance(stats: dict[str, Any]) -> list[str]:
    docs, chunk = stats.get("documents", {}), stats.get("chunking", {})
    splits = stats.get("splits", {})
    skipped = ", ".join(f"{k} {v}" for k, v in (docs.get("skipped") or {}).items()) or "none"
    files = docs.get("files") or {}
    file_cell = (
        ", ".join(f"{k} {v}" for k, v in files.items()) if isinstance(files, dict) else str(files)
    )
    rows = [
        ("documents", f"`{docs.get('path', '?')}`"),
        ("documents read", docs.get("documents", "?")),
        ("files", file_cell or "-"),
        ("files skipped", skipped),
        ("chunks", docs.get("chunks", "?")),
        (
            "chunking",
            f"{chunk.get('size', '?')} {chunk.get('unit', '?')}, overlap "
            f"{chunk.get('overlap', '?')}",
        ),
        ("teacher", f"`{stats.get('teacher', '?')}`"),
        ("seed", stats.get("seed", "?")),
        ("documents per split", _splits(splits.get("documents", {}))),
        ("records per split", _splits(splits.get("records", {}))),
    ]
    if "wall_s" in stats:
        rows.append(("generation time", f"{stats['wall_s']:.1f} s"))
    L = [_teacher_note(str(stats.get("teacher", "?"))), "", "| | |", "|---|---|"]
    return L + [f"| {k} | {v} |" for k, v in rows] + [""]


def _splits(counts: dict[str, Any]) -> str:
    return ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS) if counts else "-"


def _catalog_lines(catalog: list[dict[str, Any]]) -> list[str]:
    if not catalog:
        return []
    L = ["The task catalog (`tasks.json`): each task's instruction, as the teacher saw it.", ""]
    for t in catalog:
        kind = t.get("input_kind") or "chunk"
        out = "JSON" if t.get("schema") else "free text"
        L.append(f"- `{t['name']}` ({kind} → {out}):")
        L += [f"  > {line}" if line.strip() else "  >" for line in _instruction(t).splitlines()]
    return L + [""]


def _instruction(task: dict[str, Any]) -> str:
    """The instruction as the student sees it: ``{{``/``}}`` escapes undone, placeholders
    (``{passage}``...) left in; the template as stored when it does not format."""
    text = str(task.get("instruction") or "(no instruction)").strip()
    names = PLACEHOLDERS.get(str(task.get("input_kind") or "chunk"), ())
    try:
        return text.format(**{n: "{" + n + "}" for n in names})
    except (KeyError, IndexError, ValueError):
        return text


def _task_table(stats: dict[str, Any], tasks: list[str]) -> list[str]:
    """Per task: planned, asked, valid, invalid, removed by each filter, repaired (repeated
    items dropped, record kept), kept, splits."""
    per = stats.get("tasks", {})
    if not tasks:
        return []
    filters = list(dict.fromkeys(f for t in tasks for f in per[t].get("removed", {})))
    cols = ["planned", "teacher_calls", "cached", "retries", "errors", "valid", "invalid"]
    head = ["task", *[c.replace("_", " ") for c in cols]]
    head += [f"removed: {f.replace('_', ' ')}" for f in filters] + ["repaired", "kept", *SPLITS]
    L = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for t in tasks:
        s = per[t]
        cells = [f"`{t}`", *[str(s.get(c, "-")) for c in cols]]
        cells += [str(s.get("removed", {}).get(f, 0)) for f in filters]
        cells += [
            str(s.get("repaired", 0)),
            str(s.get("kept", "-")),
            *[str(s.get("splits", {}).get(x, 0)) for x in SPLITS],
        ]
        L.append("| " + " | ".join(cells) + " |")
    tot = stats.get("totals", {})
    if tot:
        cells = ["**total**", *[str(tot.get(c, "")) for c in cols]]
        cells += [str(tot.get("removed", {}).get(f, "")) for f in filters]
        records = stats.get("splits", {}).get("records", {})
        cells += [
            str(tot.get("repaired", 0)),
            str(tot.get("kept", "")),
            *[str(records.get(x, "")) for x in SPLITS],
        ]
        L.append("| " + " | ".join(cells) + " |")
    L.append("")
    reasons = [
        f"`{t}`: " + "; ".join(f"{r} ({n})" for r, n in per[t]["invalid_reasons"].items())
        for t in tasks
        if per[t].get("invalid_reasons")
    ]
    if reasons:
        L += ["Invalid teacher answers by reason: " + ". ".join(reasons) + ".", ""]
    return L


def _samples(samples: list[dict[str, Any]], order: list[str]) -> list[str]:
    """Up to two kept and one removed record per task, their text cut to a readable length."""
    if not samples:
        return []
    tasks = [t for t in order if any(s.get("task") == t for s in samples)]
    tasks += list(dict.fromkeys(s.get("task") for s in samples if s.get("task") not in tasks))
    L = [
        "### Sample records",
        "",
        "Taken from `data/synth_samples.jsonl`: up to two kept and one removed record per "
        "task, good and bad, long texts cut (the file has them whole).",
        "",
    ]
    for task in tasks:
        mine = [s for s in samples if s.get("task") == task]
        kept = [s for s in mine if s.get("kept")][:KEPT_SAMPLES]
        removed = [s for s in mine if not s.get("kept")][:REMOVED_SAMPLES]
        L += [f"#### {task}", ""]
        for s in kept + removed:
            L += _sample(s)
    return L


def _sample(s: dict[str, Any]) -> list[str]:
    verdict = "kept" if s.get("kept") else f"removed: {s.get('reason') or 'no reason given'}"
    source = f" from `{s['source_doc']}`" if s.get("source_doc") else ""
    return [
        f"**{verdict}**{source}",
        "",
        "user:",
        "",
        *_block(_cut(str(s.get("user", "")), USER_CHARS)),
        "assistant:",
        "",
        *_block(_cut(str(s.get("assistant", "")), ASSISTANT_CHARS)),
    ]


def _cut(text: str, limit: int) -> str:
    """``text`` up to ``limit`` characters, cut at a word boundary, saying how much is left."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head = text[:limit]
    if " " in head[limit // 2 :]:
        head = head[: head.rstrip().rfind(" ")]
    return f"{head.rstrip()} … [{len(text) - len(head.rstrip())} more characters]"


def _block(text: str) -> list[str]:
    """A fenced block that no backtick run in ``text`` can close."""
    run, longest = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", text, fence, ""]
