"""The policy terms of `algo.loss` (CISPO, SAPO, GMPO), the GSPO-token ratio and the estimators
REINFORCE++, REINFORCE++-baseline (whiten) and GDPO: values and gradients worked out by hand
(docs/papers.md has the formulas), the registries, and a user's own loss through the trainer."""

from __future__ import annotations

import math

import pytest
import torch

from grpokit.algo import LossKnobs, compute_advantages, gdpo_advantages, policy_loss
from grpokit.algo.advantages import outcome_advantages, register_estimator
from grpokit.algo.surrogates import importance_ratio, register_loss


def _grad(knobs: LossKnobs, log_ratio: list[list[float]], adv, logp=None, mask=None):
    """(per-token loss, aggregated loss, d loss / d logp) with old = 0 and logp = log_ratio."""
    from grpokit.algo import per_token_loss

    lp = torch.tensor(log_ratio if logp is None else logp, dtype=torch.float32, requires_grad=True)
    old = lp.detach() - torch.tensor(log_ratio)
    mask = torch.ones_like(lp, dtype=torch.bool) if mask is None else torch.tensor(mask)
    adv = torch.tensor(adv, dtype=torch.float32)
    per_token = per_token_loss(lp, old, adv, mask, knobs)
    loss, _ = policy_loss(lp, old, adv, mask, knobs)
    loss.backward()
    return per_token.detach(), loss.detach(), lp.grad


def test_cispo_keeps_the_gradient_of_clipped_tokens_with_the_weight_held_at_the_cap():
    knobs = LossKnobs(loss="cispo", clip_low=1.0, clip_high=0.5, aggregation="token_mean")
    # ρ = 2 (cap 1.5) and ρ = 0.5 (no lower bound); logp = -0.5 and -1.0; A = 1
    per_token, loss, grad = _grad(knobs, [[math.log(2), math.log(0.5)]], [1.0],
                                  logp=[[-0.5, -1.0]])
    # p_t = -w·A·logp: -1.5·(-0.5) = 0.75, -0.5·(-1.0) = 0.5; token_mean over 2 tokens
    torch.testing.assert_close(per_token, torch.tensor([[0.75, 0.5]]))
    assert loss.item() == pytest.approx(0.625)
    torch.testing.assert_close(grad, torch.tensor([[-1.5 / 2, -0.5 / 2]]))
    clip = LossKnobs(loss="clip", clip_low=0.2, clip_high=0.5, aggregation="token_mean")
    assert _grad(clip, [[math.log(2), 0.0]], [1.0])[2][0, 0] == 0  # the clip cuts it off


def test_sapo_gate_is_the_policy_gradient_at_ratio_one_and_decays_smoothly():
    knobs = LossKnobs(loss="sapo", sapo_tau_pos=1.0, sapo_tau_neg=1.05, aggregation="token_mean")
    # token 0: ρ = 1, A = 2 -> gradient -A = -2; token 1: ρ = 1.5, A = 2, τ = 1:
    # z = 0.5, σ(z) = 0.6224593, σ(1 - σ) = 0.2350037 -> -A·4·σ(1-σ)·ρ = -2.8200445
    per_token, _, grad = _grad(knobs, [[0.0, math.log(1.5)]], [2.0])
    assert grad[0].tolist() == pytest.approx([-2.0 / 2, -2.8200445 / 2], rel=1e-6)
    # values -A·σ(z)·4/τ: -2·0.5·4 = -4 and -2·0.6224593·4 = -4.9796746
    assert per_token[0].tolist() == pytest.approx([-4.0, -4.9796746], rel=1e-6)
    # A = -1, ρ = 0.5, τ_neg = 1.05: z = -0.525, σ = 0.3716836, σ(1-σ) = 0.2335348
    per_token, _, grad = _grad(knobs, [[math.log(0.5)]], [-1.0])
    assert grad.item() == pytest.approx(4 * 0.2335348 * 0.5, rel=1e-5)
    assert per_token.item() == pytest.approx(0.3716836 * 4 / 1.05, rel=1e-6)


