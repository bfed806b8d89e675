"""The reward contract (DESIGN.md §3): one float, None or RewardFailure per completion.

None means "not applicable" by design (e.g. a row with no tests, a gold answer that does not
parse, an answer too pathological to verify in time). RewardFailure means the function tried and
its infrastructure failed (a judge answering 500, a worker that died, a missed deadline): the
runner counts it as an error of that function and stops the run when errors pass
`max_error_rate`. Neither is ever turned into 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Union

REWARD_TIMEOUT_S = 120.0
"""Default deadline in seconds for one reward function on one batch (train, eval and score)."""


@dataclass(frozen=True)
class Sample:
    """One completion to score, with what a reward function may need to know about it."""

    completion: str
    """The generated text, special tokens removed."""
    row: dict[str, Any]
    """The dataset row the prompt came from (answer, tests, schema, ...)."""
    prompt: str = ""
    """The rendered prompt text the model saw."""
    num_tokens: int = 0
    """Number of completion tokens (EOS included)."""
    finish_reason: str = "stop"
    """"stop" when the model ended the completion, "length" when it hit max_new_tokens."""
    max_tokens: int = 0
    """The max_new_tokens the completion was sampled with (0 when unknown)."""
    completion_ids: tuple[int, ...] = ()
    """Completion token ids, for reward functions that need token positions (process rewards)."""


@dataclass(frozen=True)
class StepRewards:
    """Process supervision: one reward per reasoning step, with the completion-token index where
    each step ends (DESIGN.md §3, DeepSeekMath §4.1.3)."""

    rewards: tuple[float, ...]
    ends: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.rewards) != len(self.ends):
            raise ValueError(
                f"StepRewards needs one end index per reward, got {len(self.rewards)} rewards "
                f"and {len(self.ends)} ends"
            )


@dataclass(frozen=True)
class RewardFailure:
    """Could not score because something outside the completion failed; never a verdict."""

    message: str
    """What failed, for the error count's examples and the message that stops the run."""


RewardValue = Union[float, None, StepRewards, RewardFailure]


class RewardFunction(Protocol):
    """Scores a batch of samples: returns exactly one value per sample, in order."""

    name: str

    def __call__(self, samples: list[Sample]) -> list[RewardValue]: ...


@dataclass
class RewardSpec:
    """One entry of the `rewards` config list."""

    name: str
    """Registered reward function name (see `grpokit.rewards.registry`), or the import path of
    one's own function (`module:function`, `path/file.py:function`)."""
    weight: float = 1.0
    """Weight w_k in r_i = sum_k w_k r_ik."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the reward function's factory."""
    isolate: bool = False
    """Run it in a worker process killed at its deadline (reward_runner.timeout); the worker
    imports it by its import path (docs/rewards.md, "Your own reward function")."""
