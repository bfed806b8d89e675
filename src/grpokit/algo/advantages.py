"""Reward combination and group-relative advantages (DESIGN.md §3).

Rewards arrive as an (N, K) matrix with NaN for "not applicable / could not score". Groups are
contiguous: completions g*G .. g*G+G-1 answer prompt g.
"""

from __future__ import annotations

from typing import Sequence

import torch

ESTIMATORS = ("grpo", "rloo")
SCALES = ("group", "batch", "none")


def combine_rewards(rewards: torch.Tensor, weights: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """r_i = Σ_k w_k r_ik over the non-NaN terms; NaN where every term is NaN (unscorable)."""
    rewards = rewards.to(torch.float64)  # (N, K)
    weights = torch.as_tensor(weights, dtype=torch.float64)  # (K,)
    if rewards.ndim != 2 or rewards.shape[1] != weights.shape[0]:
        raise ValueError(
            f"rewards must be (N, K) with K = {weights.shape[0]} weights, got {tuple(rewards.shape)}"
        )
    present = ~torch.isnan(rewards)  # (N, K)
    total = torch.where(present, rewards * weights, 0.0).sum(dim=1)  # (N,)
    return torch.where(present.any(dim=1), total, torch.nan)


def _grouped(reward: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 1 or reward.numel() % group_size:
        raise ValueError(
            f"{reward.numel()} rewards do not split into groups of group_size={group_size}"
        )
    return reward.to(torch.float64).view(-1, group_size)  # (B, G)


def _masked_mean_std(values: torch.Tensor, present: torch.Tensor, dim: int | None):
    """Mean and Bessel-corrected std over the present entries (std 0 where fewer than two)."""
    count = present.sum(dim=dim, keepdim=dim is not None).to(values.dtype)
    filled = torch.where(present, values, 0.0)
    mean = filled.sum(dim=dim, keepdim=dim is not None) / count.clamp(min=1)
    sq = torch.where(present, (values - mean) ** 2, 0.0).sum(dim=dim, keepdim=dim is not None)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return mean, std, count


def _baseline(rewards: torch.Tensor, present: torch.Tensor, estimator: str) -> torch.Tensor:
    """The per-completion baseline: group mean (GRPO) or leave-one-out mean (RLOO)."""
    mean, _, count = _masked_mean_std(rewards, present, dim=1)  # (B, 1)
    if estimator == "grpo":
        return mean.expand_as(rewards)
    total = mean * count  # (B, 1)
    return (total - torch.where(present, rewards, 0.0)) / (count - 1).clamp(min=1)  # (B, G)


def _divisor(reward: torch.Tensor, grouped: torch.Tensor, present: torch.Tensor, scale: str,
             eps: float) -> torch.Tensor:
    """The std the centred rewards are divided by, plus eps (1 for scale="none")."""
    if scale == "none":
        return torch.ones(1, dtype=grouped.dtype)
    if scale == "group":
        return _masked_mean_std(grouped, present, dim=1)[1] + eps  # (B, 1)
    flat_present = ~torch.isnan(reward.to(torch.float64))
    return _masked_mean_std(reward.to(torch.float64), flat_present, dim=None)[1] + eps


def compute_advantages(
    reward: torch.Tensor,
    group_size: int,
    *,
    estimator: str = "grpo",
    scale: str = "group",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Outcome advantages, one per completion (N,).

    The estimator picks the baseline (group mean, or leave-one-out mean for RLOO); the scale picks
    the divisor (group std, batch std, or none). Unscorable completions (NaN) get 0 and are left out
    of every statistic; a group with fewer than two scorable members gets 0; a tied group gets 0
    exactly because its centred rewards are exactly 0.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    grouped = _grouped(reward, group_size)  # (B, G)
    present = ~torch.isnan(grouped)  # (B, G)
    centred = grouped - _baseline(grouped, present, estimator)  # (B, G)
    advantages = centred / _divisor(reward, grouped, present, scale, eps)  # (B, G)
    # Tied groups are zeroed explicitly: a float mean of equal values need not equal them exactly.
    informative = ~tied_groups(reward, group_size).unsqueeze(1)  # (B, 1)
    advantages = torch.where(present & informative, advantages, 0.0)
    return advantages.view(-1).to(torch.float32)  # (N,)


def tied_groups(reward: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) bool: groups whose scorable rewards all tie (or with < 2 scorable): no learning signal."""
    grouped = _grouped(reward, group_size)  # (B, G)
    present = ~torch.isnan(grouped)
    lo = torch.where(present, grouped, torch.inf).min(dim=1).values
    hi = torch.where(present, grouped, -torch.inf).max(dim=1).values
    return (present.sum(dim=1) < 2) | (lo == hi)


def process_advantages(step_rewards, group_size: int, num_tokens: int, *,
                       eps: float = 1e-6) -> torch.Tensor:
    """Process supervision (DeepSeekMath §4.1.3): per-token advantages (N, T).

    All step rewards of a group are normalized by their mean and Bessel std (+ eps); the advantage
    of token t is the sum of the normalized rewards of the steps that end at or after t.
    A completion with no step rewards (None) is unscorable: its advantages are 0.
    """
    if len(step_rewards) % group_size:
        raise ValueError(f"{len(step_rewards)} completions do not split into groups of {group_size}")
    advantages = torch.zeros(len(step_rewards), num_tokens, dtype=torch.float64)  # (N, T)
    for start in range(0, len(step_rewards), group_size):
        members = [(i, s) for i, s in enumerate(step_rewards[start:start + group_size], start)
                   if s is not None and len(s.rewards) > 0]
        values = torch.tensor([r for _, s in members for r in s.rewards], dtype=torch.float64)
        if values.numel() < 2 or bool((values == values[0]).all()):
            continue  # no baseline, or tied: no signal
        mean, std = values.mean(), values.std(correction=1)
        for i, steps in members:
            for r, end in zip(steps.rewards, steps.ends):
                if not 0 <= end < num_tokens:
                    raise ValueError(f"completion {i}: step end index {end} is outside 0..{num_tokens - 1}")
                advantages[i, : end + 1] += (r - mean) / (std + eps)
    return advantages.to(torch.float32)


def batch_advantages(reward: torch.Tensor, step_rewards, group_size: int, num_tokens: int, *,
                     estimator: str, scale: str, eps: float) -> torch.Tensor:
    """The advantages a batch trains on: outcome (N,), or, when a reward function returned step
    rewards, process advantages (N, T) plus the outcome advantage broadcast over the tokens
    (DeepSeekMath §4.1.3). With step rewards alone (every outcome NaN) the outcome term is 0."""
    outcome = compute_advantages(reward, group_size, estimator=estimator, scale=scale, eps=eps)
    if step_rewards is None:
        return outcome  # (N,)
    process = process_advantages(step_rewards, group_size, num_tokens, eps=eps)  # (N, T)
    if torch.isnan(reward).all():
        return process
    return process + outcome.unsqueeze(1)  # (N, T)
