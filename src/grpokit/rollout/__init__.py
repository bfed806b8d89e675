"""Generation engines behind one protocol (see `grpokit.rollout.base`)."""

from typing import Any

import torch

from grpokit.rollout.base import RolloutBatch, RolloutEngine, SamplingParams
from grpokit.rollout.generate import GenerateEngine
from grpokit.rollout.hf import HFEngine

ENGINES = {"hf": HFEngine, "generate": GenerateEngine}


def make_engine(name: str, model: torch.nn.Module, tokenizer: Any, bf16: bool) -> RolloutEngine:
    """The engine `rollout.engine` names, sampling from the policy module itself."""
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; valid engines: {', '.join(ENGINES)}")
    return ENGINES[name](model, tokenizer, autocast=bf16)


__all__ = ["ENGINES", "GenerateEngine", "HFEngine", "RolloutBatch", "RolloutEngine",
           "SamplingParams", "make_engine"]
