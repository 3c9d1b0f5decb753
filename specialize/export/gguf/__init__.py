"""Export a merged Hugging Face model to GGUF, quantize it, and prove it is the same model.

One module per job:

* :mod:`.convert`: the architecture tables, tensor plan and tokenizer metadata, and
  :func:`convert_to_gguf` (F32/F16/BF16, our own converter on the ``gguf`` library's writer);
  :func:`gguf_summary` reads a file's tensor types back.
* :mod:`.quantize`: :func:`quantize` to Q8_0/Q6_K/Q5_K_M/Q4_K_M with llama.cpp's own quantizer.
* :mod:`.checks`: the round trips through llama.cpp (:func:`check_template`,
  :func:`check_logits`, :func:`check_answers` against :func:`hf_greedy_answers`).

Answering with a GGUF file is the inference layer's job:
:class:`specialize.infer.llamacpp.LlamaCppBackend`.

Every use of llama.cpp goes through :class:`specialize.infer.llama_process.LlamaProcess`
(a child process per opened file), the one way specialize opens a GGUF. The names below are
re-exported so ``from specialize.export.gguf import X`` keeps working.
"""

from __future__ import annotations

from specialize.export.gguf.checks import (
    check_answers,
    check_logits,
    check_template,
    hf_greedy_answers,
)
from specialize.export.gguf.convert import (
    _LLAMA3_REGEX,
    ARCHITECTURES,
    LLAMA_IGNORE,
    LLAMA_PERMUTE,
    LLAMA_REQUIRED,
    LLAMA_TENSORS,
    MODEL_TYPES,
    OUT_TYPES,
    PRE_TOKENIZERS,
    ArchSpec,
    _pre_tokenizer_name,
    arch_spec,
    convert_to_gguf,
    gguf_summary,
    llama3_rope_factors,
    permute_rotary,
)
from specialize.export.gguf.quantize import QUANT_TYPES, quantize
from specialize.infer.llama_process import LLAMA_CPP_PIP, LlamaProcess, NativeCrash

__all__ = [
    "ARCHITECTURES",
    "LLAMA_CPP_PIP",
    "LLAMA_IGNORE",
    "LLAMA_PERMUTE",
    "LLAMA_REQUIRED",
    "LLAMA_TENSORS",
    "MODEL_TYPES",
    "OUT_TYPES",
    "PRE_TOKENIZERS",
    "QUANT_TYPES",
    "_LLAMA3_REGEX",
    "_pre_tokenizer_name",
    "ArchSpec",
    "LlamaProcess",
    "NativeCrash",
    "arch_spec",
    "check_answers",
    "check_logits",
    "check_template",
    "convert_to_gguf",
    "gguf_summary",
    "hf_greedy_answers",
    "llama3_rope_factors",
    "permute_rotary",
    "quantize",
]
