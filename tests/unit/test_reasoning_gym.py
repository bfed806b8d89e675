"""`data.task: reasoning_gym`: rows from a reasoning-gym generator (no download), held-out rows
apart from the training ones, the generator's scorer as the `reasoning_gym` reward (its errors
counted apart from 0), errors naming the task args, and a tiny run end to end."""

from __future__ import annotations

import json

import pytest

from grpokit.cli import main
from grpokit.data.base import load_task
from grpokit.errors import DataError
from grpokit.rewards.base import RewardSpec, Sample
from grpokit.rewards.reasoning_gym import reasoning_gym_reward
from grpokit.rewards.runner import RewardRunner

pytest.importorskip("reasoning_gym")

SMALL = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}


def _task(**args):
    return load_task("reasoning_gym", **{"dataset": "basic_arithmetic", "train_size": 30,
                                         "eval_size": 10, "config": SMALL, **args})


def test_rows_come_from_the_generator_and_held_out_questions_stay_out_of_training():
    task = _task()
    assert len(task.train_rows) == 30 and len(task.eval_rows) == 10
    row = task.train_rows[0]
    assert row["prompt"] == row["question"] and row["rg_dataset"] == "basic_arithmetic"
    assert {"answer", "metadata"} <= set(row)
    held_out = {r["question"] for r in task.eval_rows}
    assert not held_out & {r["question"] for r in task.train_rows}
    assert [s.name for s in task.rewards] == ["reasoning_gym", "format"]


def test_the_same_args_give_the_same_rows_and_the_held_out_set_ignores_train_size():
    a, b, c = _task(), _task(), _task(train_size=20)
    assert a.train_rows == b.train_rows and a.eval_rows == b.eval_rows
    assert c.eval_rows == a.eval_rows
    assert _task(seed=3).eval_rows != a.eval_rows


def test_the_reward_is_the_generators_own_score_of_the_last_answer_tag():
    row = _task().eval_rows[0]
    gold = str(row["answer"])
    assert reasoning_gym_reward(Sample(f"<answer>0</answer> <answer>{gold}</answer>", row)) == 1.0
    assert reasoning_gym_reward(Sample("no tag at all", row)) == 0.0
    assert reasoning_gym_reward(Sample("<answer>2</answer>", {"answer": "2"})) is None


def test_a_scorer_that_raises_is_an_error_of_that_sample_not_a_zero(monkeypatch):
    import grpokit.rewards.reasoning_gym as module

    def broken(answer, entry):
        raise RuntimeError("scorer blew up")

    monkeypatch.setattr(module, "scorer", lambda name: broken)
    row = _task().eval_rows[0]
    runner = RewardRunner([RewardSpec("reasoning_gym")], max_error_rate=1.0)
    try:
        result = runner.score([Sample("<answer>1</answer>", row)])
    finally:
        runner.close()
    assert result.error_mask[0, 0] and "scorer blew up" in \
        result.error_examples["reasoning_gym"][0]
    monkeypatch.setattr(module, "scorer", lambda name: lambda answer, entry: 1.5)
    with pytest.raises(ValueError, match="returned 1.5, not a number in"):
        reasoning_gym_reward(Sample("<answer>1</answer>", row))


@pytest.mark.parametrize("args, message", [
    ({"dataset": None}, "data.task_args.dataset must name a generator"),
    ({"dataset": "no_such_generator"}, "dataset 'no_such_generator'"),
    ({"config": {"no_such_knob": 3}}, "with config {'no_such_knob': 3}"),
    ({"config": [1]}, "data.task_args.config must be a mapping"),
    ({"train_size": 0}, "data.task_args.train_size must be an integer >= 1"),
])
def test_bad_task_args_name_what_was_wrong(args, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("[", r"\[")
                       .replace("{", r"\{")):
        _task(**args)


def test_a_generator_too_small_for_train_size_says_so():
    with pytest.raises(DataError, match="gave only"):
        _task(train_size=5000, eval_size=50, config={**SMALL, "operators": ["+"]})


def test_a_run_trains_and_evaluates_on_a_generator_from_the_command_line(tiny_model_dir,
                                                                         tmp_path):
    out = tmp_path / "run"
    assert main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={out}",
                 "data.task=reasoning_gym",
                 "data.task_args={dataset: basic_arithmetic, train_size: 20, eval_size: 4, "
                 "config: {min_terms: 2, max_terms: 2, max_digits: 1}}",
                 "train.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=4",
                 "rollout.max_new_tokens=8", "eval.num_prompts=4", "data.max_prompt_length=1024",
                 "train.micro_batch_size=8", "log.report_to=[]", "log.report=false"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(0.0 <= r["reward/reasoning_gym"] <= 1.0 and
               r["reward_error_frac/reasoning_gym"] == 0.0 for r in steps)


def test_a_bad_generator_name_exits_2_from_the_command_line(tiny_model_dir, tmp_path, capsys):
    code = main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={tmp_path / 'r'}",
                 "data.task=reasoning_gym", "data.task_args={dataset: nope}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "dataset 'nope'" in err, err
