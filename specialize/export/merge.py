"""Fold the LoRA adapter into the base weights and prove the merged model is the same model.

The merged folder is an ordinary Hugging Face model (``AutoModelForCausalLM.from_pretrained``
opens it). After writing it we reload it from disk and compare its logits with the adapter
model's on a few prompts; the largest absolute difference is recorded, and a gap above the
tolerance stops the run. We also record the gap to the base model, which must be non-zero:
a merge that changed nothing would pass an equality test too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


@torch.no_grad()
def logits_for(model: Any, prompts: list[list[int]]) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return [model(input_ids=torch.tensor([p])).logits[0] for p in prompts]


def max_abs_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(a, b, strict=True))


def worst_excess(a: list[torch.Tensor], b: list[torch.Tensor], atol: float, rtol: float) -> float:
    """max(|a - b| - (atol + rtol * max|b| of the prompt)); <= 0 means the check passes.

    float32 rounding in a deep network grows with the scale of the activations, so the
    tolerance scales with the prompt's largest logit rather than with each logit (a logit
    near zero carries the same absolute rounding error as its large neighbours).
    """
    return max(
        float(((x.double() - y.double()).abs() - (atol + rtol * y.abs().max())).max())
        for x, y in zip(a, b, strict=True)
    )


def merge_and_save(
    peft_model: Any,
    tokenizer: Any,
    out_dir: Path,
    dtype: str = "float32",
    prompts: list[list[int]] | None = None,
) -> tuple[Any, list[torch.Tensor] | None]:
    """Merge LoRA into the base (in place: the PEFT wrapper is consumed), cast to ``dtype`` and
    save the folder. With ``prompts``, also returns the merged model's logits on them *before*
    the cast, which is what proves the merge itself when the saved dtype is lossy."""
    merged = peft_model.merge_and_unload()
    before = logits_for(merged, prompts) if prompts else None
    merged = merged.to(getattr(torch, dtype))
    merged.config.use_cache = True
    merged.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return merged, before


LOSSY = ("bfloat16", "float16")


def check_merged(
    out_dir: Path,
    prompts: list[list[int]],
    adapter_logits: list[torch.Tensor],
    base_logits: list[torch.Tensor],
    atol: float,
    rtol: float = 0.0,
    dtype: torch.dtype = torch.float32,
    merged_logits: list[torch.Tensor] | None = None,
    saved_dtype: str = "float32",
) -> dict[str, Any]:
    """Reload the merged folder with transformers (in ``dtype``) and compare logits.

    A float32 folder must reproduce the adapter model's logits within atol + rtol x max|logit|.
    A bfloat16/float16 folder cannot (the cast is lossy by the user's choice), so the gate
    moves to the merge before the cast (``merged_logits``, same tolerance) and the saved
    folder's logits are reported with their top-1 agreement with the adapter model.
    """
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=dtype)
    got = logits_for(reloaded, prompts)
    vs_adapter = max_abs_diff(got, adapter_logits)
    vs_base = max_abs_diff(got, base_logits)
    out = {
        "prompts": len(prompts),
        "max_abs_diff_vs_adapter": vs_adapter,
        "max_abs_diff_vs_base": vs_base,
        "max_abs_adapter_logit": max(float(x.abs().max()) for x in adapter_logits),
        "atol": atol,
        "rtol": rtol,
        "dtype": str(dtype).removeprefix("torch."),
        "saved_dtype": saved_dtype,
    }
    if saved_dtype in LOSSY and merged_logits is not None:
        pairs = zip(got, adapter_logits, strict=True)
        agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in pairs)
        total = sum(int(a.shape[0]) for a in got)
        out["max_abs_diff_before_cast"] = max_abs_diff(merged_logits, adapter_logits)
        out["top1_agreement_saved"] = agree / total if total else 0.0
        close = worst_excess(merged_logits, adapter_logits, atol, rtol) <= 0
    else:
        close = worst_excess(got, adapter_logits, atol, rtol) <= 0
    out["passed"] = close and vs_base > atol
    return out
