"""Continuous batching over one llama.cpp context, run inside the llama.cpp child process.

Why: llama-cpp-python's ``create_completion`` decodes one sequence at a time, so a server
(its own ``llama_cpp.server`` included) answers 32 clients one after another. On a CPU a
decoding step over many sequences costs little more than a step over one (the step is bound
by reading the weights), so answering them together is the single largest speed-up a GGUF
server can have. This is llama.cpp's multi-sequence batching (``llama_batch`` entries with
their own ``seq_id``, one unified KV cache) driven from Python:

- requests arrive at any time and join the running batch at the next step (continuous
  batching); a sequence leaves, and frees its KV cells, the step it finishes;
- each step decodes one token for every running sequence plus chunks of waiting prompts, up
  to ``n_batch`` tokens per ``llama_decode``;
- a sequence is admitted only while the KV cells it could need (prompt + its token budget)
  are free, so a step never runs out of cache;
- the last prompt read stays in the cache under a sequence of its own, and a new prompt that
  starts the same way (the system prompt and chat header every request of a server shares)
  copies those cells instead of computing them again (``llama_memory_seq_cp``: in a unified
  cache the cells are shared, not duplicated). A prompt that would share much more with a
  prompt still being read waits one step for it. On a 2-core CPU with short answers, reading
  prompts is most of a server's work, and llama-cpp-python's own server reuses the previous
  prompt's prefix the same way;
- each sequence has its own sampling (greedy, or temperature/top-p from its own seeded
  generator: an answer depends on its request, not on its batch mates), its own stop
  strings and budget, and its own grammar (llama.cpp's grammar sampler). The grammar is
  asked about the chosen token first and applied to the whole vocabulary only when it
  rejects it (what llama.cpp's own server does), because masking 49k candidates for every
  sequence at every step would cost more than the decoding.

Messages between the parent and this loop (pickled frames on the child's pipes): in
``("add", id, job)``, ``("cancel", id)``, ``None`` (end; the child then exits); out
``("piece", id, text)`` for streamed requests and ``("done", id, result)`` exactly once per
added id. It imports only the standard library, numpy and llama_cpp, like the rest of the
child.
"""

from __future__ import annotations

import ctypes
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
STEP_TOKENS = 512  # tokens per llama_decode call (prompt chunks + one per running sequence)
MIN_PREFIX = 4  # shorter shared prefixes are computed again rather than copied
WAIT_GAIN = 16  # a prompt waits a step for a prefix this much longer than the cached one

Send = Callable[[Any], None]


@dataclass
class _Seq:
    """One request in the batch."""

    sid: int
    prompt: list[int]
    max_new: int
    stops: list[str]
    stream: bool
    temperature: float
    top_p: float
    rng: np.random.Generator | None
    grammar: Any  # a llama_sampler pointer, or None
    slot: int = -1
    todo: list[int] = field(default_factory=list)  # tokens still to feed
    pos: int = 0
    out: list[int] = field(default_factory=list)
    sent: int = 0  # characters already streamed

    @property
    def cells(self) -> int:
        return len(self.prompt) + self.max_new


