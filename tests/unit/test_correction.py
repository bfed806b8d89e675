"""Train–inference mismatch correction (algo/correction.py): TIS / MIS weights, the mismatch
metrics and their effect on the loss, with numbers derived by hand."""

import math

import pytest
import torch

from grpokit.algo.correction import MISMATCH_METRICS, rollout_correction_weights
from grpokit.algo.losses import LossKnobs, kl_penalty, per_token_loss, policy_loss
from grpokit.config import ConfigError, load_config, to_dict
from grpokit.rl.metrics import reduce_metrics

# Three completion tokens with old − sampler = log 3, 0, log 0.5, and a padded fourth position
# whose sampler log-prob is garbage (-inf); C = 2 throughout unless said otherwise.
OLD = torch.tensor([[-1.0, -2.0, -0.5, -0.7]])  # (1, 4)
SAMPLER = OLD - torch.tensor([[math.log(3.0), 0.0, math.log(0.5), 0.0]])  # (1, 4)
SAMPLER[0, 3] = -math.inf
MASK = torch.tensor([[1, 1, 1, 0]]).bool()  # (1, 4)


def _weights(mode, level="token", threshold=2.0):
    return rollout_correction_weights(OLD, SAMPLER, MASK, mode, level, threshold)


def test_token_weights_by_hand():
    # ρ = 3, 1, 0.5: tis min(ρ, 2) = 2, 1, 0.5; mis keeps ρ ≤ 2 and drops the 3 to 0
    tis, _ = _weights("tis")
    mis, _ = _weights("mis")
    assert tis[0, :3].tolist() == pytest.approx([2.0, 1.0, 0.5])
    assert mis[0, :3].tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert _weights("none")[0] is None
    assert not tis.requires_grad


def test_sequence_weights_by_hand():
    # Σ_t (old − sampler) = log 3 + 0 + log 0.5 = log 1.5: ρ_seq = 1.5 for every token
    for mode in ("tis", "mis"):
        weights, metrics = _weights(mode, "sequence")
        assert weights[0, :3].tolist() == pytest.approx([1.5] * 3)
        assert metrics["is_clipped_frac"] == 0.0
    # with C = 1.2 the whole sequence is truncated to 1.2 (tis) or dropped (mis)
    assert _weights("tis", "sequence", 1.2)[0][0, :3].tolist() == pytest.approx([1.2] * 3)
    assert _weights("mis", "sequence", 1.2)[0][0, :3].tolist() == [0.0] * 3


def test_metrics_by_hand():
    _, metrics = _weights("tis")
    assert set(metrics) == set(MISMATCH_METRICS)
    # k1 = mean(sampler − old) = −(log 3 + 0 + log 0.5)/3 = −log(1.5)/3
    assert metrics["mismatch_kl"] == pytest.approx(-math.log(1.5) / 3)
    # k3 = e^d − d − 1: (3 − log 3 − 1) + 0 + (0.5 − log 0.5 − 1) = 1.5 − log 1.5, over 3
    assert metrics["mismatch_k3"] == pytest.approx((1.5 - math.log(1.5)) / 3)
    assert (metrics["is_ratio_mean"], metrics["is_ratio_max"], metrics["is_ratio_min"]) == \
        pytest.approx((1.5, 3.0, 0.5))
    assert metrics["is_clipped_frac"] == pytest.approx(1 / 3)  # the token with ρ = 3
    assert _weights("mis")[1]["is_clipped_frac"] == pytest.approx(1 / 3)
    assert _weights("none")[1]["is_clipped_frac"] == 0.0  # nothing truncated or masked
    sequence = _weights("tis", "sequence")[1]
    assert sequence["is_ratio_max"] == pytest.approx(1.5)
    assert sequence["mismatch_kl"] == pytest.approx(metrics["mismatch_kl"])  # always per token


def test_without_sampler_logprobs_nothing_is_computed():
    assert rollout_correction_weights(OLD, None, MASK) == (None, {})
    logp = OLD.clone()
    _, plain = policy_loss(logp, OLD, torch.tensor([1.0]), MASK, LossKnobs())
    _, measured = policy_loss(logp, OLD, torch.tensor([1.0]), MASK, LossKnobs(),
                              sampler_logprobs=SAMPLER)
    assert not set(MISMATCH_METRICS) & set(plain)
    assert set(MISMATCH_METRICS) <= set(measured)
    assert {k: measured[k] for k in plain} == plain


@pytest.mark.parametrize("mode", ["tis", "mis"])
def test_tis_or_mis_without_sampler_logprobs_is_an_error(mode):
    with pytest.raises(ValueError, match="rollout_correction"):
        policy_loss(OLD.clone(), OLD, torch.tensor([1.0]), MASK,
                    LossKnobs(rollout_correction=mode))


def _on_policy_loss(knobs, sampler=SAMPLER, **kwargs):
    """Loss and d loss / d logp for A = 1 with old = logp.detach(), as the trainer's μ = 1 step."""
    logp = OLD.clone().requires_grad_(True)  # (1, 4)
    loss, metrics = policy_loss(logp, logp.detach(), torch.tensor([1.0]), MASK, knobs,
                                sampler_logprobs=sampler, **kwargs)
    loss.backward()
    return loss, logp.grad, metrics


