"""``report.md`` beside a generated dataset: what ``specialize data generate`` made, per task,
with sample records good and bad (the same section a run's model card shows)."""

from __future__ import annotations

from pathlib import Path

from specialize.io import read_json, read_jsonl, write_text
from specialize.report.synth_card import catalog_entries, synth_markdown


def write_synth_report(out_dir: Path) -> Path:
    """Render ``out_dir/report.md`` from the generator's files in ``out_dir``."""
    stats = read_json(out_dir / "synth_stats.json")
    catalog = catalog_entries(read_json(out_dir / "tasks.json"))
    samples = read_jsonl(out_dir / "synth_samples.jsonl")
    lines = synth_markdown(stats, catalog, samples)
    lines[0] = f"# Synthetic data: {out_dir.name}"
    lines += ["", f"Records: `{out_dir / 'dataset.jsonl'}`; statistics: `synth_stats.json`."]
    path = out_dir / "report.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
