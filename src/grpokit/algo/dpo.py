"""Direct Preference Optimization (Rafailov et al. 2023, eq. 7) and its conservative variant
(label smoothing, Mitchell 2023), on sequence log-probs summed over completion tokens.

With s = Σ_t log π(y_t | x, y_<t) over a completion's tokens (prompt and padding excluded), the
implicit reward of a completion is r = β (s − s_ref), and with z = r_chosen − r_rejected one
pair's loss is

    −(1 − ε) log σ(z) − ε log σ(−z)

ε = 0 is DPO; ε > 0 treats a share ε of the pairs as mislabelled. Everything is fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_logprobs(logprobs: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Σ_t log p over each completion's tokens (N,), from per-token log-probs (N, T)."""
    return torch.where(completion_mask.bool(), logprobs.float(), 0.0).sum(dim=1)  # (N,)


def implicit_rewards(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """β (s − s_ref) per completion (N,)."""
    return beta * (logps.float() - ref_logps.float())  # (N,)


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, *, beta: float,
             label_smoothing: float = 0.0, num_pairs: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, chosen rewards (M,), rejected rewards (M,)) for M pairs. The loss is the sum of the
    pairs' losses divided by `num_pairs`, the pairs of the whole optimizer step (default M), so
    micro-batches add up to the step's mean."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen = implicit_rewards(chosen_logps, ref_chosen_logps, beta)  # (M,)
    rejected = implicit_rewards(rejected_logps, ref_rejected_logps, beta)  # (M,)
    z = chosen - rejected  # (M,)
    per_pair = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    count = len(z) if num_pairs is None else num_pairs
    return per_pair.sum() / max(count, 1), chosen.detach(), rejected.detach()


def preference_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
                       ) -> dict[str, float]:
    """Means over pairs of the implicit rewards, their margin, and the accuracy of the implicit
    reward (the share of pairs whose chosen completion it ranks strictly higher)."""
    if chosen_rewards.numel() == 0:
        return {}
    margin = chosen_rewards - rejected_rewards  # (M,)
    return {"rewards_chosen": chosen_rewards.mean().item(),
            "rewards_rejected": rejected_rewards.mean().item(),
            "reward_margin": margin.mean().item(),
            "reward_accuracy": (margin > 0).float().mean().item()}
