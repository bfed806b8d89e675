"""End-to-end effects of the GRPO family's knobs on a tiny random model.

Test-only reward functions (registered below) create tied and untied groups on purpose. Gradients
are read through the trainer's own update path: one `update_policy` with plain SGD(lr=1) and no
clipping moves every parameter by exactly minus its gradient.
"""

from __future__ import annotations

import json

import pytest
import torch

from grpokit.algo.advantages import process_advantages
from grpokit.algo.losses import aggregate
from grpokit.config import load_config
from grpokit.rewards.base import StepRewards
from grpokit.rewards.registry import per_item
from grpokit.rl import update
from grpokit.stages import grpo as trainer
from grpokit.training.batch import ScoredBatch, TrainingBatch
from grpokit.training.groups import PromptGroups, sample_groups
from grpokit.training.logprobs import completion_logprobs
from grpokit.training.session import build_session
from grpokit.training.state import RunState, new_run_state


@per_item("family_tie_even")
def _tie_even(sample, **_):
    """Groups of even answers tie at 1.0; the others score the completion length's parity."""
    return 1.0 if int(sample.row["answer"]) % 2 == 0 else float(sample.num_tokens % 2)


@per_item("family_const")
def _const(sample, **_):
    return 1.0


@per_item("family_len")
def _len(sample, **_):
    return sample.num_tokens / 10


@per_item("family_parity")
def _parity(sample, **_):
    return float(sample.num_tokens % 2)


@per_item("family_steps")
def _steps(sample, **_):
    """Two steps: the first token, and the rest of the completion."""
    n = max(sample.num_tokens, 1)
    return StepRewards((float(sample.num_tokens % 2), sample.num_tokens / 10), (0, n - 1))


BASE = [
    "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=8",
    "data.max_prompt_length=1024", "train.micro_batch_size=3", "model.autocast='off'",
    "eval.before_and_after=false", "log.report_to=[]", "train.max_grad_norm=0",
    "data.task_args={digits: 1, ops: '+', train_size: 24, eval_size: 4, style: short}",
]


def _session(model_dir, *extra, reward="[{name: family_parity}]"):
    cfg = load_config(overrides=[f"model.path={model_dir}", *BASE, f"rewards={reward}", *extra])
    session = build_session(cfg)
    groups = PromptGroups(session, session.task.train_rows)
    state = new_run_state("grpo", session.cfg, session.model, len(groups.rows),
                          session.cfg.rollout.prompts_per_step,
                          trainer.total_updates(session.cfg))
    return session, groups, state


def _collect(session, groups, state):
    """The step's training batch, as train_step builds it, and its group statistics."""
    scored, stats = sample_groups(groups, state.sampler, state.step, session.cfg)
    included, mask = trainer.loss_mask_of(scored, session.cfg)
    batch = TrainingBatch(scored, trainer.advantages_of(scored, session.cfg), mask, included)
    return batch, stats.metrics()


def _grad(session, batch) -> torch.Tensor:
    """The flat gradient one update_policy takes on `batch`; the weights are restored after."""
    params = [p for p in session.model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=1.0)
    state = RunState("grpo", 0, None, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))
    trainer.update_policy(session, state, batch)
    grad = torch.cat([(b - p.detach()).reshape(-1) for b, p in zip(before, params)])
    with torch.no_grad():
        for b, p in zip(before, params):
            p.copy_(b)
    return grad


def _subset(batch: TrainingBatch, rows: list[int]) -> TrainingBatch:
    """The listed sequences alone, with the advantages and masks they had in `batch`."""
    r, idx = batch.rollout, torch.tensor(rows)
    rollout = type(r)(r.prompt_ids[idx], r.prompt_mask[idx], r.completion_ids[idx],
                      r.completion_mask[idx], [r.finish_reason[i] for i in rows],
                      r.group_index[idx], [r.completions[i] for i in rows], None, r.rows)
    return TrainingBatch(ScoredBatch(rollout, batch.rewards[idx], batch.reward[idx]),
                         batch.advantages[idx], batch.loss_mask[idx], batch.included[idx])


