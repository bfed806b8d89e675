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

from dataclasses import dataclass
from typing import Any, Callable

import torch



def _draw_in_band(cov: torch.Tensor, count: int, low: float, high: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Clip-Cov: `count` positions drawn at random among those with low < c < high."""
    candidates = torch.nonzero((cov > low) & (cov < high)).flatten()  # (K,)
    order = torch.randperm(candidates.numel(), generator=generator)
    return candidates[order[:count]]


def _largest(cov: torch.Tensor, count: int, low: float, high: float,
             generator: torch.Generator | None) -> torch.Tensor:
    """KL-Cov: the `count` positions of largest c, ties in position order."""
    return torch.sort(-cov, stable=True).indices[:count]


def _detached(term: torch.Tensor, logprobs: torch.Tensor, old_logprobs: torch.Tensor,
              selected: torch.Tensor, coef: float) -> torch.Tensor:
    """Clip-Cov: the selected tokens' policy term is 0, value and gradient."""
    return torch.where(selected, 0.0, term)


def _kl_penalized(term: torch.Tensor, logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                  selected: torch.Tensor, coef: float) -> torch.Tensor:
    """KL-Cov: coef·|log π − log π_old| added on the selected tokens."""
    penalty = coef * (logprobs.float() - old_logprobs.float()).abs()  # (N, T)
    return term + torch.where(selected, penalty, 0.0)


@dataclass(frozen=True)
class CovMethod:
    """One value of algo.cov_control: which tokens it takes, and what it does to them."""

    select: Callable[..., torch.Tensor]
    """(c (M,), n, low, high, generator) -> the positions (≤ n) it acts on."""
    adjust: Callable[..., torch.Tensor]
    """(term, logprobs, old_logprobs, selected, kl_cov_coef) -> the adjusted term (N, T)."""


COV_METHODS = {"clip_cov": CovMethod(_draw_in_band, _detached),
               "kl_cov": CovMethod(_largest, _kl_penalized)}
COV_CONTROLS = ("none", *COV_METHODS)


def token_covariance(advantages: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """c (M,) float64 of the step's loss tokens, in order: (A − mean A)·(log π − mean log π)."""
    adv, logp = advantages.double(), logprobs.double()  # (M,)
    return (adv - adv.mean()) * (logp - logp.mean())


def _method(mode: str) -> CovMethod | None:
    if mode not in COV_CONTROLS:
        raise ValueError(f"cov_control must be one of {COV_CONTROLS}, got {mode!r}")
    return COV_METHODS.get(mode)


def cov_selection(advantages: torch.Tensor, logprobs: torch.Tensor, *, mode: str, ratio: float,
                  low: float, high: float, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """(M,) bool: the tokens `mode` acts on, from the advantages and step-start log-probs of the
    step's M loss tokens (flattened in the batch's row order): n = max(⌊ratio·M⌋, 1) of them,
    clip_cov's drawn with `generator`."""
    method, selected = _method(mode), torch.zeros(advantages.numel(), dtype=torch.bool)
    if method is None or advantages.numel() == 0:
        return selected
    cov = token_covariance(advantages.flatten(), logprobs.flatten())  # (M,)
    selected[method.select(cov, max(int(ratio * cov.numel()), 1), low, high, generator)] = True
    return selected


def cov_adjusted(term: torch.Tensor, logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                 selected: torch.Tensor | None, knobs: Any) -> torch.Tensor:
    """The policy term (N, T) with `knobs.cov_control` applied on the `selected` tokens (N, T):
    clip_cov → 0 there; kl_cov → + kl_cov_coef·|log π − log π_old| there."""
    method = _method(knobs.cov_control)
    if method is None or selected is None:
        return term
    return method.adjust(term, logprobs, old_logprobs, selected, knobs.kl_cov_coef)
