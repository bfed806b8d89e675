"""Reward combination and group-relative advantages (DESIGN.md §3).

Rewards arrive as an (N, K) matrix with NaN for "not applicable / could not score". Groups are
contiguous: completions g*G .. g*G+G-1 answer prompt g.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

SCALES = ("group", "batch", "whiten", "none")
GROUP_BASELINES = ("grpo", "rloo")
"""The estimators whose tied groups get exactly 0 (their centred rewards are all 0)."""


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
    """The per-completion baseline: group mean (GRPO), leave-one-out mean (RLOO), or the mean
    over the whole batch (REINFORCE++)."""
    if estimator == "reinforce_pp":
        return _masked_mean_std(rewards, present, dim=None)[0].expand_as(rewards)
    mean, _, count = _masked_mean_std(rewards, present, dim=1)  # (B, 1)
    if estimator == "grpo":
        return mean.expand_as(rewards)
    total = mean * count  # (B, 1)
    return (total - torch.where(present, rewards, 0.0)) / (count - 1).clamp(min=1)  # (B, G)


def _scaled(centred: torch.Tensor, grouped: torch.Tensor, present: torch.Tensor, scale: str,
            eps: float) -> torch.Tensor:
    """The centred rewards (B, G) divided by the std of `scale` plus eps: of the group's rewards,
    of the batch's rewards, or (whiten: REINFORCE++-baseline) re-centred on and divided by the
    batch's own mean and std of the centred rewards; none leaves them as they are."""
    if scale == "none":
        return centred
    if scale == "group":
        return centred / (_masked_mean_std(grouped, present, dim=1)[1] + eps)  # (B, G)
    if scale == "batch":
        return centred / (_masked_mean_std(grouped, present, dim=None)[1] + eps)
    mean, std, _ = _masked_mean_std(centred, present, dim=None)
    return (centred - mean) / (std + eps)


def compute_advantages(
    reward: torch.Tensor,
    group_size: int,
    *,
    estimator: str = "grpo",
    scale: str = "group",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Outcome advantages from the combined reward, one per completion (N,).

    The estimator picks the baseline (group mean; leave-one-out mean for RLOO; batch mean for
    REINFORCE++); the scale picks the divisor (group std, batch std, batch whitening, or none).
    Unscorable completions (NaN) get 0 and are left out of every statistic. With a group
    baseline, a group with fewer than two scorable members, or tied, gets exactly 0.
    """
    if estimator not in ("grpo", "rloo", "reinforce_pp"):
        raise ValueError(f"estimator must be grpo, rloo or reinforce_pp, got {estimator!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    grouped = _grouped(reward, group_size)  # (B, G)
    present = ~torch.isnan(grouped)  # (B, G)
    centred = grouped - _baseline(grouped, present, estimator)  # (B, G)
    advantages = _scaled(torch.where(present, centred, 0.0), grouped, present, scale, eps)
    keep = present
    if estimator in GROUP_BASELINES:
        # Tied groups are zeroed explicitly: a float mean of equal values need not equal them.
        keep = keep & ~tied_groups(reward, group_size).unsqueeze(1)  # (B, G)
    advantages = torch.where(keep, advantages, 0.0)
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


def gdpo_advantages(rewards: torch.Tensor, weights: torch.Tensor | Sequence[float],
                    group_size: int, *, scale: str = "group", eps: float = 1e-6) -> torch.Tensor:
    """GDPO (arXiv 2601.05242): each reward function normalized within its group on its own,
    d_k = (r_k − mean_g r_k) / (std_g r_k + eps) (0 for a group where r_k ties or has fewer than
    two scores; `scale` batch or none as for GRPO), then s = Σ_k w_k d_k over the scored terms,
    whitened over the batch, (s − mean s) / (std s + eps). Unscorable completions and groups tied
    in the combined reward get exactly 0. rewards (N, K), NaN = not scored; returns (N,)."""
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"estimator gdpo takes scale group, batch or none, got {scale!r}")
    rewards = rewards.to(torch.float64)  # (N, K)
    weights = torch.as_tensor(weights, dtype=torch.float64)  # (K,)
    parts = []
    for k in range(rewards.shape[1]):
        grouped = _grouped(rewards[:, k], group_size)  # (B, G)
        present = ~torch.isnan(grouped)
        centred = torch.where(present, grouped - _baseline(grouped, present, "grpo"), 0.0)
        normal = _scaled(centred, grouped, present, scale, eps)
        tied = tied_groups(rewards[:, k], group_size).unsqueeze(1)  # (B, 1)
        parts.append(torch.where(present & ~tied, normal, 0.0).view(-1))  # (N,)
    scored = ~torch.isnan(rewards)  # (N, K)
    total = (torch.stack(parts, dim=1) * weights).where(scored, 0.0).sum(dim=1)  # (N,)
    present = scored.any(dim=1)  # (N,)
    mean, std, _ = _masked_mean_std(total, present, dim=None)
    whitened = (total - mean) / (std + eps)
    combined = combine_rewards(rewards, weights)  # (N,)
    tied = tied_groups(combined, group_size).repeat_interleave(group_size)  # (N,)
    return torch.where(present & ~tied, whitened, 0.0).to(torch.float32)


Estimator = Callable[..., torch.Tensor]
"""(rewards (N, K) float64 with NaN for unscored, weights (K,), group_size, *, scale, eps) -> (N,)
outcome advantages: 0 for an unscorable completion. Groups are contiguous."""


def _on_combined(estimator: str) -> Estimator:
    def outcome(rewards, weights, group_size, *, scale="group", eps=1e-6):
        return compute_advantages(combine_rewards(rewards, weights), group_size,
                                  estimator=estimator, scale=scale, eps=eps)
    outcome.__doc__ = f"compute_advantages(estimator={estimator!r}) of the combined reward."
    return outcome


ESTIMATORS: dict[str, Estimator] = {name: _on_combined(name)
                                    for name in ("grpo", "rloo", "reinforce_pp")}
ESTIMATORS["gdpo"] = gdpo_advantages


def no_outcome_advantages(rewards, weights, group_size, *, scale="group", eps=1e-6):
    """0 for every completion: the rewards are scored and logged, and only a per-token term
    trains (on-policy distillation, `distill_advantages`)."""
    return torch.zeros(rewards.shape[0], dtype=torch.float64)


ESTIMATORS["none"] = no_outcome_advantages
BUILT_IN_ESTIMATORS = tuple(ESTIMATORS)


def register_estimator(name: str, estimator: Estimator) -> None:
    """Make `estimator` (the `Estimator` protocol) the one `algo.estimator: name` selects."""
    if not callable(estimator):
        raise TypeError(f"register_estimator({name!r}): expected a function, got {estimator!r}")
    if name in BUILT_IN_ESTIMATORS:
        raise ValueError(f"register_estimator: {name!r} is a built-in estimator; choose another")
    ESTIMATORS[name] = estimator


def outcome_advantages(rewards: torch.Tensor, weights: torch.Tensor | Sequence[float],
                       group_size: int, *, estimator: str, scale: str,
                       eps: float) -> torch.Tensor:
    """The registered estimator's advantages (N,), float32; a wrong shape or a non-finite value
    from it is an error naming the estimator."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"algo.estimator={estimator!r} is not a registered estimator; known: "
                         f"{', '.join(ESTIMATORS)} (or an import path module:function)")
    out = ESTIMATORS[estimator](rewards.to(torch.float64), weights, group_size, scale=scale,
                                eps=eps)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (rewards.shape[0],):
        raise ValueError(f"algo.estimator={estimator!r} returned {getattr(out, 'shape', out)!r}; "
                         f"an estimator returns one advantage per completion, ({rewards.shape[0]},)")
    if not torch.isfinite(out).all():
        raise ValueError(f"algo.estimator={estimator!r} returned a NaN or infinite advantage")
    return out.to(torch.float32)