def test_gmpo_clips_log_ratios_on_the_advantage_side_and_averages_them_geometrically():
    knobs = LossKnobs(loss="gmpo", clip_low=0.4, clip_high=0.4)
    # A = 1: log ratios [0.6, -0.2] -> [0.4, -0.2], mean 0.1, g = e^0.1 = 1.1051709
    per_token, loss, grad = _grad(knobs, [[0.6, -0.2]], [1.0])
    torch.testing.assert_close(per_token, torch.full((1, 2), -1.1051709))
    assert loss.item() == pytest.approx(-1.1051709)
    # d/dlogp: token 0 clipped -> 0; token 1: -A·g/|o| = -0.5525855
    torch.testing.assert_close(grad, torch.tensor([[0.0, -0.5525855]]))
    # A = -1: [-0.6, 0.2] -> [-0.4, 0.2], g = e^-0.1 = 0.9048374; gradient +g/2 on token 1
    per_token, loss, grad = _grad(knobs, [[-0.6, 0.2]], [-1.0])
    assert loss.item() == pytest.approx(0.9048374)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.4524187]]))


def test_gmpo_refuses_per_token_advantages():
    with pytest.raises(ValueError, match="gmpo takes one advantage per completion"):
        _grad(LossKnobs(loss="gmpo"), [[0.1, 0.2]], [[1.0, 1.0]])


def test_gspo_token_has_the_sequence_ratio_value_and_each_token_its_own_gradient():
    lp = torch.tensor([[0.1, 0.3]], requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    ratio = importance_ratio(lp, torch.zeros(1, 2), mask, level="sequence_token")
    torch.testing.assert_close(ratio.detach(), torch.full((1, 2), math.exp(0.2)))
    ratio[0, 0].backward()  # d ρ_0 / d logp = [s, 0]: the own token only
    torch.testing.assert_close(lp.grad, torch.tensor([[math.exp(0.2), 0.0]]))
    # per-token advantages [1, -1]: gradients -A_t·s/|o|... per token; GSPO's cancel out
    knobs = dict(clip_low=0.5, clip_high=0.5, aggregation="seq_mean_token_mean")
    s = math.exp(0.2)
    grad = _grad(LossKnobs(ratio="sequence_token", **knobs), [[0.1, 0.3]], [[1.0, -1.0]])[2]
    torch.testing.assert_close(grad, torch.tensor([[-s / 2, s / 2]]))
    grad = _grad(LossKnobs(ratio="sequence", **knobs), [[0.1, 0.3]], [[1.0, -1.0]])[2]
    torch.testing.assert_close(grad, torch.zeros(1, 2), atol=1e-7, rtol=0)


def test_reinforce_pp_keeps_tied_groups_against_the_batch_mean():
    reward = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # group 2 ties
    # batch mean 0.75; Bessel std over 8: sqrt((6·0.0625 + 2·0.5625) / 7) = 0.4629100
    adv = compute_advantages(reward, 4, estimator="reinforce_pp", scale="batch", eps=0.0)
    expected = [0.25 / 0.4629100] * 2 + [-0.75 / 0.4629100] * 2 + [0.25 / 0.4629100] * 4
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)
    grpo = compute_advantages(reward, 4, estimator="grpo", scale="batch", eps=0.0)
    assert grpo[4:].tolist() == [0.0] * 4


def test_whiten_divides_the_group_centred_rewards_by_their_batch_std():
    reward = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, float("nan"), 1.0, 1.0, 1.0])
    # centred [.75 -.25 -.25 -.25 | .5 .5 -.5 -.5 | 0 0 0 (tied; nan out)]: mean 0; Bessel std
    # over the 11 scorable: sqrt((0.5625 + 3·0.0625 + 4·0.25) / 10) = sqrt(0.175) = 0.4183300
    adv = compute_advantages(reward, 4, estimator="grpo", scale="whiten", eps=0.0)
    s = math.sqrt(0.175)
    expected = [0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s, 0.5 / s, 0.5 / s, -0.5 / s, -0.5 / s,
                0.0, 0.0, 0.0, 0.0]
    assert adv.tolist() == pytest.approx(expected, rel=1e-6)