def test_none_is_bitwise_the_loss_without_correction():
    knobs = LossKnobs(beta=0.04, aggregation="token_mean")
    ref = OLD + 0.3
    loss, grad, _ = _on_policy_loss(knobs, sampler=None, ref_logprobs=ref)
    again, grad_again, _ = _on_policy_loss(LossKnobs(beta=0.04, aggregation="token_mean",
                                                     rollout_correction="none"),
                                           ref_logprobs=ref)
    assert torch.equal(loss, again) and torch.equal(grad, grad_again)


def test_tis_gradient_is_the_weighted_gradient():
    # ρ_PPO = 1 on-policy: l = −A = −1 per token, token_mean over 3 tokens, dl/dlogp = −1/3;
    # with w = 2, 1, 0.5: loss = −3.5/3 and gradient −w/3
    knobs = LossKnobs(aggregation="token_mean")
    loss, grad, _ = _on_policy_loss(knobs, sampler=None)
    tis_loss, tis_grad, _ = _on_policy_loss(LossKnobs(aggregation="token_mean",
                                                      rollout_correction="tis"))
    w = torch.tensor([[2.0, 1.0, 0.5, 0.0]])
    assert tis_loss.item() == pytest.approx(-3.5 / 3)
    assert torch.allclose(tis_grad, w * grad)
    assert tis_grad[0].tolist() == pytest.approx([-2 / 3, -1 / 3, -1 / 6, 0.0])


def test_mis_masked_token_has_exactly_zero_policy_gradient_and_keeps_the_normalizer():
    loss, grad, metrics = _on_policy_loss(LossKnobs(aggregation="token_mean",
                                                    rollout_correction="mis"))
    assert grad[0, 0].item() == 0.0  # exactly, not approximately
    assert grad[0, 1:3].tolist() == pytest.approx([-1 / 3, -1 / 6])
    # (0 + 1 + 0.5)·(−1) over the 3 loss tokens, not over the 2 that kept a weight
    assert loss.item() == pytest.approx(-0.5)
    assert metrics["is_clipped_frac"] == pytest.approx(1 / 3)


def test_weights_leave_the_kl_penalty_and_the_entropy_bonus_alone():
    ref, entropy = OLD + 0.3, torch.full_like(OLD, 0.8)  # (1, 4)
    knobs = LossKnobs(beta=0.1, entropy_coef=0.01, rollout_correction="mis")
    weights, _ = rollout_correction_weights(OLD, SAMPLER, MASK, "mis")
    per_token = per_token_loss(OLD, OLD, torch.tensor([1.0]), MASK, knobs, ref_logprobs=ref,
                               entropy=entropy, correction=weights)
    kl = kl_penalty(OLD, ref, kind="k3")  # (1, 4)
    # token 0 is masked by MIS: only β·KL − coef·entropy is left; token 2 has w = 0.5 on −A
    assert per_token[0, 0].item() == pytest.approx(0.1 * kl[0, 0].item() - 0.008)
    assert per_token[0, 2].item() == pytest.approx(-0.5 + 0.1 * kl[0, 2].item() - 0.008)
    assert per_token[0, 3].item() == 0.0


N, T = 6, 5
SPLIT_MASK = torch.tensor([
    [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0],
    [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0],
]).bool()  # (N, T): uneven lengths and one empty completion


def _split_batch():
    gen = torch.Generator().manual_seed(0)
    base = -0.3 - 2 * torch.rand(N, T, generator=gen, dtype=torch.float64)  # (N, T)
    return {"base": base,
            "features": torch.randn(N, T, generator=gen, dtype=torch.float64),  # (N, T)
            "sampler": base + 1.6 * (torch.rand(N, T, generator=gen, dtype=torch.float64) - 0.5),
            "ref": base + 0.4 * (torch.rand(N, T, generator=gen, dtype=torch.float64) - 0.5),
            "advantages": torch.tensor([1.2, -0.4, 0.0, -0.9, 0.7, -0.6], dtype=torch.float64)}


def _theta_step(batch, rows, knobs, theta, **counts):
    """A micro-batch of `rows` on-policy (old = logp.detach()); d loss / d θ accumulates."""
    logp = batch["base"][rows] + 0.1 * batch["features"][rows] * theta  # (n, T)
    loss, metrics = policy_loss(logp, logp.detach(), batch["advantages"][rows], SPLIT_MASK[rows],
                                knobs, ref_logprobs=batch["ref"][rows],
                                sampler_logprobs=batch["sampler"][rows], **counts)
    loss.backward()
    return loss.item(), metrics


