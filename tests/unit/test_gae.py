"""GAE, whitening and the clipped value loss (algo/gae.py), against numbers derived by hand."""

import pytest
import torch

from grpokit.algo.gae import gae, outcome_token_rewards, value_loss, whiten

MASK = torch.tensor([[True, True, True], [True, True, False]])
VALUES = torch.tensor([[0.5, 0.2, 0.4], [0.3, 0.1, 9.0]])  # 9.0 sits on padding: never read
REWARD = torch.tensor([1.0, 0.0])


def test_outcome_reward_lands_on_the_last_token():
    assert outcome_token_rewards(torch.tensor([1.0, 2.0]), MASK).tolist() == \
        [[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]]


def test_gae_by_hand():
    # γ = 0.9, λ = 0.8, γλ = 0.72. Row 0 (length 3, R = 1):
    #   δ2 = 1 + 0 - 0.4 = 0.6                 A2 = 0.6
    #   δ1 = 0 + 0.9 * 0.4 - 0.2 = 0.16        A1 = 0.16 + 0.72 * 0.6 = 0.592
    #   δ0 = 0 + 0.9 * 0.2 - 0.5 = -0.32       A0 = -0.32 + 0.72 * 0.592 = 0.10624
    # Row 1 (length 2, R = 0; the state after token 1 is terminal):
    #   δ1 = 0 - 0.1 = -0.1                    A1 = -0.1
    #   δ0 = 0.9 * 0.1 - 0.3 = -0.21           A0 = -0.21 + 0.72 * (-0.1) = -0.282
    # Returns G = A + V.
    adv, ret = gae(outcome_token_rewards(REWARD, MASK), VALUES, MASK, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.10624, 0.592, 0.6], [-0.282, -0.1, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.60624, 0.792, 1.0], [0.018, 0.0, 0.0]]))


def test_gae_limits_monte_carlo_and_td():
    rewards = outcome_token_rewards(REWARD, MASK)
    # λ = 1, γ = 1: A_t = R - V_t.
    adv, _ = gae(rewards, VALUES, MASK, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.8, 0.6], [-0.3, -0.1, 0.0]]))
    # λ = 0, γ = 1: A_t = r_t + V_{t+1} - V_t.
    adv, _ = gae(rewards, VALUES, MASK, gamma=1.0, lam=0.0)
    torch.testing.assert_close(adv, torch.tensor([[-0.3, 0.2, 0.6], [-0.2, -0.1, 0.0]]))


def test_whiten_over_the_mask():
    # Entries 1, 2, 3 (the 9 is padding): mean 2, population std sqrt(2/3).
    mask = torch.tensor([[True, True], [True, False]])
    out = whiten(torch.tensor([[1.0, 2.0], [3.0, 9.0]]), mask)
    s = (2 / 3) ** 0.5
    torch.testing.assert_close(out, torch.tensor([[-1 / s, 0.0], [1 / s, 0.0]]))


def test_value_loss_by_hand():
    # V = (1.0, 0.0), V_old = (0.5, 0.5), G = (2.0, 0.0), clip 0.2:
    #   token 0: V_clip = 0.7; ½ max((1-2)², (0.7-2)²) = ½ · 1.69 = 0.845 (the clipped term)
    #   token 1: V_clip = 0.3; ½ max(0², 0.3²) = ½ · 0.09 = 0.045 (the clipped term)
    # over 2 tokens: (0.845 + 0.045) / 2 = 0.445; unclipped: (0.5 + 0) / 2 = 0.25.
    values = torch.tensor([[1.0, 0.0]], requires_grad=True)
    old, ret = torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, metrics = value_loss(values, old, ret, mask, clip=0.2, num_tokens=2)
    assert loss.item() == pytest.approx(0.445) and metrics["value_clip_frac"] == 1.0
    loss.backward()
    assert values.grad.tolist() == [[0.0, 0.0]]  # the clipped terms are flat in V
    loss, metrics = value_loss(values, old, ret, mask, clip=None, num_tokens=2)
    assert loss.item() == pytest.approx(0.25) and metrics["value_clip_frac"] == 0.0
    # Over 4 tokens of a step (micro-batches add up): half the value.
    assert value_loss(values, old, ret, mask, clip=None, num_tokens=4)[0].item() == \
        pytest.approx(0.125)


def test_value_loss_at_the_clip_boundary_counts_no_clipping():
    # Dyadic numbers, so every step below is exact in float32. V_old = 0.5, clip 0.25:
    #   token 0: V = 0.75, V − V_old = +0.25 = +clip exactly: V_clip = 0.5 + 0.25 = 0.75 = V
    #   token 1: V = 0.25, V − V_old = −0.25 = −clip exactly: V_clip = 0.25 = V
    #   token 2: V = 0.625, inside the band:                  V_clip = V
    # So (V_clip − G)² = (V − G)² on every token: the clipped term never wins (a tie is not a
    # clip), value_clip_frac is 0 and the loss is the plain ½ (V − G)²: with G = 1,
    # ½ (0.0625 + 0.5625 + 0.140625) / 3 = 0.765625 / 6 = 0.127604...
    # A `>=` in place of `>` would count all three tied tokens as clipped (frac 1).
    values = torch.tensor([[0.75, 0.25, 0.625]])
    old, ret = torch.full((1, 3), 0.5), torch.ones(1, 3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, metrics = value_loss(values, old, ret, mask, clip=0.25, num_tokens=3)
    assert metrics["value_clip_frac"] == 0.0
    assert loss.item() == pytest.approx(0.765625 / 6)
    # Just past the boundary, V − V_old = 0.25 + 2⁻⁶: V = 0.765625, V_clip = 0.75, and with G = 1
    # (0.75 − 1)² = 0.0625 > (0.765625 − 1)² = 0.054931640625: the clipped term wins (frac 1).
    beyond = torch.tensor([[0.765625]])
    _, m = value_loss(beyond, torch.full((1, 1), 0.5), torch.ones(1, 1),
                      torch.ones(1, 1, dtype=torch.bool), clip=0.25, num_tokens=1)
    assert m["value_clip_frac"] == 1.0


def test_empty_completion_gets_no_reward_and_no_advantage():
    # A row with no completion token (length 0) has nowhere to put its reward: its row stays 0.
    # (Were rows of length 0 selected too, lengths − 1 = −1 would drop the reward on the last
    # column, a padding position.)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    rewards = outcome_token_rewards(torch.tensor([1.0, 5.0]), mask)
    assert rewards.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    adv, ret = gae(rewards, torch.zeros(2, 3), mask, gamma=1.0, lam=1.0)
    assert adv.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]] and ret.tolist() == adv.tolist()


def test_whiten_two_entries_is_plus_minus_one():
    # Two entries are enough to whiten: 1 and 3 have mean 2 and population std 1, so −1 and +1
    # (up to eps); one entry alone has no spread and gives 0.
    mask = torch.tensor([[True, True, False]])
    out = whiten(torch.tensor([[1.0, 3.0, 7.0]]), mask)
    torch.testing.assert_close(out, torch.tensor([[-1.0, 1.0, 0.0]]))
    assert whiten(torch.tensor([[4.0, 7.0]]), torch.tensor([[True, False]])).tolist() == \
        [[0.0, 0.0]]
