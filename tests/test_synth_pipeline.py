"""``specialize run`` with a synth section: documents -> teacher -> records -> LoRA -> per-task
evaluation, end to end on a tiny model with the fake HTTP teacher (no weights downloaded)."""

from __future__ import annotations

import json

from specialize.cli import main
from specialize.data.tasks import BUILTIN, Catalog
from tests.synth_fakes import FakeServer
from tests.test_synth_generate import write_docs


def test_run_with_synth_trains_and_evaluates_per_task(tmp_path, tiny_llama, capsys):
    docs = write_docs(tmp_path / "docs")
    server = FakeServer()
    tasks = ", ".join(f"{{name: {n}, probability: 1.0}}" for n in BUILTIN)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "\n".join(
            [
                "name: synth-tiny",
                f"output_dir: {tmp_path / 'runs'}",
                f"model: {{base: {tiny_llama}}}",
                "chat: {format: chatml, max_seq_len: 1024, overlength: drop}",
                "synth:",
                f"  documents: {docs}",
                "  chunk: {size: 60, overlap: 10}",
                f"  tasks: [{tasks}]",
                f"  teacher: {server.url}",
                "  validation: 0.2",
                "  test: 0.2",
                "  max_new_tokens: 16",
                "lora: {r: 4, alpha: 8, dropout: 0.0, targets: all-linear}",
                "train: {max_steps: 2, batch_size: 4, lr: 0.01, eval_every: 2, log_every: 1}",
                "eval: {max_new_tokens: 16, batch_size: 8, bootstrap: 100, bertscore: false}",
                "export: {check_prompts: 2, gguf: false}",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    try:
        assert main(["run", str(cfg), "--no-progress"]) == 0
    finally:
        server.stop()
    run = tmp_path / "runs" / "synth-tiny"
    stats = json.loads((run / "data" / "synth_stats.json").read_text())
    assert stats["totals"]["kept"] > 0
    catalog = Catalog.from_json(json.loads((run / "tasks.json").read_text()))
    assert catalog.names == list(BUILTIN)
    train = [json.loads(x) for x in (run / "data" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (run / "data" / "test.jsonl").read_text().splitlines()]
    assert {r["source_doc"] for r in train}.isdisjoint({r["source_doc"] for r in test})
    metrics = json.loads((run / "eval" / "tuned" / "metrics.json").read_text())
    assert "schema_valid" in metrics
    compare = json.loads((run / "eval" / "compare.json").read_text())
    assert "by_task" in compare
    card = (run / "MODEL_CARD.md").read_text()
    assert "Synthetic training data" in card