@pytest.mark.parametrize("mode", ["tis", "mis"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean"])
def test_micro_batch_split_keeps_loss_gradient_and_metrics(mode, level, aggregation):
    batch = _split_batch()
    knobs = LossKnobs(aggregation=aggregation, beta=0.04, rollout_correction=mode,
                      rollout_correction_level=level, rollout_correction_threshold=1.5)
    full = torch.full((T,), 0.5, dtype=torch.float64, requires_grad=True)
    loss, metrics = _theta_step(batch, list(range(N)), knobs, full)
    assert 0 < metrics["is_clipped_frac"] < 1  # some tokens truncated or masked, not all
    split = torch.full((T,), 0.5, dtype=torch.float64, requires_grad=True)
    counts = {"num_sequences": N, "num_tokens": int(SPLIT_MASK.sum())}
    parts = [_theta_step(batch, rows, knobs, split, **counts) for rows in ([0, 1], [2], [3, 4, 5])]
    assert sum(part for part, _ in parts) == pytest.approx(loss, abs=1e-6)  # fp32 math
    assert torch.allclose(split.grad, full.grad, atol=1e-6)
    reduced = reduce_metrics([m for _, m in parts])
    for name in MISMATCH_METRICS:
        assert reduced[name] == pytest.approx(metrics[name], abs=1e-6), name


def test_config_knobs_reach_the_loss_and_in_process_engines_are_allowed():
    cfg = load_config(overrides=["algo.rollout_correction=mis", "rollout.engine=generate",
                                 "algo.rollout_correction_level=sequence",
                                 "algo.rollout_correction_threshold=3"])
    knobs = LossKnobs.from_values(to_dict(cfg.algo))
    assert (knobs.rollout_correction, knobs.rollout_correction_level,
            knobs.rollout_correction_threshold) == ("mis", "sequence", 3.0)
    default = LossKnobs.from_values(to_dict(load_config().algo))
    assert (default.rollout_correction, default.rollout_correction_level,
            default.rollout_correction_threshold) == ("none", "token", 2.0)


@pytest.mark.parametrize("override, message", [
    ("algo.rollout_correction=is", "valid values: 'none', 'tis', 'mis'"),
    ("algo.rollout_correction_level=batch", "valid values: 'token', 'sequence'"),
    ("algo.rollout_correction_threshold=1.0", "rollout_correction_threshold must be a finite"),
    ("algo.rollout_correction_threshold=.inf", "rollout_correction_threshold"),
])
def test_invalid_correction_knobs_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


# ---------------------------------------------------------------- ρ exactly at C


def _at_boundary(level, log_ratios):
    """(old, sampler, mask, C) with old − sampler = `log_ratios` on one row, and C the largest ρ
    of the level as the code computes it (read back from the metrics, so ρ = C bit for bit
    whatever the platform's exp rounds to)."""
    old = torch.full((1, len(log_ratios)), -1.0)  # (1, T)
    sampler = old - torch.tensor([log_ratios])  # (1, T)
    mask = torch.ones_like(old, dtype=torch.bool)
    _, metrics = rollout_correction_weights(old, sampler, mask, mode="none", level=level)
    return old, sampler, mask, metrics["is_ratio_max"]


@pytest.mark.parametrize("mode", ["tis", "mis"])
def test_token_ratio_exactly_at_the_threshold_is_kept_whole(mode):
    # ρ = 2, 1, 0.5 and C = the first ρ (= 2): min(2, C) = 2 for TIS, and ρ ≤ C keeps it for MIS,
    # so w = ρ on every token and nothing counts as truncated or masked. A `>=` in place of `>`
    # masks the first token under MIS (w = 0) and counts it under both (is_clipped_frac 1/3).
    old, sampler, mask, c = _at_boundary("token", [math.log(2.0), 0.0, math.log(0.5)])
    assert c == pytest.approx(2.0)
    weights, metrics = rollout_correction_weights(old, sampler, mask, mode=mode, level="token",
                                                  threshold=c)
    assert weights[0].tolist() == pytest.approx([2.0, 1.0, 0.5])
    assert weights[0, 0].item() == c  # exactly ρ: neither truncated nor masked
    assert metrics["is_clipped_frac"] == 0.0
    # C one float32 step below ρ: now the token is over the threshold.
    below = torch.nextafter(torch.tensor(c), torch.tensor(0.0)).item()
    weights, metrics = rollout_correction_weights(old, sampler, mask, mode=mode, level="token",
                                                  threshold=below)
    assert weights[0, 0].item() == (below if mode == "tis" else 0.0)
    assert metrics["is_clipped_frac"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("mode", ["tis", "mis"])
def test_sequence_ratio_exactly_at_the_threshold_is_kept_whole(mode):
    # Σ_t (old − sampler) = log 4 + log 0.5 = log 2: ρ_seq = 2 on both tokens, and C = ρ_seq:
    # every token keeps w = ρ_seq; `>=` would truncate (TIS: frac 1) or drop (MIS: w = 0) all.
    old, sampler, mask, c = _at_boundary("sequence", [math.log(4.0), math.log(0.5)])
    assert c == pytest.approx(2.0)
    weights, metrics = rollout_correction_weights(old, sampler, mask, mode=mode,
                                                  level="sequence", threshold=c)
    assert weights[0].tolist() == [c, c]
    assert metrics["is_clipped_frac"] == 0.0
