"""Pick the training precision this machine runs fastest, by measuring it.

bfloat16 autocast halves the bytes a matmul moves and, on CPUs with native bf16 instructions
(AVX512-BF16, AMX), runs the bundled model's training about 1.4x faster. On a CPU without
them PyTorch emulates bf16, and it is not a little slower: on this project's AVX2 machine
(2026-11-30) a 2048x576x1536 matmul ran at 97 GFLOP/s in float32 and 1.2 in bf16, so a
config that said ``bf16`` turned a 7-minute training into hours. ``mixed_precision: auto``
therefore times one small autocast matmul against float32 (a few hundredths of a second) and
uses bf16 only when it is faster; an explicit ``bf16`` that is much slower is warned about.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger("specialize")

SLOW = 0.5  # an explicit bf16 below half of float32's speed is warned about


@dataclass(frozen=True)
class Precision:
    requested: str  # what the config said: no, bf16, auto
    used: str  # what accelerate gets: no or bf16
    why: str

    def as_dict(self) -> dict[str, str]:
        return {"requested": self.requested, "used": self.used, "why": self.why}


def bf16_speedup(n: int = 128, k: int = 576, m: int = 576, repeats: int = 3) -> float:
    """float32 time / bf16-autocast time of an (n x k) @ (k x m) matmul on the CPU (>1: bf16
    is faster). The median of ``repeats`` after a warm-up, so one preemption does not decide."""
    import torch

    a, b = torch.randn(n, k), torch.randn(k, m)

    def timed(bf16: bool) -> float:
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                (a @ b).sum().item()
            times.append(time.perf_counter() - t0)
        return sorted(times[1:])[repeats // 2]

    return timed(False) / max(timed(True), 1e-9)


def resolve(requested: str) -> Precision:
    """The precision to train in for ``train.mixed_precision`` on this machine."""
    import torch

    if requested == "no":
        return Precision("no", "no", "float32 (config)")
    if torch.cuda.is_available():
        ok = torch.cuda.is_bf16_supported()
        if requested == "auto":
            return Precision("auto", "bf16" if ok else "no", f"CUDA bf16 supported: {ok}")
        return Precision("bf16", "bf16", "bf16 (config)")
    speed = bf16_speedup()
    measured = f"bf16 autocast matmul {speed:.2f}x float32's speed on this CPU"
    if requested == "auto":
        return Precision("auto", "bf16" if speed > 1.05 else "no", measured)
    if speed < SLOW:
        log.warning(
            "train.mixed_precision: bf16 is slow here (%s: no native bf16 instructions); "
            "use 'auto' or 'no'",
            measured,
        )
    return Precision("bf16", "bf16", f"bf16 (config); {measured}")
