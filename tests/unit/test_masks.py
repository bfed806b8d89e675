"""The tie rule, the loss-mask rule and top-entropy selection, with hand-derived cases."""

import pytest
import torch

from grpokit.algo.losses import LossKnobs
from grpokit.algo.masks import is_tied, loss_mask, top_entropy_mask

NAN = float("nan")


@pytest.mark.parametrize("reward, rule, expected", [
    # G = 3: [1, 1, 1] ties; [1, 0, 0] has spread; [0, nan, nan] has one scorable member
    ([1, 1, 1, 1, 0, 0, 0, NAN, NAN], "equal", [True, False, True]),
    # mean outside (0, 1): [1, 1, 1] mean 1 -> tied; [1, 0, 0] mean 1/3 -> not; [0] mean 0 -> tied
    ([1, 1, 1, 1, 0, 0, 0, NAN, NAN], "mean_outside", [True, False, True]),
    # [0.5, 0.5, 0.5] ties under "equal" but its mean 0.5 is inside (0, 1)
    ([0.5, 0.5, 0.5], "equal", [True]),
    ([0.5, 0.5, 0.5], "mean_outside", [False]),
    ([NAN, NAN, NAN], "mean_outside", [True]),
])
def test_tie_rules(reward, rule, expected):
    assert is_tied(torch.tensor(reward), 3, rule, (0.0, 1.0)).tolist() == expected


def test_unknown_tie_rule_is_named():
    with pytest.raises(ValueError, match="tie rule must be one of"):
        is_tied(torch.zeros(4), 2, "median")


COMPLETION = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]]).bool()  # (N=4, T=3)
TRUNCATED = torch.tensor([False, True, False, False])
TIED = torch.tensor([False, True])  # G = 2: the second group (rows 2, 3) ties


@pytest.mark.parametrize("exclude_tied, mask_truncated, included", [
    (False, False, [True, True, True, True]),  # the empty completion (row 3) still counts
    (True, False, [True, True, False, False]),
    (False, True, [True, False, True, True]),
    (True, True, [True, False, False, False]),
])
def test_loss_mask_rule(exclude_tied, mask_truncated, included):
    got, mask = loss_mask(COMPLETION, TRUNCATED, TIED, exclude_tied=exclude_tied,
                          mask_truncated=mask_truncated)
    assert got.tolist() == included
    assert torch.equal(mask, COMPLETION & torch.tensor(included).unsqueeze(1))


def test_loss_knobs_are_derived_from_named_values():
    knobs = LossKnobs.from_values({"ratio": "sequence", "clip_low": 1, "clip_high": "0.3",
                                   "dual_clip": None, "beta": 0, "max_completion_length": 8.0,
                                   "unrelated": 1})
    assert knobs == LossKnobs(ratio="sequence", clip_low=1.0, clip_high=0.3, beta=0.0,
                              max_completion_length=8)
    assert LossKnobs.from_values({"dual_clip": 3}).dual_clip == 3.0


def test_top_entropy_mask_keeps_the_highest_share():
    entropy = torch.tensor([[0.1, 0.9, 0.5, 7.0], [0.3, 0.8, 0.2, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]]).bool()  # 7.0 sits on padding: never chosen
    # six real tokens, fraction 0.5 -> the 3 highest: 0.9, 0.8, 0.5
    assert top_entropy_mask(entropy, mask, 0.5).tolist() == [[False, True, True, False],
                                                             [False, True, False, False]]
    # fraction 0.1 -> ceil(0.6) = 1 token
    assert top_entropy_mask(entropy, mask, 0.1).sum().item() == 1
    assert torch.equal(top_entropy_mask(entropy, mask, 1.0), mask)
