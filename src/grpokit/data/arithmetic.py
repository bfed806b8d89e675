"""The `arithmetic` task: seeded integer arithmetic problems, answered R1 style.

Operands are integers from 1 to 10**digits - 1 joined by operators drawn from `ops` with the usual
precedence (* and / before + and -, left to right). Division only appears where it is exact: the
divisor is drawn from the divisors of the factor it divides, so every answer is an integer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from grpokit.data.base import Task, register_task
from grpokit.data.generate import Row, check_size, distinct_rows
from grpokit.rewards.base import RewardSpec
from grpokit.rewards.countdown import evaluate

SYSTEM_PROMPT = (
    "You are a helpful assistant. You first think about the reasoning process inside "
    "<think> </think> tags, then give the final answer inside <answer> </answer> tags."
)
"""Default system prompt of the `arithmetic` task."""

PROMPT_TEMPLATE = (
    "What is {expression}? Think step by step inside <think> </think>, then write only the "
    "final integer inside <answer> </answer>."
)
"""User prompt of one problem; `{expression}` is the expression with spaces around operators."""

SHORT_TEMPLATE = "What is {expression}? Put only the final integer inside <answer> </answer>."
"""User prompt of the `short` style: no reasoning block, for small models and short runs."""

STYLES = {"r1": PROMPT_TEMPLATE, "short": SHORT_TEMPLATE}

_OPERATORS = "+-*/"


def _parse_ops(ops: str | Iterable[str]) -> str:
    try:
        chosen = "".join(dict.fromkeys("".join(ops)))
    except TypeError:
        chosen = ""
    if not chosen or any(op not in _OPERATORS for op in chosen):
        raise ValueError(f"ops must be a non-empty subset of {_OPERATORS!r}, got {ops!r}")
    return chosen


def _divisor(rng: random.Random, value: int) -> int:
    """A divisor of value other than 1 when there is one (x / 1 teaches nothing)."""
    divisors = set()
    for i in range(1, math.isqrt(value) + 1):
        if value % i == 0:
            divisors.update((i, value // i))
    return rng.choice(sorted(divisors - {1}) or [1])


def draw_expression(rng: random.Random, digits: int, ops: str, num_operands: int) -> str:
    """A random expression such as `12+35/7` whose divisions are all exact."""
    high = 10**digits - 1
    operand = rng.randint(1, high)
    tokens = [str(operand)]
    # `factor` always divides the value of the current * / chain, so dividing by one of its
    # divisors keeps every intermediate result an integer.
    factor = operand
    for _ in range(num_operands - 1):
        op = rng.choice(ops)
        if op == "/":
            operand = _divisor(rng, factor)
            factor //= operand
        else:
            operand = rng.randint(1, high)
            factor = operand
        tokens += [op, str(operand)]
    return "".join(tokens)


def make_row(expression: str, style: str = "r1") -> Row:
    """The task row of one expression."""
    value = evaluate(expression)
    if value.denominator != 1:
        raise ValueError(f"arithmetic expression {expression!r} has no integer value ({value})")
    spaced = "".join(f" {ch} " if ch in _OPERATORS else ch for ch in expression)
    return {
        "prompt": STYLES[style].format(expression=spaced),
        "answer": str(value.numerator),
        "expression": expression,
    }


@register_task("arithmetic")
def arithmetic_task(
    digits: int = 1,
    ops: str | list[str] = "+-",
    num_operands: int = 2,
    train_size: int = 100,
    eval_size: int = 62,
    seed: int = 0,
    style: str = "short",
) -> Task:
    """Integer arithmetic problems; eval rows never repeat a train expression.

    The defaults are the small task of the built-in CPU run: the 162 one-digit sums and
    differences, 100 for training and 62 held out. digits=2, ops="+-*", style="r1",
    train_size=2000, eval_size=200 is a harder R1-style variant.

    style "r1" asks for <think> reasoning then an <answer> (rewards: math + 0.2 R1 format);
    style "short" asks only for the <answer> (rewards: math), with no system prompt.
    """
    if style not in STYLES:
        raise ValueError(f"task 'arithmetic': style must be one of {sorted(STYLES)}, got {style!r}")
    # Exact division factors an operand by trial division up to its square root.
    check_size("digits", digits, 1, 9)
    check_size("num_operands", num_operands, 2)
    check_size("train_size", train_size, 1)
    check_size("eval_size", eval_size, 0)
    check_size("seed", seed, 0)
    chosen = _parse_ops(ops)
    train, held_out = distinct_rows(
        lambda rng: make_row(draw_expression(rng, digits, chosen, num_operands), style),
        key=lambda row: row["expression"],
        train_size=train_size,
        eval_size=eval_size,
        seed=seed,
        task="arithmetic",
    )
    return Task(
        name="arithmetic",
        train_rows=train,
        eval_rows=held_out,
        rewards=[RewardSpec("math", 1.0, {"extract": ["answer_tag", "last_number"]})]
        + ([RewardSpec("format", 0.2)] if style == "r1" else []),
        system_prompt=SYSTEM_PROMPT if style == "r1" else None,
        sft_target=_short_target if style == "short" else _r1_target,
        preference_pair=_short_pair if style == "short" else _r1_pair,
    )


def _short_target(row: Row) -> str:
    return f"<answer>{row['answer']}</answer>"


def _r1_target(row: Row) -> str:
    return f"<think>{row['expression']} = {row['answer']}</think> <answer>{row['answer']}</answer>"


def wrong_answer(row: Row) -> str:
    """A wrong integer near the answer, drawn from a generator seeded by the expression (the
    same row always gets the same one): the rejected answer of `grpokit dpo`'s pairs."""
    offset = random.Random(f"wrong:{row['expression']}").choice([-2, -1, 1, 2])
    return str(int(row["answer"]) + offset)


def _short_pair(row: Row) -> tuple[str, str]:
    return _short_target(row), _short_target({**row, "answer": wrong_answer(row)})


def _r1_pair(row: Row) -> tuple[str, str]:
    return _r1_target(row), _r1_target({**row, "answer": wrong_answer(row)})
