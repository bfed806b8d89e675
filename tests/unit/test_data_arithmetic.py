import random

import pytest

from grpokit.data import base
from grpokit.data.arithmetic import arithmetic_task, draw_expression, make_row
from grpokit.rewards.countdown import evaluate


@pytest.mark.parametrize(
    "expression, answer",
    [
        ("6*7", "42"),
        ("39-50", "-11"),
        ("12+35/7", "17"),  # precedence: 12 + 5
        ("90/3/5", "6"),  # left to right: 30 / 5
        ("2*9/6", "3"),
    ],
)
def test_make_row(expression, answer):
    row = make_row(expression)
    assert row["answer"] == answer
    assert row["expression"] == expression
    assert "<think>" in row["prompt"] and "<answer>" in row["prompt"]


def test_make_row_spaces_operators_in_prompt():
    assert "What is 12 + 35 / 7?" in make_row("12+35/7")["prompt"]


def test_make_row_rejects_inexact_division():
    with pytest.raises(ValueError, match="no integer value"):
        make_row("7/2")


@pytest.mark.parametrize("ops, num_operands", [("/", 2), ("*/", 4), ("+-*/", 5), ("/", 6)])
def test_division_is_always_exact(ops, num_operands):
    rng = random.Random(1)
    for _ in range(300):
        expression = draw_expression(rng, 2, ops, num_operands)
        value = evaluate(expression)
        assert value.denominator == 1, expression
        assert len([c for c in expression if c in "+-*/"]) == num_operands - 1


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_operands_have_at_most_digits(digits):
    task = arithmetic_task(digits=digits, ops="+-", train_size=50, eval_size=10)
    for row in task.train_rows:
        for operand in row["expression"].replace("-", "+").split("+"):
            assert 1 <= int(operand) < 10**digits


def test_deterministic_and_seeded():
    a = arithmetic_task(digits=2, train_size=40, eval_size=10, seed=3)
    b = arithmetic_task(digits=2, train_size=40, eval_size=10, seed=3)
    c = arithmetic_task(digits=2, train_size=40, eval_size=10, seed=4)
    assert a.train_rows == b.train_rows and a.eval_rows == b.eval_rows
    assert a.train_rows != c.train_rows


def test_eval_does_not_overlap_train_and_is_stable():
    task = arithmetic_task(digits=1, ops="+", train_size=60, eval_size=15)
    train = {row["expression"] for row in task.train_rows}
    held_out = {row["expression"] for row in task.eval_rows}
    assert len(train) == 60 and len(held_out) == 15
    assert not train & held_out
    # The held-out set does not depend on train_size.
    assert (
        arithmetic_task(digits=1, ops="+", train_size=10, eval_size=15).eval_rows == task.eval_rows
    )


def test_task_defaults():
    task = arithmetic_task()
    assert task.name == "arithmetic"
    assert (len(task.train_rows), len(task.eval_rows)) == (100, 62)  # all 162 one-digit +/- problems
    assert [spec.name for spec in task.rewards] == ["math"]
    assert task.rewards[0].args == {"extract": ["answer_tag", "last_number"]}
    assert task.system_prompt is None
    assert "<answer>" in task.train_rows[0]["prompt"] and "<think>" not in task.train_rows[0]["prompt"]
    assert base._TASKS["arithmetic"] is arithmetic_task


def test_r1_style():
    task = arithmetic_task(digits=2, ops="+-*", style="r1", train_size=5, eval_size=2)
    assert [spec.name for spec in task.rewards] == ["math", "format"]
    assert task.rewards[1].weight == 0.2
    assert "<think>" in task.system_prompt and "<think>" in task.train_rows[0]["prompt"]
    with pytest.raises(ValueError, match="style must be one of"):
        arithmetic_task(style="long")


@pytest.mark.parametrize(
    "args, message",
    [
        ({"ops": "+^"}, "ops must be"),
        ({"ops": ""}, "ops must be"),
        ({"ops": 3}, "ops must be"),
        ({"digits": 0}, "digits must be"),
        ({"digits": 10}, r"digits must be an integer in 1..9, got 10"),
        ({"num_operands": 1}, "num_operands must be"),
        ({"train_size": -1}, "train_size must be"),
        ({"eval_size": 1.5}, "eval_size must be"),
        ({"digits": 1, "ops": "*", "train_size": 100}, "only 81 distinct"),
        ({"digits": 1, "ops": "+-", "train_size": 200}, "only 162 distinct"),
    ],
)
def test_bad_args(args, message):
    with pytest.raises(ValueError, match=message):
        arithmetic_task(**args)


def test_ops_as_list():
    task = arithmetic_task(ops=["*"], train_size=20, eval_size=0)
    assert all("*" in row["expression"] for row in task.train_rows)
    assert task.eval_rows == []


def test_load_task_and_default_rewards_score_the_answer():
    from grpokit.data import load_task
    from grpokit.rewards.base import Sample
    from grpokit.rewards.registry import build

    task = load_task("arithmetic", style="r1", train_size=2, eval_size=1)
    row = task.train_rows[0]
    good = Sample(f"<think>easy</think> <answer>{row['answer']}</answer>", row)
    bad = Sample("<think>hm</think> <answer>not a number</answer>", row)
    assert [build(spec)([good, bad]) for spec in task.rewards] == [[1.0, 0.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="task 'arithmetic': bad args"):
        load_task("arithmetic", digit=2)
