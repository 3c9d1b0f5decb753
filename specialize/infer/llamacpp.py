"""A GGUF file answering :class:`~specialize.infer.types.Request` objects through llama.cpp.

:class:`LlamaCppBackend` implements the :class:`~specialize.infer.types.Backend` protocol over
one :class:`~specialize.infer.llama_process.LlamaProcess` child (llama.cpp runs in a child
process, so a crash in its native kernels raises
:class:`~specialize.infer.llama_process.NativeCrash` here instead of ending the run).

* Chat requests are rendered by the GGUF's own chat template (llama-cpp-python's
  ``create_chat_completion``, the template :func:`specialize.export.gguf.check_template`
  verified against the Hugging Face tokenizer). ``prompt_ids`` requests continue the given
  ids with ``create_completion`` (no template).
* :class:`~specialize.infer.types.Sampling`: ``temperature == 0`` is greedy; otherwise
  temperature and ``top_p`` only (llama-cpp-python's default top-k 40 and min-p 0.05 are
  switched off, so a request means the same here as on the other backends), with the
  request's own ``seed`` (a fresh random one when it has none). No repetition penalty.
* Stop strings cut the text at the earliest one (``finish_reason`` ``stop``); running out of
  ``max_new_tokens`` is ``length``.
* Constraints become llama.cpp grammars built in the child: a JSON schema through
  llama-cpp-python's schema-to-GBNF converter, a choice as a GBNF alternation of exactly
  escaped literals. Both are checked by llama.cpp's own grammar parser before use; one it
  cannot build is that request's ``error`` result, never a crash or a silent "any JSON".
  llama-cpp-python has no usable regex-to-grammar path (its schema converter's pattern
  translator turns ``\\d`` into a literal and rejects ``(?:``), so a regex constraint is a
  :class:`~specialize.errors.SpecializeError` when submitted: use the HF or HTTP backend.
  Every result passes through :func:`~specialize.infer.types.checked`, so ``value`` holds the
  validated object or ``invalid`` says why not.

Requests are answered together: the child runs llama.cpp's multi-sequence batching
(:mod:`specialize.infer.llama_batch`), and a request joins the running batch at the next
step whether it came in one ``generate`` call or from another thread through ``submit`` (the
server's path, as for the HF engine). ``on_result(i, result)`` runs on the caller's thread
as each finishes, in the order they finish.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from specialize.errors import SpecializeError
from specialize.infer.llama_process import Grammar, LlamaProcess, NativeCrash, _recv, _send
from specialize.infer.types import OnResult, Request, Result, Ticket, checked

OWN_CONTEXT = 64  # tokens of the child's unused default context (see LlamaCppBackend)
REGEX_UNSUPPORTED = (
    "regex constraints need the HF or HTTP backend "
    "(llama-cpp-python has no regex-to-grammar converter)"
)


def grammar_for(request: Request) -> Grammar | None:
    """What the child builds the request's grammar from, or the one-line error of a request
    this backend cannot constrain (raised before any request is answered)."""
    c = request.constraint
    if c is None:
        return None
    if c.kind == "json_schema":
        return ("json_schema", dict(c.schema or {}))
    if c.kind == "choice":
        return ("choice", tuple(c.choices))
    if c.kind == "regex":
        raise SpecializeError(REGEX_UNSUPPORTED)
    raise SpecializeError(f"unknown constraint kind '{c.kind}'")


class _GgufTicket(Ticket):
    """A request in the child's batching loop; ``cancel`` tells the loop to drop it."""

    def __init__(self, request: Request, stream: bool, loop: _BatchLoop | None) -> None:
        super().__init__(request, [], 0, stream)
        self.sid = -1
        self.crashed = False
        self._loop = loop

    def cancel(self) -> None:
        if not self.cancelled and not self.done() and self._loop is not None:
            self.cancelled = True
            self._loop.cancel(self.sid)


