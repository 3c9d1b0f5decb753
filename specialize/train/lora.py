"""Which modules get LoRA, and wrapping the model with PEFT.

Targets are resolved to an exact list of module names *before* PEFT sees them, written to the
run directory, and checked: a name that matches nothing is an error, never a silent no-op.

Two traps of the seed systems are handled here:

* **Tied embeddings.** LoRA on an ``lm_head`` that shares its tensor with the input
  embeddings either never sees a gradient path of its own or, when merged, rewrites the input
  embeddings too. With ``lm_head`` among the targets we untie first: the head gets its own
  copy of the weights (identical values, so the model is unchanged), the embeddings stay as
  they were, and ``tie_word_embeddings`` becomes false so the merged model saves both.
* **Mixture of experts.** Expert weights and the router are never adapted or unfrozen unless
  ``lora.experts`` is true: presets skip them, and a name that only matches them is an error.
  With ``experts: true``, PEFT adapts the stacked expert tensors (``target_parameters``).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from specialize.config import LoraConfig
from specialize.errors import SpecializeError

PRESETS: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "c_attn"),
    "mlp": ("gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc", "c_proj"),
}
SPECIAL_PRESETS = ("all-linear", "lm_head", "embeddings")

# Module names that belong to a mixture-of-experts block: the experts and the router.
_MOE = re.compile(r"(^|\.)(experts|shared_experts?)(\.|$)|(^|\.)(router|gate|shared_expert_gate)$")
# Stacked expert tensors (gpt-oss, some Qwen MoE): parameters, not nn.Linear modules.
EXPERT_PARAMS = ("gate_up_proj", "down_proj", "up_proj", "gate_proj")


def is_moe_part(name: str) -> bool:
    return bool(_MOE.search(name))


def is_moe_model(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return any(
        getattr(cfg, k, None) for k in ("num_local_experts", "num_experts", "n_routed_experts")
    )


def linear_modules(model: nn.Module, experts: bool = False) -> dict[str, nn.Linear]:
    """Every nn.Linear except the output head (and, unless ``experts``, MoE experts/routers)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and mod is not head and (experts or not is_moe_part(name))
    }


def _name_of(model: nn.Module, module: nn.Module | None, what: str) -> str:
    for name, mod in model.named_modules():
        if module is not None and mod is module:
            return name
    raise SpecializeError(f"this architecture has no {what} to adapt", field="lora.targets")


def _head_name(model: nn.Module) -> str:
    return _name_of(model, model.get_output_embeddings(), "output head")


def _embed_name(model: nn.Module) -> str:
    return _name_of(model, model.get_input_embeddings(), "input embeddings")


def resolve_targets(model: nn.Module, targets: str | list[str], experts: bool = False) -> list[str]:
    """Full names of the modules that ``targets`` selects; error if an entry selects none.

    ``targets`` is a preset (attention, mlp, all-linear, lm_head, embeddings), a module name
    (full, or its last component such as ``q_proj``), or a list mixing both.
    """
    items = [targets] if isinstance(targets, str) else list(targets)
    linears = linear_modules(model, experts)
    everything = linear_modules(model, experts=True)
    short = sorted({n.rsplit(".", 1)[-1] for n in linears})
    chosen: set[str] = set()
    for t in items:
        if t == "all-linear":
            hit = list(linears)
        elif t == "lm_head":
            hit = [_head_name(model)]
        elif t == "embeddings":
            hit = [_embed_name(model)]
        elif t in PRESETS:
            wanted = set(PRESETS[t])
            hit = [n for n in linears if n.rsplit(".", 1)[-1] in wanted]
            if not hit:
                moe = " (this is a mixture-of-experts model: its MLP is the experts, adapted "
                moe += "only with lora.experts: true)" if is_moe_model(model) else ""
                raise SpecializeError(
                    f"preset '{t}' matches no module of {type(model).__name__} "
                    f"(linear modules: {', '.join(short)}){moe}",
                    field="lora.targets",
                )
        else:
            head, emb = _safe(_head_name, model), _safe(_embed_name, model)
            hit = [n for n in linears if n == t or n.rsplit(".", 1)[-1] == t]
            hit += [n for n in (head, emb) if n and (n == t or n.rsplit(".", 1)[-1] == t)]
            if not hit:
                only_moe = [n for n in everything if n == t or n.rsplit(".", 1)[-1] == t]
                if only_moe:
                    raise SpecializeError(
                        f"target '{t}' names mixture-of-experts modules (experts/router), which "
                        "stay frozen unless lora.experts: true",
                        field="lora.targets",
                    )
                raise SpecializeError(
                    f"target '{t}' matches no linear module (available: {', '.join(short)})",
                    field="lora.targets",
                )
        chosen.update(hit)
    return sorted(chosen)


def _safe(fn: Any, model: nn.Module) -> str | None:
    try:
        return fn(model)
    except SpecializeError:
        return None


def expert_parameters(model: nn.Module) -> list[str]:
    """Names (relative to each experts module) of stacked expert tensors, for PEFT."""
    found: set[str] = set()
    for name, param in model.named_parameters():
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] == "experts" and parts[-1] in EXPERT_PARAMS:
            if param.dim() == 3:
                found.add(f"experts.{parts[-1]}")
    return sorted(found)


def untie_output_head(model: nn.Module) -> bool:
    """Give lm_head its own weight tensor (same values). Returns True if it was tied."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight.data_ptr() != emb.weight.data_ptr():
        return False
    head.weight = nn.Parameter(emb.weight.detach().clone(), requires_grad=emb.weight.requires_grad)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    return True


def apply_lora(model: nn.Module, cfg: LoraConfig, seed: int) -> tuple[Any, list[str]]:
    """Wrap ``model`` with LoRA on the resolved targets; base weights are frozen."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = resolve_targets(model, cfg.targets, cfg.experts)
    head = _safe(_head_name, model)
    if head in names:
        untie_output_head(model)
    target_parameters = expert_parameters(model) if cfg.experts and is_moe_model(model) else []
    if (
        cfg.experts
        and is_moe_model(model)
        and not target_parameters
        and not any(is_moe_part(n) for n in names)
    ):
        raise SpecializeError(
            "lora.experts is true but no expert weights were found to adapt",
            field="lora.experts",
        )
    if getattr(model, "is_loaded_in_4bit", False):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(seed)
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=names,
        target_parameters=target_parameters or None,
        use_dora=cfg.dora,
        use_rslora=cfg.rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, peft_cfg)
    return peft_model, names + [f"{p} (all experts)" for p in target_parameters]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}
