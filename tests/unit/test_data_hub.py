"""Datasets by name (docs/data.md): a folder laid out as a dataset repository, with its
configuration and split; a repository name that is neither local nor cached exits 2 saying how to
pass a local copy; GSM8K's `#### 42` and MATH's `\\boxed{}` golds work with the `math` reward.
Nothing here reaches the network: the repositories are folders in tmp_path."""

import json
import os
import subprocess
import sys

import pytest

from grpokit.config import load_config
from grpokit.data.base import load_data
from grpokit.data.datasets import is_repository_name, load_rows
from grpokit.errors import DataError
from grpokit.rewards.base import RewardSpec, Sample
from grpokit.rewards.math import MathReward

GSM8K = [
    {"question": f"Tom has {n} apples and buys {n} more. How many apples does he have?",
     "answer": f"Tom has {n} + {n} = <<{n}+{n}={2 * n}>>{2 * n} apples.\n#### {2 * n:,}"}
    for n in (3, 21, 600, 1200)
]
MATH = [
    {"problem": "What is $1 - \\frac{1}{2}$?", "level": "Level 1",
     "solution": "We have $\\boxed{1} - \\frac{1}{2} = \\boxed{\\frac{1}{2}}$."},
    {"problem": "Simplify $\\sqrt{8}$.", "level": "Level 2",
     "solution": "$\\sqrt{8} = \\sqrt{4 \\cdot 2} = \\boxed{2\\sqrt{2}}$"},
]
README = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
- config_name: socratic
  data_files:
  - split: train
    path: socratic/train-*
