"""The `multiply` task: seeded distinct products with exact digit counts, its prompt styles and
its named errors."""

import pytest

from grpokit.data.base import load_task
from grpokit.errors import DataError


def test_rows_are_products_of_the_asked_digit_counts():
    task = load_task("multiply", digits_a=5, digits_b=4, train_size=50, eval_size=10)
    assert len(task.train_rows) == 50 and len(task.eval_rows) == 10
    for row in task.train_rows + task.eval_rows:
        a, b = row["expression"].split("*")
        assert (len(a), len(b)) == (5, 4) and int(row["answer"]) == int(a) * int(b)
        assert row["prompt"] == f"What is {a} * {b}?"
    assert not {r["expression"] for r in task.train_rows} & {r["expression"] for r in task.eval_rows}
    assert task.rewards[0].name == "math" and task.rewards[0].args == {"extract": ["answer_tag"]}
    assert "<python>" in task.system_prompt
    assert load_task("multiply", train_size=50, eval_size=10).train_rows == task.train_rows


def test_the_hint_style_spells_out_the_call():
    row = load_task("multiply", style="hint", train_size=1, eval_size=0).train_rows[0]
    a, b = row["expression"].split("*")
    assert f"<python>print({a} * {b})</python>" in row["prompt"]
    calc = load_task("multiply", style="hint", tool="calculator", train_size=1, eval_size=0)
    assert f"<calculator>{a} * {b}</calculator>" in calc.train_rows[0]["prompt"]
    assert "<calculator>123 * 456</calculator>" in calc.system_prompt


@pytest.mark.parametrize("args, match", [
    ({"tool": "abacus"}, "tool must be one of"),
    ({"style": "fancy"}, "style must be 'plain' or 'hint'"),
    ({"digits_a": 0}, "digits_a must be an integer in 1..30"),
    ({"digits_a": 1, "digits_b": 1, "train_size": 100}, "found only"),
])
def test_bad_arguments_are_named(args, match):
    with pytest.raises((ValueError, DataError), match=match):
        load_task("multiply", **args)
