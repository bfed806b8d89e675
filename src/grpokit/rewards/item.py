"""A batch reward function built from a per-sample scorer whose arguments were checked up front."""

from __future__ import annotations

from typing import Any, Callable

from grpokit.rewards.base import RewardValue, Sample


class ItemReward:
    """Calls `score_one(sample)` for each sample; `score_one` is public so that the runner can
    retry a failed batch one sample at a time."""

    def __init__(self, name: str, score_one: Callable[[Sample], RewardValue]):
        self.name = name
        self.score_one = score_one

    def __call__(self, samples: list[Sample]) -> list[RewardValue]:
        return [self.score_one(sample) for sample in samples]


def describe_row(row: dict[str, Any], limit: int = 80) -> str:
    """A short description of a dataset row for error messages: its id, else its prompt's start."""
    for key in ("id", "task_id", "idx", "index"):
        if key in row:
            return f"row {key}={row[key]!r}"
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return f"row with prompt {prompt[:limit]!r}"
    return f"row with keys {sorted(row)[:10]}"
