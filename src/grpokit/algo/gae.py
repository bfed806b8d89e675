"""PPO's critic side (Schulman et al. 2016, 2017): generalized advantage estimation from an outcome
reward and per-token values, and the clipped value loss. Pure torch, fp32.

Completions are right-padded (N, T) with a mask. The state before completion token t has value
V_t; the outcome reward R arrives with the last token (r_t = R there, 0 elsewhere); the state
after the last token is terminal (value 0). With m_{t+1} = 1 while token t+1 exists:

    δ_t = r_t + γ m_{t+1} V_{t+1} − V_t,    A_t = δ_t + γ λ m_{t+1} A_{t+1},    G_t = A_t + V_t

λ = 1 gives A_t = γ^(L−1−t) R − V_t (Monte Carlo); λ = 0 gives the one-step TD error.
"""

from __future__ import annotations

import torch


def outcome_token_rewards(reward: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) with each completion's reward at its last token, 0 elsewhere."""
    mask = completion_mask.bool()
    lengths = mask.sum(dim=1)  # (N,)
    rewards = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)  # (N, T)
    rows = torch.nonzero(lengths > 0).squeeze(1)
    rewards[rows, lengths[rows] - 1] = reward.float()[rows]
    return rewards


def gae(token_rewards: torch.Tensor, values: torch.Tensor, completion_mask: torch.Tensor, *,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both (N, T) and 0 on padding."""
    mask = completion_mask.float()  # (N, T)
    values = values.float() * mask  # (N, T)
    n, t_max = mask.shape
    advantages = torch.zeros_like(values)  # (N, T)
    last = torch.zeros(n, dtype=values.dtype, device=values.device)  # A_{t+1}  (N,)
    for t in reversed(range(t_max)):
        following = mask[:, t + 1] if t + 1 < t_max else torch.zeros_like(last)  # m_{t+1}
        next_value = values[:, t + 1] if t + 1 < t_max else torch.zeros_like(last)
        delta = token_rewards[:, t].float() + gamma * following * next_value - values[:, t]
        last = (delta + gamma * lam * following * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, completion_mask: torch.Tensor, eps: float = 1e-8
           ) -> torch.Tensor:
    """(x − mean) / (std + eps) over the masked entries (population std); 0 on padding."""
    mask = completion_mask.bool()
    picked = values[mask].float()
    if picked.numel() < 2:
        return torch.zeros_like(values, dtype=torch.float32)
    out = (values.float() - picked.mean()) / (picked.std(correction=0) + eps)
    return torch.where(mask, out, 0.0)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               completion_mask: torch.Tensor, *, clip: float | None, num_tokens: int
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """½ max((V − G)², (V_clip − G)²) per token, V_clip = V_old + clip(V − V_old, ±clip), summed
    over the mask and divided by `num_tokens` (the optimizer step's, so micro-batches add up)."""
    mask = completion_mask.bool()
    values, old, target = values.float(), old_values.float(), returns.float()
    loss = (values - target) ** 2  # (N, T)
    clipped_frac = torch.zeros(())
    if clip is not None:
        clipped = old + (values - old).clamp(-clip, clip)  # (N, T)
        loss_clipped = (clipped - target) ** 2  # (N, T)
        clipped_frac = ((loss_clipped > loss) & mask).sum() / mask.sum().clamp(min=1)
        loss = torch.maximum(loss, loss_clipped)
    total = 0.5 * torch.where(mask, loss, 0.0).sum() / max(num_tokens, 1)
    with torch.no_grad():
        metrics = {"value_clip_frac": float(clipped_frac),
                   "value_mean": values[mask].mean().item() if mask.any() else 0.0}
    return total, metrics
