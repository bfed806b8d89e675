"""Log-probs, ratios, clipping, KL and aggregation, with numbers derived by hand."""

import math

import pytest
import torch

from grpokit.algo.losses import (
    LossKnobs,
    aggregate,
    clipped_surrogate,
    importance_ratio,
    kl_penalty,
    per_token_loss,
    policy_loss,
)
from grpokit.algo.selective import logprobs_from_logits, selective_logprobs


def test_selective_logprobs_match_full_log_softmax_in_chunks():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, generator=g)
    weight = torch.randn(11, 5, generator=g)
    labels = torch.randint(0, 11, (7,), generator=g)
    full = torch.log_softmax(hidden @ weight.T / 0.7, dim=-1)
    expected = full.gather(1, labels[:, None]).squeeze(1)
    entropy = -(full.exp() * full).sum(-1)
    for chunk in (1, 3, 7, 100):
        lp, ent = selective_logprobs(hidden, weight, labels, temperature=0.7, chunk_size=chunk,
                                     with_entropy=True)
        assert torch.allclose(lp, expected, atol=1e-5)
        assert torch.allclose(ent, entropy, atol=1e-5)


def test_selective_logprobs_gradient_matches_unchunked():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(6, 4, generator=g, requires_grad=True)
    weight = torch.randn(9, 4, generator=g, requires_grad=True)
    labels = torch.randint(0, 9, (6,), generator=g)
    lp, _ = selective_logprobs(hidden, weight, labels, chunk_size=4)
    lp.sum().backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logprobs_from_logits(hidden @ weight.T, labels).sum().backward()
    assert torch.allclose(gh, hidden.grad, atol=1e-6)
    assert torch.allclose(gw, weight.grad, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_written_out_backward_equals_autograd(temperature):
    """The hand-written chunk backward against autograd through the full log-softmax, with a
    weighted sum of log-probs (any upstream gradient) and the entropy as a metric; fp32, as
    every log-prob here is."""
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(9, 6, generator=g, requires_grad=True)
    weight = torch.randn(13, 6, generator=g, requires_grad=True)
    labels = torch.randint(0, 13, (9,), generator=g)
    upstream = torch.randn(9, generator=g)
    lp, ent = selective_logprobs(hidden, weight, labels, temperature=temperature, chunk_size=4,
                                 with_entropy=True)
    assert not ent.requires_grad
    (lp * upstream).sum().backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    full = torch.log_softmax(hidden @ weight.T / temperature, dim=-1)
    (full.gather(1, labels[:, None]).squeeze(1) * upstream).sum().backward()
    assert torch.allclose(gh, hidden.grad, atol=1e-5) and torch.allclose(gw, weight.grad, atol=1e-5)
    assert torch.allclose(ent, -(full.exp() * full).sum(-1).detach(), atol=1e-5)


def test_entropy_gradient_when_the_loss_needs_it():
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(5, 4, generator=g, requires_grad=True)
    weight = torch.randn(7, 4, generator=g, requires_grad=True)
    labels = torch.randint(0, 7, (5,), generator=g)
    lp, ent = selective_logprobs(hidden, weight, labels, chunk_size=2, with_entropy=True,
                                 entropy_grad=True)
    (lp.sum() + 0.5 * ent.sum()).backward()
    gh = hidden.grad.clone()
    hidden.grad = None
    full = torch.log_softmax(hidden @ weight.T, dim=-1)
    (full.gather(1, labels[:, None]).sum() - 0.5 * (full.exp() * full).sum()).backward()
    assert torch.allclose(gh, hidden.grad, atol=1e-5)


def test_written_out_backward_under_bf16_autocast_matches_autograd():
    """Under autocast the projection runs in bf16 in both directions, as autograd's would."""
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(8, 16, generator=g, requires_grad=True)
    weight = torch.randn(32, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 32, (8,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, _ = selective_logprobs(hidden, weight, labels, chunk_size=3)
    lp.sum().backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = hidden @ weight.T
    logprobs_from_logits(logits, labels).sum().backward()
    assert gw.dtype == torch.float32
    assert torch.allclose(gh, hidden.grad, atol=2e-2) and torch.allclose(gw, weight.grad, atol=2e-2)


def test_logprobs_from_logits_by_hand():
    # logits (0, ln 3): probabilities 1/4, 3/4
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert logprobs_from_logits(logits, torch.tensor([1])).item() == pytest.approx(math.log(0.75))


def test_token_and_sequence_ratio():
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    old = torch.tensor([[-1.5, -2.0, 9.0]])  # the last position is padding
    mask = torch.tensor([[1, 1, 0]]).bool()
    tok = importance_ratio(logp, old, mask, level="token")
    assert tok[0].tolist() == pytest.approx([math.exp(0.5), 1.0, 1.0])
    seq = importance_ratio(logp, old, mask, level="sequence")
    assert seq[0].tolist() == pytest.approx([math.exp(0.25)] * 3)  # mean of (0.5, 0) over 2 tokens


def test_log_ratio_is_clamped_to_20():
    r = importance_ratio(torch.tensor([[0.0]]), torch.tensor([[-50.0]]), torch.ones(1, 1).bool())
    assert r.item() == pytest.approx(math.exp(20.0), rel=1e-6)


def test_sequence_ratio_gradient_flows_through_mean():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ratio = importance_ratio(logp, torch.tensor([[-1.0, -2.0]]), torch.ones(1, 2).bool(),
                             level="sequence")
    ratio[0, 0].backward()  # d exp(mean)/d logp_t = exp(0) * 1/2
    assert logp.grad.tolist() == [[0.5, 0.5]]


@pytest.mark.parametrize(
    "ratio, adv, dual, expected",
    [
        (1.1, 1.0, None, -1.1),  # inside the band
        (1.5, 1.0, None, -1.28),  # clipped above at 1 + 0.28
        (0.5, 1.0, None, -0.5),  # A > 0: the min keeps the smaller unclipped term
        (0.5, -1.0, None, 0.8),  # clipped below at 1 - 0.2: -(0.8 * -1)
        (1.5, -1.0, None, 1.5),  # A < 0 and ρ high: unclipped, pessimistic
        (5.0, -1.0, 3.0, 3.0),  # dual clip caps -ρA = 5 at -cA = 3
        (2.0, -1.0, 3.0, 2.0),  # below the cap
        (5.0, 1.0, 3.0, -1.28),  # dual clip does not touch A > 0
    ],
)
def test_clipped_surrogate_table(ratio, adv, dual, expected):
    loss = clipped_surrogate(torch.tensor([[ratio]]), torch.tensor([adv]), clip_low=0.2,
                             clip_high=0.28, dual_clip=dual)
    assert loss.item() == pytest.approx(expected)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]])  # d = -0.5
    assert kl_penalty(logp, ref, kind="k1").item() == pytest.approx(0.5)
    assert kl_penalty(logp, ref, kind="k2").item() == pytest.approx(0.125)
    assert kl_penalty(logp, ref, kind="k3").item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)
    assert kl_penalty(ref, ref, kind="k3").item() == 0.0
    with pytest.raises(ValueError, match="k1, k2, k3|k1', 'k2', 'k3"):
        kl_penalty(logp, ref, kind="k4")


