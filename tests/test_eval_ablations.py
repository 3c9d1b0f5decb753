"""Ablation conditions through `specialize eval` on a tiny run directory made by hand."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from specialize.cli import main
from specialize.io import read_json, read_jsonl

CLASSES = ["debris", "storm", "clear"]


def _records(n: int = 12) -> list[dict]:
    out = []
    for i in range(n):
        label = CLASSES[i % 3]
        fields = {
            "sensor": ["optical", "radar"][i % 2],
            "region": f"{label} zone {i}",
            "observation": f"frame shows {label} pattern number {i}",
        }
        user = f"Sensor: {fields['sensor']}\nRegion: {fields['region']}\nClassify."
        out.append(
            {
                "id": f"r{i}",
                "task": "classify",
                "choices": CLASSES,
                "label": label,
                "fields": fields,
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": label},
                ],
            }
        )
    out[5]["fields"].pop("region")  # must be counted and left out, not crash the run
    return out


def _run_dir(tmp_path, tiny_llama):
    import torch
    from peft import LoraConfig, get_peft_model

    from specialize.models.load import load_model, resolve

    run = tmp_path / "run"
    model = load_model(resolve(str(tiny_llama)))
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft.save_pretrained(run / "adapter")
    (run / "adapter" / "specialize.json").write_text(
        json.dumps({"base_model": str(tiny_llama), "chat_format": "chatml", "targets": []})
    )
    cfg = {
        "name": "tiny",
        "model": {"base": str(tiny_llama)},
        "chat": {"format": "chatml"},
        "eval": {
            "max_new_tokens": 4,
            "batch_size": 4,
            "bootstrap": 200,
            "breakdown_by": ["label"],
            "ablations": {
                "template": "Sensor: {sensor}\nRegion: {region}\nObservation: {observation}\n"
                "Classify.",
                "conditions": [
                    {"name": "full"},
                    {"name": "no_region", "drop": "region"},
                    {"name": "noisy_obs", "noise": "observation", "seed": 1},
                    {"name": "conflict_region", "conflict": "region"},
                ],
            },
        },
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "data").mkdir()
    (run / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    return run


def test_ablations_report_every_condition_and_conflict_following(tmp_path, tiny_llama):
    run = _run_dir(tmp_path, tiny_llama)
    out = tmp_path / "ev"
    code = main(["eval", str(run), "--out", str(out), "--no-progress", "--no-bertscore"])
    assert code == 0
    report = read_json(out / "report.json")
    abl = report["ablations"]
    assert list(abl) == ["full", "no_region", "noisy_obs", "conflict_region"]
    for cond in abl.values():
        assert set(cond["metrics"]) == {"base", "tuned"}
        assert cond["report"]["skipped"]["missing_field"] == 1  # r5 lacks 'region'
        assert cond["metrics"]["base"]["n"] == 11
        assert "accuracy" in cond["metrics"]["tuned"]
    cf = abl["conflict_region"]["metrics"]["tuned"]["conflict_following"]
    assert {"followed_evidence", "followed_conflict", "unparsed"} <= set(cf)
    dropped = read_jsonl(out / "ablations" / "no_region" / "base.jsonl")
    assert len(dropped) == 11
    assert "classification" in report["metrics"]["base"]  # per-class report on the full set
    md = (out / "report.md").read_text()
    assert "## Ablation conditions" in md and "conflict_region" in md


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed"
)
def test_gguf_against_tuned_per_condition(tmp_path, tiny_llama):
    """The triage seed's table: the quantized file against the tuned model, per condition."""
    run = _run_dir(tmp_path, tiny_llama)
    assert main(["export", str(run), "--types", "q8_0", "--no-checks"]) == 0
    out = tmp_path / "ev"
    code = main(["eval", str(run), "--gguf", "--out", str(out), "--no-progress", "--no-bertscore"])
    assert code == 0
    report = read_json(out / "report.json")
    per = report["ablations_vs_tuned"]
    assert list(per) == ["full", "no_region", "noisy_obs", "conflict_region"]
    for row in per.values():
        assert row["n"] == 11 and set(row) == {"n", "gguf-f16", "gguf-q8_0"}
        acc = row["gguf-q8_0"]["accuracy"]
        assert acc["delta"] == pytest.approx(acc["value"] - acc["tuned"])
        assert acc["ci_low"] <= acc["delta"] <= acc["ci_high"]
    md = (out / "report.md").read_text()
    assert "### Exported GGUFs against the tuned model, per condition" in md
    assert "| conflict_region | 11 |" in md
