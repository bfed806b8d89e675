"""The 2026 family's presets and a user's own loss or estimator, end to end on a tiny random
model: each preset trains, prints and saves its resolved knobs; a loss or an estimator from a
user's file trains from the command line and from Python; a bad one exits 2 naming the key."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
import yaml

import grpokit
from grpokit.cli import main

TINY = [
    "train.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=4",
    "rollout.max_new_tokens=8", "eval.num_prompts=2", "data.max_prompt_length=1024",
    "train.micro_batch_size=4", "train.lr=1e-3", "log.report_to=[]", "log.report=false",
    "data.task_args={digits: 1, ops: '+', train_size: 20, eval_size: 4, style: short}",
    "rewards=[{name: math}, {name: format, weight: 0.5}]",
]
NEW = ["cispo", "sapo", "gmpo", "gspo_token", "reinforce_pp", "reinforce_pp_baseline", "gdpo",
       "clip_cov", "kl_cov", "distill"]
NEEDS = {"distill": "algo.teacher={teacher}", "kl_cov": "train.minibatches=2"}
"""What a preset needs beyond the defaults: distill a teacher; kl_cov acts from a step's second
update, so the tests give it two minibatches."""
LOSSES = '''
import torch

CALLS = []


def linear_loss(logprobs, old_logprobs, advantages, mask, knobs, sequence_mask=None):
    """REINFORCE with the importance ratio: -ρ·A per token."""
    {log}
    adv = advantages.unsqueeze(1) if advantages.ndim == 1 else advantages
    return -adv * torch.exp(logprobs - old_logprobs)


def rank_estimator(rewards, weights, group_size, *, scale, eps):
    """Advantage +1 for the best of each group, -1 for the worst, 0 between."""
    {log}
    total = torch.nan_to_num(rewards, nan=0.0) @ torch.as_tensor(weights, dtype=rewards.dtype)
    groups = total.view(-1, group_size)
    best = groups == groups.max(dim=1, keepdim=True).values
    worst = groups == groups.min(dim=1, keepdim=True).values
    return (best.double() - worst.double()).view(-1)
'''


def _write_losses(tmp_path):
    log = f"open({str(tmp_path / 'calls.txt')!r}, 'a').write('x')"
    path = tmp_path / "my_algo.py"
    path.write_text(textwrap.dedent(LOSSES).replace("{log}", log))
    return path


@pytest.mark.parametrize("preset", NEW)
def test_each_new_preset_trains_and_prints_and_saves_its_resolved_knobs(
        preset, tiny_model_dir, tiny_teacher_dir, tmp_path, capsys):
    out = tmp_path / "run"
    need = NEEDS.get(preset, "train.seed=0").format(teacher=tiny_teacher_dir)
    assert main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={out}", *TINY,
                 f"algo.preset={preset}", need]) == 0
    printed = capsys.readouterr().out
    saved = yaml.safe_load((out / "config.yaml").read_text())["algo"]
    assert saved["preset"] == preset and f"grpokit {preset}:" in printed
    assert all(value is not None for key, value in saved.items()
               if key not in ("dual_clip", "teacher"))  # null: off
    for key in ("loss", "estimator", "scale", "ratio", "aggregation"):  # printed, maybe wrapped
        assert re.search(rf'"{key}":\s*"{saved[key]}"', printed), key
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert all(abs(r["loss/policy"]) < 1e6 for r in lines)
    if preset == "distill":  # a teacher with other weights: a non-zero gap, logged and printed
        assert all(r["distill/reverse_kl"] != 0 for r in lines) and "teacher kl" in printed
    if preset == "kl_cov":  # the top covariances: at least one token every step
        assert all(r["loss/cov_selected_frac"] > 0 for r in lines)
    if preset == "clip_cov":  # only tokens with covariance in (1, 5): maybe none
        assert all(r["loss/cov_selected_frac"] >= 0 for r in lines)


def test_a_user_loss_and_estimator_from_a_file_train_from_the_command_line(tiny_model_dir,
                                                                          tmp_path):
    path = _write_losses(tmp_path)
    out = tmp_path / "run"
    assert main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={out}", *TINY,
                 f"algo.loss={path}:linear_loss", f"algo.estimator={path}:rank_estimator"]) == 0
    assert (tmp_path / "calls.txt").read_text().count("x") >= 4  # 2 steps × (estimator + loss)
    saved = yaml.safe_load((out / "config.yaml").read_text())["algo"]
    assert saved["loss"] == f"{path}:linear_loss"


def test_a_user_loss_trains_from_python(tiny_model_dir, tmp_path):
    path = _write_losses(tmp_path)
    result = grpokit.train(None, f"model.path={tiny_model_dir}",
                           f"log.output_dir={tmp_path / 'run'}", *TINY,
                           f"algo.loss={path}:linear_loss", console=False)
    assert result.metrics["step"] == 2 and (tmp_path / "calls.txt").read_text()


@pytest.mark.parametrize("entry, message", [
    ("missing_module_xyz:fn", "algo.loss 'missing_module_xyz:fn'"),
    ("{path}:no_such_function", "has no attribute 'no_such_function'"),
    ("{path}:CALLS", "names list, not a function"),
])
def test_a_bad_user_loss_exits_2_naming_the_key(entry, message, tiny_model_dir, tmp_path,
                                                 capsys):
    path = _write_losses(tmp_path)
    code = main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={tmp_path / 'run'}",
                 *TINY, f"algo.loss={entry.format(path=path)}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and message in err, err


@pytest.mark.slow
@pytest.mark.parametrize("preset", NEW)
def test_each_new_preset_runs_the_default_task_for_three_steps(preset, tmp_path):
    """The embedded SmolLM2-135M-Instruct on the built-in arithmetic task, as `make train` runs
    it, 3 steps of each new preset (about 1 minute each on 2 cores)."""
    out = tmp_path / "run"
    # distill: the default model as its own teacher (no second model ships with grpokit)
    need = NEEDS.get(preset, "train.seed=0").format(teacher="smollm2-135m-instruct")
    assert main(["train", f"algo.preset={preset}", "train.steps=3", "eval.num_prompts=0",
                 f"log.output_dir={out}", "log.report_to=[]", "log.report=false", need]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all(abs(r["loss/policy"]) < 1e6 and r["optim/grad_norm"] < 1e6 for r in lines)
    assert yaml.safe_load((out / "config.yaml").read_text())["algo"]["preset"] == preset
