"""Seeded generation of distinct train and held-out rows for the procedural built-in tasks."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]

# How many draws per wanted row before concluding the problem space is too small.
_DRAWS_PER_ROW = 50


def check_size(name: str, value: Any, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer argument of a task, with an error naming it when it is out of range."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")
    return value


def distinct_rows(
    draw: Callable[[random.Random], Row],
    key: Callable[[Row], Any],
    train_size: int,
    eval_size: int,
    seed: int,
    task: str,
) -> tuple[list[Row], list[Row]]:
    """Draw rows until there are train_size + eval_size with distinct keys; returns (train, eval).

    The held-out rows are drawn first, so the eval set does not change with train_size, and no
    train row shares a key with an eval row. The same arguments always give the same rows.
    """
    rng = random.Random(seed)
    wanted = train_size + eval_size
    seen: set[Any] = set()
    rows: list[Row] = []
    for _ in range(_DRAWS_PER_ROW * wanted + 1000):
        if len(rows) == wanted:
            break
        row = draw(rng)
        if key(row) not in seen:
            seen.add(key(row))
            rows.append(row)
    if len(rows) < wanted:
        raise ValueError(
            f"task {task!r}: found only {len(rows)} distinct problems, {wanted} wanted "
            f"(train_size={train_size} + eval_size={eval_size}); allow more digits, operands or "
            "operators, or ask for fewer rows"
        )
    return rows[eval_size:], rows[:eval_size]