def test_gdpo_normalizes_each_reward_in_its_group_where_grpo_collapses_them():
    # correctness [1 0 0 0], format [0 1 1 0]: combined [1 1 1 0], GRPO gives the first three
    # the same advantage. GDPO: d1 = [1.5 -.5 -.5 -.5] (mean .25, std .5), d2 = ±0.8660254
    # (mean .5, std 1/√3); s = [0.6339746 0.3660254 0.3660254 -1.3660254], mean 0,
    # std sqrt(2.5358984 / 3) = 0.9194017
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    adv = gdpo_advantages(rewards, [1.0, 1.0], 4, eps=0.0)
    s = [0.6339746, 0.3660254, 0.3660254, -1.3660254]
    assert adv.tolist() == pytest.approx([v / 0.9194017 for v in s], rel=1e-6)
    grpo = outcome_advantages(rewards, [1.0, 1.0], 4, estimator="grpo", scale="group", eps=0.0)
    assert grpo.tolist() == pytest.approx([0.5, 0.5, 0.5, -1.5])


def test_gdpo_skips_an_unscored_term_and_zeroes_a_tied_group():
    nan = float("nan")
    rewards = torch.tensor([[1.0, nan], [0.0, 1.0], [1.0, 0.0], [0.0, nan],  # group 1
                            [1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])  # group 2 ties
    adv = gdpo_advantages(rewards, [1.0, 0.5], 4, eps=0.0)
    # group 1: d1 = [.866 -.866 .866 -.866] (std 1/√3); r2 scored twice [1, 0]: mean .5,
    # std 0.7071068 -> d2 = [-, .7071068, -.7071068, -]; s = [.8660254, -.8660254 + .3535534,
    # .8660254 - .3535534, -.8660254] over 8 with group 2 at 0: mean 0
    s = [0.8660254, -0.5124720, 0.5124720, -0.8660254, 0, 0, 0, 0]
    std = math.sqrt(sum(v * v for v in s) / 7)
    assert adv.tolist() == pytest.approx([v / std for v in s[:4]] + [0.0] * 4, rel=1e-6)


def test_a_registered_estimator_and_loss_are_used_by_name_and_checked():
    register_estimator("test_constant", lambda r, w, g, *, scale, eps: torch.ones(r.shape[0]))
    out = outcome_advantages(torch.zeros(4, 1), [1.0], 2, estimator="test_constant",
                             scale="group", eps=0.0)
    assert out.tolist() == [1.0] * 4
    register_estimator("test_bad", lambda r, w, g, *, scale, eps: torch.ones(2))
    with pytest.raises(ValueError, match="returned .* one advantage per completion, \\(4,\\)"):
        outcome_advantages(torch.zeros(4, 1), [1.0], 2, estimator="test_bad", scale="group",
                           eps=0.0)
    with pytest.raises(ValueError, match="built-in"):
        register_loss("clip", lambda *a, **k: None)
    with pytest.raises(ValueError, match="algo.loss='nope' is not a registered loss"):
        _grad(LossKnobs(loss="nope"), [[0.0]], [1.0])


def test_a_user_loss_is_exact_under_any_micro_batch_split():
    """A term never normalizes: the step's global counts do, so splitting changes nothing."""
    register_loss("test_linear", lambda lp, old, adv, mask, knobs, sequence_mask=None:
                  -(adv.unsqueeze(1) if adv.ndim == 1 else adv) * (lp - old).exp())
    knobs = LossKnobs(loss="test_linear", aggregation="seq_mean_token_mean")
    gen = torch.Generator().manual_seed(0)
    lp = torch.randn(4, 3, generator=gen).requires_grad_()
    old, adv = torch.randn(4, 3, generator=gen), torch.randn(4, generator=gen)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    whole, _ = policy_loss(lp, old, adv, mask, knobs)
    (g_whole,) = torch.autograd.grad(whole, lp)
    parts = sum(policy_loss(lp[i:i + 2], old[i:i + 2], adv[i:i + 2], mask[i:i + 2], knobs,
                            num_sequences=4, num_tokens=int(mask.sum()))[0] for i in (0, 2))
    (g_parts,) = torch.autograd.grad(parts, lp)
    torch.testing.assert_close(parts, whole)
    torch.testing.assert_close(g_parts, g_whole)
