"""Train–inference mismatch: importance weights between the sampler and the trainer (DESIGN.md §5).

The rollout engine (vLLM kernels, bf16, another batch order) samples from π_sampler, which is
close to but not the trainer's π_old. The ratio ρ = π_old / π_sampler measures the gap per token
and corrects for it:

- TIS, truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly
  brings you off-policy RL training"): w = min(ρ, C).
- MIS, masked importance sampling (Liu et al. 2025, "When speed kills stability"): w = ρ where
  ρ ≤ C, else 0: the token (or the whole sequence) leaves the policy gradient.

ρ is per token, exp(old − sampler), or per sequence, exp(Σ_t s·(old − sampler)) over the
completion's sampled tokens s (never a loss mask narrowed by token selection), for every token of
the completion; log-ratios are clamped to ±20. The weights carry no gradient, multiply the clipped
surrogate only (not the KL penalty, not the entropy bonus), and leave the normalizers alone.
"""

from __future__ import annotations

import torch

CORRECTIONS = ("none", "tis", "mis")
CORRECTION_LEVELS = ("token", "sequence")
LOG_RATIO_CLAMP = 20.0
"""Every log importance ratio is clamped to ±20 before exp (DESIGN.md §3)."""
MISMATCH_METRICS = ("mismatch_kl", "mismatch_k3", "is_ratio_mean", "is_ratio_max", "is_ratio_min",
                    "is_clipped_frac")
"""The metrics `rollout_correction_weights` returns whenever sampler log-probs are given."""


def _level_log_ratio(diff: torch.Tensor, level: str) -> torch.Tensor:
    """log ρ (N, T) from the masked token differences old − sampler: the one branch on the level."""
    if level == "token":
        return diff
    if level == "sequence":
        return diff.sum(dim=1, keepdim=True).expand_as(diff)  # (N, T) Σ_t over the completion
    raise ValueError(f"rollout_correction_level must be one of {CORRECTION_LEVELS}, got {level!r}")


def _weigh(ratio: torch.Tensor, mode: str,
           threshold: float) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(w, where w ≠ ρ) for ρ (N, T): the one branch on the mode; `none` has no weights."""
    if mode == "none":
        return None, torch.zeros_like(ratio, dtype=torch.bool)
    over = ratio > threshold  # (N, T)
    if mode == "tis":
        return ratio.clamp(max=threshold), over  # (N, T) min(ρ, C)
    if mode == "mis":
        return torch.where(over, 0.0, ratio), over  # (N, T) ρ where ρ ≤ C, else 0
    raise ValueError(f"rollout_correction must be one of {CORRECTIONS}, got {mode!r}")


def _metrics(diff: torch.Tensor, ratio: torch.Tensor, changed: torch.Tensor,
             mask: torch.Tensor) -> dict[str, float]:
    """Token means over the loss tokens (the `tokens` weight of `loss_metrics`), min and max."""
    d = diff[mask]  # (M,) old − sampler per token
    d_clamped = d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (M,) keeps k3 finite
    rho = ratio[mask]  # (M,)
    values = torch.stack([
        (-d).mean(),  # k1 of KL(sampler ‖ trainer): the tokens were drawn from the sampler
        (torch.expm1(d_clamped) - d_clamped).mean(),  # k3 = e^d − d − 1 ≥ 0
        rho.mean(), rho.max(), rho.min(), changed[mask].float().mean(),
    ]).tolist()  # one device sync for all six
    return dict(zip(MISMATCH_METRICS, values))


def rollout_correction_weights(
    old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor | None,
    completion_mask: torch.Tensor, mode: str = "none", level: str = "token",
    threshold: float = 2.0, sequence_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Detached weights (N, T) for the clipped surrogate (None for `none`) and the mismatch metrics.

    old_logprobs are the trainer's log-probs of the sampling-time policy, sampler_logprobs what the
    rollout engine reported. completion_mask holds the loss tokens (the metrics' tokens);
    sequence_mask the completion's sampled tokens, over which a sequence-level ratio is summed
    (default: completion_mask). Without sampler log-probs there are no metrics and, for `none`,
    no work at all; tis or mis without them is an error.
    """
    if sampler_logprobs is None:
        if mode != "none":
            raise ValueError(f"rollout_correction={mode!r} needs sampler_logprobs (the rollout "
                             "engine's sampling log-probs); set algo.rollout_correction=none")
        return None, {}
    with torch.no_grad():
        mask = completion_mask.bool()
        sampled = mask if sequence_mask is None else sequence_mask.bool()
        diff = torch.where(sampled, old_logprobs.float() - sampler_logprobs.float(), 0.0)  # (N, T)
        log_ratio = _level_log_ratio(diff, level)  # (N, T)
        ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # (N, T)
        weights, changed = _weigh(ratio, mode, threshold)
        metrics = _metrics(diff, ratio, changed, mask) if mask.any() else {}
    return weights, metrics
