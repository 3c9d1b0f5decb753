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
from specialize.infer.types import Backend

TEACHER_RETRIES = 2  # HTTP retries: a dead endpoint stops the run in seconds, not minutes


def teacher_name(synth: SynthConfig) -> str:
    """The name the cache keys answers by: the spec, and the model id for an endpoint."""
    if synth.teacher.startswith(("http://", "https://")):
        return f"{synth.teacher}#{synth.teacher_model}"
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
    if spec.endswith(".gguf"):
        from specialize.infer.llamacpp import LlamaCppBackend

        path = Path(spec) if Path(spec).is_absolute() else base_dir / spec
        return LlamaCppBackend(path, purpose="generating synthetic data")
    from specialize.infer.hf import HFBackend

    if model is None:
        from specialize.models.load import load_model, load_tokenizer, resolve

        source = resolve(spec, base_dir)
        model, tokenizer = load_model(source, "float32"), load_tokenizer(source)
    return HFBackend(model, tokenizer, chat_format, synth.batch_size)
