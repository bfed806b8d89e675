"""Evaluation metrics: mean reward per function, pass@k (unbiased) and maj@k."""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 − C(n−c, k) / C(n, k) for n samples of which c are correct.

    Computed as a product, 1 − Π_{i=n−c+1}^{n} (1 − k/i), so large n never overflows.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1.0 when the most frequent answer among the first k samples is correct.

    Samples without an extractable answer (None) do not vote; ties go to the answer seen first.
    With no votes at all the result is 0.0.
    """
    if len(answers) != len(correct) or not 1 <= k <= len(answers):
        raise ValueError(f"maj@{k} needs k <= {len(answers)} samples with one verdict each")
    votes = Counter(a for a in answers[:k] if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(a for a in answers[:k] if a is not None and votes[a] == top)
    return 1.0 if any(ok for a, ok in zip(answers[:k], correct[:k]) if a == winner) else 0.0


def summarize(
    rewards: dict[str, list[list[float | None]]],
    correct: list[list[bool]],
    ks: Sequence[int],
    answers: list[list[str | None]] | None = None,
) -> dict[str, float]:
    """Aggregate per-prompt samples: rewards[name][prompt][sample], correct[prompt][sample]."""
    out: dict[str, float] = {}
    for name, per_prompt in rewards.items():
        values = [v for samples in per_prompt for v in samples if v is not None]
        out[f"reward/{name}"] = sum(values) / len(values) if values else float("nan")
        out[f"scored_frac/{name}"] = len(values) / max(sum(len(s) for s in per_prompt), 1)
    for k in ks:
        out[f"pass@{k}"] = _mean([pass_at_k(len(c), sum(c), k) for c in correct])
        if answers is not None:
            out[f"maj@{k}"] = _mean([maj_at_k(a, c, k) for a, c in zip(answers, correct)])
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def correctness(values: list[float | None], threshold: float) -> list[bool]:
    """A sample is correct when its accuracy reward reaches the threshold (None is not correct)."""
    return [v is not None and v >= threshold for v in values]


AnswerKey = Callable[[str], "str | None"]