def _group_spread(batch) -> torch.Tensor:
    grouped = batch.reward.view(-1, batch.rollout.group_size)
    return grouped.max(dim=1).values - grouped.min(dim=1).values  # (B,)


# ---------------------------------------------------------------- tied groups


def test_drop_refill_trains_only_on_groups_with_spread_and_counts_refills(tiny_model_dir):
    session, rollouts, state = _session(tiny_model_dir, "algo.dynamic_sampling=true",
                                        "algo.max_refill_rounds=10",
                                        reward="[{name: family_tie_even}]")
    total_rounds = 0
    for _ in range(2):
        consumed = state.sampler.prompts_consumed
        batch, stats = _collect(session, rollouts, state)
        assert len(batch.rollout.rows) == 2 and (_group_spread(batch) > 0).all()
        assert stats["groups/prompts_generated"] == state.sampler.prompts_consumed - consumed
        assert stats["groups/prompts_generated"] >= 2 + stats["groups/refill_rounds"]
        assert stats["groups/informative"] == 2 and stats["groups/tied_frac"] == 0
        total_rounds += stats["groups/refill_rounds"]
    assert total_rounds >= 1  # even answers tie: refills happened


def test_drop_refill_when_every_group_always_ties_skips_the_update(tiny_model_dir):
    session, rollouts, state = _session(tiny_model_dir, "algo.dynamic_sampling=true",
                                        "algo.max_refill_rounds=2", reward="[{name: family_const}]")
    before = [p.detach().clone() for p in session.model.parameters()]
    _, metrics = trainer.train_step(session, rollouts, state)
    assert metrics["groups/refill_rounds"] == 2 and metrics["groups/informative"] == 0
    assert metrics["groups/prompts_generated"] == 6 and metrics["groups/dropped_frac"] == 1.0
    assert metrics["train/skipped"] == 1.0 and metrics["train/tokens"] == 0.0
    assert all(torch.equal(b, p) for b, p in zip(before, session.model.parameters()))
    assert state.optimizer.state == {}  # no optimizer step at all


def test_exclude_drops_tied_groups_from_gradient_and_normalizer(tiny_model_dir):
    from grpokit.data.sampler import PromptSampler

    session, rollouts, state = _session(tiny_model_dir, "algo.exclude_tied=true", "algo.beta=0",
                                        reward="[{name: family_tie_even}]")
    rows = session.task.train_rows
    even = [i for i, row in enumerate(rows) if int(row["answer"]) % 2 == 0]
    for seed in range(50):  # a data order whose first batch has one tied and one untied group
        state.sampler = PromptSampler(len(rows), 2, seed=seed)
        if sum(i in even for i in state.sampler.take(2)) != 1:
            continue
        state.sampler = PromptSampler(len(rows), 2, seed=seed)
        batch, _ = _collect(session, rollouts, state)
        if (_group_spread(batch) > 0).tolist() in ([True, False], [False, True]):
            break
    live = [i for i in range(8) if batch.included[i]]
    assert len(live) == 4
    full, alone = _grad(session, batch), _grad(session, _subset(batch, live))
    assert full.abs().sum() > 0
    torch.testing.assert_close(full, alone, rtol=1e-4, atol=1e-6)
    kept = TrainingBatch(batch.scored, batch.advantages, batch.rollout.completion_mask.bool(),
                         torch.ones(8, dtype=torch.bool))
    assert not torch.allclose(_grad(session, kept), alone)  # keep: the normalizer counts 8


# ---------------------------------------------------------------- truncated completions


