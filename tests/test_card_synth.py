"""The model card of a run trained on generated data: its synthetic-data section (provenance,
catalog, per-task counts, kept and removed samples) and its per-task results table, rendered
from a hand-made run directory."""

from __future__ import annotations

import json

import yaml
from test_task_scores import _preds

from specialize.config import RunConfig
from specialize.data.tasks import BUILTIN, Catalog, Task
from specialize.evaluate.compare import compare_variants
from specialize.evaluate.scoring import summarize
from specialize.io import write_json, write_jsonl
from specialize.report.card import render_card
from specialize.report.synth_card import _cut, synth_section

STATS = {
    "documents": {
        "path": "docs/space",
        "documents": 52,
        "chunks": 140,
        "files": {".md": 50, ".txt": 2},
        "skipped": {"empty": 1},
    },
    "chunking": {"unit": "words", "size": 500, "overlap": 100},
    "teacher": "bundled:smollm2-135m-instruct",
    "seed": 17,
    "tasks": {
        "bullets": {
            "planned": 35, "teacher_calls": 35, "cached": 0, "valid": 34, "invalid": 1,
            "invalid_reasons": {"not JSON (cut by max_new_tokens)": 1}, "errors": 0,
            "retries": 2, "removed": {"grounding": 3, "near_duplicate": 1}, "repaired": 5,
            "kept": 30,
            "splits": {"train": 24, "validation": 2, "test": 4},
        },
        "rephrase": {
            "planned": 20, "teacher_calls": 12, "cached": 8, "valid": 20, "invalid": 0,
            "invalid_reasons": {}, "errors": 0, "retries": 0, "removed": {"too_short": 2},
            "kept": 18, "splits": {"train": 15, "validation": 1, "test": 2},
        },
    },
    "totals": {"planned": 55, "teacher_calls": 47, "kept": 48, "repaired": 5,
               "removed": {"grounding": 3, "near_duplicate": 1, "too_short": 2}, "invalid": 1},
    "splits": {"documents": {"train": 40, "validation": 3, "test": 9},
               "records": {"train": 39, "validation": 3, "test": 6}},
    "wall_s": 123.4,
}  # fmt: skip

SUMMARY = Task(
    "summary",
    'Summarise the passage. Answer in JSON: {{"summary": "..."}}\n\n{passage}',
    schema={"type": "object", "properties": {"summary": {"type": "string"}}},
)
CATALOG = Catalog([BUILTIN["bullets"], BUILTIN["rephrase"], SUMMARY]).to_json()

LONG = "word " * 400


def _samples() -> list[dict]:
    def row(task, kept, reason, user, assistant):
        return {"task": task, "kept": kept, "reason": reason, "user": user,
                "assistant": assistant, "source_doc": "mars.md"}  # fmt: skip

    return [
        row("bullets", True, None, "List the key facts: Mars has two moons.",
            '{"bullets":["Mars has two moons"]}'),
        row("bullets", True, None, "List the key facts: " + LONG, '{"bullets":["words"]}'),
        row("bullets", True, None, "third kept, not shown", '{"bullets":["hidden"]}'),
        row("bullets", False, "grounding", "List the key facts: Venus is hot.",
            '{"bullets":["Venus has rings"]}'),
        row("bullets", False, "near_duplicate", "second removed, not shown", "{}"),
        row("rephrase", False, "too_short", "Rephrase: the lander touched down.", "Landed ```x```"),
    ]  # fmt: skip


def _run(tmp_path, with_eval: bool = False):
    run = tmp_path / "run"
    cfg = RunConfig(name="space-synth", data={"path": "d.jsonl"}).model_dump(mode="json")
    (run / "data").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    write_json(run / "data" / "synth_stats.json", STATS)
    write_jsonl(run / "data" / "synth_samples.jsonl", _samples())
    write_json(run / "tasks.json", CATALOG)
    if with_eval:
        base, tuned = _preds(False), _preds(True)
        write_json(run / "eval" / "base" / "metrics.json", summarize(base, "base"))
        write_json(run / "eval" / "tuned" / "metrics.json", summarize(tuned, "tuned"))
        comp = compare_variants({"base": base, "tuned": tuned}, ["task"], 200, 0)
        write_json(run / "eval" / "compare.json", comp | {"split": "test"})
    return run