def batch_advantages(rewards: torch.Tensor, weights: Sequence[float], step_rewards,
                     group_size: int, num_tokens: int, *, estimator: str, scale: str,
                     eps: float) -> torch.Tensor:
    """The advantages a batch trains on: outcome (N,) from the rewards (N, K), or, when a reward
    function returned step rewards, process advantages (N, T) plus the outcome advantage
    broadcast over the tokens (DeepSeekMath §4.1.3). With step rewards alone (every outcome NaN)
    the outcome term is 0."""
    outcome = outcome_advantages(rewards, weights, group_size, estimator=estimator, scale=scale,
                                 eps=eps)
    if step_rewards is None:
        return outcome  # (N,)
    process = process_advantages(step_rewards, group_size, num_tokens, eps=eps)  # (N, T)
    if torch.isnan(combine_rewards(rewards, weights)).all():
        return process
    return process + outcome.unsqueeze(1)  # (N, T)


def distill_advantages(advantages: torch.Tensor, teacher_logprobs: torch.Tensor,
                       student_logprobs: torch.Tensor, mask: torch.Tensor,
                       coef: float) -> torch.Tensor:
    """On-policy distillation (docs/papers.md): per-token advantages (N, T)
    A_t + coef·(log π_teacher(y_t) − log π_old(y_t)) on the loss tokens `mask` (0 elsewhere), the
    outcome advantages A (N,) or (N, T) broadcast over the tokens. With the policy gradient the
    teacher term descends the reverse KL(π ‖ π_teacher) on the student's own samples; both
    log-probs are fixed numbers of the step (no gradient)."""
    outcome = advantages if advantages.ndim == 2 else advantages.unsqueeze(1)  # (N, T) or (N, 1)
    gap = teacher_logprobs.float() - student_logprobs.float()  # (N, T)
    return torch.where(mask.bool(), outcome.float() + coef * gap, 0.0).detach()


def kl_reward_advantages(reward: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, *,
                         beta: float, eps: float,
                         reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                         ) -> torch.Tensor:
    """REINFORCE++ with the KL folded into the reward (arXiv 2501.03262): each token's reward is
    −β·kl_t, the completion's outcome reward r is added at its end, and the return of token t is
    G_t = r − β·Σ_{s≥t} kl_s over the loss tokens `mask` (N, T); the returns are whitened over
    every loss token of the step, A_t = (G_t − mean G) / (std G + eps), Bessel std. An
    unscorable completion (r NaN) gets 0 and takes no part. `reduce` sums a tensor over ranks
    (None: one process), so the statistics are the whole step's. Returns (N, T) float32."""
    reduce = reduce or (lambda t: t)
    scored = mask.bool() & ~torch.isnan(reward).unsqueeze(1)  # (N, T)
    kl = torch.where(scored, kl.double(), 0.0)  # (N, T)
    tail = kl.flip(1).cumsum(1).flip(1)  # Σ_{s≥t} kl_s
    outcome = torch.nan_to_num(reward.double(), nan=0.0).unsqueeze(1)  # (N, 1)
    returns = torch.where(scored, outcome - beta * tail, 0.0)  # (N, T)
    total = reduce(torch.stack([returns.sum(), scored.sum().double()]))
    mean = total[0] / total[1].clamp(min=1)
    squares = reduce(torch.where(scored, (returns - mean) ** 2, 0.0).sum().reshape(1))[0]
    std = torch.sqrt(squares / (total[1] - 1).clamp(min=1))
    return torch.where(scored, (returns - mean) / (std + eps), 0.0).to(torch.float32)
