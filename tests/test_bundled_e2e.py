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
            "--set",
            "export.speed_tokens=16",
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

    # The edge export of the real model: every GGUF loads in llama.cpp, F16 reproduces the
    # merged model's next tokens, the template and stop token survived, and each quantized
    # file answered the same test records as the tuned model.
    checks = json.loads((run / "export/gguf_checks.json").read_text())["checks"]
    assert checks["template"]["passed"]
    assert checks["f16"]["passed"] and checks["f16"]["logits"]["top1_agreement"] >= 0.99
    assert checks["f16"]["logits"]["positions"] > 1000
    for t in ("q4_k_m",):  # the example's gguf_types
        assert (run / f"gguf/space-qa-{t}.gguf").is_file()
        m = json.loads((run / f"eval/gguf-{t}/metrics.json").read_text())
        assert m["n"] == 6 and m["errors"] == 0
    speed = json.loads((run / "export/speed.json").read_text())["artifacts"]
    assert set(speed) == {"base", "adapter", "merged", "gguf-f16", "gguf-q4_k_m"}
    card = (run / "MODEL_CARD.md").read_text()
    assert "| GGUF Q4_K_M (llama.cpp) |" in card and "gguf-q4_k_m − tuned" in card
