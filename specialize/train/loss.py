"""Masked causal-LM loss that only projects the hidden states it needs onto the vocabulary.

In SFT most positions are prompt tokens whose logits the loss ignores, and the output
projection (hidden x vocabulary) dominates memory: a batch of 8 x 512 tokens with a 49k
vocabulary is 800 MB of float32 logits, plus as much again for their gradient. We run the
decoder, keep the hidden states at target positions only, and project those in chunks. The
result equals the usual full-logits cross-entropy (a test pins it).

The module wraps the (PEFT) model so that ``accelerate`` / DDP see one forward call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from specialize.data.batches import IGNORE
from specialize.train import fused_lora, fused_mlp, segment_attention


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


def _frozen_linear(head: nn.Module) -> bool:
    """A plain output projection without bias whose weight is not trained (LoRA on the head,
    or a trained head, take the autograd path: they need the logits' gradient)."""
    return type(head) is nn.Linear and head.bias is None and not head.weight.requires_grad


class TargetCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy of ``h @ weight.T`` whose backward keeps no logits.

    Autograd would save every chunk's vocabulary-wide log-softmax (49k floats per target
    token: 160 MB for 800 targets) until the backward pass, plus as much again for its
    gradient. Each token's loss depends only on its own hidden state, so the forward pass
    computes d loss_i / d h_i = (softmax_i - onehot_i) @ weight chunk by chunk and keeps only
    that (hidden-size floats per token); the backward pass scales it by the incoming
    per-token gradient. The frozen weight gets no gradient. The matmuls are the ones the
    autograd backward would run, so this costs no extra time."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        losses, grads = [], []
        for s in range(0, h.shape[0], chunk):
            logits = (h[s : s + chunk] @ weight.t()).float()
            target = y[s : s + chunk, None]
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            losses.append((lse - logits.gather(1, target)).squeeze(1))
            probs = logits.sub_(lse).exp_()  # in place: the chunk's logits are done with
            probs.scatter_add_(1, target, torch.full_like(target, -1.0, dtype=probs.dtype))
            grads.append(probs.to(weight.dtype) @ weight)
        ctx.save_for_backward(torch.cat(grads))
        ctx.h_dtype = h.dtype
        return torch.cat(losses)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        (dh,) = ctx.saved_tensors
        return (dh * grad[:, None].to(dh.dtype)).to(ctx.h_dtype), None, None, None


class MaskedCausalLMLoss(nn.Module):
    """``forward(batch) -> (loss_sum_per_row [B], target_tokens_per_row [B])``."""

    def __init__(self, model: nn.Module, chunk_rows: int = 2048) -> None:
        super().__init__()
        self.model = model
        self.chunk_rows = chunk_rows
        # packed rows attend per example instead of through a block-diagonal mask
        self.segmented = segment_attention.enable(model)
        fused_mlp.enable(model)  # the MLPs keep 3 of 4 intermediate tensors for backward
        fused_lora.enable(model)  # LoRA's update added inside one addmm

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        backbone, head = _backbone_and_head(self.model)
        if position_ids is not None:
            # Packed rows: restarting positions define the segments; transformers builds the
            # block-diagonal causal mask from them when no 2D attention mask is given.
            extra = {}
            if self.segmented:
                extra["segments"] = segment_attention.segments_of(position_ids, attention_mask)
            out = backbone(
                input_ids=input_ids, position_ids=position_ids, attention_mask=None, **extra
            )
        else:
            out = backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE
        rows = keep.nonzero(as_tuple=True)[0]
        h = hidden[:, :-1][keep]
        y = targets[keep]
        losses = []
        if _frozen_linear(head) and h.requires_grad and h.shape[0]:
            losses.append(TargetCrossEntropy.apply(h, head.weight, y, self.chunk_rows))
        else:
            for s in range(0, h.shape[0], self.chunk_rows):
                logits = head(h[s : s + self.chunk_rows]).float()
                losses.append(F.cross_entropy(logits, y[s : s + self.chunk_rows], reduction="none"))
        per_row = hidden.new_zeros(input_ids.shape[0], dtype=torch.float32)
        if losses:
            per_row = per_row.index_add(0, rows, torch.cat(losses))
        else:
            # No targets (e.g. a process's idle slot at an epoch end): a zero that still
            # depends on every trainable weight, so DDP's gradient all-reduce happens.
            per_row = per_row + head(hidden[0, :1]).float().sum() * 0.0
        return per_row, keep.sum(1)


@torch.no_grad()
def evaluate_loss(
    loss_module: MaskedCausalLMLoss, batches: list[dict[str, Any]], desc: str | None = None
) -> tuple[list[float], list[int]]:
    """Per-row summed loss and target counts over batches (in batch order).

    With ``desc``, a progress bar (in rows) is shown: held-out scoring can take minutes.
    """
    from tqdm.auto import tqdm

    was_training = loss_module.training
    loss_module.eval()
    sums: list[float] = []
    counts: list[int] = []
    bar = tqdm(
        total=sum(len(b["input_ids"]) for b in batches),
        desc=desc,
        unit="row",
        disable=desc is None,
        dynamic_ncols=True,
    )
    for b in batches:
        s, n = loss_module(b["input_ids"], b["attention_mask"], b["labels"])
        sums += s.tolist()
        counts += n.tolist()
        bar.update(len(b["input_ids"]))
    bar.close()
    loss_module.train(was_training)
    return sums, counts
