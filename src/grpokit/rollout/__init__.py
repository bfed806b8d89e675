"""Generation engines behind one protocol (see `grpokit.rollout.base`)."""

from typing import Any

import torch

from grpokit.rollout.base import RolloutBatch, RolloutEngine, SamplingParams
from grpokit.rollout.generate import GenerateEngine
from grpokit.rollout.hf import HFEngine


def _vllm_engine(model: torch.nn.Module, tokenizer: Any, autocast: bool = False) -> RolloutEngine:
    """The vLLM engine, imported only when chosen: vllm is an optional install of its own."""
    try:
        from grpokit.rollout.vllm import VLLMEngine
    except ImportError as err:
        raise RuntimeError(
            f"rollout.engine=vllm needs the vllm package, which this environment lacks ({err}); "
            "on CPU, `make setup-vllm` builds .venv-vllm with it (docs/vllm.md)"
        ) from err
    return VLLMEngine(model, tokenizer, autocast=autocast)


ENGINES = {"hf": HFEngine, "generate": GenerateEngine, "vllm": _vllm_engine}


def make_engine(name: str, model: torch.nn.Module, tokenizer: Any, bf16: bool) -> RolloutEngine:
    """The engine `rollout.engine` names, sampling from the policy module (or, for vllm, from a
    copy of its weights that `sync_weights` refreshes)."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; valid engines: {', '.join(ENGINES)}")
    return ENGINES[name](model, tokenizer, autocast=bf16)


__all__ = ["ENGINES", "GenerateEngine", "HFEngine", "RolloutBatch", "RolloutEngine",
           "SamplingParams", "make_engine"]
