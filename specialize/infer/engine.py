"""The generation engine: continuous batching with a KV cache, fed by a request queue.

Why not ``model.generate`` one record at a time (how the seed projects evaluated, one of them
for 396 minutes): a 135M-parameter model on a CPU is bound by reading its weights, not by
arithmetic, so one decoding step over 32 rows costs about twice a step over one row. Why not
``model.generate`` on fixed batches either: answers end at different lengths, and a fixed
batch keeps paying for rows that already finished until its longest answer ends.

The engine:

- takes waiting requests in queue order (:meth:`Engine.submit_many` queues a whole evaluation
  shortest prompt first, so rows admitted together pad little);
- keeps up to ``batch_size`` rows decoding together, one token per row per step, over one
  KV cache; a row leaves the batch (and the cache) as soon as it stops, and when a quarter
  of the slots are free, waiting prompts are prefilled together and merged in (left-padded
  to the cache length: continuous batching). Requests submitted from other threads while a
  batch runs join it the same way;
- prefills the admitted prompts' common prefix (the system prompt; a passage several
  questions share) once and copies its cache to every row (only among rows on the same
  adapter: the prefix's cache depends on the adapter);
- gives each row its own sampling (greedy, or temperature/top-p from a per-request seeded
  generator, so a sampled answer depends on the request, not on its batch mates), its own
  budget and stop strings, its own LoRA adapter (PEFT's mixed-adapter batches) and its own
  output constraint (a token mask from :mod:`specialize.infer.constraints`, applied to that
  row's logits only);
- stops a row at an end-of-turn id, a stop string, a completed constraint, or after its
  ``max_new_tokens``, and hands its text (and the text so far, for streaming) to the
  request's :class:`Ticket`.

Position ids count each row's own tokens (padding is masked and skipped), as ``generate``
does, so in float32 the greedy answers match one-at-a-time ``model.generate``;
``bench/eval_throughput.py`` checks this on 200 real questions and measures the speed-up.
Models with sliding-window attention layers (gpt-oss) skip prefix sharing: their masks count
distance in cache slots, which padding between a prefix and a row's suffix would stretch.

One thread drives the model (:meth:`Engine.run` in a worker the backend starts); everything
else talks to it through the queue and the tickets.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from specialize.infer.drafts import PromptLookup
from specialize.infer.types import FinishReason, Request, Result, Sampling, Ticket, first_stop

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


@dataclass
class _Row:
    ticket: Ticket
    new: list[int] = field(default_factory=list)
    finish: FinishReason | None = None
    generator: torch.Generator | None = None
    mask: Any = None  # a RowState of the constraint, or None
    emitted: str = ""  # streamed so far
    error: str | None = None
    lookup: PromptLookup | None = None  # greedy rows that may be drafted for
    draft: list[int] = field(default_factory=list)  # guesses fed after the last token
    pending: int = 0  # cache columns of the last step after its first (drafts, padding)

    @property
    def request(self) -> Request:
        return self.ticket.request


@dataclass
class _Batch:
    """Rows decoding together: their cache, 2-D attention mask and last position ids."""

    rows: list[_Row]
    cache: Any
    attn: torch.Tensor  # [rows, cached tokens]: 1 real, 0 padding
    last_pos: torch.Tensor  # [rows, 1]: position of each row's last fed (non-draft) token
    logits: torch.Tensor  # [rows, 1 + drafts, vocab]: next-token logits after each fed token


@dataclass
class EngineStats:
    """Counts since the engine was made: how much speculative decoding saved."""

    steps: int = 0  # decoding forward passes
    rows: int = 0  # rows summed over those passes (their mean is the batch actually used)
    fed: int = 0  # positions computed by them: rows' last tokens, drafts and padding
    tokens: int = 0  # tokens picked (answers' tokens, stop tokens included)
    drafted: int = 0  # draft tokens fed
    accepted: int = 0  # draft tokens the model picked too
    prefills: int = 0  # prefill forward passes (groups of admitted prompts)
    prefill_s: float = 0.0  # seconds in them
    decode_s: float = 0.0  # seconds in decoding passes


def _common_prefix_len(prompts: list[list[int]]) -> int:
    first = prompts[0]
    n = min(len(p) for p in prompts)
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return n


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


def _new_cache() -> Any:
    from transformers import DynamicCache

    global _LAYER
    if _LAYER is None:
        _LAYER = _growing_layer_class()
    cache = DynamicCache()
    cache.layer_class_to_replicate = _LAYER
    return cache


# Most guesses fed per greedy row and step; 0 (the default) turns speculative decoding off.
# Measured on a 2-core CPU (bench/synth_throughput.py quick size, SmolLM2-135M fp32): 72% of
# the prompt-lookup guesses were right and steps fell 316 -> 242, but wall time did not fall
# (decode 30.3 s without, 34.5 s with), because feeding more tokens per step makes the CPU's
# matmuls compute-bound. Where a step costs the same at any width (GPUs) it should pay.
DRAFT_TOKENS = 0
# Most tokens fed in one decoding step, drafts included. On a CPU a step's matmuls turn
# compute-bound at a few dozen rows, so drafts only pay while the batch is small (measured:
# SmolLM2-135M fp32 on 2 cores, 16 rows: 108 ms fed 1 token each, 278 ms fed 5).
DRAFT_BUDGET = 16
COMPACT_AT = (2.0, 32)  # compact when the cache is wider than 2.0 x its rows' tokens + 32
PREFILL_SLACK = 1.25  # a prefill group's longest prompt is at most this x its shortest


def _by_length(tickets: list[Ticket]) -> list[list[Ticket]]:
    """``tickets`` in groups of similar prompt length (sorted, each group's longest at most
    :data:`PREFILL_SLACK` times its shortest), so padding to the longest wastes little."""
    groups: list[list[Ticket]] = []
    for t in sorted(tickets, key=lambda t: len(t.prompt)):
        if groups and len(t.prompt) <= PREFILL_SLACK * len(groups[-1][0].prompt):
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


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


def _use_gqa_attention() -> None:
    """Let transformers' SDPA attention read grouped key/value heads in place.

    With a padding mask and more than one new token per row (every prefill) it otherwise
    copies each layer's whole key/value cache ``heads / kv_heads`` times (``repeat_kv``)
    before attending. ``TRANSFORMERS_SDPA_FORCE_GQA`` is transformers' own switch for
    ``enable_gqa``; the result is the same attention. Measured on the synth bench's quick size
    (2 cores, SmolLM2-135M: 9 query heads on 3 key/value heads): decode 34.3 s -> 30.3 s,
    identical records. A user's explicit setting wins."""
    os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")


