"""Continued pre-training: documents -> packed rows -> held-out perplexity, on a tiny model."""

from __future__ import annotations

import importlib.util
import json

import pytest

from specialize.cli import main

TEXTS = [
    "Gaia measures parallaxes of a billion stars with microarcsecond precision.",
    "Type Ia supernovae are standardisable candles for cosmic distances.",
    "The cosmic microwave background has a temperature of about 2.7 kelvin.",
    "Hot Jupiters orbit their stars in a few days.",
    "Dark matter halos host galaxies and shape their rotation curves.",
    "Neutron stars spin rapidly and emit beams of radio waves.",
    "Quasars are powered by accretion onto supermassive black holes.",
    "Star formation happens inside cold molecular clouds.",
] * 3


def write(tmp_path, rows, extra=""):
    data = tmp_path / "abstracts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"name: cpt\nmode: cpt\noutput_dir: {tmp_path / 'runs'}\n"
        f"model: {{base: {tmp_path.parent / 'model'}}}\n"
        "chat: {max_seq_len: 64}\n"
        f"data: {{path: {data}, columns: {{text: [title, abstract], id: arxiv_id}},"
        " split: {group_by: null, validation: 0.1, test: 0.25}}\n"
        "lora: {r: 4, alpha: 8, dropout: 0.0}\n"
        "train: {epochs: 2, batch_size: 2, lr: 0.01, eval_every: 5, log_every: 5}\n"
        "eval: {batch_size: 4, bootstrap: 200}\nexport: {check_prompts: 2}\n" + extra
    )
    return cfg


def test_cpt_run_reports_held_out_perplexity(tiny_llama, tmp_path):
    (tmp_path / "model").symlink_to(tiny_llama)
    work = tmp_path / "w"
    work.mkdir()
    rows = [
        {"arxiv_id": f"25{i:02d}.0001", "title": f"Paper {i}", "abstract": t}
        for i, t in enumerate(TEXTS)
    ]
    assert main(["run", str(write(work, rows)), "--no-progress"]) == 0
    run = work / "runs" / "cpt"
    stats = json.loads((run / "data/stats.json").read_text())
    assert sum(stats["splits"].values()) == len(rows)
    base = json.loads((run / "eval/base/metrics.json").read_text())
    tuned = json.loads((run / "eval/tuned/metrics.json").read_text())
    comp = json.loads((run / "eval/compare.json").read_text())
    assert base["n"] == stats["splits"]["test"] and base["tokens"] > 0
    assert "perplexity" in comp["deltas"] and "f1" not in comp["deltas"]
    card = (run / "MODEL_CARD.md").read_text()
    assert f"| perplexity | {base['perplexity']:.3f} | {tuned['perplexity']:.3f}" in card
    assert "Held-out perplexity changed by" in card
    # Every train row is packed: all tokens but each chunk's first are targets.
    hist = json.loads((run / "train/history.json").read_text())
    assert hist["steps"] >= 2
    if importlib.util.find_spec("llama_cpp") is not None:  # export.gguf: auto
        # The edge export of a CPT run is checked on held-out documents, not conversations.
        checks = json.loads((run / "export/gguf_checks.json").read_text())["checks"]
        assert "template" not in checks and checks["f16"]["passed"]
        f16 = checks["f16"]["logits"]
        assert f16["perplexity_gguf"] == pytest.approx(f16["perplexity_hf"], rel=1e-3)
        assert "perplexity of every token, merged → GGUF" in card
        speed = json.loads((run / "export/speed.json").read_text())["artifacts"]
        assert speed["gguf-q4_k_m"]["tokens_per_s"] > 0

    # `specialize eval` on the cpt run: perplexity plus embedding quality (titles -> abstracts).
    out = work / "ev"
    assert main(["eval", str(run), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["base"]["perplexity"] == base["perplexity"]
    emb = report["embeddings"]["compare"]
    assert set(emb["deltas"]) >= {"recall@1", "mrr"} and emb["n"] == base["n"]
    assert "## Embedding quality" in (out / "report.md").read_text()
    assert (out / "similarity.png").stat().st_size > 1000


def test_cpt_file_with_no_text_is_a_clear_error(tiny_llama, tmp_path, capsys):
    (tmp_path / "model").symlink_to(tiny_llama)
    work = tmp_path / "w"
    work.mkdir()
    rows = [
        {"arxiv_id": "1", "title": " ", "abstract": ""},
        {"arxiv_id": "2", "title": "", "abstract": None},
    ]
    assert main(["run", str(write(work, rows))]) == 2
    err = capsys.readouterr().err
    assert "field 'data.columns.text': no document has any text" in err
    assert not (work / "runs").exists() or not any((work / "runs").iterdir())


def test_cpt_missing_text_column(tiny_llama, tmp_path, capsys):
    (tmp_path / "model").symlink_to(tiny_llama)
    work = tmp_path / "w"
    work.mkdir()
    assert main(["run", str(write(work, [{"arxiv_id": "1", "summary": "x"}]))]) == 2
    assert "abstracts.jsonl:1 field 'data.columns.text': no column 'title'" in (
        capsys.readouterr().err
    )
