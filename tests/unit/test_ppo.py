"""`grpokit ppo` on a tiny random model: both critics run, log the value loss, resume exactly."""

import json

import pytest
import torch

from grpokit.config import ConfigError, load_config
from grpokit.ppo import train_ppo

PPO = ["rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=6",
       "train.micro_batch_size=2", "log.report_to=[]", "log.report=false",
       "eval.before_and_after=false", "checkpoint.keep_last=0", "ppo.value_lr=1e-3",
       "train.lr=1e-3", "data.max_prompt_length=256",
       "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}"]


@pytest.mark.parametrize("value_model", ["separate", "head"])
def test_ppo_runs_and_resumes_exactly(tiny_model_dir, tmp_path, value_model):
    from safetensors.torch import load_file

    base = [f"model.path={tiny_model_dir}", *PPO, f"ppo.value_model={value_model}"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_ppo(load_config(overrides=[*base, f"log.output_dir={straight}", "train.steps=2"]))
    train_ppo(load_config(overrides=[*base, f"log.output_dir={split}", "train.steps=1"]))
    train_ppo(load_config(overrides=[*base, f"log.output_dir={split}", "train.steps=2"]),
              resume=split)
    lines = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/value", "loss/value_clip_frac", "loss/policy", "reward/mean"} <= set(lines[0])
    final = lambda out: load_file(sorted((out / "checkpoints").iterdir())[-1] / "model"
                                  / "model.safetensors")
    w1, w2 = final(straight), final(split)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    critic = lambda out: torch.load(sorted((out / "checkpoints").iterdir())[-1] / "trainer.pt",
                                    weights_only=False)["critic"]
    c1, c2 = critic(straight), critic(split)
    assert c1.keys() == c2.keys() and all(torch.equal(c1[k], c2[k]) for k in c1)
    assert "head.weight" in c1
    assert any(k.startswith("decoder.") for k in c1) == (value_model == "separate")


def test_ppo_refuses_lora(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="model.lora.enabled"):
        train_ppo(load_config(overrides=[f"model.path={tiny_model_dir}", *PPO,
                                         "model.lora.enabled=true",
                                         f"log.output_dir={tmp_path / 'x'}"]))