class Batcher:
    """The loop: owns a second llama.cpp context (``n_seq_max`` sequences, ``cells`` KV cells
    shared by all of them) on the model the child already opened."""

    def __init__(self, child: Any, *, slots: int, cells: int, n_ctx: int, kv_f32: bool,
                 threads: int, send: Send) -> None:  # fmt: skip
        lc, llm = child.lc, child.llm
        self.child, self.lc, self.send = child, lc, send
        self.n_ctx, self.slots, self.cells = n_ctx, slots, max(cells, n_ctx)
        params = lc.llama_context_default_params()
        params.n_ctx = self.cells
        params.n_batch = params.n_ubatch = STEP_TOKENS
        params.n_seq_max = slots + 1  # the last one holds the cached prompt prefix
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = threads
        if kv_f32:
            params.type_k = params.type_v = lc.GGML_TYPE_F32
        self.ctx = lc.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create the batching context")
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(STEP_TOKENS, 0, 1)
        self.vocab = lc.llama_model_get_vocab(llm.model)
        self.n_vocab = llm.n_vocab()
        self.llm = llm
        self.cache_seq = slots
        self.cached: list[int] = []  # tokens held at positions 0.. of ``cache_seq``

    # ------------------------------------------------------------------ requests
    def _new(self, sid: int, job: dict[str, Any]) -> _Seq:
        """A sequence for ``job``; raises the child's user error for one it cannot answer."""
        child, stops = self.child, list(job.get("stop") or [])
        if job.get("messages") is not None:
            fmt = child.chat_format(job["messages"])
            data = fmt.prompt.encode("utf-8")
            prompt = list(self.llm.tokenize(data, add_bos=not fmt.added_special, special=True))
        else:
            prompt = [int(t) for t in job["prompt"]]
        if not prompt or len(prompt) >= self.n_ctx:
            raise child.UserError(
                f"the prompt ({len(prompt)} tokens) does not fit the context (n_ctx {self.n_ctx})"
            )
        text = child.grammar_text(job.get("grammar"))
        grammar = None
        if text is not None:
            grammar = self.lc.llama_sampler_init_grammar(self.vocab, text.encode("utf-8"), b"root")
        temperature = float(job.get("temperature") or 0.0)
        seed = job.get("seed")
        return _Seq(
            sid=sid, prompt=prompt, stops=stops, stream=bool(job.get("stream")),
            max_new=max(1, min(int(job["max_tokens"]), self.n_ctx - len(prompt))),
            temperature=temperature, top_p=float(job.get("top_p", 1.0)),
            rng=np.random.default_rng(seed) if temperature > 0 else None, grammar=grammar,
        )  # fmt: skip

    def _finish(
        self, seq: _Seq, reason: str, error: str | None = None, text: str | None = None
    ) -> None:
        if seq.slot >= 0:
            self.lc.llama_memory_seq_rm(self.mem, seq.slot, -1, -1)
        if seq.grammar is not None:
            self.lc.llama_sampler_free(seq.grammar)
            seq.grammar = None
        if text is None:
            text = "" if error else self._text(seq)
        if seq.stream and text[seq.sent :]:
            self.send(("piece", seq.sid, text[seq.sent :]))
        self.send(("done", seq.sid, {
            "text": text, "new_tokens": len(seq.out), "finish_reason": reason,
            "prompt_tokens": len(seq.prompt), "error": error,
        }))  # fmt: skip

    def _text(self, seq: _Seq) -> str:
        return self.llm.detokenize(seq.out).decode("utf-8", errors="ignore")

    # ------------------------------------------------------------------ the loop
    def run(self, inbox: queue.Queue[Any]) -> None:
        """Serve until ``None`` arrives (or the parent's pipe closes)."""
        running: list[_Seq] = []
        waiting: deque[_Seq] = deque()
        free = list(range(self.slots - 1, -1, -1))
        reserved = 0
        try:
            while True:
                for msg in self._messages(inbox, block=not running and not waiting):
                    if msg is None:
                        return
                    reserved -= self._handle(msg, running, waiting, free)
                while waiting and free and not self._worth_waiting(waiting[0], running):
                    seq = waiting[0]
                    if reserved + len(self.cached) + seq.cells > self.cells:
                        if running:
                            break
                        self._set_cache(None)  # the cached prefix must not block a request
                    waiting.popleft()
                    seq.slot = free.pop()
                    self._reuse_prefix(seq)
                    reserved += seq.cells
                    running.append(seq)
                if running:
                    for seq in self._step(running):
                        running.remove(seq)
                        free.append(seq.slot)
                        reserved -= seq.cells
        finally:
            for seq in [*running, *waiting]:
                self._finish(seq, "error", "the llama.cpp child is shutting down")
            self.lc.llama_batch_free(self.batch)
            self.lc.llama_free(self.ctx)

    # ------------------------------------------------------------------ prefix cache
    def _reuse_prefix(self, seq: _Seq) -> None:
        """Start ``seq`` from the cached prefix it shares (always reading one prompt token:
        the first answer token needs its logits)."""
        n = min(_common(seq.prompt, self.cached), len(seq.prompt) - 1)
        if n >= MIN_PREFIX:
            self.lc.llama_memory_seq_cp(self.mem, self.cache_seq, seq.slot, 0, n)
        else:
            n = 0
        seq.pos, seq.todo = n, seq.prompt[n:]

    def _worth_waiting(self, seq: _Seq, running: list[_Seq]) -> bool:
        have = _common(seq.prompt, self.cached)
        return any(
            p.pos < len(p.prompt) and _common(seq.prompt, p.prompt) >= have + WAIT_GAIN
            for p in running
        )

    def _set_cache(self, seq: _Seq | None) -> None:
        """Cache ``seq``'s prompt (all but its last token), or nothing."""
        self.lc.llama_memory_seq_rm(self.mem, self.cache_seq, -1, -1)
        self.cached = []
        if seq is not None and len(seq.prompt) > MIN_PREFIX:
            n = len(seq.prompt) - 1
            self.lc.llama_memory_seq_cp(self.mem, seq.slot, self.cache_seq, 0, n)
            self.cached = seq.prompt[:n]

    @staticmethod
    def _messages(inbox: queue.Queue[Any], block: bool) -> list[Any]:
        out = [inbox.get()] if block else []
        while True:
            try:
                out.append(inbox.get_nowait())
            except queue.Empty:
                return out

    def _handle(self, msg: Any, running: list[_Seq], waiting: deque[_Seq], free: list[int]) -> int:
        """One message; returns the KV cells it released."""
        kind, sid = msg[0], msg[1]
        if kind == "add":
            try:
                waiting.append(self._new(sid, msg[2]))
            except self.child.UserError as err:
                self.send(("done", sid, {"text": "", "new_tokens": 0, "finish_reason": "error",
                                         "prompt_tokens": 0, "error": str(err)}))  # fmt: skip
            return 0
        for seq in waiting:
            if seq.sid == sid:
                waiting.remove(seq)
                self._finish(seq, "error", "cancelled")
                return 0
        for seq in running:
            if seq.sid == sid:
                running.remove(seq)
                free.append(seq.slot)
                self._finish(seq, "error", "cancelled")
                return seq.cells
        return 0

    def _step(self, running: list[_Seq]) -> list[_Seq]:
        """One ``llama_decode``: a token for every decoding sequence, then prompt chunks.
        Returns the sequences that finished."""
        b, n, fed = self.batch, 0, []
        for seq in sorted(running, key=lambda s: len(s.todo)):  # decoding rows first
            take = min(len(seq.todo), STEP_TOKENS - n)
            if take <= 0:
                break
            for k, tok in enumerate(seq.todo[:take]):
                b.token[n], b.pos[n], b.n_seq_id[n] = tok, seq.pos + k, 1
                b.seq_id[n][0] = seq.slot
                b.logits[n] = take == len(seq.todo) and k == take - 1
                n += 1
            seq.pos += take
            seq.todo = seq.todo[take:]
            if not seq.todo:
                fed.append((seq, n - 1))
        b.n_tokens = n
        rc = self.lc.llama_decode(self.ctx, b)
        if rc != 0:
            for seq in running:
                self._finish(seq, "error", f"llama_decode failed (code {rc})")
            return list(running)
        done = []
        for seq, i in fed:
            read = not seq.out and seq.pos == len(seq.prompt)  # its prompt is all in now
            if read and _common(seq.prompt, self.cached) < len(seq.prompt) - 1:
                self._set_cache(seq)
            if self._advance(seq, i):
                done.append(seq)
        return done

    def _advance(self, seq: _Seq, i: int) -> bool:
        """Choose ``seq``'s next token from batch output ``i``; True when it finished."""
        lc = self.lc
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
        tok = self._choose(seq, logits)
        if seq.grammar is not None and not self._allowed(seq.grammar, tok, logits[tok]):
            masked = self._mask(seq.grammar, logits)
            if not np.isfinite(masked).any():
                self._finish(seq, "error", "the grammar allows no next token")
                return True
            tok = self._choose(seq, masked)
        if seq.grammar is not None:
            lc.llama_sampler_accept(seq.grammar, tok)
        if lc.llama_vocab_is_eog(self.vocab, tok):
            self._finish(seq, "stop")
            return True
        seq.out.append(tok)
        seq.todo = [tok]
        if not (seq.stops or seq.stream):
            if len(seq.out) >= seq.max_new:
                self._finish(seq, "length")
                return True
            return False
        text = self._text(seq)
        cut = _first_stop(text, seq.stops)
        if cut is not None:
            self._finish(seq, "stop", text=text[:cut])
            return True
        if len(seq.out) >= seq.max_new:
            self._finish(seq, "length")
            return True
        if seq.stream:
            safe = len(text) - max((len(s) - 1 for s in seq.stops), default=0)
            if safe > seq.sent:
                self.send(("piece", seq.sid, text[seq.sent : safe]))
                seq.sent = safe
        return False

    def _choose(self, seq: _Seq, logits: np.ndarray) -> int:
        if seq.rng is None:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / seq.temperature
        z -= z.max()
        p = np.exp(z)
        p /= p.sum()
        if seq.top_p < 1.0:
            order = np.argsort(-p, kind="stable")
            # in id order: near-equal probabilities sort differently under the rounding
            # differences of another batch, and the draw must not depend on that order
            keep = np.sort(order[: int(np.searchsorted(np.cumsum(p[order]), seq.top_p)) + 1])
            q = p[keep] / p[keep].sum()
            return int(keep[seq.rng.choice(len(keep), p=q)])
        return int(seq.rng.choice(len(p), p=p))

    def _apply(self, grammar: Any, arr: np.ndarray) -> None:
        lc = self.lc
        cur = lc.llama_token_data_array(
            data=arr.ctypes.data_as(ctypes.POINTER(lc.llama_token_data)),
            size=len(arr), selected=-1, sorted=False,
        )  # fmt: skip
        lc.llama_sampler_apply(grammar, ctypes.byref(cur))

    def _allowed(self, grammar: Any, tok: int, logit: float) -> bool:
        arr = np.array([(tok, logit, 0.0)], dtype=TOKEN_DATA)
        self._apply(grammar, arr)
        return bool(np.isfinite(arr["logit"][0]))

    def _mask(self, grammar: Any, logits: np.ndarray) -> np.ndarray:
        arr = np.empty(self.n_vocab, dtype=TOKEN_DATA)
        arr["id"] = np.arange(self.n_vocab, dtype=np.int32)
        arr["logit"], arr["p"] = logits, 0.0
        self._apply(grammar, arr)
        return arr["logit"].copy()


def _common(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _first_stop(text: str, stops: list[str]) -> int | None:
    """Where the earliest stop string starts in ``text`` (None: no stop string in it)."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None


def serve_batches(child: Any, proto_in: Any, send: Send, **kw: Any) -> None:
    """Run a :class:`Batcher` until the parent ends it; a thread turns the pipe into a queue
    so the loop can check for new requests between steps without blocking."""
    from specialize.infer.llama_process import _recv

    inbox: queue.Queue[Any] = queue.Queue()

    def read() -> None:
        while True:
            try:
                msg = _recv(proto_in)
            except (EOFError, OSError):
                msg = None
            inbox.put(msg)
            if msg is None:
                return

    threading.Thread(target=read, daemon=True).start()
    Batcher(child, send=send, **kw).run(inbox)
