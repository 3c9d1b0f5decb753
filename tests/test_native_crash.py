"""A crash inside llama.cpp (SIGSEGV, SIGKILL) is one line and a resumable run, never a lost one.

llama.cpp runs in a child process (:mod:`specialize.infer.llama_process`); the
``SPECIALIZE_LLAMA_CRASH`` hook makes that child kill itself when it opens a chosen file for
a chosen purpose, which is how a kernel that does not fit the CPU dies in real life.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
from conftest import write_tiny_config, write_tiny_data

from specialize.cli import main
from specialize.errors import SpecializeError
from specialize.infer.llama_process import CRASH_ENV, LlamaProcess, NativeCrash

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (make setup builds it)",
)


def _error_lines(err: str) -> list[str]:
    assert "Traceback" not in err
    return [ln for ln in err.splitlines() if ln.startswith("specialize: error:")]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def f16(tiny_llama, tmp_path_factory) -> Path:
    from specialize.export.gguf import convert_to_gguf

    out = tmp_path_factory.mktemp("crash") / "tiny-f16.gguf"
    return Path(convert_to_gguf(tiny_llama, out, "f16")["path"])


def test_child_crash_is_a_native_crash_naming_signal_and_file(f16, monkeypatch):
    monkeypatch.setenv(CRASH_ENV, "checking:tiny-f16")
    with pytest.raises(NativeCrash) as info:
        LlamaProcess(f16, n_ctx=64, purpose="checking")
    msg = info.value.one_line()
    assert "SIGSEGV" in msg and "tiny-f16.gguf" in msg and "checking" in msg
    assert "\n" not in msg


def test_child_killed_mid_work_is_a_native_crash(f16):
    import os
    import signal

    llm = LlamaProcess(f16, n_ctx=64, purpose="evaluating")
    assert len(llm.scores([1, 2, 3])) == 3  # alive and answering
    os.kill(llm.pid, signal.SIGKILL)
    with pytest.raises(NativeCrash, match="SIGKILL"):
        llm.scores([1, 2, 3])
    llm.close()  # closing a dead child is harmless


def test_unloadable_file_is_a_user_error_not_a_crash(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(SpecializeError) as info:
        LlamaProcess(bad, n_ctx=64)
    assert not isinstance(info.value, NativeCrash)
    assert "cannot load" in str(info.value)


def test_crash_while_quantizing_leaves_no_file(f16, tmp_path, monkeypatch):
    from specialize.export.gguf import quantize

    monkeypatch.setenv(CRASH_ENV, "quantizing:q8")
    out = tmp_path / "tiny-q8_0.gguf"
    with pytest.raises(NativeCrash, match="SIGSEGV"):
        quantize(f16, out, "q8_0")
    assert list(tmp_path.iterdir()) == []


def test_gguf_stage_crash_keeps_the_run_and_resume_finishes_it(
    tiny_llama, tmp_path, monkeypatch, capsys, caplog
):
    data = write_tiny_data(tmp_path / "data")
    cfg = write_tiny_config(tmp_path, tiny_llama, data)
    final = tmp_path / "runs" / "tiny"
    stage = tmp_path / "runs" / ".tiny.partial"

    # 1. llama.cpp segfaults while checking the Q8_0 file's logits.
    monkeypatch.setenv(CRASH_ENV, "checking the logits of:q8_0")
    assert main(["run", str(cfg), "--no-progress"]) == 3
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert "stage 'gguf'" in lines[0] and "SIGSEGV" in lines[0] and "tiny-q8_0.gguf" in lines[0]
    assert "--resume" in lines[0]
    assert not final.exists()
    for kept in (
        "adapter/adapter_config.json",
        "train/done.json",
        "merged/config.json",
        "export/merge_check.json",
        "eval/base/metrics.json",
        "eval/tuned/metrics.json",
        "gguf/tiny-f16.gguf",
        "gguf/tiny-q8_0.gguf",
    ):
        assert (stage / kept).is_file(), kept
    adapter = _sha(stage / "adapter" / "adapter_model.safetensors")
    tuned = (stage / "eval" / "tuned" / "predictions.jsonl").read_text()

    # 2. Resume: training must not run again; now the child is SIGKILLed while evaluating Q4_K_M.
    from specialize.train import loop

    def no_training(*a, **k):
        raise AssertionError("--resume retrained a finished adapter")

    monkeypatch.setattr(loop, "fit", no_training)
    monkeypatch.setenv(CRASH_ENV, "evaluating:q4_k_m:SIGKILL")
    assert main(["run", str(cfg), "--no-progress", "--resume"]) == 3
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "SIGKILL" in lines[0] and "tiny-q4_k_m.gguf" in lines[0]
    assert (stage / "eval" / "gguf-q8_0" / "metrics.json").is_file()  # finished before the kill
    q8 = (stage / "eval" / "gguf-q8_0" / "predictions.jsonl").read_text()

    # 3. Resume again with a healthy llama.cpp: the run completes from the kept stages.
    monkeypatch.delenv(CRASH_ENV)
    caplog.clear()
    with caplog.at_level("INFO", logger="specialize"):
        assert main(["run", str(cfg), "--no-progress", "--resume"]) == 0
    assert "training reused" in caplog.text and "gguf-q8_0 evaluation reused" in caplog.text
    assert not stage.exists() and (final / "MODEL_CARD.md").is_file()
    assert _sha(final / "adapter" / "adapter_model.safetensors") == adapter
    assert (final / "eval" / "tuned" / "predictions.jsonl").read_text() == tuned
    assert (final / "eval" / "gguf-q8_0" / "predictions.jsonl").read_text() == q8
    m = json.loads((final / "eval" / "gguf-q4_k_m" / "metrics.json").read_text())
    assert m["errors"] == 0
    checks = json.loads((final / "export" / "gguf_checks.json").read_text())["checks"]
    assert checks["f16"]["passed"] and "q8_0" in checks
    manifest = json.loads((final / "manifest.json").read_text())
    assert "installed" in manifest and manifest["installed"]["packages"]


def test_export_command_crash_is_exit_3_and_keeps_files(tiny_llama, tmp_path, monkeypatch, capsys):
    data = write_tiny_data(tmp_path / "data")
    cfg = write_tiny_config(tmp_path, tiny_llama, data, export="{check_prompts: 2, gguf: false}")
    assert main(["run", str(cfg), "--no-progress"]) == 0
    run = tmp_path / "runs" / "tiny"
    capsys.readouterr()
    monkeypatch.setenv(CRASH_ENV, "checking the answers of:q8_0")
    assert main(["export", str(run), "--types", "q8_0"]) == 3
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "SIGSEGV" in lines[0]
    assert (run / "gguf" / "tiny-f16.gguf").is_file()
    assert (run / "gguf" / "tiny-q8_0.gguf").is_file()
    monkeypatch.setenv(CRASH_ENV, "evaluating:q8_0")
    code = main(["eval", str(run), "--gguf", "--no-progress", "--no-bertscore"])
    assert code == 3
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "evaluating" in lines[0]
