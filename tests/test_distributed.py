"""`specialize run` under torchrun: 2 CPU processes (gloo) == 1 process, same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, write_tiny_config, write_tiny_data


def _config(folder, tiny_llama, name, accum):
    data = write_tiny_data(folder / "data")
    cfg = write_tiny_config(
        folder,
        tiny_llama,
        data,
        train=f"{{max_steps: 4, batch_size: 2, grad_accum: {accum}, lr: 0.01, eval_every: 2, "
        "log_every: 1, warmup_ratio: 0.0}",
    )
    text = cfg.read_text().replace("name: tiny", f"name: {name}")
    text = text.replace("eval: {", "eval: {enabled: false, ").replace(
        "export: {check_prompts: 2}", "export: {merge: false}"
    )
    cfg.write_text(text)
    return cfg


def test_two_process_gloo_matches_one_process(tiny_llama, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    one = _config(tmp_path / "one", tiny_llama, "one", accum=2)
    two = _config(tmp_path / "two", tiny_llama, "two", accum=1)
    subprocess.run(
        [sys.executable, "-m", "specialize", "run", str(one), "--no-progress"],
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "specialize",
            "run",
            str(two),
            "--no-progress",
        ],
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = json.loads((tmp_path / "one/runs/one/train/history.json").read_text())
    b = json.loads((tmp_path / "two/runs/two/train/history.json").read_text())
    assert len(a["train"]) == len(b["train"]) == 4
    assert [r["loss"] for r in b["train"]] == pytest.approx(
        [r["loss"] for r in a["train"]], rel=1e-5
    )
    assert [r["loss"] for r in b["validation"]] == pytest.approx(
        [r["loss"] for r in a["validation"]], rel=1e-5
    )
    assert b["tokens"] == a["tokens"]  # real tokens counted across both processes
    # Only rank 0 wrote a run directory; no scratch folders were left behind.
    assert sorted(p.name for p in (tmp_path / "two/runs").iterdir()) == ["two"]
