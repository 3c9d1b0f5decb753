"""The generation engine: continuous batching with a KV cache, for evaluation at scale.

Why not ``model.generate`` one record at a time (how the seed projects evaluated, one of them
for 396 minutes): a 135M-parameter model on a CPU is bound by reading its weights, not by
arithmetic, so one decoding step over 32 rows costs about twice a step over one row. Why not
``model.generate`` on fixed batches either: answers end at different lengths, and a fixed
batch keeps paying for rows that already finished until its longest answer ends.

The engine:

- takes prompts shortest first (so rows admitted together pad little);
- keeps up to ``batch_size`` rows decoding together, one token per row per step, over one
  KV cache; a row leaves the batch (and the cache) as soon as it stops, and when a quarter
  of the slots are free, waiting prompts are prefilled together and merged in (left-padded
  to the cache length: continuous batching);
- prefills the admitted prompts' common prefix (the system prompt; a passage several
  questions share) once and copies its cache to every row;
- stops a row at an end-of-turn id or stop string, or after ``max_new_tokens``;
- decodes greedily, or samples from a per-record seeded generator, so a sampled answer
  depends on the record and the seed, not on which rows it shared a batch with.

Position ids count each row's own tokens (padding is masked and skipped), as ``generate``
does, so in float32 the greedy answers match one-at-a-time ``model.generate``;
``bench/eval_throughput.py`` checks this on 200 real questions and measures the speed-up.
Models with sliding-window attention layers (gpt-oss) skip prefix sharing: their masks count
distance in cache slots, which padding between a prefix and a row's suffix would stretch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass
class _Row:
    index: int  # position in the caller's list
    new: list[int] = field(default_factory=list)
    stopped: bool = False
    generator: torch.Generator | None = None


@dataclass
class _Batch:
    """Rows decoding together: their cache, 2-D attention mask and last position ids."""

    rows: list[_Row]
    cache: Any
    attn: torch.Tensor  # [rows, cached tokens]: 1 real, 0 padding
    last_pos: torch.Tensor  # [rows, 1]
    logits: torch.Tensor  # [rows, vocab]: the next-token logits of each row


def _common_prefix_len(prompts: list[list[int]]) -> int:
    first = prompts[0]
    n = min(len(p) for p in prompts)
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return n


def _first_stop(text: str, stop_strings: list[str]) -> int:
    """Index of the earliest stop string in ``text`` (-1 if none)."""
    hits = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return min(hits) if hits else -1


def _growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A cache layer that appends in place into spare room instead of ``torch.cat``.

        ``DynamicLayer`` copies the whole cache on every step (``cat``); at 32 rows and a few
        hundred tokens that copy costs as much as a third of the step on a CPU. Here keys and
        values are views of a buffer with room to grow (doubling), so a step writes one
        token. Row selection and merging replace the tensors; the next update then moves
        them into a fresh buffer once.
        """

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self._k = self._v = None
            n = self.keys.shape[-2] if self.keys.numel() else 0
            add = key_states.shape[-2]
            k = self._k
            if (
                k is None
                or k.shape[0] != key_states.shape[0]
                or self.keys.numel()
                and self.keys.data_ptr() != k.data_ptr()
                or n + add > k.shape[-2]
            ):
                b, h, _, d = key_states.shape
                room = max(2 * (n + add), 64)
                self._k = key_states.new_empty((b, h, room, d))
                self._v = value_states.new_empty((b, value_states.shape[1], room, d))
                if n:
                    self._k[:, :, :n] = self.keys
                    self._v[:, :, :n] = self.values
            self._k[:, :, n : n + add] = key_states
            self._v[:, :, n : n + add] = value_states
            self.keys = self._k[:, :, : n + add]
            self.values = self._v[:, :, : n + add]
            return self.keys, self.values

    return GrowingLayer


_LAYER: type | None = None


def _new_cache(cache_cls: Any) -> Any:
    global _LAYER
    if _LAYER is None:
        _LAYER = _growing_layer_class()
    cache = cache_cls()
    cache.layer_class_to_replicate = _LAYER
    return cache


def _sliding_window(model: Any) -> bool:
    """Whether some attention layer sees only a window of recent cache positions.

    Such masks count distance in cache slots, so padding *between* a shared prefix and a
    row's own tokens would shift the window; prefix sharing is turned off for these models
    (left padding, before every real token, is still exact).
    """
    cfg = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    if getattr(cfg, "sliding_window", None) is None:
        return False
    types = getattr(cfg, "layer_types", None)
    if types is not None:
        return any("sliding" in t for t in types)
    return bool(getattr(cfg, "use_sliding_window", True))


