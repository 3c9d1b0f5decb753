"""Attention for packed rows that only computes the blocks a token may see.

A packed row holds several examples; each token attends to the earlier tokens of its own
example only. transformers expresses that as a block-diagonal causal mask over the whole row,
and PyTorch's CPU attention kernels then compute every block of the row's causal triangle and
mask most of them away: with 1024-token rows of ~235-token examples that is 4x the work
needed. The profile of a training step of the bundled model (``bench/train_profile.py``) had
attention at 40% of the step, more than all the matmuls of the linear layers.

Here each example's slice of the row runs through ``scaled_dot_product_attention`` on its
own with ``is_causal=True`` (no mask: the kernel skips the upper triangle), reading grouped
key/value heads in place. The segments come from :class:`specialize.train.loss.
MaskedCausalLMLoss`, which knows where each packed example starts (``position_ids`` restart at
0). Any other call (no ``segments`` given: generation, evaluation, unpacked batches) goes to
transformers' own SDPA function unchanged, so the model's behaviour elsewhere is untouched.

The implementation is registered with transformers' ``AttentionInterface`` under
:data:`NAME` (and its mask function is SDPA's), and :func:`enable` switches a model's config
to it. ``_attn_implementation`` is not written to saved configs, so nothing we save names it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "specialize_segments"

Segments = list[list[tuple[int, int]]]  # per row: (start, end) of each example, end exclusive


def segments_of(position_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> Segments:
    """Each row's examples as (start, end) spans: a span starts wherever positions restart at
    0. Trailing padding (``attention_mask`` 0) is left out: no loss reads its outputs."""
    rows: Segments = []
    pos = position_ids.detach().cpu()
    real = attention_mask.detach().cpu().sum(1).tolist() if attention_mask is not None else None
    for r in range(pos.shape[0]):
        n = int(real[r]) if real is not None else pos.shape[1]
        starts = (pos[r, :n] == 0).nonzero().flatten().tolist() or [0]
        if starts[0] != 0:
            starts = [0, *starts]
        rows.append(list(zip(starts, [*starts[1:], n], strict=True)))
    return rows


def segment_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    segments: Segments | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: ``query`` [B, H, L, D], ``key``/``value``
    [B, KV, L, D]; returns [B, L, H, D]. Per-example causal attention when ``segments`` is
    given, transformers' SDPA otherwise."""
    if segments is None or query.shape[2] != key.shape[2]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    dtype = _work_dtype(query)
    with torch.autocast(query.device.type, enabled=False):
        rows = [
            _row(*(t[r : r + 1].to(dtype) for t in (query, key, value)), spans, dropout, scaling)
            for r, spans in enumerate(segments)
        ]
    out = torch.cat(rows, dim=0).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def _row(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spans: list[tuple[int, int]],
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    """One row's examples, each causal on its own, then its padded tail as zeros."""
    parts = [
        F.scaled_dot_product_attention(
            q[:, :, s:e],
            k[:, :, s:e],
            v[:, :, s:e],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=q.shape[1] != k.shape[1],
        )
        for s, e in spans
    ]
    tail = q.shape[2] - (spans[-1][1] if spans else 0)
    if tail:  # trailing padding: nothing reads its outputs
        parts.append(q.new_zeros((1, q.shape[1], tail, q.shape[3])))
    return torch.cat(parts, dim=2)


_FASTER: dict[tuple[str, torch.dtype], torch.dtype] = {}


def _work_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype to run attention in for bf16/fp16 activations: their own, or float32 where
    that is faster, measured once per device type and dtype (a forward and backward of one
    256-token example each way, about 50 ms). PyTorch's CPU flash-attention kernel in bf16 can
    be much slower than in float32 on CPUs without AMX: on this project's 2-core AVX-512 AMD
    machine (2026-12-02) a 200-token example took 11.5 ms in bf16 and 4.4 ms in float32."""
    if query.dtype == torch.float32 or query.device.type != "cpu":
        return query.dtype
    key = (query.device.type, query.dtype)
    if key not in _FASTER:
        _FASTER[key] = min((query.dtype, torch.float32), key=lambda d: _time_attention(d, query))
    return _FASTER[key]


def _time_attention(dtype: torch.dtype, like: torch.Tensor, n: int = 256) -> float:
    import time

    heads, dim = like.shape[1], like.shape[3]
    with torch.enable_grad(), torch.autocast(like.device.type, enabled=False):
        q, k, v = (
            torch.randn(1, heads, n, dim, dtype=dtype, device=like.device, requires_grad=True)
            for _ in range(3)
        )
        best = float("inf")
        for _ in range(3):  # the first run warms the kernel up
            t0 = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
            best = min(best, time.perf_counter() - t0)
    return best


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, segment_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def enable(model: torch.nn.Module) -> bool:
    """Switch ``model`` (a transformers model, PEFT-wrapped or not) from SDPA to
    :func:`segment_sdpa`; other implementations (eager, flash, a sliding window) are left
    alone. True when switched."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    if getattr(config, "sliding_window", None) or getattr(config, "sub_configs", None):
        return False
    _register()
    config._attn_implementation = NAME
    return True
