"""Every script and config in examples/ runs, on a tiny random model, so none of them can rot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = ["train.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=8", "train.micro_batch_size=4", "log.report_to=[]",
        "log.report=false", "eval.num_prompts=2", "data.max_prompt_length=256",
        "model.autocast='off'", "checkpoint.keep_last=0"]
SMALL_TASK = "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write runs/... where they run
    return tmp_path


@pytest.mark.parametrize("name", ["custom_reward", "tool_environment", "gsm8k_style"])
def test_a_grpo_example_runs(tiny_model_dir, in_tmp, name):
    extra = {"custom_reward": [SMALL_TASK], "tool_environment": ["tools.max_turns=2"],
             "gsm8k_style": ["rollout.max_new_tokens=8"]}[name]
    result = _module(name).main([f"model.path={tiny_model_dir}", *TINY, *extra])
    assert result.metrics["step"] == 1 and result.run_dir.is_relative_to(Path("runs"))


def test_sft_then_grpo_example_runs(tiny_model_dir, in_tmp):
    result = _module("sft_then_grpo").main([f"model.path={tiny_model_dir}", *TINY, SMALL_TASK,
                                            "sft.batch_size=2", "rollout.max_new_tokens=24"])
    saved = json.loads((in_tmp / result.run_dir / "eval.json").read_text())
    assert "before" in saved and "after" in saved
    assert result.metrics["step"] == 1


def test_the_import_path_example_config_runs(tiny_model_dir, in_tmp):
    from grpokit.cli import main

    assert main(["train", "-c", str(EXAMPLES / "import_path_reward.yaml"),
                 f"model.path={tiny_model_dir}", *TINY, SMALL_TASK]) == 0
    line = json.loads((in_tmp / "runs/import_path_reward/metrics.jsonl").read_text())
    assert line["reward/my_rewards.py:brevity"] == 1.0  # every tiny completion is short
