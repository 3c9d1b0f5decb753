"""LoRA's update added to the base output by one ``addmm`` instead of three full-width ops.

PEFT computes a LoRA linear layer as ``base(x) + lora_B(lora_A(x)) * scaling``: besides the
base output, that allocates ``lora_B``'s output, its scaled copy and their sum, each as wide
as the layer's output (6 MB per 1,000 tokens for the bundled model's MLP projections in
float32), and reads and writes them in three elementwise passes. ``torch.addmm(base, h,
B.T, alpha=scaling)`` with ``h = lora_A(x)`` does the same sum in the matmul's epilogue: one
output, no intermediate, and autograd keeps the same tensors for the backward pass (``x``,
shared with the base layer, and the rank-wide ``h``). The profile of a training step put the
elementwise work at 17% of the step, and the freed intermediates are what fragments the
allocator's heap in the forward pass (``docs/performance.md``).

:func:`enable` swaps the forward of PEFT's plain ``lora.Linear`` layers on their instances.
Anything else (DoRA and other variants, a bias on the LoRA matrices, merged or disabled
adapters, mixed-batch adapter names, extra arguments, LoRA weights in another dtype than
the base output outside autocast) takes PEFT's own forward, unchanged.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if args or kwargs or self.disable_adapters or self.merged:
        return self._peft_forward(x, *args, **kwargs)
    active = [n for n in self.active_adapters if n in self.lora_A]
    if any(n in self.lora_variant or self.lora_B[n].bias is not None for n in active):
        return self._peft_forward(x)
    result = self.base_layer(x)
    dtype = result.dtype
    for name in active:
        a, b = self.lora_A[name], self.lora_B[name]
        h = F.linear(self.lora_dropout[name](self._cast_input_dtype(x, a.weight.dtype)), a.weight)
        if h.dtype != result.dtype and not torch.is_autocast_enabled(x.device.type):
            result = result + F.linear(h, b.weight) * self.scaling[name]
            continue
        flat = torch.addmm(
            result.reshape(-1, result.shape[-1]),
            h.reshape(-1, h.shape[-1]),
            b.weight.t(),
            alpha=self.scaling[name],
        )
        result = flat.view(*result.shape[:-1], flat.shape[-1])
    return result.to(dtype)


def enable(model: nn.Module) -> int:
    """Swap in the fused forward on every plain PEFT ``lora.Linear`` of ``model``; returns how
    many. Idempotent."""
    try:
        from peft.tuners.lora.layer import Linear
    except ImportError:  # no PEFT: nothing to fuse
        return 0
    n = 0
    for module in model.modules():
        if type(module) is Linear:
            if not hasattr(module, "_peft_forward"):
                module._peft_forward = module.forward
                module.forward = MethodType(_forward, module)
            n += 1
    return n