def _mergeable(cache: Any) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and _LAYER is not None and all(type(x) is _LAYER for x in layers)


class _Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        stop_ids: list[int],
        max_new_tokens: int,
        do_sample: bool,
        temperature: float,
        top_p: float,
        seed: int,
        stop_strings: list[str],
        share_prefix: bool,
    ) -> None:
        from transformers import DynamicCache

        self.model, self.tokenizer = model, tokenizer
        self.cache_cls = DynamicCache
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
        self.stops = set(stop_ids)
        self.max_new = max_new_tokens
        self.do_sample, self.temperature, self.top_p, self.seed = (
            do_sample,
            temperature,
            top_p,
            seed,
        )
        self.stop_strings = [s for s in stop_strings if s]
        self.share_prefix = share_prefix and not _sliding_window(model)

    # ------------------------------------------------------------------------- prefill
    def prefill(self, indices: list[int], prompts: list[list[int]]) -> _Batch:
        """Run the prompts (common prefix once), returning a batch ready for its first token."""
        n, dev = len(prompts), self.device
        cache = _new_cache(self.cache_cls)
        shared = _common_prefix_len(prompts) if self.share_prefix else 0
        shared = min(shared, min(len(p) for p in prompts) - 1)  # >= 1 own token per row
        if shared > 0:
            prefix = torch.tensor([prompts[0][:shared]], dtype=torch.long, device=dev)
            self.model(input_ids=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1)
            if n > 1:
                cache.batch_repeat_interleave(n)
        suffixes = [p[shared:] for p in prompts]
        width = max(len(p) for p in suffixes)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((n, shared + width), dtype=torch.long)
        attn[:, :shared] = 1
        pos = torch.zeros((n, width), dtype=torch.long)
        for row, p in enumerate(suffixes):
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attn[row, shared + width - len(p) :] = 1
            pos[row, width - len(p) :] = torch.arange(shared, shared + len(p))
        ids, attn, pos = ids.to(dev), attn.to(dev), pos.to(dev)
        logits = self.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]
        rows = []
        for i in indices:
            g = None
            if self.do_sample:
                g = torch.Generator(device=dev)
                g.manual_seed(self.seed * 1_000_003 + i)
            rows.append(_Row(i, generator=g))
        return _Batch(rows, cache, attn, pos[:, -1:], logits)

    # -------------------------------------------------------------------------- decode
    def next_tokens(self, batch: _Batch) -> list[int]:
        logits = batch.logits
        if not self.do_sample:
            return logits.argmax(-1).tolist()
        probs = torch.softmax(logits.float() / max(self.temperature, 1e-6), dim=-1)
        if self.top_p < 1.0:
            sorted_p, sorted_i = probs.sort(-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > self.top_p  # smallest set reaching top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, sorted_i, sorted_p)
        return [
            int(torch.multinomial(probs[k], 1, generator=row.generator))
            for k, row in enumerate(batch.rows)
        ]

    def advance(self, batch: _Batch) -> list[_Row]:
        """Pick each row's next token; drop and return the rows that finished."""
        tokens = self.next_tokens(batch)
        keep, done = [], []
        for k, (row, t) in enumerate(zip(batch.rows, tokens, strict=True)):
            if t in self.stops:
                row.stopped = True
            else:
                row.new.append(t)
                if self.stop_strings:
                    text = self.tokenizer.decode(row.new, skip_special_tokens=True)
                    row.stopped = _first_stop(text, self.stop_strings) >= 0
            if row.stopped or len(row.new) >= self.max_new:
                done.append(row)
            else:
                keep.append(k)
        if len(keep) < len(batch.rows):
            self.select(batch, keep)
        return done

    def select(self, batch: _Batch, keep: list[int]) -> None:
        sel = torch.tensor(keep, dtype=torch.long, device=self.device)
        if keep:
            batch.cache.batch_select_indices(sel)
        batch.attn = batch.attn.index_select(0, sel)
        batch.last_pos = batch.last_pos.index_select(0, sel)
        batch.logits = batch.logits.index_select(0, sel)
        batch.rows = [batch.rows[k] for k in keep]

    def step(self, batch: _Batch) -> None:
        """Feed each row's last token; the batch's logits become the next ones."""
        ids = torch.tensor([[r.new[-1]] for r in batch.rows], dtype=torch.long, device=self.device)
        batch.last_pos = batch.last_pos + 1
        batch.attn = torch.cat([batch.attn, batch.attn.new_ones((len(batch.rows), 1))], dim=1)
        batch.logits = self.model(
            input_ids=ids,
            attention_mask=batch.attn,
            position_ids=batch.last_pos,
            past_key_values=batch.cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]

    # --------------------------------------------------------------------------- merge
    def merge(self, a: _Batch, b: _Batch) -> _Batch:
        """One batch from two: caches and masks left-padded to a common length, then stacked.

        Columns that are padding in every row (left behind by rows that finished) are cut.
        """
        if not a.rows:
            return b
        width = max(a.attn.shape[1], b.attn.shape[1])
        parts = []
        for x in (a, b):
            pad = width - x.attn.shape[1]
            parts.append((x, pad))
        attn = torch.cat([torch.nn.functional.pad(x.attn, (pad, 0)) for x, pad in parts])
        start = int((attn.sum(0) > 0).nonzero()[0]) if attn.any() else 0
        for layer_a, layer_b in zip(a.cache.layers, b.cache.layers, strict=True):
            for name in ("keys", "values"):
                ta, tb = getattr(layer_a, name), getattr(layer_b, name)
                ta = torch.nn.functional.pad(ta, (0, 0, parts[0][1], 0))
                tb = torch.nn.functional.pad(tb, (0, 0, parts[1][1], 0))
                setattr(layer_a, name, torch.cat([ta, tb])[:, :, start:])
        return _Batch(
            a.rows + b.rows,
            a.cache,
            attn[:, start:],
            torch.cat([a.last_pos, b.last_pos]),
            torch.cat([a.logits, b.logits]),
        )

    def answer(self, row: _Row) -> dict[str, Any]:
        text = self.tokenizer.decode(row.new, skip_special_tokens=True)
        if self.stop_strings:
            cut = _first_stop(text, self.stop_strings)
            if cut >= 0:
                text = text[:cut]
        return {"text": text.strip(), "new_tokens": len(row.new), "stopped": row.stopped}


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    stop_ids: list[int],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    desc: str = "generate",
    progress: bool = True,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_strings: list[str] | None = None,
    on_finish: Callable[[list[int], list[dict[str, Any]]], None] | None = None,
    share_prefix: bool = True,
) -> list[dict[str, Any]]:
    """Answers for token-id prompts: ``[{"text", "new_tokens", "stopped"}]`` in input order.

    ``stopped`` is true when the answer ended at an end-of-turn id or stop string, false when
    it ran out of ``max_new_tokens``. ``on_finish(indices, answers)`` is called as records
    finish (the evaluation saves them as it goes, so an interrupted run loses nothing).
    """
    out: list[dict[str, Any] | None] = [None] * len(prompts)
    if not prompts:
        return []
    engine = _Engine(
        model,
        tokenizer,
        stop_ids,
        max_new_tokens,
        do_sample,
        temperature,
        top_p,
        seed,
        stop_strings or [],
        share_prefix,
    )
    queue = deque(sorted(range(len(prompts)), key=lambda i: len(prompts[i])))
    refill = max(1, batch_size // 4)  # admit new prompts once this many slots are free
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(prompts), desc=desc, unit="rec", disable=not progress, dynamic_ncols=True)
    batch: _Batch | None = None
    can_merge = True
    try:
        while queue or (batch is not None and batch.rows):
            active = 0 if batch is None else len(batch.rows)
            if queue and (active == 0 or (can_merge and batch_size - active >= refill)):
                take = [queue.popleft() for _ in range(min(batch_size - active, len(queue)))]
                fresh = engine.prefill(take, [prompts[i] for i in take])
                if batch is None or not batch.rows:
                    batch = fresh
                    can_merge = _mergeable(batch.cache)
                else:
                    batch = engine.merge(batch, fresh)
            assert batch is not None
            done = engine.advance(batch)
            if done:
                answers = [engine.answer(r) for r in done]
                for r, a in zip(done, answers, strict=True):
                    out[r.index] = a
                if on_finish is not None:
                    on_finish([r.index for r in done], answers)
                bar.update(len(done))
            if batch.rows:
                engine.step(batch)
    finally:
        bar.close()
        model.train(was_training)
    return out  # type: ignore[return-value]
