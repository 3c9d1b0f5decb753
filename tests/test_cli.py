"""The real entry point end to end on a tiny model, and every bad input the issue names."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_config, write_tiny_data

from specialize.cli import main


@pytest.fixture(scope="module")
def tiny_run(tiny_llama, tmp_path_factory):
    """One `specialize run` on the tiny model, shared by the assertions below."""
    import logging

    folder = tmp_path_factory.mktemp("e2e")
    data = write_tiny_data(folder / "data")
    cfg = write_tiny_config(folder, tiny_llama, data)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    h = Keep()
    logging.getLogger("specialize").addHandler(h)
    try:
        code = main(["run", str(cfg), "--no-progress"])
    finally:
        logging.getLogger("specialize").removeHandler(h)
    return {
        "code": code,
        "dir": folder / "runs" / "tiny",
        "log": records,
        "folder": folder,
        "model": tiny_llama,
    }


def test_run_writes_every_artifact(tiny_run):
    assert tiny_run["code"] == 0
    run = tiny_run["dir"]
    for rel in (
        "config.yaml",
        "manifest.json",
        "MODEL_CARD.md",
        "run.log",
        "timings.json",
        "env.json",
        "data/train.jsonl",
        "data/validation.jsonl",
        "data/test.jsonl",
        "data/stats.json",
        "data/leakage.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/specialize.json",
        "train/history.json",
        "train/adapted_modules.json",
        "eval/base/predictions.jsonl",
        "eval/base/metrics.json",
        "eval/tuned/predictions.jsonl",
        "eval/tuned/metrics.json",
        "eval/compare.json",
        "eval/side_by_side.jsonl",
        "merged/config.json",
        "merged/model.safetensors",
        "export/merge_check.json",
        "plots/loss.png",
        "plots/metrics.png",
    ):
        assert (run / rel).is_file(), rel
    assert not list(run.parent.glob(".*partial"))
    manifest = json.loads((run / "manifest.json").read_text())
    paths = {a["path"] for a in manifest["artifacts"]}
    assert "adapter/adapter_model.safetensors" in paths and "MODEL_CARD.md" in paths
    assert all(len(a["sha256"]) == 64 for a in manifest["artifacts"])


def test_log_lines_and_trainable_parameter_count(tiny_run):
    log = "\n".join(tiny_run["log"])
    # r=4 on all 14 linear layers of the 2-layer hidden-32 LLaMA:
    # per layer q(32->32) k,v(32->16) o(32->32) gate,up(32->64) down(64->32)
    per_layer = 4 * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 2 * (32 + 64) + (64 + 32))
    assert f"trainable params: {2 * per_layer:,}" in log
    assert "data: 15 records -> train" in log
    assert "training: 3 steps (3 per epoch), 9 rows" in log and "step 3 validation loss" in log
    assert "merged: max |logit diff| vs adapter" in log and "-> ok" in log
    counts = json.loads((tiny_run["dir"] / "train/adapted_modules.json").read_text())
    assert counts["parameters"]["trainable"] == 2 * per_layer


def test_test_split_holds_paraphrases_of_trained_facts(tiny_run):
    run = tiny_run["dir"]
    train = {json.loads(x)["id"] for x in (run / "data/train.jsonl").read_text().splitlines()}
    test = [json.loads(x) for x in (run / "data/test.jsonl").read_text().splitlines()]
    assert {r["id"] for r in test} == {"p0", "p1", "p2"}
    assert all(r["paraphrase_of"] in train for r in test)


def test_adapter_and_merged_open_in_peft_and_transformers(tiny_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tiny_run["dir"]
    base = AutoModelForCausalLM.from_pretrained(tiny_run["model"])
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, run / "adapter").eval()
        adapter_logits = adapted(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
        merged_logits = merged(ids).logits
    assert (merged_logits - adapter_logits).abs().max() <= 1e-4
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the merge changed the model
    check = json.loads((run / "export/merge_check.json").read_text())
    assert check["passed"] and check["max_abs_diff_vs_adapter"] <= 1e-4


def test_model_card_numbers_come_from_run_files(tiny_run):
    run = tiny_run["dir"]
    card = (run / "MODEL_CARD.md").read_text()
    base = json.loads((run / "eval/base/metrics.json").read_text())
    tuned = json.loads((run / "eval/tuned/metrics.json").read_text())
    comp = json.loads((run / "eval/compare.json").read_text())
    assert f"| token F1 | {base['f1']:.4f} | {tuned['f1']:.4f} |" in card
    assert f"{comp['deltas']['f1']['ci_low']:+.4f}" in card
    assert f"| perplexity | {base['perplexity']:.3f} | {tuned['perplexity']:.3f}" in card
    assert f"{comp['deltas']['perplexity']['ci_high']:+.3f}" in card
    assert "PeftModel.from_pretrained" in card


def test_existing_run_dir_is_not_overwritten(tiny_run, capsys):
    cfg = tiny_run["folder"] / "config.yaml"
    before = (tiny_run["dir"] / "manifest.json").read_bytes()
    assert main(["run", str(cfg), "--no-progress"]) == 2
    assert "already exists; use --force" in capsys.readouterr().err
    assert (tiny_run["dir"] / "manifest.json").read_bytes() == before


# ----------------------------------------------------------------------------- bad input


def _bad(
    tmp_path: Path, tiny_llama: Path, capsys, *, data_lines=None, cfg_text=None, **cfg_extra
) -> str:
    data = write_tiny_data(tmp_path / "data")
    if data_lines is not None:
        data.write_text("\n".join(data_lines) + "\n")
    cfg = write_tiny_config(tmp_path, tiny_llama, data, **cfg_extra)
    if cfg_text is not None:
        cfg.write_text(cfg_text)
    code = main(["run", str(cfg), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    errors = [line for line in err if line.startswith("specialize: error:")]
    assert len(errors) == 1, err
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a failed run left files behind"
    return errors[0]


GOOD = json.dumps(
    {"messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "a."}]}
)


def test_bad_malformed_yaml(tmp_path, tiny_llama, capsys):
    err = _bad(tmp_path, tiny_llama, capsys, cfg_text="name: x\ndata: {path: [\n")
    assert "config.yaml:" in err and "malformed YAML" in err


def test_bad_unknown_key(tmp_path, tiny_llama, capsys):
    err = _bad(tmp_path, tiny_llama, capsys, optimiser="{lr: 1}")
    assert "field 'optimiser': unknown key" in err


def test_bad_missing_data_file(tmp_path, tiny_llama, capsys):
    cfg = write_tiny_config(tmp_path, tiny_llama, tmp_path / "missing.jsonl")
    assert main(["run", str(cfg)]) == 2
    assert "missing.jsonl field 'data.path': data file not found" in capsys.readouterr().err


def test_bad_jsonl_line(tmp_path, tiny_llama, capsys):
    err = _bad(tmp_path, tiny_llama, capsys, data_lines=[GOOD, "{oops"])
    assert "qa.jsonl:2: not valid JSON" in err


def test_bad_no_assistant_turn(tmp_path, tiny_llama, capsys):
    row = json.dumps({"messages": [{"role": "user", "content": "q?"}]})
    err = _bad(tmp_path, tiny_llama, capsys, data_lines=[GOOD, row])
    assert "qa.jsonl:2 field 'messages': record has no assistant turn" in err


def test_bad_empty_assistant_message(tmp_path, tiny_llama, capsys):
    row = json.dumps(
        {"messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": ""}]}
    )
    err = _bad(tmp_path, tiny_llama, capsys, data_lines=[row, GOOD])
    assert "qa.jsonl:1 field 'messages[1].content': empty assistant message" in err


def test_bad_sequence_longer_than_limit(tmp_path, tiny_llama, capsys):
    long = json.dumps(
        {
            "id": "long",
            "messages": [
                {"role": "user", "content": "why? " * 200},
                {"role": "assistant", "content": "ok"},
            ],
        }
    )
    err = _bad(tmp_path, tiny_llama, capsys, data_lines=[GOOD, long])
    assert "record 'long' is" in err and "chat.max_seq_len=256" in err


def test_overlong_truncation_is_counted(tmp_path, tiny_llama):
    from specialize.config import load_config
    from specialize.data.prepare import prepare_data
    from specialize.models.load import load_tokenizer, resolve

    data = write_tiny_data(tmp_path / "data")
    long = {
        "id": "long",
        "messages": [
            {"role": "user", "content": "q?"},
            {"role": "assistant", "content": "very long " * 200},
        ],
    }
    with data.open("a") as f:
        f.write(json.dumps(long) + "\n")
    cfg = load_config(
        write_tiny_config(tmp_path, tiny_llama, data), {"chat.overlength": "truncate"}
    )
    tok = load_tokenizer(resolve(cfg.model.base))
    stats = prepare_data(cfg, tok).stats(cfg)
    split = next(s for s, c in stats["overlength"].items() if c["truncated"])
    assert stats["overlength"][split]["truncated"] == 1
    assert stats["tokens"][split]["max_len"] == 256


def test_bad_chat_format_the_tokenizer_cannot_express(tmp_path, tiny_llama, capsys):
    err = _bad(tmp_path, tiny_llama, capsys, chat="{format: harmony}")
    assert "field 'chat.format'" in err and "'<|start|>' as one special token" in err


def test_cli_exit_code_in_a_real_process(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("data: {path: x.jsonl}\nlora: {dropuot: 0.1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "specialize", "run", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"specialize: error: {bad}:2 field 'lora.dropuot': unknown key; did you mean 'dropout'?"
    )


def test_bad_target_matching_no_module(tmp_path, tiny_llama, capsys):
    err = _bad(tmp_path, tiny_llama, capsys, lora="{targets: [wq, wk]}")
    assert "field 'lora.targets': target 'wq' matches no linear module" in err


def test_bad_preset_the_architecture_lacks(tmp_path, tiny_gpt_oss, capsys):
    data = write_tiny_data(tmp_path / "data")
    cfg = write_tiny_config(tmp_path, tiny_gpt_oss, data, lora="{targets: mlp}")
    cfg.write_text(
        cfg.read_text().replace(
            "format: chatml, max_seq_len: 256", "format: harmony, max_seq_len: 1024"
        )
    )
    assert main(["run", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "field 'lora.targets': preset 'mlp' matches no module of GptOssForCausalLM" in err
    assert "lora.experts: true" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_qlora_without_cuda(tmp_path, tiny_llama, capsys):
    err = _bad(tmp_path, tiny_llama, capsys, lora="{quantize: nf4}")
    assert "field 'lora.quantize': QLoRA" in err and "needs a CUDA GPU" in err


def test_bad_gguf_required_without_llama_cpp_stops_before_training(
    tmp_path, tiny_llama, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # find_spec -> None: not installed
    err = _bad(tmp_path, tiny_llama, capsys, export="{check_prompts: 2, gguf: true}")
    assert "field 'export.gguf'" in err and "llama-cpp-python is not installed" in err
    assert "export.gguf: false" in err


def test_bad_gguf_without_merge_is_a_config_error(tmp_path, tiny_llama, capsys):
    err = _bad(tmp_path, tiny_llama, capsys, export="{merge: false, gguf: true}")
    assert "export.gguf" in err and "export.merge" in err


def test_gguf_plan_says_why_an_architecture_cannot_be_exported(caplog):
    from types import SimpleNamespace

    from specialize.config import ExportConfig
    from specialize.errors import SpecializeError
    from specialize.export.edge import gguf_plan

    moe = SimpleNamespace(architectures=["GptOssForCausalLM"], model_type="gpt_oss")
    with caplog.at_level("WARNING", logger="specialize"):
        reason = gguf_plan(ExportConfig(gguf="auto"), moe)
    assert reason is not None and "GptOssForCausalLM" in reason and "LlamaForCausalLM" in reason
    assert "GGUF export will be skipped" in caplog.text
    with pytest.raises(SpecializeError, match="export.gguf"):
        gguf_plan(ExportConfig(gguf=True), moe)
    assert gguf_plan(ExportConfig(gguf=False), moe) == "export.gguf is false"
    # A model loaded from a GGUF (the bundled one) has a config with no architectures.
    from_gguf = SimpleNamespace(architectures=None, model_type="llama", hidden_act="silu")
    if importlib.util.find_spec("llama_cpp") is not None:
        assert gguf_plan(ExportConfig(gguf=True), from_gguf) is None
    from specialize.export.gguf import arch_spec

    assert arch_spec(from_gguf)[0] == "LlamaForCausalLM"


def test_set_with_malformed_yaml_is_one_line(capsys):
    assert main(["check", "--set", "train.lr=[{a"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "field '--set'" in err and err.count("\n") == 1
