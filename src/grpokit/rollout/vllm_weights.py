"""How the policy's weights reach the vLLM engine (rollout/vllm.py): the policy's full weights
under the base model's names (LoRA merged on the fly), written as one safetensors file in shared
memory, and the method vLLM's worker runs to reload them in place (its `worker_extension_cls`)."""

from __future__ import annotations

import logging
import os

import torch
from safetensors import safe_open


def policy_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's full weights under the base model's checkpoint names.

    A LoRA-wrapped policy gives its merged weights (W + ΔW of the active adapters), computed
    without merging into the module, so the trainer's weights are never touched. A tensor that
    aliases an earlier one (a tied output matrix) is left out: the engine ties it itself.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    weights: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in base.state_dict().items():
        if "lora_" in name or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        weights[name.replace(".base_layer.", ".")] = tensor.detach()
    for name, module in base.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            adapters = [a for a in module.active_adapters if a in module.lora_A]
            if adapters and not getattr(module, "merged", False):
                key = f"{name}.weight"
                weights[key] = weights[key] + sum(module.get_delta_weight(a) for a in adapters)
    return weights


class WorkerSync:
    """Methods added to vLLM's worker (its `worker_extension_cls`), run there by `collective_rpc`.

    Weights travel as a safetensors file in shared memory: the RPC carries only the path, which
    is what vLLM advises for its control channel.
    """

    def grpokit_load_weights(self, path: str) -> int:
        """Reload the weights at `path` in place; return how many tensors were read."""
        # The reload warns, every push, that the rotary embedding and a tied head loaded
        # nothing; both are expected (the head is refreshed below).
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        with safe_open(path, framework="pt") as f:
            weights = [(name, f.get_tensor(name)) for name in f.keys()]
        self.model_runner.reload_weights(weights_iterator=weights)
        # The output head's matmul is prepared from its weight when loaded (a packed copy on
        # CPU). A tied head is never loaded itself, so after a push it would keep the old copy.
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
        for module in self.model_runner.get_model().modules():
            if isinstance(module, ParallelLMHead):
                module.quant_method.process_weights_after_loading(module)
        return len(weights)


def contiguous(weights: dict[str, torch.Tensor],
                dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Tensors safetensors can write: contiguous, on the CPU, optionally cast (floats only)."""
    def prepare(t: torch.Tensor) -> torch.Tensor:
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.cpu().contiguous()
    return {name: prepare(t) for name, t in weights.items()}


def shared_memory_dir() -> str | None:
    """A RAM-backed folder for the weight pushes when the machine has one, else the default."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
