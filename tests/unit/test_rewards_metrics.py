"""Reward errors travel with the scored batch (selecting and joining groups keep them) and reach
the step metrics as reward_error_frac/<name>."""

import torch

from grpokit.rl.metrics import rollout_metrics
from grpokit.rollout.base import RolloutBatch
from grpokit.training.batch import ScoredBatch, TrainingBatch, concat, select_groups

B, G, T = 2, 2, 3


def _scored(errors):
    n = B * G
    rollout = RolloutBatch(
        prompt_ids=torch.ones(n, 2, dtype=torch.long), prompt_mask=torch.ones(n, 2, dtype=torch.bool),
        completion_ids=torch.ones(n, T, dtype=torch.long), completion_mask=torch.ones(n, T, dtype=torch.bool),
        finish_reason=["stop"] * n, group_index=torch.arange(B).repeat_interleave(G),
        completions=[""] * n, rows=[{"id": g} for g in range(B)])
    rewards = torch.tensor([[1.0, 0.5], [0.0, float("nan")], [1.0, float("nan")], [0.0, float("nan")]])
    return ScoredBatch(rollout, rewards, rewards[:, 0], None, errors)


ERRORS = torch.tensor([[False, False], [False, True], [False, True], [False, False]])


def test_select_and_concat_keep_the_error_mask():
    scored = _scored(ERRORS)
    assert select_groups(scored, [1]).reward_errors.tolist() == ERRORS[2:].tolist()
    joined = concat([select_groups(scored, [1]), select_groups(_scored(None), [0])], pad_token_id=0)
    assert joined.reward_errors.tolist() == ERRORS[2:].tolist() + [[False, False]] * 2


def test_error_fraction_per_function_in_the_step_metrics():
    batch = TrainingBatch(_scored(ERRORS), torch.zeros(B * G), torch.ones(B * G, T, dtype=torch.bool),
                          torch.ones(B * G, dtype=torch.bool))
    metrics = rollout_metrics(batch, ["math", "judge"])
    assert metrics["reward_error_frac/math"] == 0.0
    assert metrics["reward_error_frac/judge"] == 0.5  # 2 of 4 samples failed
    assert metrics["reward/math"] == 0.5 and metrics["reward/judge"] == 0.5  # 0.5 is the one scored
    no_mask = TrainingBatch(_scored(None), batch.advantages, batch.loss_mask, batch.included)
    assert rollout_metrics(no_mask, ["math", "judge"])["reward_error_frac/judge"] == 0.0
