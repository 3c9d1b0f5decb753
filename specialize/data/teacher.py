"""The teacher of synthetic data: any backend of the inference layer, named by one string.

``synth.teacher`` is a model spec (``bundled:NAME``, a Hugging Face folder: the continuous-
batching engine with per-row constraint masks), a ``.gguf`` file (llama.cpp, schema as a
grammar) or an ``http(s)://`` URL of an OpenAI-compatible server (vLLM, ``specialize serve``,
llama.cpp's server: ``response_format`` json_schema). When the teacher is the run's own base
model, the run passes the model it already loaded, so it is loaded once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from specialize.config import SynthConfig
from specialize.errors import SpecializeError
from specialize.infer.types import Backend

TEACHER_RETRIES = 2  # HTTP retries: a dead endpoint stops the run in seconds, not minutes
GGUF_CONTEXT = 4096  # a retrieval prompt holds several passages


def _gguf_of(synth: SynthConfig, base_dir: Path) -> Path | None:
    """The GGUF file llama.cpp should run: a ``.gguf`` teacher, or the GGUF behind a model
    spec when ``teacher_runtime`` is llama.cpp; None for the HF engine."""
    spec = synth.teacher
    if spec.endswith(".gguf"):
        return Path(spec) if Path(spec).is_absolute() else base_dir / spec
    if synth.teacher_runtime != "llama.cpp":
        return None
    from specialize.models.load import resolve

    source = resolve(spec, base_dir)
    if source.gguf_file is None:
        raise SpecializeError(
            f"teacher '{spec}' has no GGUF file for llama.cpp; give a .gguf or use "
            "teacher_runtime: hf",
            field="synth.teacher_runtime",
        )
    return source.folder / source.gguf_file


def uses_base_model(synth: SynthConfig, base: str) -> bool:
    """Whether the teacher is the run's base model run by the HF engine (loaded once)."""
    return synth.teacher == base and synth.teacher_runtime == "hf"


def teacher_name(synth: SynthConfig) -> str:
    """The name the cache keys answers by: the spec, and the model id for an endpoint."""
    if synth.teacher.startswith(("http://", "https://")):
        return f"{synth.teacher}#{synth.teacher_model}"
    if synth.teacher_runtime == "llama.cpp" and not synth.teacher.endswith(".gguf"):
        return f"{synth.teacher}@llama.cpp"  # a quantized run of the model answers differently
    return synth.teacher


def open_teacher(
    synth: SynthConfig,
    base_dir: Path,
    *,
    model: Any = None,
    tokenizer: Any = None,
    chat_format: str = "template",
) -> Backend:
    """The teacher's backend; ``model``/``tokenizer`` (the already loaded base model, whose
    spec equals ``synth.teacher``) are used instead of loading it again."""
    spec = synth.teacher
    if spec.startswith(("http://", "https://")):
        from specialize.infer.http import OpenAIBackend

        return OpenAIBackend(
            spec,
            synth.teacher_model,
            api_key=os.environ.get(synth.teacher_api_key_env),
            concurrency=synth.teacher_concurrency,
            retries=TEACHER_RETRIES,
        )
    gguf = _gguf_of(synth, base_dir)
    if gguf is not None:
        from specialize.infer.llamacpp import LlamaCppBackend

        return LlamaCppBackend(gguf, n_ctx=GGUF_CONTEXT, purpose="generating synthetic data")
    from specialize.infer.hf import HFBackend

    if model is None:
        from specialize.models.load import load_model, load_tokenizer, resolve

        source = resolve(spec, base_dir)
        model, tokenizer = load_model(source, "float32"), load_tokenizer(source)
    return HFBackend(model, tokenizer, chat_format, synth.batch_size)
