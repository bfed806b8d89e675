"""Generation engines behind one protocol (see `grpokit.rollout.base`)."""

import dataclasses
from typing import Any

import torch

from grpokit.config import RolloutConfig
from grpokit.rollout.base import RolloutBatch, RolloutEngine, SamplingParams
from grpokit.rollout.generate import GenerateEngine
from grpokit.rollout.hf import HFEngine


def _vllm_engine(model: torch.nn.Module, tokenizer: Any, autocast: bool = False,
                 **options: Any) -> RolloutEngine:
    """The vLLM engine, imported only when chosen: vllm is an optional install of its own."""
    try:
        from grpokit.rollout.vllm import VLLMEngine
    except ImportError as err:
        raise RuntimeError(
            f"rollout.engine=vllm needs the vllm package, which this environment lacks ({err}); "
            "on CPU, `make setup-vllm` builds .venv-vllm with it (docs/vllm.md)"
        ) from err
    return VLLMEngine(model, tokenizer, autocast=autocast, **options)


ENGINES = {"hf": HFEngine, "generate": GenerateEngine, "vllm": _vllm_engine}


def vllm_options(options: RolloutConfig | None) -> dict[str, Any]:
    """VLLMEngine's keyword arguments: the `rollout.vllm` section's fields; none without a config
    (the engine's defaults)."""
    return {} if options is None else dataclasses.asdict(options.vllm)


def make_engine(name: str, model: torch.nn.Module, tokenizer: Any, bf16: bool,
                options: RolloutConfig | None = None) -> RolloutEngine:
    """The engine `rollout.engine` names, sampling from the policy module (or, for vllm, from a
    copy of its weights that `sync_weights` refreshes). `options`, the rollout config, sets the
    vllm engine's `rollout.vllm` settings; the in-process engines have none and ignore it."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; valid engines: {', '.join(ENGINES)}")
    extra = vllm_options(options) if name == "vllm" else {}
    return ENGINES[name](model, tokenizer, autocast=bf16, **extra)


__all__ = ["ENGINES", "GenerateEngine", "HFEngine", "RolloutBatch", "RolloutEngine",
           "SamplingParams", "make_engine", "vllm_options"]
