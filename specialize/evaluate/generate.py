"""Batched greedy generation with a KV cache, left padding and stop tokens.

Prompts are sorted by length before batching so a batch pads little, then answers are put
back in the caller's order. Generation stops per row at any end-of-turn token. In float32 the
text is the same at any batch size (padding is masked), which the evaluation relies on.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    stop_ids: list[int],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    desc: str = "generate",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Greedy answers for token-id prompts: ``[{"text", "new_tokens", "stopped"}]``."""
    pad_id = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[dict[str, Any] | None] = [None] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc=desc, unit="rec", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            p = prompts[i]
            ids[row, width - len(p) :] = torch.tensor(p)
            attn[row, width - len(p) :] = 1
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=attn.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=pad_id,
            use_cache=True,
        )
        for row, i in enumerate(idx):
            new = gen[row, width:].tolist()
            stopped = False
            for k, t in enumerate(new):
                if t in stop_ids:
                    new, stopped = new[:k], True
                    break
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            out[i] = {"text": text, "new_tokens": len(new), "stopped": stopped}
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    return out  # type: ignore[return-value]
