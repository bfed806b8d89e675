"""The per-token policy term of the loss, by name (`algo.loss`; docs/papers.md, DESIGN.md §3).

A policy term maps one micro-batch to a (N, T) matrix; `losses.per_token_loss` then weighs it by
the rollout correction, adds β·KL and the entropy bonus, zeroes it off the loss mask, and
`losses.aggregate` divides by the optimizer step's global counts. A term therefore never
normalizes: that keeps every term, a user's own included, exact under any micro-batch and rank
split. The protocol, in order:

    term(logprobs, old_logprobs, advantages, mask, knobs, sequence_mask) -> (N, T)

- `logprobs` (N, T) fp32, with gradient: the trainer's log-probs of the sampled tokens;
- `old_logprobs` (N, T): the same tokens under the policy that sampled the step (no gradient);
- `advantages`: (N,) one per completion, or (N, T) per token (process supervision);
- `mask` (N, T) bool: the loss tokens; `sequence_mask` (N, T) bool: the completion's sampled
  tokens, which sequence-level quantities run over (a loss mask narrowed by token selection
  would change a sequence's likelihood ratio);
- `knobs`: the `LossKnobs` of the run (clip band, ratio level, SAPO temperatures, ...).

Built-ins: `clip` (PPO's clipped surrogate: GRPO, DAPO, GSPO, Dr. GRPO), `pg` (the importance-
weighted policy gradient without a clip), `cispo`, `sapo`, `gmpo`.
`register_loss` adds one; the config names it, or gives an import path `module:function`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from grpokit.algo.correction import LOG_RATIO_CLAMP

LossKnobs = Any  # grpokit.algo.losses.LossKnobs, which imports this module

PolicyTerm = Callable[..., torch.Tensor]
RATIO_LEVELS = ("token", "sequence", "sequence_token")


def importance_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                     completion_mask: torch.Tensor, *, level: str = "token",
                     sequence_mask: torch.Tensor | None = None) -> torch.Tensor:
    """ρ (N, T): per token exp(logp − old); per sequence (GSPO) exp(mean_t(logp − old)) over the
    completion's sampled tokens `sequence_mask` (default: completion_mask), for every token, the
    gradient flowing through the mean; sequence_token (GSPO-token) the sequence ratio's value at
    every token with the gradient of its own token only, sg(s)·exp(logp − sg(logp)).
    Log-ratios are clamped to ±20."""
    mask = completion_mask.bool() if sequence_mask is None else sequence_mask.bool()
    log_ratio = torch.where(mask, logprobs.float() - old_logprobs.float(), 0.0)  # (N, T)
    if level == "token":
        return torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    if level not in RATIO_LEVELS:
        raise ValueError(f"ratio level must be one of {RATIO_LEVELS}, got {level!r}")
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (N, 1)
    sequence = (log_ratio.sum(dim=1, keepdim=True) / lengths).expand_as(log_ratio)  # (N, T)
    if level == "sequence_token":
        own = logprobs.float() - logprobs.float().detach()  # value 0, gradient 1 at its token
        sequence = sequence.detach() + torch.where(mask, own, 0.0)
    return torch.exp(sequence.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    """Advantages as (N, T) or (N, 1), fp32."""
    return (advantages if advantages.ndim == 2 else advantages.unsqueeze(1)).float()


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, *, clip_low: float,
                      clip_high: float, dual_clip: float | None = None) -> torch.Tensor:
    """Per-token loss −min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A), with the dual clip cap −c·A for A < 0."""
    adv = _per_token(advantages)
    unclipped = ratio * adv  # (N, T)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv  # (N, T)
    loss = -torch.minimum(unclipped, clipped)  # (N, T)
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -dual_clip * adv), loss)
    return loss


def clip_term(logprobs, old_logprobs, advantages, mask, knobs: LossKnobs,
              sequence_mask=None) -> torch.Tensor:
    """PPO's clipped surrogate on the ratio of `knobs.ratio` (GRPO, DAPO, GSPO, GSPO-token)."""
    ratio = importance_ratio(logprobs, old_logprobs, mask, level=knobs.ratio,
                             sequence_mask=sequence_mask)
    return clipped_surrogate(ratio, advantages, clip_low=knobs.clip_low,
                             clip_high=knobs.clip_high, dual_clip=knobs.dual_clip)


