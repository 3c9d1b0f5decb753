"""CPU generation speed of each artifact: the HF model in PyTorch and each GGUF in llama.cpp.

Both engines get the same prompts (token ids) and produce exactly ``new_tokens`` tokens
greedily after each, one sequence at a time (the edge case: one user, one device).
End-of-turn is not allowed to end the run early (HF: ``min_new_tokens``; llama.cpp: the token
loop ignores it), so every measurement covers the same amount of work. A warm-up run comes
first (allocations, thread pools, the KV cache); the figure is ``new_tokens`` over the median
wall time of ``repeats`` timed runs per prompt, and so includes the prompt's prefill, which
for a short prompt is a small share. Timings on a shared CPU are noisy: compare figures from
one process.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specialize.infer.llama_process import LlamaProcess, cpu_threads

__all__ = ["cpu_threads", "gguf_tokens_per_s", "hf_tokens_per_s"]


def _summary(times: list[float], new_tokens: int, engine: str, **extra: Any) -> dict[str, Any]:
    med = statistics.median(times)
    return {
        "engine": engine,
        "tokens_per_s": new_tokens / med,
        "new_tokens": new_tokens,
        "runs_s": [round(t, 4) for t in times],
        **extra,
    }


def _timed(once: Any, prompts: Sequence[list[int]], new_tokens: int, repeats: int) -> list[float]:
    once(prompts[0], min(8, new_tokens))  # warm-up
    return [once(p, new_tokens) for p in prompts for _ in range(repeats)]


def hf_tokens_per_s(
    model: Any, prompts: Sequence[list[int]], new_tokens: int = 64, repeats: int = 3
) -> dict[str, Any]:
    """Greedy tokens/s of a Hugging Face causal LM in its current dtype, batch 1."""
    import torch

    model.eval()
    pad = getattr(model.generation_config, "pad_token_id", None)
    if pad is None:
        pad = 0

    def once(prompt: list[int], n: int) -> float:
        ids = torch.tensor([prompt])
        mask = torch.ones_like(ids)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=pad,
            )
        elapsed = time.perf_counter() - t0
        got = out.shape[1] - ids.shape[1]
        if got != n:
            raise RuntimeError(f"HF generated {got} tokens, expected {n}")
        return elapsed

    times = _timed(once, prompts, new_tokens, repeats)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return _summary(times, new_tokens, "transformers", dtype=dtype, threads=torch.get_num_threads())


def gguf_tokens_per_s(
    gguf_path: str | Path,
    prompts: Sequence[list[int]],
    new_tokens: int = 64,
    repeats: int = 3,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """Greedy tokens/s of a GGUF in llama.cpp (llama-cpp-python's sampler), batch 1."""
    threads = n_threads or cpu_threads()
    n_ctx = max(len(p) for p in prompts) + new_tokens + 8
    with LlamaProcess(gguf_path, n_ctx=n_ctx, n_threads=threads, purpose="timing") as llm:
        # Timed inside the llama.cpp child: one round trip per measurement, not per token.
        times = _timed(llm.timed_generate, prompts, new_tokens, repeats)
    return _summary(times, new_tokens, "llama.cpp", file=Path(gguf_path).name, threads=threads)
