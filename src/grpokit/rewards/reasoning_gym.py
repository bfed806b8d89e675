"""The `reasoning_gym` reward: a reasoning-gym generator's own scorer on the completion's answer.

The answer is the content of the completion's last <answer>...</answer> (None without one, which
the scorers score 0.0). The row is a `reasoning_gym` task row (data/reasoning_gym.py): its
generator's name, question, gold answer and metadata. A row without `rg_dataset` is not one:
None. A scorer that raises is an error of that sample (counted apart from 0, docs/rewards.md); a
score outside [0, 1] or not a number is an error too.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

from grpokit.rewards.base import Sample
from grpokit.rewards.extract import answer_tags
from grpokit.rewards.registry import per_item


@functools.lru_cache(maxsize=None)
def scorer(dataset: str) -> Callable[[str | None, dict[str, Any]], float]:
    """The score function of a reasoning-gym generator, by name."""
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(dataset)


@per_item("reasoning_gym", fields=("rg_dataset",))
def reasoning_gym_reward(sample: Sample) -> float | None:
    """The generator's score of the completion's answer, in [0, 1]."""
    row = sample.row
    if row.get("rg_dataset") is None:
        return None
    answers = answer_tags(sample.completion)
    answer = answers[-1].strip() if answers else None
    entry = {"question": row["question"], "answer": row["answer"], "metadata": row["metadata"]}
    score = scorer(row["rg_dataset"])(answer, entry)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score) \
            or not 0.0 <= score <= 1.0:
        raise ValueError(f"the scorer of {row['rg_dataset']!r} returned {score!r}, not a number "
                         f"in [0, 1]")
    return float(score)
