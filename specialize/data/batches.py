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
    # Packed rows only: positions restart at 0 for every example in the row, which also
    # tells the attention to keep examples apart (block-diagonal causal mask).
    position_ids: list[int] | None = None

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
    """Right-pad to the longest example; padding is masked out of attention and loss.

    Packed rows carry ``position_ids``; padding then forms its own segment (positions from 0),
    so no real token attends to it, and ``attention_mask`` only counts real tokens.
    """
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(examples), width), dtype=torch.long)
    packed = any(e.position_ids is not None for e in examples)
    pos = torch.zeros((len(examples), width), dtype=torch.long) if packed else None
    for i, e in enumerate(examples):
        n = len(e)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attn[i, :n] = 1
        if pos is not None:
            pos[i, :n] = torch.tensor(e.position_ids or list(range(n)))
            pos[i, n:] = torch.arange(width - n)
    out = {"input_ids": ids, "attention_mask": attn, "labels": labels}
    if pos is not None:
        out["position_ids"] = pos
    return out


def pack(examples: list[Example], row_len: int, seed: int | None = None) -> list[Example]:
    """Pack examples into rows of at most ``row_len`` tokens (first fit).

    Each example keeps its own positions (restarting at 0) and its first token is never a
    target, so the loss of a packed row is exactly the sum of its examples' losses: nothing
    is predicted across an example boundary and no token attends to another example.

    With ``seed=None`` examples are placed longest first (the densest packing). With a seed
    they are placed in a seeded random order: slightly less dense, but a row then mixes long
    and short examples. Longest-first makes rows of only long or only short examples, so an
    optimizer step sees one kind at a time, like length-grouped batches, and training loss
    ends measurably higher for the same tokens (bench/train_throughput.py).
    """
    rows: list[list[Example]] = []
    room: list[int] = []
    if seed is None:
        order = sorted(examples, key=len, reverse=True)
    else:
        order = list(examples)
        random.Random(seed).shuffle(order)
    for e in order:
        if len(e) > row_len:
            raise ValueError(f"example '{e.id}' ({len(e)} tokens) exceeds the row length {row_len}")
        for i, free in enumerate(room):
            if len(e) <= free:
                rows[i].append(e)
                room[i] -= len(e)
                break
        else:
            rows.append([e])
            room.append(row_len - len(e))
    packed = []
    for r, members in enumerate(rows):
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for e in members:
            ids += e.input_ids
            labels += [IGNORE] + e.labels[1:]
            pos += list(range(len(e)))
        packed.append(Example(f"row{r}:" + ",".join(e.id for e in members), ids, labels, pos))
    return packed


def text_examples(docs: list[tuple[str, list[int]]], eos_id: int, row_len: int) -> list[Example]:
    """CPT: each document's ids + EOS, cut into chunks of at most ``row_len`` tokens.

    Every token is a target except a chunk's first (it has no context inside its chunk).
    """
    out = []
    for doc_id, ids in docs:
        ids = ids + [eos_id]
        for k, start in enumerate(range(0, len(ids), row_len)):
            chunk = ids[start : start + row_len]
            if len(chunk) < 2:
                continue
            out.append(Example(f"{doc_id}#{k}", chunk, [IGNORE] + chunk[1:]))
    return out


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