def pg_term(logprobs, old_logprobs, advantages, mask, knobs: LossKnobs,
            sequence_mask=None) -> torch.Tensor:
    """−ρ·A: the importance-weighted policy gradient with no clip (KL-Cov's objective, and
    on-policy distillation's importance-sampling loss). At ρ = 1 it equals `clip`."""
    ratio = importance_ratio(logprobs, old_logprobs, mask, level=knobs.ratio,
                             sequence_mask=sequence_mask)
    return -ratio * _per_token(advantages)


def cispo_term(logprobs, old_logprobs, advantages, mask, knobs: LossKnobs,
               sequence_mask=None) -> torch.Tensor:
    """CISPO (MiniMax-M1, eq. 4): −sg(clip(ρ, 1−ε_low, 1+ε_high))·A·log π. The weight is clipped
    and held fixed, so every token keeps the gradient −w·A, the clipped ones included."""
    ratio = importance_ratio(logprobs, old_logprobs, mask, level=knobs.ratio,
                             sequence_mask=sequence_mask)
    weight = ratio.clamp(1.0 - knobs.clip_low, 1.0 + knobs.clip_high).detach()
    return -weight * _per_token(advantages) * logprobs.float()


def sapo_term(logprobs, old_logprobs, advantages, mask, knobs: LossKnobs,
              sequence_mask=None) -> torch.Tensor:
    """SAPO (arXiv 2511.20347): −f(ρ)·A with the soft gate f(ρ) = σ(τ(ρ − 1))·4/τ, τ = τ_pos for
    A > 0 and τ_neg otherwise. At ρ = 1 the gradient is the plain policy gradient −A; away from
    it the gate decays smoothly instead of cutting off."""
    ratio = importance_ratio(logprobs, old_logprobs, mask, level=knobs.ratio,
                             sequence_mask=sequence_mask)
    adv = _per_token(advantages)
    tau = torch.where(adv > 0, knobs.sapo_tau_pos, knobs.sapo_tau_neg)  # (N, T) or (N, 1)
    return -torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau) * adv


def gmpo_term(logprobs, old_logprobs, advantages, mask, knobs: LossKnobs,
              sequence_mask=None) -> torch.Tensor:
    """GMPO (arXiv 2507.20673): −A·exp(mean_t l̃_t) per sequence, the geometric mean of the token
    ratios with each log-ratio clipped on the side the advantage pushes it (A > 0: at most
    ε_high; A < 0: at least −ε_low), placed on every token of the sequence."""
    if advantages.ndim != 1:
        raise ValueError("algo.loss=gmpo takes one advantage per completion (no step rewards)")
    seq = (mask if sequence_mask is None else sequence_mask).bool()
    log_ratio = torch.where(seq, logprobs.float() - old_logprobs.float(), 0.0)
    log_ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (N, T)
    adv = advantages.float().unsqueeze(1)  # (N, 1)
    clipped = torch.where(adv > 0, log_ratio.clamp(max=knobs.clip_high),
                          torch.where(adv < 0, log_ratio.clamp(min=-knobs.clip_low), log_ratio))
    lengths = seq.sum(dim=1, keepdim=True).clamp(min=1)  # (N, 1)
    geometric = torch.exp(torch.where(seq, clipped, 0.0).sum(dim=1, keepdim=True) / lengths)
    return (-adv * geometric).expand_as(log_ratio)  # (N, T)


POLICY_LOSSES: dict[str, PolicyTerm] = {"clip": clip_term, "pg": pg_term, "cispo": cispo_term,
                                        "sapo": sapo_term, "gmpo": gmpo_term}
BUILT_IN_LOSSES = tuple(POLICY_LOSSES)


def register_loss(name: str, term: PolicyTerm) -> None:
    """Make `term` (the protocol above) the policy term `algo.loss: name` selects."""
    if not callable(term):
        raise TypeError(f"register_loss({name!r}): expected a function, got {term!r}")
    if name in BUILT_IN_LOSSES:
        raise ValueError(f"register_loss: {name!r} is a built-in loss; choose another name")
    POLICY_LOSSES[name] = term


def policy_term(name: str) -> PolicyTerm:
    """The registered policy term of that name; an unknown name lists the known ones."""
    if name not in POLICY_LOSSES:
        raise ValueError(f"algo.loss={name!r} is not a registered loss; known: "
                         f"{', '.join(POLICY_LOSSES)} (or an import path module:function)")
    return POLICY_LOSSES[name]
