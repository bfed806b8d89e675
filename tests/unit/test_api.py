"""The public API (grpokit/__init__.py, grpokit/api.py, docs/api.md) on a tiny random model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import grpokit

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
TASK = "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}"
TINY = ["train.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=8", "train.micro_batch_size=4", "log.report_to=[]",
        "log.report=false", "eval.before_and_after=false", "data.max_prompt_length=256",
        "model.autocast='off'", "checkpoint.keep_last=0", TASK]


def _tiny(model_dir, out) -> list[str]:
    return [f"model.path={model_dir}", f"log.output_dir={out}", *TINY]


def test_every_public_name_is_documented_and_only_those():
    """docs/api.md's table of names lists exactly grpokit.__all__."""
    table = DOCS.read_text().split("## The names", 1)[1]
    documented = set(re.findall(r"^\| `grpokit\.(\w+)", table, flags=re.M))
    assert documented == set(grpokit.__all__)
    for name in grpokit.__all__:
        assert getattr(grpokit, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'trainer_internals'"):
        grpokit.trainer_internals  # noqa: B018


def test_import_grpokit_loads_neither_torch_nor_transformers():
    code = "import sys, grpokit; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
           "('torch', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_load_config_from_yaml_and_from_a_config_with_overrides(tmp_path):
    yaml = tmp_path / "run.yaml"
    yaml.write_text("train:\n  steps: 7\nalgo:\n  preset: dapo\n")
    cfg = grpokit.load_config(yaml, "train.lr=3e-6")
    assert cfg.train.steps == 7 and cfg.train.lr == 3e-6 and cfg.algo.clip_high == 0.28
    again = grpokit.load_config(cfg, "train.steps=9")
    assert again.train.steps == 9 and again.train.lr == 3e-6 and again.algo.clip_high == 0.28
    assert grpokit.load_config(cfg) is cfg
    with pytest.raises(ValueError, match="train.steps"):
        grpokit.load_config(cfg, "train.steps=-1")


ROWS = [{"prompt": f"What is {a} + {a}?", "answer": str(2 * a)} for a in range(1, 9)]


def test_train_from_python_with_rows_returns_its_result(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = grpokit.train(None, *_tiny(tiny_model_dir, out), "data.eval_fraction=0.25",
                           data=ROWS, rewards=["math"], console=False)
    assert isinstance(result, grpokit.RunResult)
    assert result.run_dir == out and result.checkpoint.name == "step-000002"
    assert result.metrics["step"] == 2 and "reward/mean" in result.metrics
    assert result.before == {} and result.after == {} and result.final_model is None
    saved = grpokit.load_config(out / "config.yaml")
    assert saved.data.path.startswith("memory:") and saved.data.task is None
    # The same rows resume the run; other rows are a changed frozen setting.
    more = grpokit.train(None, *_tiny(tiny_model_dir, out), "data.eval_fraction=0.25",
                         "train.steps=3", data=ROWS, rewards=["math"], resume=out,
                         console=False)
    assert more.metrics["step"] == 3
    with pytest.raises(ValueError, match="data.path"):
        grpokit.train(None, *_tiny(tiny_model_dir, out), "data.eval_fraction=0.25",
                      "train.steps=4", data=ROWS[:-1], rewards=["math"], resume=out,
                      console=False)


def test_bad_python_data_is_named():
    with pytest.raises(TypeError, match="data: expected a non-empty list of dicts"):
        grpokit.load_config(None, data="rows.jsonl")
    with pytest.raises(ValueError, match="rewards: expected a function"):
        grpokit.load_config(None, rewards=[3])


def test_sft_then_grpo_from_python(tiny_model_dir, tmp_path):
    warm = grpokit.sft(None, f"model.path={tiny_model_dir}", f"log.output_dir={tmp_path / 'sft'}",
                       "train.steps=2", "sft.batch_size=4", "train.micro_batch_size=4",
                       "sft.max_target_length=24", "log.report_to=[]", "log.report=false",
                       "data.max_prompt_length=256", TASK, console=False)
    assert warm.final_model == tmp_path / "sft" / "final" and warm.metrics["step"] == 2
    assert "loss" in warm.before and "loss" in warm.after
    result = grpokit.train(None, *_tiny(warm.final_model, tmp_path / "grpo"), console=False)
    assert grpokit.load_config(result.run_dir / "config.yaml").model.path == str(warm.final_model)
    assert result.metrics["step"] == 2


def test_a_reward_function_passed_from_python_scores_every_completion(tiny_model_dir, tmp_path,
                                                                       monkeypatch):
    """The keyword signature, from a user's file: every sample's reward is what the function
    returns for its completion."""
    (tmp_path / "my_rewards.py").write_text(
        "def reward_len(completions, **kwargs):\n"
        "    return [-abs(20 - len(c)) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from my_rewards import reward_len

    out = tmp_path / "run"
    result = grpokit.train(None, *_tiny(tiny_model_dir, out), "log.samples_every=1",
                           "log.num_samples=4", rewards=[reward_len], console=False)
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8  # 4 a step
    for s in samples:
        assert s["rewards"]["reward_len"] == -abs(20 - len(s["completion"]))
    assert result.metrics["reward/reward_len"] == pytest.approx(
        sum(-abs(20 - len(s["completion"])) for s in samples if s["step"] == 2) / 4)


class EchoEnv:
    """An environment object of one's own: every turn that ends with "1" gets "ok" back."""

    stop_strings = ("1",)

    def first_messages(self, row):
        return [{"role": "user", "content": row["prompt"]}]

    def respond(self, turns):
        from grpokit.rollout.base import EnvReply

        return [EnvReply("ok", tool_calls=1) for _ in turns]


def test_an_environment_object_runs_the_episodes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = grpokit.train(None, *_tiny(tiny_model_dir, out), "tools.max_turns=2",
                           environment=EchoEnv(), console=False)
    assert grpokit.load_config(out / "config.yaml").tools.environment == \
        f"python/{EchoEnv.__module__}.EchoEnv"
    assert result.metrics["tools/turns_mean"] >= 1.0
