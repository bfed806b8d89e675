"""Runs the configured reward functions over a batch: concurrently, with deadlines and checks.

Each function runs in its own thread (CPU-bound verifiers use worker processes inside). A function
that raises on the batch is retried one sample at a time (through its `score_one` when it has one):
a sample whose call raises gets None, is counted as an error and logged with its row. A function
that misses the whole-batch deadline gets None for every sample, all counted as errors. When a
function's errors exceed `max_error_rate` of the batch, `score` raises RewardError.

Process rewards: a function may return StepRewards for a sample. Its column of the (N, K) matrix
then holds NaN for that sample, and the StepRewards are carried in `step_rewards[name][i]`.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from grpokit.rewards.base import (
    REWARD_TIMEOUT_S, RewardFunction, RewardSpec, RewardValue, Sample, StepRewards,
)
from grpokit.rewards.item import describe_row
from grpokit.rewards.registry import build

logger = logging.getLogger(__name__)

_MAX_EXAMPLES = 3


class RewardError(RuntimeError):
    """A reward function misbehaved: too many errors, or a malformed output."""


@dataclass
class RewardResult:
    """The scores of one batch."""

    rewards: torch.Tensor
    """(N, K) float32, column k = function k; NaN where it returned None or StepRewards."""
    names: list[str]
    """The K function names, in column order."""
    weights: list[float]
    """The K weights w_k."""
    errors: dict[str, int]
    """Per function: the number of samples whose scoring raised or missed the deadline."""
    error_examples: dict[str, list[str]] = field(default_factory=dict)
    """Per function: up to three error messages (sample index, row, exception)."""
    step_rewards: dict[str, list[StepRewards | None]] | None = None
    """Per function that returned process rewards: one StepRewards or None per sample; None when
    no function did."""


@dataclass
class _Outcome:
    values: list[RewardValue] | None = None
    errors: list[str] = field(default_factory=list)


def _call_safely(fn: RewardFunction, samples: list[Sample]) -> _Outcome:
    try:
        return _Outcome(values=list(fn(samples)))
    except Exception as batch_exc:  # noqa: BLE001 - retried per sample to find the culprit
        logger.warning("reward %s failed on the batch (%r); scoring one sample at a time", fn.name, batch_exc)
    score_one = getattr(fn, "score_one", None) or (lambda sample: fn([sample])[0])
    outcome = _Outcome(values=[])
    for i, sample in enumerate(samples):
        try:
            outcome.values.append(score_one(sample))
        except Exception as exc:  # noqa: BLE001 - one bad sample must not stop the batch
            message = f"sample {i} ({describe_row(sample.row)}): {type(exc).__name__}: {exc}"
            logger.warning("reward %s: %s", fn.name, message)
            outcome.values.append(None)
            outcome.errors.append(message)
    return outcome


def _check_value(name: str, i: int, value: Any) -> float | StepRewards | None:
    if value is None:
        return None
    if isinstance(value, StepRewards):
        if not all(isinstance(r, numbers.Real) and math.isfinite(r) for r in value.rewards):
            raise RewardError(f"reward {name!r}: sample {i}: non-finite step rewards {value.rewards!r}")
        return value
    if not isinstance(value, numbers.Real):
        raise RewardError(
            f"reward {name!r}: sample {i}: expected a float, None or StepRewards, got "
            f"{type(value).__name__} {value!r:.100}"
        )
    if not math.isfinite(value):
        raise RewardError(f"reward {name!r}: sample {i}: non-finite value {value!r}")
    return float(value)


class RewardRunner:
    """Builds the reward functions of a config and scores batches with them."""

    def __init__(
        self,
        specs: list[RewardSpec],
        *,
        max_error_rate: float = 0.1,
        timeout: float | None = REWARD_TIMEOUT_S,
        functions: list[RewardFunction] | None = None,
    ):
        if not specs:
            raise ValueError("RewardRunner needs at least one reward function in `rewards`")
        names = [spec.name for spec in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rewards: each function may appear once, repeated: {duplicates}")
        if not 0.0 <= max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must be in [0, 1], got {max_error_rate!r}")
        self.specs = list(specs)
        self.names = names
        self.weights = [float(spec.weight) for spec in specs]
        self.functions = functions if functions is not None else [build(spec) for spec in specs]
        self.max_error_rate = max_error_rate
        self.timeout = timeout

    def score(self, samples: list[Sample]) -> RewardResult:
        """Score every sample with every function (see the module docstring)."""
        outcomes = self._run_all(samples)
        n, k = len(samples), len(self.functions)
        rewards = torch.full((n, k), float("nan"), dtype=torch.float32)  # (N, K)
        step_rewards: dict[str, list[StepRewards | None]] = {}
        for col, (name, outcome) in enumerate(zip(self.names, outcomes)):
            values = outcome.values or []
            if len(values) != n:
                raise RewardError(f"reward {name!r} returned {len(values)} values for {n} samples")
            for i, raw in enumerate(values):
                value = _check_value(name, i, raw)
                if isinstance(value, StepRewards):
                    step_rewards.setdefault(name, [None] * n)[i] = value
                elif value is not None:
                    rewards[i, col] = value
        self._check_error_rates(outcomes, n)
        return RewardResult(
            rewards=rewards,
            names=list(self.names),
            weights=list(self.weights),
            errors={name: len(o.errors) for name, o in zip(self.names, outcomes)},
            error_examples={name: o.errors[:_MAX_EXAMPLES] for name, o in zip(self.names, outcomes)},
            step_rewards=step_rewards or None,
        )

    def _run_all(self, samples: list[Sample]) -> list[_Outcome]:
        outcomes: list[_Outcome | None] = [None] * len(self.functions)

        def work(col: int) -> None:
            outcomes[col] = _call_safely(self.functions[col], samples)

        # Daemon threads: a function stuck past the deadline is abandoned, never joined.
        threads = [threading.Thread(target=work, args=(col,), daemon=True) for col in range(len(outcomes))]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            left = None if self.timeout is None else max(0.0, self.timeout - (time.monotonic() - start))
            thread.join(left)
        outcomes = list(outcomes)  # a late thread may still write into the original list
        for col, outcome in enumerate(outcomes):
            if outcome is None:
                message = f"missed the {self.timeout}s deadline for a batch of {len(samples)}"
                logger.warning("reward %s %s", self.names[col], message)
                outcomes[col] = _Outcome(values=[None] * len(samples), errors=[message] * len(samples))
        return outcomes  # type: ignore[return-value]

    def _check_error_rates(self, outcomes: list[_Outcome], n: int) -> None:
        for name, outcome in zip(self.names, outcomes):
            if n and len(outcome.errors) / n > self.max_error_rate:
                examples = "\n  ".join(outcome.errors[:_MAX_EXAMPLES])
                raise RewardError(
                    f"reward {name!r} failed on {len(outcome.errors)} of {n} samples "
                    f"(max_error_rate {self.max_error_rate}); examples:\n  {examples}"
                )