def _mergeable(cache: Any) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and _LAYER is not None and all(type(x) is _LAYER for x in layers)


def _generator(sampling: Sampling, device: torch.device) -> torch.Generator | None:
    if sampling.greedy:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(sampling.seed if sampling.seed is not None else random.getrandbits(62))
    return g


class Engine:
    """Continuous batching over one model; see the module docstring.

    ``adapter_names``: the LoRA adapters the model holds (a PEFT model), selectable per
    request; ``default_adapter`` is used for requests that name none (``None``: whatever the
    model has active, with no per-row selection at all, which is the fast path).
    ``masker`` makes constraint states (:class:`specialize.infer.constraints.TokenMasker`),
    created on first use so unconstrained work never pays for it.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        stop_ids: list[int],
        batch_size: int = 16,
        share_prefix: bool = True,
        adapter_names: tuple[str, ...] = (),
        draft_tokens: int = DRAFT_TOKENS,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.device = next(model.parameters()).device
        self.stop_ids = list(stop_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
        self.stops = set(stop_ids)
        self.batch_size = max(1, int(batch_size))
        self.share_prefix = share_prefix and not _sliding_window(model)
        # Drafts leave masked-out columns between a row's tokens, which a sliding window
        # would count as distance (as for prefix sharing).
        self.draft_tokens = 0 if _sliding_window(model) else max(0, int(draft_tokens))
        self.stats = EngineStats()
        _use_gqa_attention()
        self.adapter_names = adapter_names
        self._masker: Any = None
        self._waiting: deque[Ticket] = deque()
        # re-entrant: a ticket's callback (run under it when a cancelled ticket is dropped)
        # may queue a follow-up request
        self._lock = threading.RLock()
        self._closed = False
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------------ the queue
    def submit_many(self, tickets: list[Ticket]) -> None:
        """Queue tickets in this order, all at once (so a batch forms from all of them), and
        start the worker thread if none is running. The worker exits when it has nothing
        left to do, so an idle engine holds no thread and leaves the model's mode alone."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.extend(tickets)
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._serve, name="specialize-engine", daemon=True
                )
                self._worker.start()

    def close(self) -> None:
        """Refuse new work, let the worker finish what was queued, and wait for it."""
        with self._lock:
            self._closed = True
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join()

    def _take(self, n: int, idle: bool) -> list[Ticket] | None:
        """Up to ``n`` waiting tickets; ``None`` (and the worker stops) when ``idle`` and
        nothing waits, decided under the lock so a concurrent submit starts a new worker."""
        with self._lock:
            out = []
            while self._waiting and len(out) < n:
                t = self._waiting.popleft()
                if t.cancelled:
                    t._finish(Result("", 0, "error", error="cancelled", tag=t.request.tag))
                    continue
                out.append(t)
            if idle and not out:
                self._worker = None
                return None
            return out

    # -------------------------------------------------------------------------- driving
    def _serve(self) -> None:
        was_training = self.model.training
        self.model.eval()
        try:
            self.run()
        finally:
            self.model.train(was_training)

    @torch.inference_mode()
    def run(self) -> None:
        """Serve the queue until it is empty; the one thread that touches the model.

        A failure inside the model (out of memory, a bad adapter name) finishes every row in
        flight with an error result instead of killing the thread silently."""
        refill = max(1, self.batch_size // 4)  # admit new prompts once this many slots are free
        batch: _Batch | None = None
        can_merge = True
        while True:
            active = 0 if batch is None else len(batch.rows)
            free = self.batch_size - active
            if active == 0 or (can_merge and free >= refill):
                take = self._take(free, idle=active == 0)
                if take is None:
                    return
                if take:
                    try:
                        fresh = self._prefill_groups(take)
                    except Exception as err:  # noqa: BLE001 - reported on each ticket
                        self._fail([_Row(t) for t in take], err)
                        continue
                    if batch is None or not batch.rows:
                        batch = fresh
                        can_merge = _mergeable(batch.cache)
                    else:
                        batch = self.merge(batch, fresh)
            assert batch is not None
            try:
                self._advance(batch)
                if batch.rows:
                    self.compact(batch)
                    self.step(batch)
            except Exception as err:  # noqa: BLE001 - reported on each ticket
                self._fail(batch.rows, err)
                batch = None

    def _fail(self, rows: list[_Row], err: Exception) -> None:
        msg = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        for r in rows:
            r.ticket._finish(Result("", len(r.new), "error", error=msg, tag=r.request.tag))

    # ------------------------------------------------------------------------- prefill
    def _adapter_of(self, row: _Row) -> str | None:
        name = row.request.adapter
        if name is None or not self.adapter_names:
            return None
        return BASE_ADAPTER if name == "base" else name

    def _forward_kwargs(self, rows: list[_Row]) -> dict[str, Any]:
        """``adapter_names`` for a mixed-adapter batch; nothing when no row names one."""
        names = [self._adapter_of(r) for r in rows]
        if all(n is None for n in names):
            return {}
        active = getattr(self.model, "active_adapter", None)
        default = active if isinstance(active, str) else BASE_ADAPTER
        return {"adapter_names": [n or default for n in names]}

    def _prefill_groups(self, tickets: list[Ticket]) -> _Batch:
        """Prefill admitted tickets; rows on different adapters are prefilled separately
        (a shared prefix's cache depends on the adapter) and merged, and so are prompts of
        very different lengths: one padded forward pass over a 200- and a 450-token prompt
        computes 900 positions for 650 real ones (on synthetic data the padded prefill took
        1.7x the one-at-a-time prefill of the same prompts)."""
        groups: dict[str | None, list[Ticket]] = {}
        for t in tickets:
            groups.setdefault(self._adapter_of(_Row(t)), []).append(t)
        batch: _Batch | None = None
        for group in groups.values():
            for part in _by_length(group) if self.share_prefix else [group]:
                t0 = time.perf_counter()
                fresh = self.prefill(part)
                self.stats.prefills += 1
                self.stats.prefill_s += time.perf_counter() - t0
                batch = fresh if batch is None else self.merge(batch, fresh)
        assert batch is not None
        return batch

    def prefill(self, tickets: list[Ticket]) -> _Batch:
        """Run the prompts (common prefix once), returning a batch ready for its first token."""
        prompts = [t.prompt for t in tickets]
        rows = [_Row(t, generator=_generator(t.request.sampling, self.device)) for t in tickets]
        for r in rows:
            if r.request.constraint is not None:
                r.mask = self.masker().start(r.request.constraint)
            if self.draft_tokens and r.generator is None:
                r.lookup = PromptLookup(r.ticket.prompt)
        kw = self._forward_kwargs(rows)
        n, dev = len(prompts), self.device
        cache = _new_cache()
        shared = _common_prefix_len(prompts) if self.share_prefix else 0
        shared = min(shared, min(len(p) for p in prompts) - 1)  # >= 1 own token per row
        if shared > 0:
            prefix = torch.tensor([prompts[0][:shared]], dtype=torch.long, device=dev)
            one = {"adapter_names": kw["adapter_names"][:1]} if kw else {}
            self.model(
                input_ids=prefix, past_key_values=cache, use_cache=True, logits_to_keep=1, **one
            )
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
            **kw,
        ).logits[:, -1:, :]
        return _Batch(rows, cache, attn, pos[:, -1:], logits)

    def masker(self) -> Any:
        if self._masker is None:
            from specialize.infer.constraints import TokenMasker

            vocab = self.model.get_output_embeddings().weight.shape[0]
            self._masker = TokenMasker(self.tokenizer, vocab, self.stop_ids)
        return self._masker

    # -------------------------------------------------------------------------- decode
    def pick(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """One token per row from its ``[rows, vocab]`` logits (changed in place): greedy rows
        take the argmax, sampling rows draw from their own generator; constrained rows first
        have their disallowed tokens masked out."""
        states = [r.mask for r in rows]
        if any(s is not None for s in states):
            self.masker().apply(logits, states)
        greedy = logits.argmax(-1).tolist()
        out = []
        for k, row in enumerate(rows):
            s = row.request.sampling
            if row.generator is None:
                out.append(greedy[k])
                continue
            probs = torch.softmax(logits[k].float() / max(s.temperature, 1e-6), dim=-1)
            if s.top_p < 1.0:
                sorted_p, sorted_i = probs.sort(-1, descending=True)
                drop = sorted_p.cumsum(-1) - sorted_p > s.top_p  # smallest set reaching top_p
                sorted_p[drop] = 0.0
                probs = torch.zeros_like(probs).scatter(-1, sorted_i, sorted_p)
            out.append(int(torch.multinomial(probs, 1, generator=row.generator)))
        return out

    def _advance(self, batch: _Batch) -> None:
        """Pick each row's next tokens; finish and drop the rows that ended.

        A row fed drafts in the last step has logits after each of them: its tokens are
        picked position by position while each pick equals the draft fed there (the model
        agrees with the guess, so the logits after it are the ones a plain step would have
        computed); the first pick that differs is the row's last token this step, and the
        cache columns of the drafts after it are masked out."""
        accepted = [0] * len(batch.rows)
        walking, pos = list(range(len(batch.rows))), 0
        while walking:
            if len(walking) == len(batch.rows):
                logits = batch.logits[:, pos]
            else:
                sel = torch.tensor(walking, dtype=torch.long, device=self.device)
                logits = batch.logits[:, pos].index_select(0, sel)
            rows = [batch.rows[k] for k in walking]
            going = []
            for k, row, t in zip(walking, rows, self.pick(logits, rows), strict=True):
                self._give(row, t)
                if row.finish is None and pos < len(row.draft) and t == row.draft[pos]:
                    accepted[k] += 1
                    going.append(k)
            walking, pos = going, pos + 1
        self._settle(batch, accepted)
        keep = [k for k, row in enumerate(batch.rows) if row.finish is None]
        done = [row for row in batch.rows if row.finish is not None]
        if len(keep) < len(batch.rows):
            self.select(batch, keep)
        for row in done:
            result = self.answer(row)
            if row.ticket.streaming and result.text.startswith(row.emitted):
                row.ticket._piece(result.text[len(row.emitted) :])
            row.ticket._finish(result)

    def _give(self, row: _Row, t: int) -> None:
        """Give ``row`` its picked token ``t``; set ``row.finish`` if the row ends with it."""
        req = row.request
        self.stats.tokens += 1
        if row.ticket.cancelled:
            row.finish, row.error = "error", "cancelled"
            return
        if t in self.stops:
            row.finish = "stop"
            return
        row.new.append(t)
        if row.lookup is not None:
            row.lookup.extend([t])
        if row.mask is not None:
            row.mask.consume(t)
            if row.mask.finished:
                row.finish = "stop"
        if req.stop or row.ticket.streaming:
            text = self.tokenizer.decode(row.new, skip_special_tokens=True)
            if req.stop and first_stop(text, req.stop) >= 0:
                row.finish = "stop"
            elif row.ticket.streaming:
                self._stream(row, text)
        if row.finish is None and len(row.new) >= req.max_new_tokens:
            row.finish = "length"

    def _settle(self, batch: _Batch, accepted: list[int]) -> None:
        """After a step with drafts: mask out the columns of rejected drafts (and padding), and
        move each row's position past the drafts it kept."""
        width = batch.attn.shape[1]
        for k, row in enumerate(batch.rows):
            self.stats.accepted += accepted[k]
            if row.pending:
                batch.attn[k, width - row.pending + accepted[k] :] = 0
            row.pending, row.draft = 0, []
        if any(accepted):
            batch.last_pos = batch.last_pos + torch.tensor(
                accepted, dtype=torch.long, device=self.device
            ).unsqueeze(1)

    def _stream(self, row: _Row, text: str) -> None:
        """Emit the part of the answer that can no longer change: leading whitespace dropped,
        trailing whitespace, a possible stop-string start and a half UTF-8 character held
        back, so the pieces join to exactly the final (stripped, stop-cut) text."""
        safe = text.lstrip().rstrip().rstrip("\ufffd")
        for s in row.request.stop:
            for k in range(min(len(s) - 1, len(safe)), 0, -1):
                if safe.endswith(s[:k]):
                    safe = safe[:-k]
                    break
        if len(safe) > len(row.emitted) and safe.startswith(row.emitted):
            row.ticket._piece(safe[len(row.emitted) :])
            row.emitted = safe

    def select(self, batch: _Batch, keep: list[int]) -> None:
        sel = torch.tensor(keep, dtype=torch.long, device=self.device)
        if keep:
            batch.cache.batch_select_indices(sel)
        batch.attn = batch.attn.index_select(0, sel)
        batch.last_pos = batch.last_pos.index_select(0, sel)
        batch.logits = batch.logits.index_select(0, sel)
        batch.rows = [batch.rows[k] for k in keep]

    def _draft(self, row: _Row, most: int) -> list[int]:
        """Guesses for the tokens after ``row``'s last one (:mod:`specialize.infer.drafts`):
        the grammar's forced tokens, else what followed the row's suffix in its prompt or
        answer, cut where the grammar, a stop id or the token budget would end them."""
        if row.lookup is None or most <= 0:
            return []
        room = min(most, row.request.max_new_tokens - len(row.new) - 1)
        if room <= 0:
            return []
        draft = row.mask.forced()[:room] if row.mask is not None else []
        if not draft:
            draft = row.lookup.draft(room)
            if row.mask is not None and draft:
                draft = draft[: row.mask.allowed_prefix(draft)]
        for i, t in enumerate(draft):
            if t in self.stops:
                return draft[:i]
        return draft

    def step(self, batch: _Batch) -> None:
        """Feed each row's last token and its drafts (rows with fewer drafts are padded with
        masked-out columns); the batch's logits become those after every fed token."""
        rows = batch.rows
        most = min(self.draft_tokens, DRAFT_BUDGET // len(rows) - 1)
        drafts = [self._draft(r, most) for r in rows]
        width = 1 + max(len(d) for d in drafts)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        fresh = torch.zeros((len(rows), width), dtype=batch.attn.dtype)
        for k, (row, draft) in enumerate(zip(rows, drafts, strict=True)):
            ids[k, 0] = row.new[-1]
            ids[k, 1 : 1 + len(draft)] = torch.tensor(draft, dtype=torch.long)
            fresh[k, : 1 + len(draft)] = 1
            row.draft, row.pending = draft, width - 1
            self.stats.drafted += len(draft)
        self.stats.steps += 1
        self.stats.rows += len(rows)
        self.stats.fed += len(rows) * width
        t0 = time.perf_counter()
        batch.last_pos = batch.last_pos + 1
        pos = batch.last_pos + torch.arange(width, device=self.device)
        batch.attn = torch.cat([batch.attn, fresh.to(self.device)], dim=1)
        batch.logits = self.model(
            input_ids=ids.to(self.device),
            attention_mask=batch.attn,
            position_ids=pos,
            past_key_values=batch.cache,
            use_cache=True,
            logits_to_keep=width,
            **self._forward_kwargs(rows),
        ).logits
        self.stats.decode_s += time.perf_counter() - t0

    def compact(self, batch: _Batch) -> None:
        """Drop the cache columns no row attends to any more (rejected drafts, padding),
        once they are half of the cache: attention pays for every column, masked or not.
        Each row's real columns keep their order and are left-padded as after a merge."""
        attn = batch.attn
        counts = attn.sum(1)
        keep = int(counts.max()) if attn.numel() else 0
        slack, extra = COMPACT_AT
        if not _mergeable(batch.cache) or attn.shape[1] <= slack * keep + extra:
            return
        index = torch.zeros((len(batch.rows), keep), dtype=torch.long, device=self.device)
        fresh = torch.zeros((len(batch.rows), keep), dtype=attn.dtype, device=self.device)
        for k in range(len(batch.rows)):
            cols = attn[k].nonzero().squeeze(1)
            index[k, keep - len(cols) :] = cols
            fresh[k, keep - len(cols) :] = 1
        for layer in batch.cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name)
                at = index[:, None, :, None].expand(t.shape[0], t.shape[1], keep, t.shape[3])
                setattr(layer, name, t.gather(2, at))
        batch.attn = fresh

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
        w = max(a.logits.shape[1], b.logits.shape[1])  # drafts of a's rows; b has none
        logits = [
            torch.nn.functional.pad(x.logits, (0, 0, 0, w - x.logits.shape[1])) for x in (a, b)
        ]
        return _Batch(
            a.rows + b.rows,
            a.cache,
            attn[:, start:],
            torch.cat([a.last_pos, b.last_pos]),
            torch.cat(logits),
        )

    def answer(self, row: _Row) -> Result:
        req = row.request
        if row.error is not None:
            return Result("", len(row.new), "error", error=row.error, tag=req.tag)
        text = self.tokenizer.decode(row.new, skip_special_tokens=True)
        if req.stop:
            cut = first_stop(text, req.stop)
            if cut >= 0:
                text = text[:cut]
        err = row.mask.error if row.mask is not None else None
        finish: FinishReason = row.finish or "length"
        invalid = f"constraint: {err}" if err else None
        return Result(text.strip(), len(row.new), finish, invalid=invalid, tag=req.tag)
