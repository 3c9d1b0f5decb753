"""Checkpoints: a run killed with SIGKILL and resumed ends with the same adapter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, write_tiny_config, write_tiny_data
from safetensors.torch import load_file

from specialize.cli import main

STEPS = (
    "{max_steps: 120, batch_size: 2, lr: 0.01, eval_every: 40, log_every: 40, checkpoint_every: 5}"
)


def config(folder: Path, tiny_llama: Path, name: str) -> Path:
    data = write_tiny_data(folder / "data")
    cfg = write_tiny_config(folder, tiny_llama, data, train=STEPS)
    text = cfg.read_text().replace("name: tiny", f"name: {name}")
    text = text.replace("dropout: 0.0", "dropout: 0.1")  # dropout draws from the RNG
    text = text.replace("eval: {", "eval: {enabled: false, ")
    cfg.write_text(text)
    return cfg


def test_sigkill_then_resume_matches_uninterrupted(tiny_llama, tmp_path):
    ref_cfg = config(tmp_path / "a", tiny_llama, "ref")
    assert main(["run", str(ref_cfg), "--no-progress"]) == 0
    ref = load_file(tmp_path / "a" / "runs" / "ref" / "adapter" / "adapter_model.safetensors")

    cfg = config(tmp_path / "b", tiny_llama, "killed")
    stage = tmp_path / "b" / "runs" / ".killed.partial" / "checkpoints"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "specialize", "run", str(cfg), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(stage.glob("step-*/state.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run: the first checkpoint has just appeared
    proc.wait()
    done = sorted(stage.glob("step-*/state.json"))
    assert done, "no checkpoint before the kill"
    assert int(done[-1].parent.name.split("-")[1]) < 120, "the run finished before the kill"
    assert not (tmp_path / "b" / "runs" / "killed").exists()

    assert main(["run", str(cfg), "--no-progress", "--resume"]) == 0
    got = load_file(tmp_path / "b" / "runs" / "killed" / "adapter" / "adapter_model.safetensors")
    assert got.keys() == ref.keys()
    worst = max(float((got[k] - ref[k]).abs().max()) for k in ref)
    assert worst <= 1e-6, worst


def test_corrupt_and_foreign_checkpoints_are_refused(tiny_llama, tmp_path, capsys):
    cfg = config(tmp_path, tiny_llama, "c")
    text = cfg.read_text().replace("max_steps: 120", "max_steps: 10")
    cfg.write_text(text)
    stage = tmp_path / "runs" / ".c.partial"
    # A run that fails after checkpoints exist keeps them; simulate by training then
    # breaking the eval stage? Simpler: run, then move the run back to staging.
    assert main(["run", str(cfg), "--no-progress"]) == 0
    (tmp_path / "runs" / "c").rename(stage)
    # As if it had stopped during training: no finished adapter, so --resume must use the
    # checkpoints (a finished adapter would be reused without them).
    (stage / "train" / "done.json").unlink()
    ck = sorted((stage / "checkpoints").glob("step-*"))[-1]
    # Foreign: other training settings.
    cfg.write_text(text.replace("lr: 0.01", "lr: 0.02"))
    assert main(["run", str(cfg), "--no-progress", "--resume"]) == 2
    assert "checkpoint belongs to a run with other" in capsys.readouterr().err
    # Corrupt: truncated weights file.
    cfg.write_text(text)
    (ck / "trainable.safetensors").write_bytes(b"\x00" * 10)
    assert main(["run", str(cfg), "--no-progress", "--resume"]) == 2
    assert "corrupt checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "c").exists()
    assert ck.exists(), "a refused resume must not delete the checkpoints"


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(tiny_llama, tmp_path, capsys):
    cfg = config(tmp_path, tiny_llama, "nan")
    # Warmup starts at lr 0, so step 1 is finite and checkpointed; then lr 1e30 blows up.
    cfg.write_text(
        cfg.read_text()
        .replace("lr: 0.01", "lr: 1.0e+30, warmup_steps: 3")
        .replace("checkpoint_every: 5", "checkpoint_every: 1")
    )
    code = main(["run", str(cfg), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "training stopped: loss became" in err
    assert "last good checkpoint" in err and "--resume" in err
    assert not (tmp_path / "runs" / "nan").exists()
    kept = sorted((tmp_path / "runs" / ".nan.partial" / "checkpoints").glob("step-*"))
    assert kept and all((k / "state.json").exists() for k in kept)


@pytest.mark.parametrize("sched", ["linear", "cosine", "cosine_with_restarts", "constant"])
def test_schedulers_warmup_then_decay(sched):
    from specialize.config import TrainConfig
    from specialize.train.loop import make_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    s = make_scheduler(opt, TrainConfig(scheduler=sched, warmup_steps=4), 20)
    lrs = []
    for _ in range(20):
        lrs.append(s.get_last_lr()[0])
        opt.step()
        s.step()
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(1.0)
    if sched == "constant":
        assert lrs[-1] == pytest.approx(1.0)
    else:
        assert lrs[-1] < 0.2
    if sched == "cosine_with_restarts":
        assert any(b > a + 0.3 for a, b in zip(lrs[5:], lrs[6:], strict=False))  # a restart
