"""A gated MLP whose SiLU output is recomputed in the backward pass instead of kept.

LLaMA-family MLPs compute ``down(silu(gate(x)) * up(x))``. Autograd keeps four
intermediate-width tensors per token and layer for the backward pass: ``gate`` (for SiLU),
``silu(gate)`` and ``up`` (for the product) and the product (for ``down``). On the bundled
model that is 4 x 1,536 floats per token in each of 30 layers: in float32, 740 MB for one
1,000-token row, the largest block of a training step's memory. :class:`SiluMul` keeps only
``gate`` and ``up`` and recomputes the sigmoid in the backward pass (elementwise, cheap next
to the matmuls around it), so one of the four goes. Gradients equal autograd's
(``tests/test_train.py``).

:func:`enable` swaps the forward of every module that has ``gate_proj``/``up_proj``/
``down_proj`` and a plain SiLU activation; other MLPs (GELU, fused gate-up projections) are
left alone. The swap is on instances, for training: nothing saved names it.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SiluMul(torch.autograd.Function):
    """``silu(gate) * up``, saving only its two inputs."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        silu = gate * sig
        d_up = grad * silu
        # d silu / d gate = sig * (1 + gate * (1 - sig)) = sig + silu * (1 - sig)
        d_gate = grad * up * (sig + silu * (1 - sig))
        return d_gate, d_up


def _forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled():
        return self.down_proj(SiluMul.apply(self.gate_proj(x), self.up_proj(x)))
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _is_silu(act: object) -> bool:
    # transformers' ACT2FN["silu"] is its own SiLUActivation (F.silu), not nn.SiLU
    return isinstance(act, nn.SiLU) or type(act).__name__ == "SiLUActivation"


def enable(model: nn.Module) -> int:
    """Swap in the recomputing forward on every gated SiLU MLP of ``model``; returns how many."""
    n = 0
    for module in model.modules():
        gated = all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj"))
        if (
            gated
            and type(module).__name__.endswith("MLP")
            and _is_silu(getattr(module, "act_fn", None))
        ):
            module.forward = MethodType(_forward, module)
            n += 1
    return n
