"""The sample -> batch contract: records become token ids with labels, then padded batches.

Every token the loss sees is decided by :func:`specialize.models.chat.render_conversation`;
this module only carries that mask into ``labels`` (``-100`` where not trained), enforces the
sequence-length limit and groups examples of similar length so little compute goes to padding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from specialize.data.read import Record
from specialize.errors import SpecializeError
from specialize.models.chat import render_conversation

IGNORE = -100


@dataclass(frozen=True)
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]  # IGNORE where the mask is False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_target(self) -> int:
        """Tokens predicted by the loss (labels shift by one: the first is never a target)."""
        return sum(1 for x in self.labels[1:] if x != IGNORE)


def to_examples(
    records: list[Record],
    tokenizer: Any,
    fmt: str,
    max_len: int,
    overlength: str = "error",
    where: str = "data",
) -> tuple[list[Example], dict[str, int]]:
    """Render records; too-long ones raise, or are truncated/dropped and counted."""
    out: list[Example] = []
    counts = {"truncated": 0, "dropped_too_long": 0}
    for rec in records:
        r = render_conversation(rec["messages"], tokenizer, fmt)
        ids, mask = r.input_ids, r.mask
        if len(ids) > max_len:
            if overlength == "error":
                raise SpecializeError(
                    f"record '{rec['id']}' is {len(ids)} tokens, longer than chat.max_seq_len="
                    f"{max_len}; raise the limit or set chat.overlength: truncate or drop",
                    path=where,
                    field="chat.max_seq_len",
                )
            if overlength == "drop":
                counts["dropped_too_long"] += 1
                continue
            ids, mask = ids[:max_len], mask[:max_len]
            if not any(mask[1:]):
                counts["dropped_too_long"] += 1
                continue
            counts["truncated"] += 1
        labels = [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]
        out.append(Example(rec["id"], ids, labels))
    return out, counts


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; padding is masked out of attention and loss."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attn[i, :n] = 1
    return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def length_grouped_batches(
    examples: list[Example], batch_size: int, seed: int, shuffle: bool = True
) -> list[list[Example]]:
    """Batches of similar-length examples, in a seeded random order.

    Examples are shuffled, cut into windows of 32 batches, sorted by length within each
    window, batched, and the batches shuffled: nearly padding-free, still random.
    """
    order = list(examples)
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    window = batch_size * 32
    batches: list[list[Example]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=len)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches
