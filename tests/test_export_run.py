"""`specialize export RUN_DIR` on a tiny run: GGUF files, checks and sizes recorded."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
from conftest import write_tiny_config, write_tiny_data

from specialize.cli import main

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (make setup builds it)",
)


@pytest.fixture(scope="module")
def run_dir(tiny_llama, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exp")
    data = write_tiny_data(folder / "data")
    cfg = write_tiny_config(folder, tiny_llama, data)
    assert main(["run", str(cfg), "--no-progress"]) == 0
    return folder / "runs" / "tiny"


def test_run_exports_checks_times_and_evaluates_each_gguf(run_dir):
    """`specialize run` itself (export.gguf auto, llama.cpp installed) does the edge export."""
    names = sorted(p.name for p in (run_dir / "gguf").iterdir())
    assert names == ["imatrix.dat", "tiny-f16.gguf", "tiny-q4_k_m.gguf", "tiny-q8_0.gguf"]
    files = json.loads((run_dir / "export" / "gguf_files.json").read_text())
    assert files["q4_k_m"]["imatrix"] and not files["q8_0"]["imatrix"]  # K-quants only
    checks = json.loads((run_dir / "export" / "gguf_checks.json").read_text())["checks"]
    assert checks["template"]["passed"] and checks["f16"]["passed"]
    speed = json.loads((run_dir / "export" / "speed.json").read_text())["artifacts"]
    assert set(speed) == {"base", "adapter", "merged", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"}
    assert all(r["tokens_per_s"] > 0 and r["new_tokens"] == 64 for r in speed.values())
    tuned = json.loads((run_dir / "eval" / "tuned" / "metrics.json").read_text())
    for t in ("q8_0", "q4_k_m"):
        m = json.loads((run_dir / "eval" / f"gguf-{t}" / "metrics.json").read_text())
        assert m["n"] == tuned["n"] and m["errors"] == 0 and "f1" in m
    vs = json.loads((run_dir / "eval" / "compare_gguf.json").read_text())
    assert vs["reference"] == "tuned" and set(vs["vs_reference"]) == {"gguf-q8_0", "gguf-q4_k_m"}
    side = (run_dir / "eval" / "side_by_side.jsonl").read_text().splitlines()
    assert "gguf-q4_k_m" in json.loads(side[0])
    card = (run_dir / "MODEL_CARD.md").read_text()
    head = next(line for line in card.splitlines() if line.startswith("| metric | base"))
    assert head.startswith("| metric | base | tuned | gguf-q8_0 | gguf-q4_k_m | Δ tuned − base")
    assert "Δ gguf-q4_k_m − tuned" in head
    assert "| GGUF Q4_K_M (llama.cpp) | `gguf/tiny-q4_k_m.gguf` |" in card
    assert "ollama create tiny" in card
    assert "Q4_K_M rounded with an importance matrix" in card
    pick = json.loads((run_dir / "export" / "pick.json").read_text())
    within = [c["type"] for c in pick["candidates"] if c["within"]]  # smallest first
    assert pick["type"] == (within[0] if within else "f16") and pick["metric"] == "f1"
    assert f"**File to ship: `gguf/{pick['file']}`**" in card
    assert f"llama-server -m gguf/{pick['file']}" in card
    timings = json.loads((run_dir / "timings.json").read_text())
    assert "gguf" in timings["stages_s"]


def test_export_writes_gguf_checks_and_sizes(run_dir):
    assert main(["export", str(run_dir), "--types", "q8_0,q4_k_m", "--imatrix-tokens", "0"]) == 0
    names = sorted(p.name for p in (run_dir / "gguf").glob("*.gguf"))
    assert names == ["tiny-f16.gguf", "tiny-q4_k_m.gguf", "tiny-q8_0.gguf"]
    files = json.loads((run_dir / "export" / "gguf_files.json").read_text())
    assert not files["q4_k_m"]["imatrix"]
    checks = json.loads((run_dir / "export" / "gguf_checks.json").read_text())["checks"]
    assert checks["template"]["passed"]
    assert checks["f16"]["passed"] and checks["f16"]["logits"]["top1_agreement"] >= 0.99
    sizes = json.loads((run_dir / "export" / "sizes.json").read_text())
    assert sizes["gguf"]["q4_k_m"]["bytes"] < sizes["gguf"]["f16"]["bytes"]
    assert sizes["adapter"] > 0 and sizes["merged"] > 0


def test_export_without_adapter_is_a_one_line_error(run_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(run_dir / "data", bare / "data")
    assert main(["export", str(bare)]) == 2
    err = capsys.readouterr().err.strip()
    assert "adapter" in err and err.count("\n") == 0


def test_eval_compares_gguf_variants_with_the_tuned_model(run_dir, tmp_path):
    if not (run_dir / "gguf").is_dir():
        assert main(["export", str(run_dir), "--types", "q8_0", "--no-checks"]) == 0
    out = tmp_path / "ev"
    code = main(
        ["eval", str(run_dir), "--gguf", "--out", str(out), "--no-progress", "--no-bertscore"]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    names = list(report["metrics"])
    assert names[:2] == ["base", "tuned"] and "gguf-f16" in names
    assert "f1" in report["compare"]["vs_reference"]["gguf-f16"]
    assert "f1" in report["vs_tuned"]["vs_reference"]["gguf-f16"]
    assert "## Exported GGUFs against the tuned model" in (out / "report.md").read_text()


def test_bfloat16_merged_model_is_checked_before_the_cast(tiny_llama, tmp_path):
    """export.merged_dtype bfloat16: half the folder; the merge is proved before the lossy
    cast, and the GGUF is still converted and checked from the saved folder."""
    from safetensors import safe_open

    data = write_tiny_data(tmp_path / "data")
    cfg = write_tiny_config(
        tmp_path,
        tiny_llama,
        data,
        export="{check_prompts: 2, merged_dtype: bfloat16, gguf_types: [q8_0], gguf_eval: false, "
        "speed_tokens: 0}",
    )
    assert main(["run", str(cfg), "--no-progress"]) == 0
    run = tmp_path / "runs" / "tiny"
    with safe_open(str(run / "merged" / "model.safetensors"), framework="pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    check = json.loads((run / "export" / "merge_check.json").read_text())
    assert check["passed"] and check["saved_dtype"] == "bfloat16"
    assert check["max_abs_diff_before_cast"] < check["max_abs_diff_vs_adapter"]
    assert 0.0 <= check["top1_agreement_saved"] <= 1.0
    gchecks = json.loads((run / "export" / "gguf_checks.json").read_text())["checks"]
    assert gchecks["f16"]["passed"]
    assert not (run / "export" / "speed.json").exists()
    assert not (run / "eval" / "gguf-q8_0").exists()
    card = (run / "MODEL_CARD.md").read_text()
    assert "saved in bfloat16" in card and "| GGUF Q8_0 (llama.cpp) |" in card
