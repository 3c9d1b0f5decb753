"""The main job's real entry point on the bundled SmolLM2 model, shortened (marked e2e)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ROOT, needs_bundled

from specialize.cli import main


@pytest.mark.e2e
@needs_bundled
def test_bundled_space_run_short(tmp_path):
    cfg = ROOT / "examples" / "space" / "config.yaml"
    code = main(
        [
            "run",
            str(cfg),
            "--no-progress",
            "--set",
            f"output_dir={tmp_path}",
            "--set",
            "train.max_steps=2",
            "--set",
            "eval.limit=6",
            "--set",
            "export.check_prompts=2",
        ]
    )
    assert code == 0
    run = tmp_path / "space-qa"
    stats = json.loads((run / "data/stats.json").read_text())
    assert stats["leakage"] == {"exact": 0, "near": 0, "threshold": 0.8}
    assert stats["splits"]["test"] > 150 and stats["splits"]["train"] > 400
    check = json.loads((run / "export/merge_check.json").read_text())
    assert check["passed"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from specialize.models.load import load_model, resolve

    # Compared in float64: float32 rounding through 30 layers alone moves logits of ~25 by
    # ~1e-4, which would hide (or fake) a merge error of that size.
    base = load_model(resolve("bundled:smollm2-135m-instruct"))
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 253, 2417, 474, 2, 198, 1, 520, 9531, 198]])
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(base, run / "adapter").double().eval()
        adapter_logits = adapted(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float64).eval()
        merged_logits = merged(ids).logits
    assert (adapter_logits - merged_logits).abs().max() <= 1e-4
    assert merged.config.tie_word_embeddings
