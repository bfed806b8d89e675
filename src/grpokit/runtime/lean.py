"""A gated MLP that keeps less for backward in the training passes (`train.lean_mlp`).

A SwiGLU MLP computes down(silu(gate(x)) · up(x)). Under autograd four (tokens, intermediate)
tensors stay alive until backward: gate(x) (for silu), silu(gate(x)) and up(x) (for the product)
and the product (for down's weight gradient), the largest activations of the decoder layer. The
lean path keeps two, gate(x) and up(x), and recomputes silu(gate(x)) · up(x) in backward: an
elementwise pass, no matmul. The forward values are the same ops on the same inputs; backward uses
the ops autograd uses (silu_backward, the products, the two matmuls of down), so the gradients are
those of the plain module (tests/unit/test_lean.py).

Applied to the MLP classes listed in LEAN_MLP_CLASSES, whose forward is exactly that line. A module
whose down projection is not a plain bias-free `nn.Linear` (LoRA on it, a bias) and every call
without gradient (sampling, reference passes) take the module's own forward.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

LEAN_MLP_CLASSES = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
"""transformers MLP classes whose forward is down_proj(act_fn(gate_proj(x)) * up_proj(x)) with
act_fn = SiLU (checked at set-up from the config's hidden_act)."""


class _SiluGateDown(torch.autograd.Function):
    """down(silu(gate) · up) keeping only gate, up and down's weight for backward. Under
    autocast the forward's down projection goes through autocast (its cached bf16 weight), and
    backward casts the weight again, one layer at a time: the same rounding, nothing kept."""

    @staticmethod
    def forward(ctx, gate, up, weight):
        out = F.linear(F.silu(gate) * up, weight)
        ctx.save_for_backward(gate, up, weight)
        ctx.dtype = out.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        gate, up, weight = ctx.saved_tensors
        with torch.autocast(grad_out.device.type, enabled=False):  # the forward's dtypes
            w = weight.to(ctx.dtype)
            activated = F.silu(gate)
            grad_out = grad_out.to(ctx.dtype)
            grad_weight = None
            if ctx.needs_input_grad[2]:
                product = (activated * up).to(ctx.dtype)  # down's input, recomputed
                grad_weight = (grad_out.reshape(-1, grad_out.shape[-1]).T
                               @ product.reshape(-1, product.shape[-1])).to(weight.dtype)
            grad_product = (grad_out @ w).to(activated.dtype)  # (..., intermediate)
            grad_up = grad_product * activated if ctx.needs_input_grad[1] else None
            grad_gate = (torch.ops.aten.silu_backward(grad_product * up, gate)
                         if ctx.needs_input_grad[0] else None)
        return grad_gate, grad_up, grad_weight


def _lean_forward(self, x: torch.Tensor) -> torch.Tensor:
    down = self.down_proj
    if not (torch.is_grad_enabled() and type(down) is torch.nn.Linear and down.bias is None):
        return type(self).forward(self, x)
    return _SiluGateDown.apply(self.gate_proj(x), self.up_proj(x), down.weight)


def use_lean_mlp(model: torch.nn.Module) -> int:
    """Give the gated MLPs of `model` the lean training forward; returns how many. Models of other
    kinds (or another activation) are left as they are (0)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "hidden_act", None) not in ("silu", "swish"):
        return 0
    count = 0
    for module in base.modules():
        if type(module).__name__ in LEAN_MLP_CLASSES:
            module.forward = types.MethodType(_lean_forward, module)
            count += 1
    return count
