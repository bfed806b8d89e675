"""What a reward function gives back, checked: one list of values, each a finite float, None,
StepRewards or RewardFailure; anything else stops the run naming the function (RewardError)."""

from __future__ import annotations

import math
import numbers
from typing import Any

from grpokit.rewards.base import RewardFailure, StepRewards
from grpokit.typed_tree import UserError


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
