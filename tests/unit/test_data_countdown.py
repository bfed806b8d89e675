import random

import pytest

from grpokit.data import base
from grpokit.data.countdown import countdown_task, draw_problem, make_row
from grpokit.rewards.countdown import evaluate, score_equation


def test_every_problem_is_solvable_by_its_solution():
    task = countdown_task(train_size=200, eval_size=50)
    for row in task.train_rows + task.eval_rows:
        assert 3 <= len(row["numbers"]) <= 4
        assert all(1 <= n <= 99 for n in row["numbers"])
        assert 1 <= row["target"] <= 999 and row["target"] not in row["numbers"]
        assert score_equation(row["solution"], row["numbers"], row["target"]) == 1.0
        assert str(row["numbers"]) in row["prompt"] and str(row["target"]) in row["prompt"]


def test_solution_uses_every_number_once():
    rng = random.Random(0)
    for _ in range(100):
        row = draw_problem(rng, 2, 5, 20, 10_000)
        literals = sorted(
            int(t)
            for t in row["solution"].replace("(", " ").replace(")", " ").split()
            if t.isdigit()
        )
        assert literals == sorted(row["numbers"])
        assert evaluate(row["solution"]) == row["target"]


def test_make_row():
    row = make_row([3, 5, 7], 56, "(3 + 5) * 7")
    assert row["numbers"] == [3, 5, 7] and row["target"] == 56
    assert "[3, 5, 7]" in row["prompt"] and "equals 56" in row["prompt"]


def test_deterministic_and_disjoint():
    a = countdown_task(train_size=100, eval_size=30, seed=7)
    b = countdown_task(train_size=100, eval_size=30, seed=7)
    assert a.train_rows == b.train_rows and a.eval_rows == b.eval_rows

    def key(row):
        return tuple(sorted(row["numbers"])), row["target"]

    assert not {key(r) for r in a.train_rows} & {key(r) for r in a.eval_rows}


def test_task_defaults():
    task = countdown_task(train_size=5, eval_size=1)
    assert task.name == "countdown"
    assert [(s.name, s.weight) for s in task.rewards] == [("countdown", 1.0), ("format", 0.2)]
    assert task.system_prompt
    assert base._TASKS["countdown"] is countdown_task


@pytest.mark.parametrize(
    "args, message",
    [
        ({"min_numbers": 1}, "min_numbers must be"),
        ({"min_numbers": 4, "max_numbers": 3}, "max_numbers must be"),
        ({"max_number": 0}, "max_number must be"),
        ({"max_target": 0}, "max_target must be"),
        (
            {"min_numbers": 2, "max_numbers": 2, "max_number": 2, "train_size": 50},
            "distinct problems",
        ),
    ],
)
def test_bad_args(args, message):
    with pytest.raises(ValueError, match=message):
        countdown_task(**args)


def test_load_task_and_default_rewards_score_the_solution():
    from grpokit.data import load_task
    from grpokit.rewards.base import Sample
    from grpokit.rewards.registry import build

    task = load_task("countdown", train_size=2, eval_size=1)
    row = task.eval_rows[0]
    good = Sample(f"<think>found it</think><answer>{row['solution']}</answer>", row)
    bad = Sample(f"<answer>{row['solution']} + 1</answer>", row)
    assert [build(spec)([good, bad]) for spec in task.rewards] == [[1.0, 0.0], [1.0, 0.0]]
