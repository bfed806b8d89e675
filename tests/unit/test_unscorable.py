"""Unscorable data is named, never silent (docs/rewards.md, the runner): a gold answer that does
not parse scores None with one warning per row; rewards whose field no row has stop the run
before anything is written; a step none of whose completions could be scored stops the run
unless reward_runner.allow_unscorable says otherwise."""

import json
import logging
import math

import pytest

from grpokit.cli import main
from grpokit.rewards.base import RewardSpec, Sample
from grpokit.rewards.registry import per_item
from grpokit.rewards.runner import RewardError, RewardRunner

TINY = [
    "train.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
    "rollout.max_new_tokens=6", "eval.num_prompts=0", "data.max_prompt_length=1024",
    "log.report_to=[]", "log.report=false", "train.micro_batch_size=4",
]


@per_item("test_unscorable_always_none")
def always_none(sample):
    """Not applicable to any row: every completion is unscorable."""
    return None


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _warnings(caplog, text):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and text in r.getMessage()]


def test_a_gold_that_does_not_parse_scores_none_with_one_warning_per_row(caplog):
    golds = {1: "\\frac{", 2: "???", 3: float("nan"), 4: "42", 5: "\\frac{1}{2}"}
    rows = {i: {"id": i, "answer": gold} for i, gold in golds.items()}
    completions = ["The answer is 42", "no answer at all", "\\boxed{1/2}"]
    samples = [Sample(c, rows[i]) for i in golds for c in completions]
    runner = RewardRunner([RewardSpec("math")])
    with caplog.at_level(logging.WARNING):
        first = runner.score(samples).rewards[:, 0].tolist()
        again = runner.score(samples).rewards[:, 0].tolist()  # the same rows: no new warning
    by_row = {i: first[3 * k:3 * k + 3] for k, i in enumerate(golds)}
    for i in (1, 2, 3):
        assert all(math.isnan(v) for v in by_row[i]), (golds[i], by_row[i])
        (warning,) = _warnings(caplog, f"row id={i}:")
        assert "score None" in warning
    assert by_row[4] == [1.0, 0.0, 0.0] and by_row[5] == [0.0, 0.0, 1.0]
    assert [math.isnan(v) for v in again] == [math.isnan(v) for v in first]
    assert "math-verify cannot read '???'" in _warnings(caplog, "row id=2:")[0]
    assert "nan, not a finite number" in _warnings(caplog, "row id=3:")[0]


def test_fields_no_row_has_are_refused_naming_the_field_and_the_columns():
    rows = [{"prompt": "1+1=", "solution": "2"}, {"prompt": "2+2=", "solution": "4", "id": 7}]
    runner = RewardRunner([RewardSpec("format"), RewardSpec("math")])
    with pytest.raises(RewardError, match=r"reward 'math' reads the row field 'answer', but none "
                                          r"of the 2 rows of data.path=x.jsonl has it; the rows "
                                          r"have the columns: prompt, solution, id\."):
        runner.check_fields(rows, "data.path=x.jsonl")
    runner.check_fields(rows + [{"prompt": "3+3=", "answer": "6"}], "data")  # one row is enough
    code = RewardRunner([RewardSpec("code")])
    with pytest.raises(RewardError, match="'tests' or 'test'"):
        code.check_fields([{"prompt": "p", "tests": None}], "data")
    code.check_fields([{"prompt": "p", "test": "assert f() == 1", "entry_point": "f"}], "data")
    language = [RewardSpec("language", 1.0, {"target": "en"})]
    RewardRunner(language).check_fields(rows, "data")  # a fixed target reads no field


def test_a_dataset_whose_gold_is_under_another_name_stops_before_anything_is_written(
        tiny_model_dir, tmp_path, capsys):
    rows = [{"prompt": f"{a}+{a}=", "solution": str(2 * a)} for a in range(6)]
    data = _jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "run"
    code = main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={out}",
                 f"data.path={data}", "data.task=null", "rewards=[{name: math}]", *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert "reward 'math' reads the row field 'answer'" in err and "prompt, solution" in err
    assert not out.exists()


def test_a_step_with_no_scorable_completion_is_an_error_unless_allowed(tiny_model_dir, tmp_path,
                                                                       capsys):
    base = [f"model.path={tiny_model_dir}", "rewards=[{name: test_unscorable_always_none}]",
            "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}",
            *TINY]
    out = tmp_path / "strict"
    assert main(["train", f"log.output_dir={out}", *base]) == 2
    err = capsys.readouterr().err
    assert "step 1: none of its 4 completions could be scored" in err
    assert "test_unscorable_always_none" in err and "reward_runner.allow_unscorable=true" in err
    assert not (out / "metrics.jsonl").read_text()  # no step was logged
    allowed = tmp_path / "allowed"
    assert main(["train", f"log.output_dir={allowed}", *base,
                 "reward_runner.allow_unscorable=true"]) == 0
    (line,) = (allowed / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line)["reward/unscorable_frac"] == 1.0


def test_errors_of_the_rows_left_to_a_function_name_the_sample_in_the_whole_batch():
    from grpokit.rewards.item import ItemReward
    from grpokit.rewards.registry import row_check

    def fails_on_b(sample):
        if sample.row["id"] == "b":
            raise KeyError("boom")
        return 1.0

    row_check("test_unscorable_checked")(
        lambda fn, rows: ["refused" if row["id"] == "a" else None for row in rows])
    runner = RewardRunner([RewardSpec("test_unscorable_checked")], max_error_rate=1.0,
                          functions=[ItemReward("test_unscorable_checked", fails_on_b)])
    rows = {k: {"id": k} for k in "abc"}
    result = runner.score([Sample("x", rows[k]) for k in "aabbcc"])
    values = result.rewards[:, 0].tolist()
    assert [math.isnan(v) for v in values] == [True, True, True, True, False, False]
    assert result.error_mask[:, 0].tolist() == [False, False, True, True, False, False]
    assert result.error_examples["test_unscorable_checked"][0].startswith("sample 2 (row id='b')")
