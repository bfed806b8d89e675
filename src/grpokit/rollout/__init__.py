"""Generation engines behind one protocol (see `grpokit.rollout.base`)."""

from grpokit.rollout.base import RolloutBatch, RolloutEngine, SamplingParams
from grpokit.rollout.generate import GenerateEngine
from grpokit.rollout.hf import HFEngine

__all__ = ["GenerateEngine", "HFEngine", "RolloutBatch", "RolloutEngine", "SamplingParams"]