class _BatchLoop:
    """The parent's side of the child's batching loop: sends requests, and a reader thread
    hands pieces and results to their tickets. When the child dies, every open ticket gets an
    error result and ``crash`` holds the :class:`NativeCrash`."""

    def __init__(self, llm: LlamaProcess, slots: int, cells: int, n_ctx: int) -> None:
        self.llm = llm
        self._to, self._from = llm.start_batching(slots, cells, n_ctx)
        self._write = threading.Lock()
        self._tickets: dict[int, _GgufTicket] = {}
        self._next = 0
        self._closing = False
        self.crash: NativeCrash | None = None
        self._reader = threading.Thread(target=self._read, name="llama-batches", daemon=True)
        self._reader.start()

    def submit(self, request: Request, job: dict[str, Any], stream: bool,
               callback: Callable[[Ticket], None] | None = None) -> _GgufTicket:  # fmt: skip
        ticket = _GgufTicket(request, stream, self)
        ticket.callback = callback
        with self._write:
            if self.crash is None and not self._closing:
                ticket.sid, self._next = self._next, self._next + 1
                self._tickets[ticket.sid] = ticket
                try:
                    _send(self._to, ("add", ticket.sid, job))
                    return ticket
                except (OSError, ValueError):  # the child is gone; the reader says why
                    self._tickets.pop(ticket.sid, None)
        self._reader.join(timeout=30)
        why = str(self.crash) if self.crash else "the llama.cpp backend is closed"
        ticket.crashed = self.crash is not None
        ticket._finish(Result("", 0, "error", error=why, tag=request.tag))  # noqa: SLF001
        return ticket

    def cancel(self, sid: int) -> None:
        with self._write:
            if sid in self._tickets:
                try:
                    _send(self._to, ("cancel", sid))
                except (OSError, ValueError):
                    pass

    def _read(self) -> None:
        while True:
            try:
                kind, sid, body = _recv(self._from)
            except (EOFError, OSError, ValueError):
                break
            if kind == "piece":
                ticket = self._tickets.get(sid)
                if ticket is not None:
                    ticket._piece(body)  # noqa: SLF001 - the loop is the ticket's writer
                continue
            with self._write:
                ticket = self._tickets.pop(sid, None)
            if ticket is not None:
                ticket._finish(Result(  # noqa: SLF001
                    text=body["text"], new_tokens=int(body["new_tokens"]),
                    finish_reason=body["finish_reason"], error=body["error"],
                    tag=ticket.request.tag, prompt_tokens=int(body["prompt_tokens"]),
                ))  # fmt: skip
        if not self._closing:
            self.crash = self.llm.crashed()
        with self._write:
            left, self._tickets = list(self._tickets.values()), {}
        why = str(self.crash) if self.crash else "the llama.cpp backend was closed"
        for ticket in left:
            ticket.crashed = self.crash is not None
            ticket._finish(Result("", 0, "error", error=why, tag=ticket.request.tag))  # noqa: SLF001

    def close(self) -> None:
        """End the loop (the child then exits); open tickets get an error result."""
        self._closing = True
        with self._write:
            try:
                _send(self._to, None)
            except (OSError, ValueError):
                pass
        self._reader.join(timeout=30)