---
# A GSM8K-shaped dataset
"""


def hub_folder(root, rows=GSM8K):
    """A folder laid out as a hub dataset repository: two configurations, parquet shards and a
    README.md whose YAML header names them."""
    import datasets

    for config, split, part in (("main", "train", rows), ("main", "test", rows[:2]),
                                ("socratic", "train", rows[:1])):
        (root / config).mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(part).to_parquet(
            str(root / config / f"{split}-00000-of-00001.parquet"))
    (root / "README.md").write_text(README)
    return root


@pytest.fixture
def load(tmp_path):
    def load(path, **kwargs):
        return load_rows(path, cache_dir=str(tmp_path / "cache"), **kwargs)

    return load


def test_a_repository_folder_with_config_and_split(tmp_path, load):
    folder = hub_folder(tmp_path / "my_gsm8k")
    rows = load(folder, config="main", split="train", prompt_column="question")
    assert [row["prompt"] for row in rows] == [row["question"] for row in GSM8K]
    assert rows[0]["answer"] == GSM8K[0]["answer"]
    assert rows[1].where == f"{folder}: row 2"
    assert len(load(folder, config="main", split="test", prompt_column="question")) == 2
    assert len(load(folder, config="socratic", prompt_column="question")) == 1
    with pytest.raises(DataError, match=r"config 'nope'.*'main', 'socratic'.*data.config"):
        load(folder, config="nope", prompt_column="question")
    with pytest.raises(DataError, match=r"split 'dev'.*'train', 'test'"):
        load(folder, config="main", split="dev", prompt_column="question")


def test_a_repository_folder_of_data_files(tmp_path, load):
    (tmp_path / "repo" / "data").mkdir(parents=True)
    lines = "".join(json.dumps(row) + "\n" for row in GSM8K)
    (tmp_path / "repo" / "data" / "train.jsonl").write_text(lines)
    (tmp_path / "repo" / "data" / "test.jsonl").write_text(lines.splitlines(True)[0])
    assert len(load(tmp_path / "repo", prompt_column="question")) == 4
    assert len(load(tmp_path / "repo", split="test", prompt_column="question")) == 1


def test_an_empty_folder_and_a_config_for_a_file(tmp_path, load):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"'.*empty'.*save_to_disk.*data/train.jsonl"):
        load(tmp_path / "empty")
    (tmp_path / "rows.jsonl").write_text(json.dumps(GSM8K[0]) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl: a file has no configurations"):
        load(tmp_path / "rows.jsonl", config="main", prompt_column="question")


def test_what_counts_as_a_repository_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local").mkdir()
    assert is_repository_name("openai/gsm8k") and is_repository_name("gsm8k")
    assert not is_repository_name("local")  # an existing folder is read from disk
    assert not is_repository_name("data/train.jsonl")  # a missing file stays a missing file
    assert not is_repository_name("/abs/path") and not is_repository_name("a/b/c")


def test_a_name_goes_through_load_dataset_with_config_and_split(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, cache_dir=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(GSM8K[:3] if split == "train" else GSM8K[3:])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = load_config(overrides=["data.task=null", "data.path=openai/gsm8k", "data.config=main",
                                 "data.prompt_column=question", "data.eval_split=test"])
    task = load_data(cfg.data)
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test")]
    assert (len(task.train_rows), len(task.eval_rows)) == (3, 1)
    assert task.train_rows[0].where == "openai/gsm8k: row 1"


def test_eval_path_and_eval_split_together_are_refused(tmp_path):
    folder = hub_folder(tmp_path / "g")
    cfg = load_config(overrides=["data.task=null", f"data.path={folder}", "data.config=main",
                                 "data.eval_split=test", f"data.eval_path={folder}"])
    with pytest.raises(DataError, match="set one of them"):
        load_data(cfg.data)


def test_an_uncached_name_offline_exits_2_naming_it(tmp_path, tiny_model_dir):
    name = "grpokit-tests/no-such-dataset"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-m", "grpokit", "train", f"model.path={tiny_model_dir}",
         "data.task=null", f"data.path={name}", "data.config=main", "data.prompt_column=question",
         f"log.output_dir={tmp_path / 'out'}", "log.report_to=[]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert not (tmp_path / "out").exists()
    assert "Traceback" not in result.stderr
    assert f"dataset '{name}' (config 'main', split 'train')" in result.stderr
    assert "data.path=/path/to/train.jsonl" in result.stderr
    assert "HF_DATASETS_OFFLINE=1" in result.stderr


def test_gsm8k_and_math_golds_score_with_the_math_reward(tmp_path, load):
    gsm8k = load(hub_folder(tmp_path / "g"), config="main", prompt_column="question")
    import datasets

    datasets.Dataset.from_list(MATH).to_parquet(str(tmp_path / "math.parquet"))
    math_rows = load(tmp_path / "math.parquet", prompt_column="problem")
    # The last box of the solution is the gold; the solution itself is left as it was.
    assert [row["answer"] for row in math_rows] == ["\\frac{1}{2}", "2\\sqrt{2}"]
    assert math_rows[0]["solution"] == MATH[0]["solution"]
    cases = [
        (gsm8k[0], "3 + 3 = 6, so the answer is 6", 1.0), (gsm8k[0], "The answer is 7.", 0.0),
        (gsm8k[3], "He has 2400 apples.", 1.0), (gsm8k[3], "\\boxed{2,400}", 1.0),
        (gsm8k[3], "\\boxed{1200}", 0.0), (gsm8k[2], "#### 1,200", 1.0),
        (math_rows[0], "So it is \\boxed{0.5}.", 1.0), (math_rows[0], "\\boxed{1}", 0.0),
        (math_rows[1], "\\boxed{\\sqrt{8}}", 1.0), (math_rows[1], "\\boxed{2}", 0.0),
    ]
    scores = MathReward(timeout=20.0)([Sample(completion, row) for row, completion, _ in cases])
    assert scores == [expected for _, _, expected in cases]


def test_the_math_field_check_accepts_math_rows(tmp_path, load):
    import datasets

    from grpokit.rewards.runner import RewardRunner

    datasets.Dataset.from_list(MATH).to_parquet(str(tmp_path / "math.parquet"))
    rows = load(tmp_path / "math.parquet", prompt_column="problem")
    RewardRunner([RewardSpec("math")]).check_fields(rows, "math.parquet")  # does not raise
    no_box = [{"problem": "p", "solution": "no box here"}]
    datasets.Dataset.from_list(no_box).to_parquet(str(tmp_path / "plain.parquet"))
    plain = load(tmp_path / "plain.parquet", prompt_column="problem")
    assert "answer" not in plain[0]
    with pytest.raises(ValueError, match="reads the row field 'answer'"):
        RewardRunner([RewardSpec("math")]).check_fields(plain, "plain.parquet")


def test_train_on_a_gsm8k_shaped_folder(tmp_path, tiny_model_dir):
    from grpokit.cli import main

    folder = hub_folder(tmp_path / "my_gsm8k")
    out = tmp_path / "out"
    assert main(["train", f"model.path={tiny_model_dir}", "data.task=null",
                 f"data.path={folder}", "data.config=main", "data.split=train",
                 "data.eval_split=test", "data.prompt_column=question", "rewards=[{name: math}]",
                 "train.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
                 "rollout.max_new_tokens=8", "eval.num_prompts=2", "log.report_to=[]",
                 "eval.before_and_after=false", f"log.output_dir={out}"]) == 0
    metrics = [json.loads(line) for line in next(out.rglob("metrics.jsonl")).read_text().splitlines()]
    assert metrics and "reward/mean" in metrics[-1]


def test_sft_on_a_gsm8k_shaped_folder_takes_its_config_and_splits(tmp_path, tiny_model_dir):
    """grpokit sft (and dpo, through the same row loader) reads data.config, data.split and
    data.eval_split like grpokit train: 4 training rows of `main`, its 2 `test` rows held out."""
    from grpokit.cli import main

    folder = hub_folder(tmp_path / "my_gsm8k")
    out = tmp_path / "out"
    assert main(["sft", f"model.path={tiny_model_dir}", "data.task=null",
                 f"data.path={folder}", "data.config=main", "data.eval_split=test",
                 "data.prompt_column=question", "data.columns={answer: completion}",
                 "train.steps=1", "rollout.prompts_per_step=4", "rollout.max_new_tokens=64",
                 "log.report_to=[]", "log.report=false", f"log.output_dir={out}"]) == 0
    results = json.loads((out / "eval.json").read_text())
    assert "loss" in results["before"] and "loss" in results["after"]