def test_aggregations_with_uneven_lengths_and_an_empty_completion():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]]).bool()
    kw = dict(num_sequences=3, num_tokens=4, max_completion_length=5)
    # per-seq means 2, 4, 0 (empty) over 3 sequences
    assert aggregate(values, mask, mode="seq_mean_token_mean", **kw).item() == pytest.approx(2.0)
    # (1+2+3+4) / 4 tokens
    assert aggregate(values, mask, mode="token_mean", **kw).item() == pytest.approx(2.5)
    # 10 / (3 sequences * 5)
    assert aggregate(values, mask, mode="seq_sum_norm", **kw).item() == pytest.approx(10 / 15)


def test_seq_sum_norm_gradient_is_length_independent():
    # Dr. GRPO: equal per-token losses give every token the same gradient, whatever its length.
    logp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]]).bool()
    knobs = LossKnobs(aggregation="seq_sum_norm", max_completion_length=4)
    loss, _ = policy_loss(logp, logp.detach(), torch.tensor([1.0, 1.0]), mask, knobs)
    loss.backward()
    assert logp.grad[0, 0].item() == pytest.approx(logp.grad[1, 3].item())
    assert logp.grad[0, 0].item() == pytest.approx(-1 / 8)  # d(-ρA)/dlogp = -1, over 2 * 4


def test_per_token_loss_adds_kl_and_entropy_bonus():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -2.0]])
    ent = torch.tensor([[0.3, 0.7]])
    mask = torch.tensor([[1, 0]]).bool()
    knobs = LossKnobs(beta=0.1, kl="k2", entropy_coef=0.01)
    loss = per_token_loss(logp, logp, torch.tensor([2.0]), mask, knobs, ref_logprobs=ref,
                          entropy=ent)
    # -ρA + β d²/2 - c H = -2 + 0.1*0.125 - 0.003; masked token is 0
    assert loss[0].tolist() == pytest.approx([-2 + 0.0125 - 0.003, 0.0])
    with pytest.raises(ValueError, match="ref_logprobs"):
        per_token_loss(logp, logp, torch.tensor([2.0]), mask, knobs)