def test_overlong_mask_gives_truncated_completions_zero_gradient(tiny_model_dir):
    session, rollouts, state = _session(tiny_model_dir, "algo.mask_truncated=true", "algo.beta=0",
                                        "rollout.max_new_tokens=6")
    batch, _ = _collect(session, rollouts, state)
    reasons = batch.rollout.finish_reason
    stopped = [i for i, f in enumerate(reasons) if f == "stop"]
    assert "length" in reasons and stopped and batch.included.tolist() == [f == "stop" for f in reasons]
    assert not batch.loss_mask[[i for i in range(8) if i not in stopped]].any()
    torch.testing.assert_close(_grad(session, batch), _grad(session, _subset(batch, stopped)),
                               rtol=1e-4, atol=1e-6)


def test_overlong_shape_adds_the_overlong_reward(tiny_model_dir):
    session, rollouts, state = _session(tiny_model_dir, "algo.overlong_penalty=true",
                                        "rollout.max_new_tokens=6")
    assert rollouts.names == ["family_parity", "overlong"]
    _, metrics = trainer.train_step(session, rollouts, state)
    assert "reward/overlong" in metrics
    batch, _ = _collect(session, rollouts, state)
    lengths = batch.rollout.completion_mask.sum(1)
    # L_max = 6, cache = 6 // 4 = 1: zero up to 5 tokens, -1 at 6
    expected = torch.where(lengths == 6, -1.0, 0.0)
    assert torch.equal(batch.rewards[:, 1], expected)
    torch.testing.assert_close(batch.reward, batch.rewards[:, 0] + expected)


# ---------------------------------------------------------------- LoRA and the reference


def test_lora_reference_is_the_base_model_and_no_second_model_is_loaded(tiny_model_dir):
    from grpokit.runtime import models
    from grpokit.training.logprobs import batched_logprobs

    session, rollouts, state = _session(tiny_model_dir, "model.lora.enabled=true",
                                        "model.lora.rank=4", "algo.beta=0.04", "train.lr=1e-2")
    assert session.reference is None
    trainer.train_step(session, rollouts, state)  # the adapter moves away from zero
    batch, _ = _collect(session, rollouts, state)
    base = models.load_policy(tiny_model_dir, dtype="float32")
    kw = dict(micro_batch_size=3, temperature=1.0, chunk_size=1024)
    ref = update._reference_logprobs(session, batch, 1)
    torch.testing.assert_close(ref, batched_logprobs(base, batch.rollout, **kw)[0], rtol=0, atol=1e-5)
    policy = batched_logprobs(session.model, batch.rollout, **kw)[0]
    assert not torch.allclose(policy, ref, atol=1e-4)


def _adapter(out):
    from safetensors.torch import load_file

    last = sorted((out / "checkpoints").iterdir())[-1]
    return load_file(last / "model" / "adapter_model.safetensors")


