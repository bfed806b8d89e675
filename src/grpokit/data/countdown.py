"""The `countdown` task: reach a target from a few numbers with + - * / (TinyZero style).

Each problem is made by combining its numbers in a random order and tree shape with random
operators, so a solution using every number exists (it is kept in the row as `solution`). As in
the game, every intermediate result of that solution is a positive integer. The target is never
one of the numbers (the answer would be a copy).
"""

from __future__ import annotations

import random

from grpokit.data.base import Task, register_task
from grpokit.data.generate import Row, check_size, distinct_rows
from grpokit.rewards.base import RewardSpec

SYSTEM_PROMPT = (
    "You are a helpful assistant. You first think about the reasoning process inside "
    "<think> </think> tags, then give the final answer inside <answer> </answer> tags."
)
"""Default system prompt of the `countdown` task."""

PROMPT_TEMPLATE = (
    "Using the numbers {numbers}, create an equation that equals {target}. You may use + - * / "
    "and parentheses, and each number at most once. Think step by step inside <think> </think>, "
    "then write only the equation inside <answer> </answer>, for example "
    "<answer>(1 + 2) * 3</answer>."
)
"""User prompt of one problem."""

# Draws of a random solution tree per problem before giving up (targets above max_target).
_MAX_TRIES = 1000


def _combine(rng: random.Random, a: tuple[str, int], b: tuple[str, int]) -> tuple[str, int]:
    """Join two sub-solutions with an operator that keeps the result a positive integer."""
    (big_text, big), (small_text, small) = sorted((a, b), key=lambda item: -item[1])
    choices = ["+", "*"] + (["-"] if big > small else []) + (["/"] if big % small == 0 else [])
    op = rng.choice(choices)
    value = {"+": big + small, "-": big - small, "*": big * small, "/": big // max(small, 1)}[op]
    return f"({big_text} {op} {small_text})", value


def draw_problem(
    rng: random.Random, min_numbers: int, max_numbers: int, max_number: int, max_target: int
) -> Row:
    """One countdown row: {"prompt", "numbers", "target", "solution"}."""
    for _ in range(_MAX_TRIES):
        numbers = [rng.randint(1, max_number) for _ in range(rng.randint(min_numbers, max_numbers))]
        parts = [(str(n), n) for n in numbers]
        while len(parts) > 1:
            i, j = rng.sample(range(len(parts)), 2)
            joined = _combine(rng, parts[i], parts[j])
            parts = [p for k, p in enumerate(parts) if k not in (i, j)] + [joined]
        solution, target = parts[0]
        # A target among the numbers would be solved by copying it.
        if target <= max_target and target not in numbers:
            return make_row(numbers, target, solution.removeprefix("(").removesuffix(")"))
    raise ValueError(
        f"task 'countdown': no target <= max_target={max_target} found in {_MAX_TRIES} draws; "
        "raise max_target or lower max_number"
    )


def make_row(numbers: list[int], target: int, solution: str = "") -> Row:
    """The task row of one problem."""
    return {
        "prompt": PROMPT_TEMPLATE.format(numbers=list(numbers), target=target),
        "numbers": list(numbers),
        "target": target,
        "solution": solution,
    }


@register_task("countdown")
def countdown_task(
    min_numbers: int = 3,
    max_numbers: int = 4,
    max_number: int = 99,
    max_target: int = 999,
    train_size: int = 2000,
    eval_size: int = 200,
    seed: int = 0,
) -> Task:
    """Countdown problems; no eval problem (same numbers and target) appears in train."""
    check_size("min_numbers", min_numbers, 2)
    check_size("max_numbers", max_numbers, min_numbers)
    check_size("max_number", max_number, 1)
    check_size("max_target", max_target, 1)
    check_size("train_size", train_size, 1)
    check_size("eval_size", eval_size, 0)
    check_size("seed", seed, 0)
    train, held_out = distinct_rows(
        lambda rng: draw_problem(rng, min_numbers, max_numbers, max_number, max_target),
        key=lambda row: (tuple(sorted(row["numbers"])), row["target"]),
        train_size=train_size,
        eval_size=eval_size,
        seed=seed,
        task="countdown",
    )
    return Task(
        name="countdown",
        train_rows=train,
        eval_rows=held_out,
        rewards=[RewardSpec("countdown", 1.0), RewardSpec("format", 0.2)],
        system_prompt=SYSTEM_PROMPT,
        sft_target=sft_target,
    )


def sft_target(row: Row) -> str:
    """The reference completion of a row with a known solution ("" when it has none)."""
    if not row.get("solution"):
        return ""  # reported as an empty target by data.supervised.split_row
    return f"<think>{row['solution']} = {row['target']}</think> <answer>{row['solution']}</answer>"
