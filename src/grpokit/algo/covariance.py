"""Clip-Cov and KL-Cov (Cui et al., 2025, "The Entropy Mechanism of Reinforcement Learning for
Reasoning Language Models", arXiv 2505.22617 §4; docs/papers.md): entropy-collapse control on the
few tokens whose log-prob and advantage covary most.

The covariance of token i over the optimizer step's loss tokens (every micro-batch and rank),

    c_i = (A_i − mean A)·(log π(y_i) − mean log π),

is computed once per step from the log-probs at the step's start (π_old), so the selection is the
same whatever the micro-batch and rank split. Then, with M loss tokens and n = max(⌊ratio·M⌋, 1):

- clip_cov: n tokens drawn at random (seeded) among those with low < c_i < high have their
  policy term set to 0, value and gradient (they stay in the normalizers);
- kl_cov: the n tokens of largest c_i get coef·|log π − log π_old| added to their policy term.

At the step's first update π = π_old, where |log π − log π_old| is 0 with gradient 0: KL-Cov acts
on the later minibatches and epochs of a step (train.minibatches, train.epochs_per_batch).
"""

from __future__ import annotations

from typing import Any

import torch

COV_CONTROLS = ("none", "clip_cov", "kl_cov")


def token_covariance(advantages: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """c (M,) float64 of the step's loss tokens, in order: (A − mean A)·(log π − mean log π)."""
    adv, logp = advantages.double(), logprobs.double()  # (M,)
    return (adv - adv.mean()) * (logp - logp.mean())


def cov_selection(advantages: torch.Tensor, logprobs: torch.Tensor, *, mode: str, ratio: float,
                  low: float, high: float, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """(M,) bool: the tokens `mode` acts on, from the advantages and step-start log-probs of the
    step's M loss tokens (flattened in the batch's row order). clip_cov draws its tokens with
    `generator` (a permutation of the candidates); kl_cov's largest covariances break ties by
    position."""
    if mode not in COV_CONTROLS:
        raise ValueError(f"cov_control must be one of {COV_CONTROLS}, got {mode!r}")
    selected = torch.zeros(advantages.numel(), dtype=torch.bool)
    if mode == "none" or advantages.numel() == 0:
        return selected
    cov = token_covariance(advantages.flatten(), logprobs.flatten())  # (M,)
    count = max(int(ratio * cov.numel()), 1)
    if mode == "clip_cov":
        candidates = torch.nonzero((cov > low) & (cov < high)).flatten()  # (K,)
        order = torch.randperm(candidates.numel(), generator=generator)
        selected[candidates[order[:count]]] = True
    else:
        order = torch.sort(-cov, stable=True).indices  # descending, ties in position order
        selected[order[:count]] = True
    return selected


def cov_adjusted(term: torch.Tensor, logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                 selected: torch.Tensor | None, knobs: Any) -> torch.Tensor:
    """The policy term (N, T) with `knobs.cov_control` applied on the `selected` tokens (N, T):
    clip_cov → 0 there; kl_cov → + kl_cov_coef·|log π − log π_old| there."""
    if knobs.cov_control == "none" or selected is None:
        return term
    if knobs.cov_control == "clip_cov":
        return torch.where(selected, 0.0, term)
    if knobs.cov_control == "kl_cov":
        penalty = knobs.kl_cov_coef * (logprobs.float() - old_logprobs.float()).abs()  # (N, T)
        return term + torch.where(selected, penalty, 0.0)
    raise ValueError(f"cov_control must be one of {COV_CONTROLS}, got {knobs.cov_control!r}")
