"""The one run loop (grpokit/training/loop.py) serves every stage alike: GRPO, PPO, SFT and DPO each resume
2 + 2 steps into the same bits as 4, apply a changed learning rate, refuse a frozen key, and write
report.html and samples.jsonl, on a tiny random model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from grpokit.config import ConfigError, load_config
from grpokit.rewards.registry import per_item


@per_item("loop_first_token")
def _first_token(sample, **_):
    """0, 0.5 or 1 from the first completion token: groups that do not tie, so weights move."""
    return (sample.completion_ids[0] % 3) / 2 if sample.completion_ids else 0.0


TASK = "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}"
COMMON = ["log.report_to=[]", "checkpoint.keep_last=0", "eval.before_and_after=false",
          "train.lr=1e-3", "model.autocast='off'", "data.max_prompt_length=256",
          "log.samples_every=1", TASK]
RL = ["rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=6",
      "train.micro_batch_size=2", "algo.beta=0.04", "algo.ref_refresh_steps=1",
      "train.epochs_per_batch=2",  # μ = 2: the ratio and the refreshed reference both matter
      "rewards=[{name: loop_first_token}]"]
STAGES = {
    "grpo": RL,
    "ppo": [*RL, "ppo.value_lr=1e-3"],
    "sft": ["sft.batch_size=4", "train.micro_batch_size=2", "sft.max_target_length=24"],
    "dpo": ["dpo.batch_size=4", "train.micro_batch_size=4", "dpo.max_completion_length=24",
            "eval.num_prompts=0"],
}


def _run(kind: str, model_dir, out, *extra: str, resume: bool = False) -> dict:
    from grpokit.stages.dpo import run_dpo
    from grpokit.stages.grpo import train
    from grpokit.stages.ppo import train_ppo
    from grpokit.stages.sft import run_sft

    cfg = load_config(overrides=[f"model.path={model_dir}", f"log.output_dir={out}", *COMMON,
                                 *STAGES[kind], *extra])
    fn = {"grpo": train, "ppo": train_ppo, "sft": run_sft, "dpo": run_dpo}[kind]
    return fn(cfg, resume=out if resume else None)


def _metrics(out) -> list[dict]:
    """The logged metrics without the wall-clock ones."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if not k.startswith("perf/") and k != "time"}
            for m in lines]


def _last_checkpoint(out) -> dict[str, torch.Tensor]:
    step = sorted((out / "checkpoints").iterdir())[-1]
    return load_file(step / "model" / "model.safetensors")


@pytest.mark.parametrize("kind", STAGES)
def test_two_plus_two_steps_equal_four_and_every_stage_writes_its_report(
        tiny_model_dir, tmp_path, kind):
    straight, split = tmp_path / "straight", tmp_path / "split"
    _run(kind, tiny_model_dir, straight, "train.steps=4")
    _run(kind, tiny_model_dir, split, "train.steps=2")
    _run(kind, tiny_model_dir, split, "train.steps=4", resume=True)
    a, b = _last_checkpoint(straight), _last_checkpoint(split)
    start = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in start)  # the steps trained something
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kind
    assert _metrics(straight) == _metrics(split)
    for out in (straight, split):
        assert json.loads((out / "run.json").read_text())["kind"] == kind
        method = "grpo: grpo" if kind == "grpo" else kind  # the report's runs table
        assert f"<td>{method}</td>" in (out / "report.html").read_text()
        samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
        assert sorted({s["step"] for s in samples}) == [1, 2, 3, 4]


@pytest.mark.parametrize("kind", STAGES)
def test_a_resume_applies_a_changed_learning_rate_and_refuses_a_frozen_key(
        tiny_model_dir, tmp_path, kind):
    out = tmp_path / "run"
    _run(kind, tiny_model_dir, out, "train.steps=2", "log.report=false")
    frozen = tmp_path / "frozen"
    shutil.copytree(out, frozen)
    _run(kind, tiny_model_dir, out, "train.steps=3", "train.lr=5e-3", "log.report=false",
         resume=True)
    lrs = [m["optim/lr"] for m in _metrics(out)]
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-3])  # the constant schedule at the new peak
    with pytest.raises(ConfigError, match="data.seed"):
        _run(kind, tiny_model_dir, frozen, "train.steps=3", "data.seed=7", resume=True)