class LlamaCppBackend:
    """One GGUF file in a llama.cpp child process, answering requests.

    ``n_ctx`` bounds prompt plus answer of one request; ``slots`` requests at most decode
    together, sharing ``kv_cells`` KV cells (default: four contexts' worth; a request waits
    while the cells it could need are taken). ``n_threads`` defaults to every core this
    process may use; ``kv_f32`` keeps the attention cache in F32. ``purpose`` names what the
    file is used for in the error if the child dies ("evaluating", "judging"...). With
    ``restart``, the request after a crash starts a fresh child (a server keeps serving the
    file; the requests in flight when it died get an error); without it, every later request
    is that error and ``generate`` raises :class:`NativeCrash` (a run stops, resumable). Close
    it (or use it as a context manager) to end the child.
    """

    def __init__(
        self,
        gguf_path: str | Path,
        n_ctx: int = 2048,
        *,
        n_threads: int | None = None,
        kv_f32: bool = False,
        purpose: str = "evaluating",
        slots: int = 32,
        kv_cells: int | None = None,
        restart: bool = False,
    ) -> None:
        self.path = Path(gguf_path)
        self.name = f"gguf:{self.path.name}"
        self.n_ctx = n_ctx
        self.slots = max(1, slots)
        self.kv_cells = max(n_ctx, kv_cells or 4 * n_ctx)
        self._lock = threading.Lock()
        self._loop: _BatchLoop | None = None
        self.restart = restart
        self.restarts = 0
        # The child's own context is never decoded on (the batching loop makes its own of
        # kv_cells), so it is opened small instead of holding n_ctx unused KV cells.
        self._open = lambda: LlamaProcess(
            self.path, OWN_CONTEXT, n_threads=n_threads, kv_f32=kv_f32, purpose=purpose
        )
        self.llm: LlamaProcess | None = self._open()

    # ----------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """End the llama.cpp child (harmless if it is already gone)."""
        with self._lock:
            loop, self._loop = self._loop, None
            llm, self.llm = self.llm, None
        if loop is not None:
            loop.close()
        if llm is not None:
            llm.close()

    def __enter__(self) -> LlamaCppBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ generate
    def submit(self, request: Request, stream: bool = False) -> Ticket:
        """Queue one request into the running batch; its ticket streams pieces (when
        ``stream``) and then holds the result (not yet :func:`checked`)."""
        job = self._job(request, self._check(request), stream)
        return self._batches().submit(request, job, stream)

    def generate(
        self,
        requests: Sequence[Request],
        *,
        progress: bool = True,
        desc: str = "generate",
        on_result: OnResult | None = None,
    ) -> list[Result]:
        """One result per request, in order; ``on_result(i, result)`` as each finishes.

        A request llama.cpp cannot answer (a grammar it cannot build, a prompt longer than
        ``n_ctx``) is a result with ``finish_reason == "error"``; a regex constraint or an
        adapter name is a :class:`SpecializeError` before anything runs, and a crash of the
        child is :class:`NativeCrash` (the results passed to ``on_result`` are kept)."""
        jobs = [self._job(r, self._check(r), False) for r in requests]
        if not requests:
            return []
        loop = self._batches()
        finished: queue.SimpleQueue[int] = queue.SimpleQueue()
        tickets = [
            loop.submit(r, job, False, callback=lambda _t, i=i: finished.put(i))
            for i, (r, job) in enumerate(zip(requests, jobs, strict=True))
        ]
        out: list[Result | None] = [None] * len(requests)
        with tqdm(
            total=len(requests), desc=desc, unit="rec", disable=not progress, dynamic_ncols=True
        ) as bar:
            for _ in requests:
                i = finished.get()
                ticket = tickets[i]
                if ticket.crashed:  # type: ignore[attr-defined]
                    raise loop.crash or SpecializeError("llama.cpp child gone", path=self.path)
                out[i] = result = checked(ticket.final, requests[i])
                if on_result is not None:
                    on_result(i, result)
                bar.update(1)
        return [r for r in out if r is not None]

    def _batches(self) -> _BatchLoop:
        with self._lock:
            if self.llm is None:
                raise SpecializeError("the llama.cpp backend is closed", path=self.path)
            if self._loop is not None and self._loop.crash is not None and self.restart:
                self.llm, self._loop = self._open(), None
                self.restarts += 1
            if self._loop is None:
                self._loop = _BatchLoop(self.llm, self.slots, self.kv_cells, self.n_ctx)
            return self._loop

    def _check(self, request: Request) -> Grammar | None:
        if self.llm is None:
            raise SpecializeError("the llama.cpp backend is closed", path=self.path)
        if request.adapter is not None:
            raise SpecializeError(
                f"a GGUF file has no LoRA adapters to choose from (request asked for "
                f"'{request.adapter}'): export one GGUF per adapter",
                path=self.path,
            )
        return grammar_for(request)

    @staticmethod
    def _job(request: Request, grammar: Grammar | None, stream: bool) -> dict[str, Any]:
        """What the batching loop needs of a request (plain data: it crosses the pipe)."""
        s = request.sampling
        job: dict[str, Any] = {
            "max_tokens": int(request.max_new_tokens),
            "stop": list(request.stop),
            "grammar": grammar,
            "stream": stream,
        }
        if request.messages is not None:
            job["messages"] = [dict(m) for m in request.messages]
        else:
            job["prompt"] = [int(t) for t in request.prompt_ids or []]
        if not s.greedy:
            seed = s.seed if s.seed is not None else random.randrange(2**31)
            job.update(temperature=float(s.temperature), top_p=float(s.top_p), seed=int(seed))
        return job
