"""An importance matrix from the run's own training data, for llama.cpp's K-quants.

A K-quant chooses each block's scales to minimise the rounding error of the weights. With an
importance matrix it minimises the error *weighted by how large each input column's
activations are* on real text, so the columns the model actually uses keep their precision.
llama.cpp computes that matrix with its ``llama-imatrix`` tool (the mean of x^2 per input
column of every matrix, over a calibration text); the tool is not part of llama-cpp-python, and
the calibration text that matters here is the run's own training data, which the merged model
is already loaded for. So we compute the same statistic in PyTorch with forward hooks on every
linear layer of the merged model, over the training split's rendered records (prompts and
answers, as trained), in chunks like the tool's.

The file we write is llama.cpp's legacy ``imatrix.dat`` layout, so ``llama-quantize --imatrix``
reads it too; :func:`read_imatrix` reads it back for our own quantizer call
(``llama_model_quantize`` takes the matrix as an array of ``{name, data, size}``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specialize.errors import SpecializeError
from specialize.io import atomic_path


@dataclass(frozen=True)
class Imatrix:
    """Mean squared activation per input column, by GGUF tensor name, and what it came from."""

    values: dict[str, np.ndarray]
    chunks: int
    tokens: int
    dataset: str


def gguf_names(model: Any) -> dict[str, str]:
    """HF linear-module name -> GGUF tensor name (``blk.3.attn_q.weight``) for every linear
    layer the GGUF converter maps; an unmapped architecture is the converter's own error."""
    import torch

    from specialize.export.gguf.convert import _match, arch_spec

    _, spec = arch_spec(model.config)
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        key, bid = _match(spec.tensors, f"{name}.weight")
        if key:
            out[name] = spec.tensors[key].replace("{bid}", bid or "")
    return out


def compute_imatrix(
    model: Any, rows: list[list[int]], chunk: int = 512, max_tokens: int = 32768, dataset: str = ""
) -> Imatrix:
    """Run token ``rows`` (rendered training records), joined into one stream and cut into
    ``chunk``-token pieces, through ``model`` (eval, no gradients), up to ``max_tokens``
    tokens, and average x^2 per input column of every mapped linear layer."""
    import torch

    names = gguf_names(model)
    stream = [t for row in rows for t in row][:max_tokens]
    if not stream:
        raise SpecializeError("no training tokens to compute an importance matrix from")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Any:
        def accumulate(_module: Any, inputs: tuple[Any, ...], _output: Any) -> None:
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            sq = (x * x).sum(0)
            sums[name] = sums[name] + sq if name in sums else sq
            counts[name] = counts.get(name, 0) + x.shape[0]

        return accumulate

    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(hook(g)) for n, g in names.items()]
    pieces = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    try:
        with torch.inference_mode():
            for piece in pieces:
                model(input_ids=torch.tensor([piece], device=model.device), logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    values = {g: (sums[g] / counts[g]).cpu().numpy().astype(np.float32) for g in sums}
    return Imatrix(values, len(pieces), len(stream), dataset)


def write_imatrix(imatrix: Imatrix, path: Path) -> Path:
    """llama.cpp's legacy ``imatrix.dat``: entry count; per entry its name, the number of
    chunks and the values times that number (the reader divides by it); then the chunk count
    and the dataset's name."""
    n = max(1, imatrix.chunks)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<i", len(imatrix.values)))
        for name, v in sorted(imatrix.values.items()):
            raw = name.encode()
            f.write(struct.pack("<i", len(raw)) + raw + struct.pack("<ii", n, v.size))
            f.write((v * n).astype("<f4").tobytes())
        data = imatrix.dataset.encode()
        f.write(struct.pack("<ii", n, len(data)) + data)
    return path


def read_imatrix(path: Path) -> dict[str, np.ndarray]:
    """The per-tensor mean values of a legacy ``imatrix.dat`` (as ``llama-quantize`` loads
    them); a truncated or malformed file is a one-line error naming it."""
    buf = Path(path).read_bytes()
    at = 0

    def take(fmt: str) -> tuple[Any, ...]:
        nonlocal at
        size = struct.calcsize(fmt)
        if at + size > len(buf):
            raise SpecializeError("importance matrix file is truncated", path=path)
        got = struct.unpack_from(fmt, buf, at)
        at += size
        return got

    (entries,) = take("<i")
    if not 0 < entries < 100_000:
        raise SpecializeError(f"not an importance matrix file ({entries} entries)", path=path)
    out = {}
    for _ in range(entries):
        (length,) = take("<i")
        name = bytes(take(f"<{length}s")[0]).decode("utf-8", "replace")
        ncall, nval = take("<ii")
        if nval < 0 or at + 4 * nval > len(buf):
            raise SpecializeError("importance matrix file is truncated", path=path)
        vals = np.frombuffer(buf, dtype="<f4", count=nval, offset=at).astype(np.float32)
        at += 4 * nval
        if vals.size != nval or not np.isfinite(vals).all():
            raise SpecializeError(f"importance matrix entry {name} is damaged", path=path)
        out[name] = vals / max(1, ncall)
    return out
