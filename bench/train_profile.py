"""Where a training step's time goes: ``torch.profiler`` over specialize's own training loop.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_profile.py --json bench/train_profile.json

The setting of ``bench/train_throughput.py`` (the bundled SmolLM2-135M, LoRA r=16 on every
linear layer, loss on assistant tokens, packed rows of ``--row-len`` tokens, 2 rows per
optimizer step) for ``--steps`` steps after ``--warmup`` unprofiled ones, in the precision
``--precision`` (``bf16`` autocast or ``no``), through :func:`specialize.train.loop.fit`,
so the profile is of the code a run executes, not of a copy.

Every operator's *self* CPU time is put in one bucket:

- ``matmul``: ``mm``/``addmm``/``bmm`` and oneDNN matmuls (the linear layers, forward and
  backward, LoRA's small ones included);
- ``attention``: the scaled-dot-product kernels and their backward;
- ``loss``: (log-)softmax, ``nll_loss`` and their backward (the vocabulary projection is a
  matmul);
- ``dtype casts``: ``copy_`` / ``_to_copy`` (autocast's per-step bf16 copies of frozen
  weights are here);
- ``optimizer``: everything under ``Optimizer.step`` and ``zero_grad``;
- ``elementwise``: every other operator (norms, activations, adds, views that copy);
- ``python and data``: the step's wall time that no operator accounts for (the loop's own
  Python, collation, autograd bookkeeping).

Shares are of the profiled steps' wall time. The profiler itself adds a few percent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

BUCKETS = ("matmul", "attention", "loss", "dtype casts", "optimizer", "elementwise")
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn_", "onednn")
ATTENTION = ("scaled_dot_product", "flash_attention", "_efficient_attention")
LOSS = ("softmax", "nll_loss", "cross_entropy")
CASTS = ("aten::copy_", "aten::_to_copy")


def bucket(name: str) -> str:
    """The bucket of one operator (by its profiler name)."""
    if any(m in name for m in ATTENTION):
        return "attention"
    if any(name.startswith(m) or m in name for m in MATMUL):
        return "matmul"
    if any(m in name for m in LOSS):
        return "loss"
    if name in CASTS:
        return "dtype casts"
    return "elementwise"


def _optimizer_events(events: list[Any]) -> set[int]:
    """Ids of the operators that ran inside an optimizer step or zero_grad."""
    spans = [
        (e.time_range.start, e.time_range.end)
        for e in events
        if e.name.startswith("Optimizer.step") or e.name.startswith("Optimizer.zero_grad")
    ]
    inside = set()
    for e in events:
        if any(s <= e.time_range.start and e.time_range.end <= t for s, t in spans):
            inside.add(e.id)
    return inside


def shares(prof: Any, wall_s: float) -> dict[str, float]:
    """Seconds per bucket, and the rest of the wall time as ``python and data``."""
    events = [e for e in prof.events() if e.device_type.name == "CPU"]
    in_opt = _optimizer_events(events)
    out = dict.fromkeys(BUCKETS, 0.0)
    for e in events:
        if e.name.startswith("Optimizer.") or e.name.startswith("ProfilerStep"):
            continue  # annotations: their ops are counted one by one
        if not e.name.startswith("aten::") and "mkldnn" not in e.name:
            continue
        name = "optimizer" if e.id in in_opt else bucket(e.name)
        out[name] += e.self_cpu_time_total / 1e6
    out["python and data"] = max(0.0, wall_s - sum(out.values()))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=64)
    p.add_argument("--row-len", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=1, help="unprofiled steps first")
    p.add_argument("--steps", type=int, default=3, help="profiled optimizer steps")
    p.add_argument("--precision", choices=("bf16", "no"), default="bf16")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile
    from train_throughput import _load

    from specialize.config import LoraConfig, TrainConfig
    from specialize.data.batches import pack
    from specialize.train import loop
    from specialize.train.lora import apply_lora

    settings = {"records": args.records, "seed": args.seed, "max_len": args.row_len}
    settings["eval_records"] = 1
    tokenizer, model, _, examples, _, _ = _load(settings)
    peft_model, _ = apply_lora(
        model, LoraConfig(r=16, alpha=32, dropout=0.0, targets="all-linear"), args.seed
    )
    rows = pack(examples, args.row_len, args.seed)[: 2 * (args.warmup + args.steps)]
    cfg = TrainConfig(
        epochs=1,
        batch_size=2,
        grad_accum=1,
        lr=2e-4,
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=args.seed,
        mixed_precision=args.precision,
        eval_every=10**9,
        log_every=10**9,
    )
    warm = loop.setup(peft_model, rows[: 2 * args.warmup], [], cfg, pad_id=tokenizer.pad_token_id)
    loop.fit(warm, progress=False)
    state = loop.setup(peft_model, rows[2 * args.warmup :], [], cfg, pad_id=tokenizer.pad_token_id)
    tokens = sum(len(r) for r in rows[2 * args.warmup :])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        loop.fit(state, progress=False)
        wall = time.perf_counter() - t0
    parts = shares(prof, wall)
    result = {
        "wall_s": wall,
        "steps": args.steps,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "seconds": parts,
        "shares": {k: v / wall for k, v in parts.items()},
        "settings": vars(args) | {"json": None, "torch_threads": torch.get_num_threads()},
    }
    print(f"{args.steps} steps, {tokens} tokens, {wall:.1f} s ({tokens / wall:.0f} tokens/s)")
    for k, v in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"  {k:16s} {v:7.2f} s  {100 * v / wall:5.1f}%")
    top = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    print(top)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