def test_lora_resume_two_plus_two_equals_four_steps(tiny_model_dir, tmp_path):
    extra = [f"model.path={tiny_model_dir}", *BASE, "rewards=[{name: family_parity}]",
             "model.lora.enabled=true", "model.lora.rank=4", "train.lr=1e-2",
             "checkpoint.keep_last=0", "log.samples_every=0"]
    cfg = lambda out, steps: load_config(overrides=[*extra, f"log.output_dir={out}",
                                                    f"train.steps={steps}"])
    trainer.train(cfg(tmp_path / "straight", 4))
    trainer.train(cfg(tmp_path / "split", 2))
    trainer.train(cfg(tmp_path / "split", 4), resume=tmp_path / "split")
    a, b = _adapter(tmp_path / "straight"), _adapter(tmp_path / "split")
    assert a.keys() == b.keys() and a
    assert any("lora_B" in k and a[k].abs().sum() > 0 for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _kl_by_step(model_dir, out, refresh: int) -> list[float]:
    cfg = load_config(overrides=[f"model.path={model_dir}", *BASE, f"log.output_dir={out}",
                                 "rewards=[{name: family_parity}]", "algo.beta=0.04",
                                 "train.lr=1e-2", "train.steps=3", f"algo.ref_refresh_steps={refresh}",
                                 "log.samples_every=0"])
    trainer.train(cfg)
    return [json.loads(x)["loss/kl"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_reference_refresh_makes_the_next_step_start_at_zero_kl(tiny_model_dir, tmp_path):
    # μ = 1: the KL of a step is measured before its only optimizer step, so it is exactly 0
    # whenever the reference equals the policy: at step 1, and right after each refresh.
    frozen = _kl_by_step(tiny_model_dir, tmp_path / "frozen", 0)
    refreshed = _kl_by_step(tiny_model_dir, tmp_path / "refresh", 2)
    assert frozen[0] == 0.0 and frozen[1] > 0 and frozen[2] > 0
    assert refreshed[0] == 0.0 and refreshed[1] > 0 and refreshed[2] == 0.0


# ---------------------------------------------------------------- ratio level and entropy


@pytest.mark.parametrize("preset,level", [("gspo", "sequence"), ("grpo", "token")])
def test_ratio_level_reaches_the_loss_through_the_trainer(tiny_model_dir, monkeypatch, preset, level):
    from grpokit.algo.losses import importance_ratio, policy_loss

    seen = []

    def spy(logprobs, old, advantages, mask, knobs, **kw):
        seen.append((importance_ratio(logprobs.detach(), old, mask, level=knobs.ratio), mask))
        return policy_loss(logprobs, old, advantages, mask, knobs, **kw)

    monkeypatch.setattr(update, "policy_loss", spy)
    session, rollouts, state = _session(tiny_model_dir, f"algo.preset={preset}", "algo.beta=0",
                                        "train.epochs_per_batch=2", "train.lr=1e-2")
    trainer.train_step(session, rollouts, state)
    half = len(seen) // 2
    for ratio, mask in seen[:half]:  # first pass: the policy is the sampling policy
        torch.testing.assert_close(ratio[mask], torch.ones(int(mask.sum())))
    spreads = []
    for ratio, mask in seen[half:]:
        for row, m in zip(ratio, mask):
            if m.sum() > 1:
                spreads.append((row[m].max() - row[m].min()).item())
    moved = max((r[m] - 1).abs().max().item() for r, m in seen[half:] if m.any())
    assert moved > 1e-4
    assert (max(spreads) == 0.0) == (level == "sequence")  # one ratio per sequence under GSPO


def test_entropy_bonus_changes_the_gradient_by_minus_coef_times_entropy_gradient(tiny_model_dir):
    coef = 0.3
    session, rollouts, state = _session(tiny_model_dir, "algo.beta=0")
    batch, _ = _collect(session, rollouts, state)
    plain = _grad(session, batch)
    session.cfg.algo.entropy_coef = coef
    with_bonus = _grad(session, batch)
    r = batch.rollout
    session.model.zero_grad(set_to_none=True)
    _, entropy = completion_logprobs(session.model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                     r.completion_mask, with_entropy=True, entropy_grad=True)
    aggregate(entropy, batch.loss_mask, mode="seq_mean_token_mean", num_sequences=8,
              num_tokens=int(batch.loss_mask.sum()), max_completion_length=8).backward()
    d_entropy = torch.cat([p.grad.reshape(-1) for p in session.model.parameters()])
    session.model.zero_grad(set_to_none=True)
    torch.testing.assert_close(with_bonus - plain, -coef * d_entropy, rtol=1e-4, atol=1e-6)
    assert d_entropy.abs().max() > 1e-4


# ---------------------------------------------------------------- rewards and aggregation


def test_process_rewards_drive_per_token_advantages(tiny_model_dir):
    session, rollouts, state = _session(tiny_model_dir, reward="[{name: family_steps}]")
    batch, _ = _collect(session, rollouts, state)
    n, t = batch.rollout.completion_ids.shape
    assert batch.advantages.shape == (n, t) and torch.isnan(batch.reward).all()
    expected = process_advantages(batch.scored.step_rewards, 4, t, eps=1e-6)
    assert torch.equal(batch.advantages, expected) and expected.abs().sum() > 0
    lengths = batch.rollout.completion_mask.sum(1).tolist()
    assert [s.ends for s in batch.scored.step_rewards] == [(0, max(k, 1) - 1) for k in lengths]
    assert trainer.update_policy(session, state, batch)["train/tokens"] > 0


def test_weighted_rewards_combine_and_are_reported_per_function(tiny_model_dir):
    session, rollouts, state = _session(
        tiny_model_dir, reward="[{name: family_len, weight: 0.5}, {name: family_parity, weight: 2.0}]")
    batch, metrics = trainer.train_step(session, rollouts, state)
    lengths = batch.rollout.completion_mask.sum(1).float()
    torch.testing.assert_close(batch.rewards[:, 0], lengths / 10)
    torch.testing.assert_close(batch.reward, 0.5 * lengths / 10 + 2.0 * (lengths % 2))
    assert metrics["reward/family_len"] == pytest.approx((lengths / 10).mean().item())
    assert metrics["reward/family_parity"] == pytest.approx((lengths % 2).mean().item())
    assert metrics["reward/mean"] == pytest.approx(batch.reward.mean().item())


@pytest.mark.parametrize("preset,per_token_weight", [
    ("dr_grpo", lambda lengths: torch.full_like(lengths, 1 / (8 * 8))),  # 1 / (N · L_max)
    ("grpo", lambda lengths: 1 / (8 * lengths.clamp(min=1))),  # 1 / (N · |o_i|)
])
def test_aggregation_weight_of_a_token_through_the_update(tiny_model_dir, preset, per_token_weight):
    # On-policy (ratio 1, nothing clipped) the gradient is −Σ_i w_i A_i Σ_t ∇logp_{i,t}: Dr. GRPO's
    # w_i = 1 / (N · L_max) is the same for every completion, GRPO's depends on its length.
    session, rollouts, state = _session(tiny_model_dir, f"algo.preset={preset}", "algo.beta=0")
    batch, _ = _collect(session, rollouts, state)
    r = batch.rollout
    lengths = r.completion_mask.sum(1).double()
    assert len(set(lengths.tolist())) > 1
    session.model.zero_grad(set_to_none=True)
    logprobs, _ = completion_logprobs(session.model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                      r.completion_mask)
    weight = (per_token_weight(lengths) * batch.advantages.double()).float()  # (N,)
    (-(weight.unsqueeze(1) * logprobs * batch.loss_mask).sum()).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in session.model.parameters()])
    session.model.zero_grad(set_to_none=True)
    torch.testing.assert_close(_grad(session, batch), expected, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- top-entropy tokens


def test_top_entropy_fraction_trains_only_the_highest_entropy_tokens(tiny_model_dir):
    import dataclasses

    from grpokit.algo.masks import top_entropy_mask
    from grpokit.training.logprobs import batched_logprobs

    session, rollouts, state = _session(tiny_model_dir, "algo.beta=0", "rollout.max_new_tokens=8")
    batch, _ = _collect(session, rollouts, state)
    _, entropy = batched_logprobs(session.model, batch.rollout, micro_batch_size=3,
                                  temperature=1.0, chunk_size=64, with_entropy=True)
    top = top_entropy_mask(entropy, batch.loss_mask, 0.5)
    assert 0 < top.sum() < batch.loss_mask.sum()
    selected = _grad(session, dataclasses.replace(batch, loss_mask=top))
    session.cfg = dataclasses.replace(session.cfg, algo=dataclasses.replace(
        session.cfg.algo, top_entropy_fraction=0.5))
    torch.testing.assert_close(_grad(session, batch), selected, rtol=1e-4, atol=1e-6)
    session.cfg = dataclasses.replace(session.cfg, algo=dataclasses.replace(
        session.cfg.algo, top_entropy_fraction=1.0))
    assert not torch.allclose(_grad(session, batch), selected, atol=1e-6)
