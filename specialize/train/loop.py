"""The training loop: setup -> fit -> validate -> save, on ``accelerate``.

One loop for CPU, one GPU and several processes (DDP): ``accelerate`` places the model and
wraps it for the process group; each process takes every ``world``-th micro-batch group.

Gradient accumulation weights the loss by real target tokens: an optimizer step sums the
token losses of all its micro-batches (across processes) and divides by their total token
count, so batch 8 x accumulation 1 and batch 1 x accumulation 8 give the same update.

The data order of every epoch is a pure function of (seed, epoch), so a checkpoint only needs
the epoch and the index of the next step to resume exactly where a killed run stopped.
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
from specialize.data.batches import IGNORE, Example, collate, length_grouped_batches
from specialize.train import heap
from specialize.train.checkpoint import (
    complete_checkpoints,
    load_checkpoint,
    save_checkpoint,
    trainable_state,
)
from specialize.train.loss import MaskedCausalLMLoss, evaluate_loss
from specialize.train.precision import resolve as resolve_precision

log = logging.getLogger("specialize")


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or infinite; the step was not applied."""


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
    epoch: int = 0
    next_group: int = 0  # index of the next optimizer step within the epoch
    trim_heap: bool = True  # train.trim_heap: heap.trim() before each micro-batch
    best: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=lambda: {"train": [], "validation": []})
    checkpoint_dir: Path | None = None
    fingerprint: str = ""
    precision: dict[str, str] = field(default_factory=dict)  # requested, used, why


def make_scheduler(optimizer: Any, cfg: TrainConfig, total: int) -> Any:
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_cosine_with_hard_restarts_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_ratio * total)
    if cfg.scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total)
    if cfg.scheduler == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    if cfg.scheduler == "cosine_with_restarts":
        return get_cosine_with_hard_restarts_schedule_with_warmup(
            optimizer, warmup, total, num_cycles=cfg.restarts
        )
    return get_constant_schedule_with_warmup(optimizer, warmup)


