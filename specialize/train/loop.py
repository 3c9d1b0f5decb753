"""The training loop: setup -> fit -> validate -> save, on ``accelerate``.

One loop for CPU, one GPU and several processes (DDP): ``accelerate`` places the model and
wraps it for the process group; each process takes every ``world``-th micro-batch group.

Gradient accumulation weights the loss by real target tokens: an optimizer step sums the
token losses of all its micro-batches (across processes) and divides by their total token
count, so batch 8 x accumulation 1 and batch 1 x accumulation 8 give the same update.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from specialize.config import TrainConfig
from specialize.data.batches import Example, collate, length_grouped_batches
from specialize.train.loss import MaskedCausalLMLoss, evaluate_loss

log = logging.getLogger("specialize")


@dataclass
class TrainState:
    cfg: TrainConfig
    accelerator: Any
    model: Any  # the PEFT model
    loss_module: Any  # prepared MaskedCausalLMLoss
    optimizer: Any
    scheduler: Any
    train_examples: list[Example]
    val_batches: list[dict[str, torch.Tensor]]
    pad_id: int
    total_steps: int
    steps_per_epoch: int
    step: int = 0
    history: dict[str, Any] = field(default_factory=lambda: {"train": [], "validation": []})


def setup(
    model: Any,
    train_examples: list[Example],
    val_examples: list[Example],
    cfg: TrainConfig,
    pad_id: int,
    eval_batch_size: int = 16,
) -> TrainState:
    """Optimizer, schedule and accelerator around an already LoRA-wrapped model."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_cosine_schedule_with_warmup

    set_seed(cfg.seed)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision
    )
    micro = math.ceil(len(train_examples) / cfg.batch_size)
    steps_per_epoch = max(1, math.ceil(micro / (cfg.grad_accum * accelerator.num_processes)))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * total), total)
    loss_module, optimizer, scheduler = accelerator.prepare(
        MaskedCausalLMLoss(model), optimizer, scheduler
    )
    val_batches = [
        {k: v.to(accelerator.device) for k, v in collate(b, pad_id).items()}
        for b in length_grouped_batches(val_examples, eval_batch_size, 0, shuffle=False)
    ]
    return TrainState(
        cfg,
        accelerator,
        model,
        loss_module,
        optimizer,
        scheduler,
        train_examples,
        val_batches,
        pad_id,
        total,
        steps_per_epoch,
    )


def _step_groups(state: TrainState, epoch: int) -> list[list[list[Example]]]:
    """This process's micro-batch groups (one group per optimizer step) for an epoch."""
    cfg, acc = state.cfg, state.accelerator
    batches = length_grouped_batches(state.train_examples, cfg.batch_size, cfg.seed + epoch)
    per_step = cfg.grad_accum * acc.num_processes
    groups = [batches[i : i + per_step] for i in range(0, len(batches), per_step)]
    return [g[acc.process_index :: acc.num_processes] for g in groups]


def validate(state: TrainState) -> float:
    """Token-weighted mean loss on the validation split (nan when it is empty)."""
    if not state.val_batches:
        return float("nan")
    sums, counts = evaluate_loss(state.loss_module, state.val_batches)
    total = state.accelerator.reduce(torch.tensor([sum(sums), float(sum(counts))]), "sum")
    return float(total[0] / total[1])


def accumulate_gradients(
    state: TrainState, batches: list[dict[str, torch.Tensor]]
) -> tuple[float, float]:
    """Backward over one optimizer step's micro-batches; returns (global loss sum, tokens).

    Each micro-batch's summed token loss is divided by the step's *global* target-token
    count, so the gradient is the token-weighted mean however the step is cut into
    micro-batches or processes.
    """
    acc = state.accelerator
    local = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    n_total = float(acc.reduce(torch.tensor(float(local), device=acc.device), "sum"))
    step_loss = 0.0
    for i, b in enumerate(batches):
        ctx = acc.no_sync(state.loss_module) if i < len(batches) - 1 else _nullcontext()
        with ctx:
            sums, _ = state.loss_module(**b)
            # DDP averages gradients over processes; scale so the result is the global
            # token-weighted mean.
            acc.backward(sums.sum() * acc.num_processes / n_total)
        step_loss += float(sums.detach().sum())
    total = float(acc.reduce(torch.tensor(step_loss, device=acc.device), "sum"))
    return total, n_total


def fit(state: TrainState, progress: bool = True) -> dict[str, Any]:
    """Run optimizer steps until ``total_steps``; returns the loss history."""
    cfg, acc = state.cfg, state.accelerator
    state.loss_module.train()
    bar = tqdm(
        total=state.total_steps, desc="train", unit="step", disable=not progress, dynamic_ncols=True
    )
    t0 = time.perf_counter()
    tokens_seen = 0
    epoch = 0
    first = validate(state)
    state.history["validation"].append({"step": 0, "loss": first})
    while state.step < state.total_steps:
        for group in _step_groups(state, epoch):
            if state.step >= state.total_steps:
                break
            if not group:
                continue
            t_step = time.perf_counter()
            batches = [
                {k: v.to(acc.device) for k, v in collate(b, state.pad_id).items()} for b in group
            ]
            loss_sum, n_total = accumulate_gradients(state, batches)
            if not math.isfinite(loss_sum):
                # Stop before the optimizer applies a non-finite update.
                raise FloatingPointError(f"loss became {loss_sum} at step {state.step + 1}")
            acc.clip_grad_norm_(
                [p for p in state.model.parameters() if p.requires_grad], cfg.max_grad_norm
            )
            state.optimizer.step()
            state.scheduler.step()
            state.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            real = sum(int(b["attention_mask"].sum()) for b in batches)
            tokens_seen += real
            mean = loss_sum / n_total
            dt = time.perf_counter() - t_step
            elapsed = time.perf_counter() - t0
            rec = {
                "step": state.step,
                "epoch": epoch,
                "loss": mean,
                "lr": state.scheduler.get_last_lr()[0],
                "tokens": tokens_seen,
                "tokens_per_s": tokens_seen / elapsed,
            }
            state.history["train"].append(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{mean:.3f}", tok_s=f"{real / dt:.0f}")
            if state.step % cfg.log_every == 0:
                log.info(
                    "step %d/%d loss %.4f lr %.2e tokens/s %.0f",
                    state.step,
                    state.total_steps,
                    mean,
                    rec["lr"],
                    rec["tokens_per_s"],
                )
            if state.step % cfg.eval_every == 0 or state.step == state.total_steps:
                vl = validate(state)
                state.history["validation"].append({"step": state.step, "loss": vl})
                log.info("step %d validation loss %.4f", state.step, vl)
                state.loss_module.train()
        epoch += 1
    bar.close()
    wall = time.perf_counter() - t0
    state.history.update(
        steps=state.step,
        epochs_run=epoch,
        wall_s=wall,
        tokens=tokens_seen,
        tokens_per_s=tokens_seen / wall if wall else 0.0,
    )
    return state.history


def save(state: TrainState, adapter_dir: Path) -> None:
    """Save the adapter in PEFT format (adapter_config.json + adapter_model.safetensors)."""
    state.accelerator.wait_for_everyone()
    if state.accelerator.is_main_process:
        state.accelerator.unwrap_model(state.loss_module).model.save_pretrained(adapter_dir)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
