"""Importance ratios, clipping, KL estimators and aggregation (DESIGN.md §3).

Everything here is computed in fp32 whatever dtype the model ran in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from grpokit.algo.correction import rollout_correction_weights
from grpokit.algo.covariance import cov_adjusted
from grpokit.algo.surrogates import (  # noqa: F401  (clipped_surrogate: re-exported)
    RATIO_LEVELS, clipped_surrogate, importance_ratio, policy_term,
)

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_sum_norm")


@dataclass(frozen=True)
class LossKnobs:
    """The independent knobs of the policy loss; presets are values of these."""

    loss: str = "clip"
    """The per-token policy term (algo/surrogates.py): clip, pg, cispo, sapo, gmpo, or a
    registered one."""
    ratio: str = "token"
    """Importance ratio level: "token" (PPO/GRPO), "sequence" (GSPO) or "sequence_token"
    (GSPO-token)."""
    clip_low: float = 0.2
    """ε_low: the ratio is clipped below at 1 - clip_low."""
    clip_high: float = 0.2
    """ε_high: the ratio is clipped above at 1 + clip_high (DAPO clip-higher uses 0.28)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1: for A < 0 the per-token loss is capped at -c·A (None disables)."""
    kl: str = "k3"
    """KL estimator to the reference policy: k1, k2 or k3."""
    beta: float = 0.0
    """KL coefficient β; 0 means no reference model is used."""
    kl_in_reward: bool = False
    """REINFORCE++: β·KL is folded into the rewards (advantages.kl_reward_advantages), so the
    loss has no KL term."""
    aggregation: str = "seq_mean_token_mean"
    """How per-token losses become one number: seq_mean_token_mean, token_mean, seq_sum_norm."""
    max_completion_length: int = 0
    """The constant length of seq_sum_norm (Dr. GRPO); the sampler's max_new_tokens."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient: the loss subtracts entropy_coef · entropy per token."""
    sapo_tau_pos: float = 1.0
    """SAPO's gate temperature for positive advantages."""
    sapo_tau_neg: float = 1.05
    """SAPO's gate temperature for negative advantages."""
    cov_control: str = "none"
    """Clip-Cov / KL-Cov on the step's highest-covariance tokens (algo/covariance.py): none,
    clip_cov or kl_cov."""
    cov_ratio: float = 2e-4
    """The share of the step's loss tokens cov_control acts on (at least one token)."""
    clip_cov_low: float = 1.0
    """clip_cov: only tokens with covariance above this are candidates."""
    clip_cov_high: float = 5.0
    """clip_cov: only tokens with covariance below this are candidates."""
    kl_cov_coef: float = 1.0
    """kl_cov: the coefficient of |log π − log π_old| on the selected tokens."""
    rollout_correction: str = "none"
    """Train–inference mismatch correction of the surrogate: none, tis (truncated IS) or mis
    (masked IS), with ρ = π_old / π_sampler (algo/correction.py)."""
    rollout_correction_level: str = "token"
    """ρ per token, or per sequence (exp of the summed log-ratio, for every token)."""
    rollout_correction_threshold: float = 2.0
    """C > 1: tis uses min(ρ, C); mis drops tokens (or sequences) with ρ > C."""

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "LossKnobs":
        """The knobs named in `values` (a resolved `algo` config section plus
        max_completion_length, or a conformance vector's `knobs`); absent ones keep defaults.
        The one place where loss knobs are derived, for the trainer and the conformance runner."""
        kwargs = {}
        for f in fields(cls):
            if values.get(f.name) is not None:
                cast = float if f.default is None else type(f.default)  # dual_clip: float | None
                kwargs[f.name] = cast(values[f.name])
        return cls(**kwargs)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, *, kind: str = "k3") -> torch.Tensor:
    """Per-token KL estimate to the reference, d = ref − logp: k1 = −d, k2 = d²/2, k3 = e^d − d − 1."""
    d = ref_logprobs.float() - logprobs.float()  # (N, T)
    if kind == "k1":
        return -d
    if kind == "k2":
        return 0.5 * d * d
    if kind == "k3":
        return torch.expm1(d) - d
    raise ValueError(f"kl estimator must be one of {KL_ESTIMATORS}, got {kind!r}")


def aggregate(values: torch.Tensor, completion_mask: torch.Tensor, *, mode: str,
              num_sequences: int, num_tokens: int, max_completion_length: int) -> torch.Tensor:
    """One number from a per-token matrix, normalized by the optimizer step's global counts."""
    mask = completion_mask.float()  # (N, T)
    masked = values * mask  # (N, T)
    if mode == "seq_mean_token_mean":
        per_seq = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (N,)
        return per_seq.sum() / max(num_sequences, 1)
    if mode == "token_mean":
        return masked.sum() / max(num_tokens, 1)
    if mode == "seq_sum_norm":
        if max_completion_length < 1:
            raise ValueError("seq_sum_norm needs max_completion_length >= 1")
        return masked.sum() / (max(num_sequences, 1) * max_completion_length)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")


