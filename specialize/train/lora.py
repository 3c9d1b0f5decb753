"""Which modules get LoRA, and wrapping the model with PEFT.

Targets are resolved to an exact list of module names *before* PEFT sees them, written to the
run directory, and checked: a name that matches nothing is an error, never a silent no-op.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from specialize.config import LoraConfig
from specialize.errors import SpecializeError

PRESETS: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj", "fc1", "fc2"),
}


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear of the model by full name, except the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and mod is not head
    }


def resolve_targets(model: nn.Module, targets: str | list[str]) -> list[str]:
    """Full names of the modules that ``targets`` selects; error if it selects none."""
    linears = linear_modules(model)
    short = sorted({n.rsplit(".", 1)[-1] for n in linears})
    if targets == "all-linear":
        chosen = sorted(linears)
    elif isinstance(targets, str):
        wanted = set(PRESETS[targets])
        chosen = sorted(n for n in linears if n.rsplit(".", 1)[-1] in wanted)
        if not chosen:
            raise SpecializeError(
                f"preset '{targets}' matches no module of this architecture "
                f"(linear modules: {', '.join(short)})",
                field="lora.targets",
            )
    else:
        chosen = []
        for t in targets:
            hit = [n for n in linears if n == t or n.rsplit(".", 1)[-1] == t]
            if not hit:
                raise SpecializeError(
                    f"target '{t}' matches no linear module (available: {', '.join(short)})",
                    field="lora.targets",
                )
            chosen += hit
        chosen = sorted(set(chosen))
    return chosen


def apply_lora(model: nn.Module, cfg: LoraConfig, seed: int) -> tuple[Any, list[str]]:
    """Wrap ``model`` with LoRA on the resolved targets; base weights are frozen."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = resolve_targets(model, cfg.targets)
    torch.manual_seed(seed)
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=names,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg), names


def parameter_counts(model: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}
