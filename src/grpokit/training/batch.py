"""The batch contracts between stages (DESIGN.md §2): a scored batch, and the training batch
whose advantages and loss mask are always set; selecting and joining groups of a scored batch;
the loss mask of a scored batch (`loss_mask_of`) and the device its loss terms meet on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grpokit.algo.masks import is_tied, loss_mask
from grpokit.config import Config
from grpokit.rewards.base import StepRewards
from grpokit.rollout.base import RolloutBatch, is_truncated
from grpokit.rollout.batching import concat_rollouts


@dataclass
class ScoredBatch:
    """A RolloutBatch plus its rewards (DESIGN.md §2)."""

    rollout: RolloutBatch
    rewards: torch.Tensor  # (N, K) float, NaN = not applicable / could not score
    reward: torch.Tensor  # (N,) weighted combination, NaN = unscorable
    step_rewards: list[StepRewards | None] | None = None  # (N,) process rewards, if any
    reward_errors: torch.Tensor | None = None  # (N, K) bool: the function failed on the sample
    ghost: bool = False  # a stand-in a rank trains on with zero weight (fewer groups than ranks)

    def to(self, device: str | torch.device) -> "ScoredBatch":
        """A copy with every tensor on `device` (to send a batch to another rank)."""
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                 for k, v in vars(self.rollout).items()}
        errors = None if self.reward_errors is None else self.reward_errors.to(device)
        return ScoredBatch(RolloutBatch(**moved), self.rewards.to(device), self.reward.to(device),
                           self.step_rewards, errors, self.ghost)


@dataclass
class TrainingBatch:
    """A scored batch with what the policy update needs: advantages and the loss mask."""

    scored: ScoredBatch
    advantages: torch.Tensor  # (N,) or (N, T)
    loss_mask: torch.Tensor  # (N, T) bool: sampled completion tokens that enter the loss
    included: torch.Tensor  # (N,) bool: sequences counted by the loss normalizer
    cov_mask: torch.Tensor | None = None  # (N, T) bool: the tokens of algo.cov_control

    @property
    def rollout(self) -> RolloutBatch:
        return self.scored.rollout

    @property
    def rewards(self) -> torch.Tensor:
        return self.scored.rewards  # (N, K)

    @property
    def reward(self) -> torch.Tensor:
        return self.scored.reward  # (N,)


def select_groups(scored: ScoredBatch, groups: list[int]) -> ScoredBatch:
    """The sub-batch made of the given groups, renumbered 0..len(groups)-1."""
    g = scored.rollout.group_size
    idx = torch.tensor([i for grp in groups for i in range(grp * g, grp * g + g)], dtype=torch.long)
    r = scored.rollout
    rollout = RolloutBatch(
        prompt_ids=r.prompt_ids[idx], prompt_mask=r.prompt_mask[idx],
        completion_ids=r.completion_ids[idx], completion_mask=r.completion_mask[idx],
        finish_reason=[r.finish_reason[i] for i in idx.tolist()],
        group_index=torch.arange(len(groups)).repeat_interleave(g),
        completions=[r.completions[i] for i in idx.tolist()],
        sampling_logprobs=None if r.sampling_logprobs is None else r.sampling_logprobs[idx],
        rows=[r.rows[grp] for grp in groups], generated_mask=r.generated_mask[idx],
        episodes=None if r.episodes is None else [r.episodes[i] for i in idx.tolist()],
    )
    steps = None if scored.step_rewards is None else [scored.step_rewards[i] for i in idx.tolist()]
    errors = None if scored.reward_errors is None else scored.reward_errors[idx]
    return ScoredBatch(rollout, scored.rewards[idx], scored.reward[idx], steps, errors)


def concat(parts: list[ScoredBatch], pad_token_id: int) -> ScoredBatch:
    """Join scored batches of the same group size (prompts left-padded, completions right-padded)."""
    if len(parts) == 1:
        return parts[0]
    rollout = concat_rollouts([p.rollout for p in parts], pad_token_id)
    steps = None
    if any(p.step_rewards is not None for p in parts):
        steps = [s for p in parts for s in (p.step_rewards or [None] * len(p.reward))]
    errors = None
    if any(p.reward_errors is not None for p in parts):
        errors = torch.cat([p.reward_errors if p.reward_errors is not None
                            else torch.zeros(p.rewards.shape, dtype=torch.bool) for p in parts])
    return ScoredBatch(rollout, torch.cat([p.rewards for p in parts]),
                       torch.cat([p.reward for p in parts]), steps, errors)


def batch_device(scored: ScoredBatch) -> torch.device:
    """The rollout's device (the engine's, the policy's): the loss terms meet there."""
    return scored.rollout.completion_ids.device


def loss_mask_of(scored: ScoredBatch, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequences and tokens that enter the loss: the tie and truncation rules of `algo`."""
    a, r = cfg.algo, scored.rollout
    tied = is_tied(scored.reward, r.group_size, a.tie_rule, tuple(a.tie_interval))  # (B,)
    truncated = is_truncated(r.finish_reason)  # (N,) on the CPU: token budget or turn limit
    # Only sampled tokens are trained; tool output inserted by an environment is context.
    included, mask = loss_mask(r.generated_mask, truncated, tied, exclude_tied=a.exclude_tied,
                               mask_truncated=a.mask_truncated)
    if scored.ghost:  # a rank's stand-in: in the passes, out of the loss and the normalizers
        return torch.zeros_like(included), torch.zeros_like(mask)
    return included, mask