def test_policy_loss_metrics():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.0]]))
    old = torch.zeros(1, 3)
    mask = torch.tensor([[1, 1, 1]]).bool()
    _, m = policy_loss(logp, old, torch.tensor([[1.0, -1.0, 1.0]]), mask, LossKnobs())
    # token 0: ρ 1.5 > 1.2 with A > 0 (high); token 1: ρ 0.5 < 0.8 with A < 0 (low)
    assert m["clip_frac_high"] == pytest.approx(1 / 3)
    assert m["clip_frac_low"] == pytest.approx(1 / 3)
    assert m["clip_frac"] == pytest.approx(2 / 3)
    assert (m["ratio_min"], m["ratio_max"]) == pytest.approx((0.5, 1.5))
    assert m["ratio_mean"] == pytest.approx(1.0)
    assert m["tokens"] == 3.0


def test_on_policy_ratio_is_one_and_gradient_is_minus_advantage():
    logp = torch.tensor([[-0.3, -0.9]], requires_grad=True)
    knobs = LossKnobs(aggregation="token_mean")
    loss, _ = policy_loss(logp, logp.detach(), torch.tensor([0.5]), torch.ones(1, 2).bool(), knobs)
    loss.backward()
    assert loss.item() == pytest.approx(-0.5)
    assert logp.grad[0].tolist() == pytest.approx([-0.25, -0.25])


def test_sequence_ratio_runs_over_the_sampled_tokens_not_a_narrowed_loss_mask():
    """GSPO under top-entropy selection: the loss mask keeps token 0 of 2, the completion has 2
    sampled tokens. logp − old = [2 ln 1.5, 0], so the completion's ratio is
    exp((2 ln 1.5 + 0) / 2) = 1.5 on every token; over the narrowed mask it would be
    exp(2 ln 1.5) = 2.25. The gradient flows to both tokens: d s / d logp_t = s / 2 = 0.75."""
    old = torch.zeros(1, 2)
    logp = torch.tensor([[2 * math.log(1.5), 0.0]], requires_grad=True)
    loss_mask = torch.tensor([[True, False]])
    sampled = torch.tensor([[True, True]])
    ratio = importance_ratio(logp, old, loss_mask, level="sequence", sequence_mask=sampled)
    assert ratio.detach()[0].tolist() == pytest.approx([1.5, 1.5], abs=1e-6)
    assert importance_ratio(logp, old, loss_mask, level="sequence")[0, 0].item() == \
        pytest.approx(2.25)  # the default: the ratio over the given mask itself
    # Loss −ρA at the kept token with A = 1 (inside the clip: ε = 10), token_mean over 1 token.
    knobs = LossKnobs(ratio="sequence", clip_low=0.9, clip_high=10.0, aggregation="token_mean")
    loss, metrics = policy_loss(logp, old, torch.tensor([1.0]), loss_mask, knobs,
                                sequence_mask=sampled)
    assert loss.item() == pytest.approx(-1.5)
    assert metrics["ratio_mean"] == pytest.approx(1.5)
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([-0.75, -0.75], abs=1e-6)


def test_sequence_tis_weight_runs_over_the_sampled_tokens():
    """The issue's counter-example: old − sampler = [ln 3, ln 0.5] over 2 sampled tokens, the
    loss mask narrowed to token 1. The completion's ratio is 3 · 0.5 = 1.5 (TIS at C = 2 keeps
    it); summed over the narrowed mask alone it would be 0.5."""
    from grpokit.algo.correction import rollout_correction_weights

    old = torch.tensor([[math.log(3.0), math.log(0.5)]])
    sampler = torch.zeros(1, 2)
    loss_mask = torch.tensor([[False, True]])
    sampled = torch.tensor([[True, True]])
    weights, metrics = rollout_correction_weights(old, sampler, loss_mask, "tis", "sequence", 2.0,
                                                  sequence_mask=sampled)
    assert weights[0].tolist() == pytest.approx([1.5, 1.5])
    assert metrics["is_ratio_mean"] == pytest.approx(1.5)  # over the loss token
    assert metrics["mismatch_kl"] == pytest.approx(-math.log(0.5))  # −d at the loss token
    narrowed, _ = rollout_correction_weights(old, sampler, loss_mask, "tis", "sequence", 2.0)
    assert narrowed[0, 1].item() == pytest.approx(0.5)
