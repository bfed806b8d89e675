"""Advantages and reward combination, with numbers derived by hand in each test."""

import math

import pytest
import torch

from grpokit.algo.advantages import (
    combine_rewards,
    compute_advantages,
    process_advantages,
    tied_groups,
)
from grpokit.rewards.base import StepRewards

nan = float("nan")


def test_issue_example_one_correct_of_eight():
    # mean = 1/8; Bessel var = (7/8)^2 + 7*(1/8)^2 over 7 = (49/64 + 7/64)/7 = 1/8; std = 0.353553
    # A_0 = 0.875 / 0.353554 = 2.4749, A_j = -0.125 / 0.353554 = -0.3536
    adv = compute_advantages(torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0]), 8, eps=1e-6)
    std = math.sqrt(1 / 8)
    assert adv[0].item() == pytest.approx(0.875 / (std + 1e-6), abs=1e-6)
    assert round(adv[0].item(), 4) == 2.4749
    assert all(round(a, 4) == -0.3536 for a in adv[1:].tolist())


def test_combine_rewards_skips_none_terms_and_marks_unscorable():
    rewards = torch.tensor([[1.0, 0.5], [0.0, nan], [nan, nan]])
    combined = combine_rewards(rewards, [1.0, 0.2])
    assert combined[0].item() == pytest.approx(1.1)  # 1*1 + 0.2*0.5
    assert combined[1].item() == 0.0  # the None term is skipped, not counted as 0 * weight
    assert math.isnan(combined[2].item())


def test_combine_rewards_shape_error_names_shapes():
    with pytest.raises(ValueError, match="K = 2"):
        combine_rewards(torch.zeros(3, 3), [1.0, 1.0])


@pytest.mark.parametrize(
    "rewards, group_size, kwargs, expected",
    [
        # Dr. GRPO: mean only. mean(1,2,3,6) = 3
        ([1.0, 2.0, 3.0, 6.0], 4, dict(scale="none"), [-2.0, -1.0, 0.0, 3.0]),
        # RLOO: r_i - mean of the others: 1-(11/3), 2-(10/3), 3-(9/3), 6-(6/3)
        ([1.0, 2.0, 3.0, 6.0], 4, dict(estimator="rloo", scale="none"),
         [1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0]),
        # group z-score: mean 3, Bessel var (4+1+0+9)/3 = 14/3
        ([1.0, 2.0, 3.0, 6.0], 4, dict(scale="group", eps=0.0),
         [x / math.sqrt(14 / 3) for x in (-2.0, -1.0, 0.0, 3.0)]),
        # batch std: groups (0,2) and (4,8); means 1 and 6; batch values 0,2,4,8 mean 3.5,
        # Bessel var (12.25+2.25+0.25+20.25)/3 = 35/3
        ([0.0, 2.0, 4.0, 8.0], 2, dict(scale="batch", eps=0.0),
         [x / math.sqrt(35 / 3) for x in (-1.0, 1.0, -2.0, 2.0)]),
    ],
)
def test_advantage_modes(rewards, group_size, kwargs, expected):
    adv = compute_advantages(torch.tensor(rewards), group_size, **kwargs)
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_tied_group_is_exactly_zero_without_nan():
    # 0.1 * 3 / 3 != 0.1 in floating point: ties must still give exactly 0.
    adv = compute_advantages(torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.0]), 3)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    assert torch.isfinite(adv).all()
    assert tied_groups(torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.0]), 3).tolist() == [True, False]


def test_unscorable_member_is_excluded_and_gets_zero():
    # scorable 1, 0, 0: mean 1/3, Bessel var ((2/3)^2 + 2(1/3)^2)/2 = 1/3
    adv = compute_advantages(torch.tensor([1.0, nan, 0.0, 0.0]), 4, eps=0.0)
    s = math.sqrt(1 / 3)
    assert adv.tolist() == pytest.approx([(2 / 3) / s, 0.0, -(1 / 3) / s, -(1 / 3) / s], abs=1e-6)


def test_group_of_one_and_single_scorable_have_no_baseline():
    assert compute_advantages(torch.tensor([1.0, 0.0, 5.0]), 1).tolist() == [0.0, 0.0, 0.0]
    assert compute_advantages(torch.tensor([1.0, nan]), 2).tolist() == [0.0, 0.0]


def test_bad_group_size_and_knobs():
    with pytest.raises(ValueError, match="group_size=3"):
        compute_advantages(torch.zeros(4), 3)
    with pytest.raises(ValueError, match="scale must be one of"):
        compute_advantages(torch.zeros(4), 2, scale="std")


def test_process_advantages_sum_of_later_steps():
    # Group of 2. Step rewards: seq 0 -> (1.0 ends at 1), (0.0 ends at 3); seq 1 -> (0.5 ends at 2)
    # all three: mean 0.5, Bessel std sqrt((0.25+0.25+0)/2) = 0.5 -> normalized 1, -1, 0
    # seq 0: tokens 0,1 see steps ending at 1 and 3: 1 + -1 = 0; tokens 2,3 see -1.
    steps = [StepRewards((1.0, 0.0), (1, 3)), StepRewards((0.5,), (2,))]
    adv = process_advantages(steps, 2, 4, eps=0.0)
    assert adv.tolist() == [[0.0, 0.0, -1.0, -1.0], [0.0, 0.0, 0.0, 0.0]]


def test_process_advantages_unscorable_and_bad_index():
    steps = [StepRewards((1.0,), (0,)), None, StepRewards((0.0,), (1,)), None]
    adv = process_advantages(steps, 4, 2, eps=0.0)
    # values 1, 0: mean .5, std sqrt(.5); normalized ±0.7071
    assert adv[0].tolist() == pytest.approx([1 / math.sqrt(2), 0.0], abs=1e-6)
    assert adv[1].tolist() == [0.0, 0.0]
    assert adv[2].tolist() == pytest.approx([-1 / math.sqrt(2)] * 2, abs=1e-6)
    with pytest.raises(ValueError, match="outside"):
        process_advantages([StepRewards((1.0,), (5,)), StepRewards((0.0,), (0,))], 2, 2)