def test_synthetic_data_section(tmp_path):
    text = "\n".join(synth_section(_run(tmp_path)))
    assert text.startswith("## Synthetic training data")
    # honest about where the records come from, and that bad ones are shown
    assert "not written by people" in text and "small teacher" in text
    assert "include removed records" in text
    assert "`bundled:smollm2-135m-instruct`" in text
    # provenance
    for cell in ("| documents | `docs/space` |", "| documents read | 52 |", "| chunks | 140 |",
                 "| chunking | 500 words, overlap 100 |", "| files | .md 50, .txt 2 |",
                 "| files skipped | empty 1 |", "| documents per split | train 40, validation "
                 "3, test 9 |", "| generation time | 123.4 s |"):  # fmt: skip
        assert cell in text, cell
    # the catalog with each instruction
    assert "- `bullets` (chunk → JSON):" in text and "- `rephrase` (chunk → free text):" in text
    first_line = BUILTIN["bullets"].instruction.splitlines()[0]
    first_line = first_line.replace("{{", "{").replace("}}", "}")
    assert f"  > {first_line}" in text and "  > {passage}" in text
    # a template's escaped braces are shown as the student sees them
    assert "- `summary` (chunk → JSON):" in text
    assert '  > Summarise the passage. Answer in JSON: {"summary": "..."}' in text
    # per-task counts: planned, calls, cached, retries, errors, valid, invalid, removed x3,
    # repaired, kept, train, validation, test (stats from before 'repaired' read as 0)
    assert "| `bullets` | 35 | 35 | 0 | 2 | 0 | 34 | 1 | 3 | 1 | 0 | 5 | 30 | 24 | 2 | 4 |" in text
    assert "| `rephrase` | 20 | 12 | 8 | 0 | 0 | 20 | 0 | 0 | 0 | 2 | 0 | 18 | 15 | 1 | 2 |" in text
    assert "| **total** | 55 | 47 |  |  |  |  | 1 | 3 | 1 | 2 | 5 | 48 | 39 | 3 | 6 |" in text
    assert "removed: near duplicate" in text
    assert "`bullets`: not JSON (cut by max_new_tokens) (1)" in text


def test_samples_two_kept_one_removed_per_task_and_cut(tmp_path):
    text = "\n".join(synth_section(_run(tmp_path)))
    assert "#### bullets" in text and "#### rephrase" in text
    assert text.count("**kept** from `mars.md`") == 2
    assert "**removed: grounding** from `mars.md`" in text
    assert '{"bullets":["Venus has rings"]}' in text
    assert "**removed: too_short**" in text
    assert "third kept, not shown" not in text and "second removed, not shown" not in text
    assert "more characters]" in text and LONG not in text
    assert "````text\nLanded ```x```\n````" in text  # a fence its content cannot close


def test_cut_keeps_short_text_and_cuts_long_text_at_a_word():
    assert _cut("short answer", 50) == "short answer"
    cut = _cut("alpha beta gamma delta", 13)
    assert cut == "alpha beta … [12 more characters]"


def test_card_has_the_section_and_per_task_results(tmp_path):
    run = _run(tmp_path, with_eval=True)
    card = render_card(run)
    assert "## Synthetic training data" in card
    assert card.index("## Synthetic training data") < card.index("## LoRA and training")
    assert "| schema-valid answers | 0.5000 | 1.0000 |" in card
    assert "### By task" in card
    assert "| bullets | 6 | schema-valid | 0.000 | 1.000 | +1.000 [+1.000, +1.000] |" in card
    assert "| retrieval | 6 | passage index accuracy | 0.000 | 1.000 |" in card
    assert "soft set F1" in card
    assert "### By task\n\n| task | n | base EM" not in card  # not repeated as a breakdown


def test_card_without_synth_files_has_no_section(tmp_path):
    run = _run(tmp_path)
    (run / "data" / "synth_stats.json").unlink()
    assert synth_section(run) == []
    assert "Synthetic training data" not in render_card(run)
    assert json.loads((run / "tasks.json").read_text())["tasks"][0]["name"] == "bullets"
