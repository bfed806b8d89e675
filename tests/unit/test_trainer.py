"""The training loop on a tiny random model: CLI run, artifacts, exact resume, guards."""

import json

import pytest
import torch

from grpokit.cli import main
from grpokit.config import ConfigError, load_config

TINY = [
    "train.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=4",
    "rollout.max_new_tokens=12", "eval.num_prompts=4", "data.max_prompt_length=1024",
    "train.micro_batch_size=3", "log.samples_every=1", "train.lr=1e-3",
    "data.task_args={digits: 1, ops: '+', train_size: 20, eval_size: 8, style: short}",
]


def _overrides(model_dir, out, *extra):
    return [f"model.path={model_dir}", f"log.output_dir={out}", *TINY, *extra]


def test_cli_train_writes_metrics_samples_tensorboard_and_a_loadable_checkpoint(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert main(["train", *_overrides(tiny_model_dir, out)]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for key in ("reward/mean", "reward/math", "groups/tied_frac", "completion/len_mean",
                "loss/kl", "loss/entropy", "loss/clip_frac", "optim/grad_norm", "optim/lr",
                "perf/gen_tokens_per_s", "perf/step_time_s"):
        assert key in lines[0], key
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and {"completion", "rewards", "advantage", "row"} <= set(samples[0])
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    ckpt = out / "checkpoints" / "step-000002"
    model = AutoModelForCausalLM.from_pretrained(ckpt / "model")
    assert sum(p.numel() for p in model.parameters()) > 0
    results = json.loads((out / "eval.json").read_text())
    assert "pass@1" in results["before"] and "pass@1" in results["after"]


def _state(out):
    from safetensors.torch import load_file

    from grpokit.testing import checkpoint_state

    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    weights = load_file(ckpt / "model" / "model.safetensors")
    return weights, checkpoint_state(ckpt, out / "state.pt")


def test_exact_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    from grpokit.stages.grpo import train

    extra = ["train.steps=4", "eval.before_and_after=false", "checkpoint.keep_last=0",
             "rollout.temperature=1.0"]
    straight = tmp_path / "straight"
    train(load_config(overrides=_overrides(tiny_model_dir, straight, *extra)))
    split = tmp_path / "split"
    train(load_config(overrides=_overrides(tiny_model_dir, split, *extra, "train.steps=2")))
    train(load_config(overrides=_overrides(tiny_model_dir, split, *extra)), resume=split)
    w1, s1 = _state(straight)
    w2, s2 = _state(split)
    assert w1.keys() == w2.keys()
    for key in w1:
        assert torch.equal(w1[key], w2[key]), key
    assert s1["sampler"] == s2["sampler"] and s1["step"] == s2["step"] == 4
    for a, b in zip(s1["optimizer"]["state"].values(), s2["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    steps = lambda out: [json.loads(x)["reward/mean"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps(straight) == steps(split)  # same data order and samples


def test_output_dir_holding_a_run_is_refused(tiny_model_dir, tmp_path):
    from grpokit.stages.grpo import train

    out = tmp_path / "run"
    cfg = load_config(overrides=_overrides(tiny_model_dir, out, "train.steps=1",
                                           "eval.before_and_after=false"))
    train(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg)


def test_missing_model_path_names_the_field(tmp_path):
    from grpokit.stages.grpo import train

    cfg = load_config(overrides=[f"model.path={tmp_path / 'nope'}", f"log.output_dir={tmp_path / 'o'}"])
    with pytest.raises(ConfigError, match="model.path"):
        train(cfg)


def test_prompt_longer_than_max_prompt_length_is_an_error(tiny_model_dir, tmp_path):
    from grpokit.stages.grpo import train

    cfg = load_config(overrides=_overrides(tiny_model_dir, tmp_path / "o", "data.max_prompt_length=5",
                                           "eval.before_and_after=false"))
    with pytest.raises(ValueError, match="max_prompt_length|longer"):
        train(cfg)


def test_non_finite_loss_stops_the_step_before_any_update(tiny_model_dir, tmp_path, monkeypatch):
    import grpokit.stages.grpo as trainer
    from grpokit.training.groups import PromptGroups
    from grpokit.training.session import build_session
    from grpokit.training.state import NonFiniteError, new_run_state

    cfg = load_config(overrides=_overrides(tiny_model_dir, tmp_path / "o", "eval.before_and_after=false"))
    session = build_session(cfg)
    rollouts = PromptGroups(session, session.task.train_rows)
    state = new_run_state("grpo", cfg, session.model, len(rollouts.rows),
                          cfg.rollout.prompts_per_step, trainer.total_updates(cfg))
    before = [p.detach().clone() for p in session.model.parameters()]
    import grpokit.training.logprobs as logprobs

    real = logprobs.completion_logprobs

    def poisoned(*args, **kwargs):
        lp, ent = real(*args, **kwargs)
        return lp * float("nan"), ent

    monkeypatch.setattr(logprobs, "completion_logprobs", poisoned)
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        trainer.train_step(session, rollouts, state)
    assert all(torch.equal(a, b) for a, b in zip(before, session.model.parameters()))


def test_sequence_ratios_see_every_sampled_token_under_top_entropy_selection(
        tiny_model_dir, tmp_path, monkeypatch):
    """GSPO with top-entropy selection: the loss gets the narrowed loss mask, and the
    sequence-level ratio the sampled tokens (generated_mask) of the very same rows."""
    from grpokit.rl import update
    from grpokit.stages import grpo as trainer

    seen = []

    def spy(logprobs, old, advantages, mask, knobs, **kwargs):
        seen.append((mask.clone(), kwargs["sequence_mask"].clone()))
        return policy_loss(logprobs, old, advantages, mask, knobs, **kwargs)

    from grpokit.algo.losses import policy_loss
    monkeypatch.setattr(update, "policy_loss", spy)
    cfg = load_config(overrides=_overrides(
        tiny_model_dir, tmp_path / "run", "train.steps=1", "eval.before_and_after=false",
        "algo.preset=gspo", "algo.top_entropy_fraction=0.5", "log.report_to=[]"))
    trainer.train(cfg)
    assert seen
    narrowed = 0
    for mask, sampled in seen:
        assert not (mask & ~sampled).any()  # the loss tokens are sampled tokens
        narrowed += int((sampled & ~mask).sum())
    assert narrowed > 0  # selection left sampled tokens out of the loss, not out of the ratio


def _torn_run(tiny_model_dir, tmp_path):
    """A run that checkpointed step 1, then was killed while writing its logs' next lines."""
    out = tmp_path / "run"
    args = [*_overrides(tiny_model_dir, out, "eval.before_and_after=false", "log.report_to=[]")]
    assert main(["train", *args, "train.steps=1"]) == 0
    for name in ("metrics.jsonl", "samples.jsonl"):
        with open(out / name, "a", encoding="utf-8") as file:
            file.write('{"step": 2, "reward/me')  # no newline: killed mid-write
    return out, args


def test_resume_after_a_torn_last_log_line_drops_it(tiny_model_dir, tmp_path, capsys):
    out, args = _torn_run(tiny_model_dir, tmp_path)
    assert main(["train", *args, "train.steps=2", "--resume", str(out)]) == 0, \
        capsys.readouterr().err
    for name in ("metrics.jsonl", "samples.jsonl"):
        steps = [json.loads(x)["step"] for x in (out / name).read_text().splitlines()]
        assert steps[0] == 1 and steps[-1] == 2 and steps == sorted(steps), name


def test_resume_with_a_damaged_log_line_exits_2_naming_the_line(tiny_model_dir, tmp_path,
                                                                capsys):
    out, args = _torn_run(tiny_model_dir, tmp_path)
    metrics = out / "metrics.jsonl"
    metrics.write_text("garbage\n" + metrics.read_text())
    assert main(["train", *args, "train.steps=2", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{metrics}:1: not valid JSON" in err and "Traceback" not in err, err


def test_an_environments_rows_keep_their_file_and_line(tmp_path):
    from types import SimpleNamespace

    from grpokit.data.datasets import load_rows
    from grpokit.errors import DataError
    from grpokit.testing import tiny_tokenizer
    from grpokit.training.groups import PromptGroups

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a", "b" * 40, "c"]))
    env = SimpleNamespace(first_messages=lambda row: [{"role": "user", "content": row["prompt"]}])
    session = SimpleNamespace(
        cfg=load_config(overrides=["data.max_prompt_length=40"]), tokenizer=tiny_tokenizer(),
        env=env, task=SimpleNamespace(system_prompt_for=lambda system: None), rewards=[])
    rows = load_rows(path, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=f"^{path}: line 2: the prompt is"):
        PromptGroups(session, rows, runner=object())
