"""What a reward function gives back, checked: one list of values, each a finite float, None,
StepRewards or RewardFailure; anything else stops the run naming the function (RewardError).
And what the runner gives back for a batch: `RewardResult`."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grpokit.errors import UserError
from grpokit.rewards.base import RewardFailure, StepRewards

if TYPE_CHECKING:
    import torch


class RewardError(UserError, RuntimeError):
    """A reward function misbehaved: too many errors, or a malformed output. A UserError, so the
    command line prints its message (naming the function and its last error) and exits with
    status 2 instead of a traceback."""


def as_list(name: str, values: Any) -> list[Any]:
    """A function's output as a list (an array's or tensor's too); a string, a mapping or a lone
    value is a RewardError naming the function."""
    if hasattr(values, "tolist") and not isinstance(values, (list, tuple)):
        values = values.tolist()
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise RewardError(f"reward {name!r} returned {type(values).__name__} {values!r:.100}, "
                          "expected a list of one value per completion")
    return list(values)


def check_value(name: str, i: int, value: Any) -> float | StepRewards | RewardFailure | None:
    if value is None or isinstance(value, RewardFailure):
        return value
    if isinstance(value, StepRewards):
        if not all(isinstance(r, numbers.Real) and math.isfinite(r) for r in value.rewards):
            raise RewardError(f"reward {name!r}: sample {i}: non-finite step rewards {value.rewards!r}")
        return value
    if not isinstance(value, numbers.Real):
        raise RewardError(
            f"reward {name!r}: sample {i}: expected a float, None, StepRewards or RewardFailure, "
            f"got {type(value).__name__} {value!r:.100}"
        )
    if not math.isfinite(value):
        raise RewardError(f"reward {name!r}: sample {i}: non-finite value {value!r}")
    return float(value)


def columns_of(rows: list[dict[str, Any]], limit: int = 30) -> str:
    """The columns the rows have, in the order they first appear (for messages)."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    return ", ".join(map(str, names[:limit])) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@dataclass
class RewardResult:
    """The scores of one batch. The numbers are kept as plain lists, so that scoring needs no
    torch (`grpokit score` starts without it); `rewards`, `error_mask` and `seconds` are their
    tensors, made on first use (training), and `value`, `failed`, `seconds_of` read one entry."""

    values: list[list[float]]
    """(N, K), column k = function k; NaN where it returned None, StepRewards or failed."""
    names: list[str]
    """The K function names, in column order."""
    weights: list[float]
    """The K weights w_k."""
    errors: dict[str, int]
    """Per function: the number of samples whose scoring failed (raised, RewardFailure, deadline)."""
    error_examples: dict[str, list[str]] = field(default_factory=dict)
    """Per function: up to three error messages (sample index, row, what failed)."""
    step_rewards: dict[str, list[StepRewards | None]] | None = None
    """Per function that returned process rewards: one StepRewards or None per sample; None when
    no function did."""
    failures: list[list[bool]] | None = None
    """(N, K): True where the function failed on the sample (its value is NaN)."""
    timings: list[list[float]] | None = None
    """(N, K) seconds per sample and function, when scored with timed=True."""

    def value(self, i: int, k: int) -> float:
        return self.values[i][k]

    def failed(self, i: int, k: int) -> bool:
        return self.failures is not None and self.failures[i][k]

    def seconds_of(self, i: int, k: int) -> float:
        return math.nan if self.timings is None else self.timings[i][k]

    @property
    def rewards(self) -> torch.Tensor:
        """(N, K) float32 tensor of `values`."""
        return self._tensor(self.values, "float32")

    @property
    def error_mask(self) -> torch.Tensor | None:
        """(N, K) bool tensor of `failures`."""
        return None if self.failures is None else self._tensor(self.failures, "bool")

    @property
    def seconds(self) -> torch.Tensor | None:
        """(N, K) float64 tensor of `timings`."""
        return None if self.timings is None else self._tensor(self.timings, "float64")

    def _tensor(self, rows: list[list[Any]], dtype: str) -> torch.Tensor:
        """(N, K) tensor of `rows` (torch is imported here: scoring alone does not need it)."""
        import torch

        return torch.tensor(rows, dtype=getattr(torch, dtype)).reshape(len(rows), len(self.names))
