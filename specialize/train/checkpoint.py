"""Resumable training checkpoints, written atomically.

A checkpoint is a folder ``checkpoints/step-NNNNNN/`` holding the trainable (LoRA) weights,
the optimizer and scheduler state, every RNG state and the data position (epoch and the
index of the next micro-batch group). It is written to a hidden temporary folder and renamed
into place, and ``state.json`` (written last) marks it complete, so a process killed at any
instant leaves either a complete checkpoint or none. A fingerprint of the settings that shape
training (data, model, LoRA, optimisation) is stored and checked on resume, so a checkpoint
from another run is refused instead of silently mixed in.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specialize.errors import SpecializeError
from specialize.io import atomic_dir, atomic_path

KEEP = 2


def fingerprint(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    folder: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: Any,
    scheduler: Any,
    meta: dict[str, Any],
) -> Path:
    """Write ``folder/step-NNNNNN`` atomically and prune all but the newest ``KEEP``."""
    from safetensors.torch import save_file

    target = folder / f"step-{step:06d}"
    with atomic_dir(target) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        with atomic_path(tmp / "state.json") as p:
            p.write_text(json.dumps(meta | {"step": step}, default=str))
    done = sorted(complete_checkpoints(folder))
    for old in done[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def complete_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file())


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, expected_fp: str
) -> dict[str, Any]:
    """Restore a checkpoint into model/optimizer/scheduler and the RNGs; returns its meta."""
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / "state.json").read_text())
        weights = load_file(str(path / "trainable.safetensors"))
        opt = torch.load(path / "optimizer.pt", weights_only=False)
        sched = torch.load(path / "scheduler.pt", weights_only=False)
        rng = torch.load(path / "rng.pt", weights_only=False)
    except Exception as e:  # any unreadable piece makes the checkpoint unusable
        raise SpecializeError(f"corrupt checkpoint ({type(e).__name__}: {e})", path=path) from None
    if meta.get("fingerprint") != expected_fp:
        raise SpecializeError(
            "checkpoint belongs to a run with other data, model, LoRA or training settings "
            f"(fingerprint {meta.get('fingerprint')} != {expected_fp})",
            path=path,
        )
    params = dict(model.named_parameters())
    missing = [n for n in params if params[n].requires_grad and n not in weights]
    if missing or any(n not in params for n in weights):
        raise SpecializeError("checkpoint weights do not match the adapter's parameters", path=path)
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    optimizer.load_state_dict(opt)
    scheduler.load_state_dict(sched)
    set_rng_state(rng)
    return meta