def per_token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                   completion_mask: torch.Tensor, knobs: LossKnobs, *,
                   ref_logprobs: torch.Tensor | None = None,
                   entropy: torch.Tensor | None = None,
                   correction: torch.Tensor | None = None,
                   sequence_mask: torch.Tensor | None = None,
                   selected: torch.Tensor | None = None) -> torch.Tensor:
    """w·policy term + β·KL − entropy_coef·entropy at each token (N, T); 0 where the mask is 0.

    The policy term is `knobs.loss`'s (algo/surrogates.py: the clipped surrogate by default),
    with `knobs.cov_control` applied on the `selected` tokens (N, T) bool (algo/covariance.py).
    `correction` holds the detached rollout-correction weights w (N, T) of
    `rollout_correction_weights`; None (mode none) leaves the policy term untouched.
    `sequence_mask` (the sampled tokens) is what sequence-level quantities average over."""
    mask = completion_mask.bool()
    term = policy_term(knobs.loss)
    loss = term(logprobs, old_logprobs, advantages, mask, knobs,
                sequence_mask=mask if sequence_mask is None else sequence_mask.bool())  # (N, T)
    if loss.shape != mask.shape:
        raise ValueError(f"algo.loss={knobs.loss!r} returned shape {tuple(loss.shape)}; a policy "
                         f"term returns one value per token, {tuple(mask.shape)}")
    loss = cov_adjusted(loss, logprobs, old_logprobs, selected, knobs)
    if correction is not None:
        loss = loss * correction  # (N, T) TIS / MIS weight on the policy term only
    if knobs.beta != 0.0 and not knobs.kl_in_reward:
        if ref_logprobs is None:
            raise ValueError("beta != 0 needs ref_logprobs")
        loss = loss + knobs.beta * kl_penalty(logprobs, ref_logprobs, kind=knobs.kl)
    if knobs.entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the per-token entropy")
        loss = loss - knobs.entropy_coef * entropy.float()
    return torch.where(completion_mask.bool(), loss, 0.0)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                completion_mask: torch.Tensor, knobs: LossKnobs, *,
                ref_logprobs: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                sampler_logprobs: torch.Tensor | None = None, num_sequences: int | None = None,
                num_tokens: int | None = None, sequence_mask: torch.Tensor | None = None,
                selected: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The aggregated loss of one micro-batch and its metrics.

    completion_mask holds the loss tokens; sequence_mask (N, T) the completion's sampled tokens,
    over which sequence-level ratios run (default: completion_mask). num_sequences / num_tokens
    are the counts of the whole optimizer step (all micro-batches and ranks); they default to
    this batch's own counts. sampler_logprobs (N, T) are the rollout engine's log-probs: with
    them the metrics include the sampler–trainer mismatch, and knobs.rollout_correction tis / mis
    (which need them) weight the surrogate. `selected` (N, T) holds the tokens of
    knobs.cov_control, chosen over the whole step (algo/covariance.py).
    """
    mask = completion_mask.bool()
    num_sequences = mask.shape[0] if num_sequences is None else num_sequences
    num_tokens = int(mask.sum()) if num_tokens is None else num_tokens
    weights, mismatch = rollout_correction_weights(
        old_logprobs, sampler_logprobs, mask, knobs.rollout_correction,
        knobs.rollout_correction_level, knobs.rollout_correction_threshold, sequence_mask)
    per_token = per_token_loss(logprobs, old_logprobs, advantages, mask, knobs,
                               ref_logprobs=ref_logprobs, entropy=entropy, correction=weights,
                               sequence_mask=sequence_mask, selected=selected)
    loss = aggregate(per_token, mask, mode=knobs.aggregation, num_sequences=num_sequences,
                     num_tokens=num_tokens, max_completion_length=knobs.max_completion_length)
    with torch.no_grad():
        metrics = loss_metrics(logprobs, old_logprobs, advantages, mask, knobs,
                               ref_logprobs=ref_logprobs, entropy=entropy,
                               sequence_mask=sequence_mask)
        if selected is not None and knobs.cov_control != "none" and mask.any():
            metrics["cov_selected_frac"] = selected[mask].float().mean().item()
    return loss, {**metrics, **mismatch}


def clip_band(knobs: LossKnobs) -> tuple[float, float]:
    """The ratio band outside which `knobs.loss` clips (the clip_frac metrics): 1 ∓ ε for clip
    and cispo (and a user's loss), (e^−ε_low, e^ε_high) for gmpo's log-space band, none for pg
    and sapo, which clip nothing."""
    if knobs.loss in ("pg", "sapo"):
        return 0.0, float("inf")
    if knobs.loss == "gmpo":
        return math.exp(-knobs.clip_low), math.exp(knobs.clip_high)
    return 1.0 - knobs.clip_low, 1.0 + knobs.clip_high


def loss_metrics(logprobs, old_logprobs, advantages, mask, knobs: LossKnobs, *,
                 ref_logprobs=None, entropy=None, sequence_mask=None) -> dict[str, float]:
    """Token-mean diagnostics of one micro-batch; `tokens` is the weight for averaging them."""
    tokens = int(mask.sum())
    if tokens == 0:
        return {"tokens": 0.0}
    ratio = importance_ratio(logprobs, old_logprobs, mask, level=knobs.ratio,
                             sequence_mask=sequence_mask)[mask]  # (M,)
    adv = (advantages if advantages.ndim == 2 else advantages.unsqueeze(1).expand_as(mask))[mask]
    lower, upper = clip_band(knobs)
    low = (ratio < lower) & (adv < 0)
    high = (ratio > upper) & (adv > 0)
    metrics = {
        "tokens": float(tokens),
        "clip_frac_low": low.float().mean().item(),
        "clip_frac_high": high.float().mean().item(),
        "clip_frac": (low | high).float().mean().item(),
        "ratio_min": ratio.min().item(),
        "ratio_mean": ratio.mean().item(),
        "ratio_max": ratio.max().item(),
        "advantage_mean": adv.float().mean().item(),
        "advantage_std": adv.float().std(correction=0).item(),
    }
    if ref_logprobs is not None:
        metrics["kl"] = kl_penalty(logprobs, ref_logprobs, kind=knobs.kl)[mask].mean().item()
    if entropy is not None:
        metrics["entropy"] = entropy.float()[mask].mean().item()
    return metrics
