"""K-quants and Q8_0 by llama.cpp's own quantizer, in a child process.

The ``gguf`` package has no K-quant encoder, so Q4_K_M/Q5_K_M/Q8_0 files are made by
``llama_model_quantize`` in a :mod:`specialize.infer.llama_process` child (a crash in its
kernels is a :class:`~specialize.infer.llama_process.NativeCrash`, not the end of the run).
Tensors whose rows are not a multiple of the K-quant block (256) fall back to other types
inside llama.cpp, so ``tensor_types`` is reported per file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from specialize.errors import SpecializeError
from specialize.export.gguf.convert import gguf_summary
from specialize.infer.llama_process import quantize_in_child, require_llama_cpp
from specialize.io import atomic_path

QUANT_TYPES: dict[str, str] = {
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}


def quantize(
    src_gguf: str | Path,
    out_path: str | Path,
    qtype: str,
    nthread: int | None = None,
    imatrix: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Quantize an F32/F16/BF16 GGUF with llama.cpp's quantizer (``llama_model_quantize``).

    Returns ``{"path", "type", "bytes", "bits_per_weight", "tensor_types"}``.
    ``bits_per_weight`` is the whole file's size in bits (metadata, tokenizer and the F32
    norms included) divided by the number of elements of all tensors in the file, so it is
    what the file costs per parameter on disk, slightly above the nominal rate of the type
    (Q4_K_M nominal ~4.8). ``tensor_types`` counts tensors per storage type: rows that are not
    a multiple of 256 cannot be K-quantized and llama.cpp falls back to another type.
    ``imatrix`` (:mod:`specialize.export.gguf.imatrix`) weights the rounding of the K-quants
    by the columns' activations; ``"imatrix": True`` is then in the result.
    """
    src, out = Path(src_gguf), Path(out_path)
    key = qtype.upper()
    if key not in QUANT_TYPES:
        raise SpecializeError(
            f"quantization type '{qtype}' is not supported (supported: {', '.join(QUANT_TYPES)})"
        )
    if not src.is_file():
        raise SpecializeError("GGUF file to quantize not found", path=src)
    require_llama_cpp()
    try:
        with atomic_path(out) as tmp:
            rc = quantize_in_child(src, tmp, QUANT_TYPES[key], nthread, imatrix)
            if rc != 0:
                raise SpecializeError(
                    f"llama.cpp quantization to {key} failed (code {rc})", path=src
                )
    except OSError as err:
        raise SpecializeError(f"could not write GGUF: {err.strerror or err}", path=out) from None
    size = out.stat().st_size
    info = gguf_summary(out)
    return {
        "path": str(out),
        "type": key,
        "bytes": size,
        "bits_per_weight": size * 8 / max(1, info["elements"]),
        "tensor_types": info["tensor_types"],
        "imatrix": bool(imatrix),
    }
