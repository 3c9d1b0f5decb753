"""The old evaluation-interface backend over a GGUF file, kept until its callers move.

:class:`GGUFBackend` speaks :class:`specialize.evaluate.backends.Backend` (conversations in,
:class:`~specialize.evaluate.backends.Generation` out). Its replacement is
:class:`specialize.infer.llamacpp.LlamaCppBackend` (the :mod:`specialize.infer.types`
contract); this module is deleted once ``export/edge.py``, ``evaluate/runner.py`` and
``bench/quantized_speed.py`` use that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specialize.evaluate.backends import Generation, Message, cut_at_stop
from specialize.infer.llama_process import LlamaProcess


class GGUFBackend:
    """A GGUF file answering through llama.cpp, with the interface of
    :class:`~specialize.evaluate.backends.Backend`, so evaluation scores the exported (and
    quantized) model exactly as it scores the Hugging Face one.

    Prompts are rendered by llama-cpp-python's ``create_chat_completion`` from the GGUF's own
    chat template metadata (which :func:`check_template` verified against the HF tokenizer).
    ``temperature == 0`` is greedy. ``json_schema`` becomes llama.cpp grammar-constrained
    decoding (``response_format`` with a schema), hence ``supports_json_schema``.
    """

    supports_json_schema = True

    def __init__(
        self, gguf_path: str | Path, n_ctx: int = 2048, n_threads: int | None = None
    ) -> None:
        self.path = Path(gguf_path)
        self.llm = LlamaProcess(self.path, n_ctx=n_ctx, n_threads=n_threads, purpose="evaluating")
        self.name = f"gguf:{self.path.name}"

    def generate(
        self,
        conversations: list[list[Message]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        json_schema: dict | None = None,
        progress: bool = True,
        desc: str = "generate",
    ) -> list[Generation]:
        from tqdm.auto import tqdm

        out: list[Generation] = []
        for i, conv in enumerate(
            tqdm(conversations, desc=desc, unit="rec", disable=not progress, dynamic_ncols=True)
        ):
            kw: dict[str, Any] = {}
            if json_schema is not None:
                kw["response_format"] = {"type": "json_object", "schema": json_schema}
            if seed is not None:
                kw["seed"] = int(seed) + i  # per-record seed, as the HF backend does
            res = self.llm.chat(
                list(conv),
                max_tokens=max_new_tokens,
                temperature=float(temperature),
                repeat_penalty=1.0,
                stop=list(stop) if stop else [],
                **kw,
            )
            choice = res["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
            text, cut = cut_at_stop(text, stop)
            out.append(
                Generation(
                    text=text,
                    new_tokens=int((res.get("usage") or {}).get("completion_tokens", 0)),
                    stopped=choice.get("finish_reason") == "stop" or cut,
                )
            )
        return out
