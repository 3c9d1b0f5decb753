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

Requests are answered one at a time, in order (llama.cpp in the child uses every core for
one sequence); ``on_result(i, result)`` runs as each finishes.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from specialize.errors import SpecializeError
from specialize.infer.llama_process import Grammar, LlamaProcess, NativeCrash
from specialize.infer.types import OnResult, Request, Result, checked, cut_at_stop

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


class LlamaCppBackend:
    """One GGUF file in a llama.cpp child process, answering requests.

    ``n_ctx`` bounds prompt plus answer; ``n_threads`` defaults to every core this process may
    use; ``kv_f32`` keeps the attention cache in F32. ``purpose`` names what the file is used
    for in the error if the child dies ("evaluating", "judging"...). Close it (or use it as a
    context manager) to end the child.
    """

    def __init__(
        self,
        gguf_path: str | Path,
        n_ctx: int = 2048,
        *,
        n_threads: int | None = None,
        kv_f32: bool = False,
        purpose: str = "evaluating",
    ) -> None:
        self.path = Path(gguf_path)
        self.name = f"gguf:{self.path.name}"
        self.n_ctx = n_ctx
        self._lock = threading.Lock()
        self.llm: LlamaProcess | None = LlamaProcess(
            self.path, n_ctx, n_threads=n_threads, kv_f32=kv_f32, purpose=purpose
        )

    # ----------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """End the llama.cpp child (harmless if it is already gone)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()

    def __enter__(self) -> LlamaCppBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ generate
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
        grammars = [self._check(r) for r in requests]
        out: list[Result] = []
        with tqdm(
            total=len(requests), desc=desc, unit="rec", disable=not progress, dynamic_ncols=True
        ) as bar:
            for i, (request, grammar) in enumerate(zip(requests, grammars, strict=True)):
                result = checked(self._answer(request, grammar), request)
                out.append(result)
                if on_result is not None:
                    on_result(i, result)
                bar.update(1)
        return out

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

    def _answer(self, request: Request, grammar: Grammar | None) -> Result:
        s = request.sampling
        kw: dict[str, Any] = {
            "max_tokens": int(request.max_new_tokens),
            "stop": list(request.stop),
            "repeat_penalty": 1.0,
            "grammar": grammar,
        }
        if s.greedy:
            kw["temperature"] = 0.0
        else:
            seed = s.seed if s.seed is not None else random.randrange(2**31)
            kw.update(
                temperature=float(s.temperature),
                top_p=float(s.top_p),
                top_k=0,
                min_p=0.0,
                seed=int(seed) % 0xFFFFFFFF,  # uint32; 0xFFFFFFFF itself means "random"
            )
        llm = self.llm
        if llm is None:
            raise SpecializeError("the llama.cpp backend is closed", path=self.path)
        try:
            with self._lock:
                if request.messages is not None:
                    res = llm.chat(list(request.messages), **kw)
                else:
                    res = llm.complete(list(request.prompt_ids or []), **kw)
        except NativeCrash:
            raise
        except (SpecializeError, RuntimeError) as err:
            why = err.message if isinstance(err, SpecializeError) else str(err)
            return Result("", 0, "error", error=" ".join(why.split()), tag=request.tag)
        choice = res["choices"][0]
        if "message" in choice:
            text = (choice.get("message") or {}).get("content") or ""
        else:
            text = choice.get("text") or ""
        text, cut = cut_at_stop(text, request.stop)
        stopped = cut or choice.get("finish_reason") == "stop"
        return Result(
            text=text,
            new_tokens=int((res.get("usage") or {}).get("completion_tokens", 0)),
            finish_reason="stop" if stopped else "length",
            tag=request.tag,
        )