def setup(
    model: Any,
    train_examples: list[Example],
    val_examples: list[Example],
    cfg: TrainConfig,
    pad_id: int,
    eval_batch_size: int = 16,
    checkpoint_dir: Path | None = None,
    fingerprint: str = "",
) -> TrainState:
    """Optimizer, schedule and accelerator around an already LoRA-wrapped model."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    # accelerate keeps one global state per process: a second run in the same process (tests,
    # notebooks, a library caller) with another mixed_precision would be refused. The
    # distributed part (PartialState) is kept; only the per-run settings are reset.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    precision = resolve_precision(cfg.mixed_precision)
    if precision.requested != "no":
        log.info("mixed precision: %s (%s)", precision.used, precision.why)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision.used)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    micro = math.ceil(len(train_examples) / cfg.batch_size)
    steps_per_epoch = max(1, math.ceil(micro / (cfg.grad_accum * accelerator.num_processes)))
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg, total)
    # The scheduler is not given to accelerate: it would step it once per process per call,
    # while our step counts are already global optimizer steps.
    loss_module, optimizer = accelerator.prepare(MaskedCausalLMLoss(model), optimizer)
    val_batches = [
        {k: v.to(accelerator.device) for k, v in collate(b, pad_id).items()}
        for b in length_grouped_batches(val_examples, eval_batch_size, 0, shuffle=False)
    ]
    state = TrainState(
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
        checkpoint_dir=checkpoint_dir,
        fingerprint=fingerprint,
        precision=precision.as_dict(),
        trim_heap=cfg.trim_heap,
    )
    return state


def resume(state: TrainState) -> bool:
    """Load the newest complete checkpoint, if any; returns whether one was loaded."""
    found = complete_checkpoints(state.checkpoint_dir) if state.checkpoint_dir else []
    if not found:
        return False
    meta = load_checkpoint(
        found[-1], state.model, state.optimizer, state.scheduler, state.fingerprint
    )
    state.step, state.epoch, state.next_group = meta["step"], meta["epoch"], meta["next_group"]
    state.history = meta["history"]
    state.best = {}
    if meta.get("best_step") is not None:
        best_dir = found[-1] / "best.safetensors"
        if best_dir.exists():
            from safetensors.torch import load_file

            state.best = {
                "step": meta["best_step"],
                "loss": meta["best_loss"],
                "weights": load_file(str(best_dir)),
                "bad_evals": meta["bad_evals"],
            }
    log.info("resumed from %s (step %d, epoch %d)", found[-1], state.step, state.epoch)
    return True


def _checkpoint(state: TrainState) -> None:
    if state.checkpoint_dir is None or not state.accelerator.is_main_process:
        return
    meta = {
        "epoch": state.epoch,
        "next_group": state.next_group,
        "history": state.history,
        "fingerprint": state.fingerprint,
        "best_step": state.best.get("step"),
        "best_loss": state.best.get("loss"),
        "bad_evals": state.best.get("bad_evals", 0),
    }
    path = save_checkpoint(
        state.checkpoint_dir, state.step, state.model, state.optimizer, state.scheduler, meta
    )
    if state.best.get("weights"):
        from safetensors.torch import save_file

        save_file(state.best["weights"], str(path / "best.safetensors"))


def _step_groups(state: TrainState, epoch: int) -> list[list[list[Example]]]:
    """This process's micro-batch groups (one group per optimizer step) for an epoch.

    A step's micro-batches are dealt round-robin to the processes. When a step has fewer
    micro-batches than processes (the end of an epoch), a process left without one gets a
    copy with every label ignored: it adds nothing to the loss or the gradient, but takes
    part in the gradient all-reduce, so all processes stay in step.
    """
    cfg, acc = state.cfg, state.accelerator
    batches = length_grouped_batches(state.train_examples, cfg.batch_size, cfg.seed + epoch)
    per_step = cfg.grad_accum * acc.num_processes
    groups = [batches[i : i + per_step] for i in range(0, len(batches), per_step)]
    out = []
    for g in groups:
        mine = g[acc.process_index :: acc.num_processes]
        if not mine:
            e = g[0][0]
            mine = [[Example(f"{e.id}:idle", e.input_ids, [IGNORE] * len(e), e.position_ids)]]
        out.append(mine)
    return out


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
        if state.trim_heap:
            heap.trim()  # the last micro-batch's freed activations back to the system
        ctx = acc.no_sync(state.loss_module) if i < len(batches) - 1 else _nullcontext()
        with ctx:
            sums, _ = state.loss_module(**b)
            # DDP averages gradients over processes; scale so the result is the global
            # token-weighted mean.
            acc.backward(sums.sum() * acc.num_processes / n_total)
        step_loss += float(sums.detach().sum())
    total = float(acc.reduce(torch.tensor(step_loss, device=acc.device), "sum"))
    return total, n_total


def _after_validation(state: TrainState, loss: float) -> bool:
    """Track the best adapter; returns True when early stopping says stop."""
    cfg = state.cfg
    if cfg.early_stopping_patience is None or not math.isfinite(loss):
        return False
    best = state.best
    if not best or loss < best["loss"] - cfg.early_stopping_min_delta:
        state.best = {
            "step": state.step,
            "loss": loss,
            "bad_evals": 0,
            "weights": trainable_state(state.model),
        }
        return False
    best["bad_evals"] += 1
    return best["bad_evals"] >= cfg.early_stopping_patience


def fit(state: TrainState, progress: bool = True) -> dict[str, Any]:
    """Run optimizer steps until ``total_steps`` (or early stop); returns the loss history."""
    cfg, acc = state.cfg, state.accelerator
    state.loss_module.train()
    bar = tqdm(
        total=state.total_steps,
        initial=state.step,
        desc="train",
        unit="step",
        disable=not progress or not acc.is_main_process,
        dynamic_ncols=True,
    )
    t0 = time.perf_counter()
    tokens_seen = state.history.get("tokens_in_run", 0)
    if state.step == 0 and not state.history["validation"]:
        first = validate(state)
        state.history["validation"].append({"step": 0, "loss": first})
        _after_validation(state, first)
    stop = False
    while state.step < state.total_steps and not stop:
        groups = _step_groups(state, state.epoch)
        while state.next_group < len(groups) and state.step < state.total_steps and not stop:
            group = groups[state.next_group]
            state.next_group += 1
            t_step = time.perf_counter()
            real, mean = _optimizer_step(state, group)
            tokens_seen += real
            _record_step(state, mean, real, time.perf_counter() - t_step, tokens_seen, bar)
            if state.step % cfg.eval_every == 0 or state.step == state.total_steps:
                stop = _validate_in_fit(state)
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                _checkpoint(state)
        if state.next_group >= len(groups):
            state.epoch += 1
            state.next_group = 0
    bar.close()
    _restore_best(state)
    wall = time.perf_counter() - t0
    state.history.update(
        steps=state.step,
        epochs_run=state.epoch + (state.next_group > 0),
        early_stopped=stop,
        best_step=state.best.get("step"),
        wall_s=wall,
        tokens=tokens_seen,
        # Throughput of the optimizer steps themselves (validation passes excluded).
        tokens_per_s=tokens_seen / state.history["step_s"] if state.history.get("step_s") else 0.0,
        mixed_precision=state.precision,
    )
    return state.history


def _optimizer_step(state: TrainState, group: list[Any]) -> tuple[int, float]:
    """One optimizer step over a group of micro-batches: (real tokens, mean loss)."""
    acc = state.accelerator
    batches = [{k: v.to(acc.device) for k, v in collate(b, state.pad_id).items()} for b in group]
    loss_sum, n_total = accumulate_gradients(state, batches)
    if not math.isfinite(loss_sum):
        # Stop before the optimizer applies a non-finite update.
        state.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLoss(f"loss became {loss_sum} at step {state.step + 1}")
    acc.clip_grad_norm_(
        [p for p in state.model.parameters() if p.requires_grad], state.cfg.max_grad_norm
    )
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    # Real (non-pad) tokens; a process's idle slot (all labels ignored) adds none.
    real = sum(
        int(b["attention_mask"].sum()) for b in batches if bool((b["labels"] != IGNORE).any())
    )
    real = int(acc.reduce(torch.tensor(real, device=acc.device), "sum"))
    return real, loss_sum / n_total


def _record_step(
    state: TrainState, mean: float, real: int, dt: float, tokens_seen: int, bar: Any
) -> None:
    """The step's line in the history, the progress bar and (every log_every) the log."""
    rec = {
        "step": state.step,
        "epoch": state.epoch,
        "loss": mean,
        "lr": state.scheduler.get_last_lr()[0],
        "tokens": tokens_seen,
        "tokens_per_s": real / dt,
    }
    state.history["train"].append(rec)
    state.history["tokens_in_run"] = tokens_seen
    state.history["step_s"] = state.history.get("step_s", 0.0) + dt
    bar.update(1)
    bar.set_postfix(loss=f"{mean:.3f}", tok_s=f"{real / dt:.0f}")
    if state.step % state.cfg.log_every == 0 and state.accelerator.is_main_process:
        log.info(
            "step %d/%d loss %.4f lr %.2e tokens/s %.0f",
            state.step,
            state.total_steps,
            mean,
            rec["lr"],
            rec["tokens_per_s"],
        )


def _validate_in_fit(state: TrainState) -> bool:
    """Validate, record it, and say whether early stopping ends training here."""
    vl = validate(state)
    state.history["validation"].append({"step": state.step, "loss": vl})
    if state.val_batches:  # an empty split is said once, at the end, not at every check
        log.info("step %d validation loss %.4f", state.step, vl)
    state.loss_module.train()
    if not _after_validation(state, vl):
        return False
    log.info(
        "early stopping at step %d: no improvement for %d validations (best %.4f at step %d)",
        state.step,
        state.cfg.early_stopping_patience,
        state.best["loss"],
        state.best["step"],
    )
    return True


def _restore_best(state: TrainState) -> None:
    """With early stopping, end on the best validated adapter, not the last one."""
    if state.best.get("weights") and state.best["step"] != state.step:
        params = dict(state.model.named_parameters())
        with torch.no_grad():
            for n, t in state.best["weights"].items():
                params[n].copy_(t)
        log.info(
            "restored the best adapter (step %d, validation loss %.4f)",
            state.best["step"],
            state.best["loss"],
        )


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
