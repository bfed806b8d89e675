"""The sampler's support: which tokens top-k and top-p keep at one position (DESIGN.md §3).

Both truncations keep every token whose temperature-scaled logit reaches a threshold τ of the
row: top-k's τ is the k-th largest logit; top-p's is the smallest logit of the shortest
descending prefix whose mass reaches p (a token is dropped when the mass strictly before it
already reaches p), over the top-k survivors when both are on. The kept set is therefore
{v : z_v ≥ τ}, one number per row, which the sampler applies when it draws and the trainer
applies again to its own logits (`algo.sampling_support=replay`), so that with identical weights
the sampler's renormalised log-prob and the trainer's are the same number. A tie at τ keeps every
tied token, whatever order a sort would have put them in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SAMPLING_SUPPORTS = ("replay", "full")


@dataclass(frozen=True)
class Truncation:
    """The sampler's truncation parameters: top_k (0: off) and top_p (1.0: off)."""

    top_k: int = 0
    top_p: float = 1.0

    def active(self, vocab_size: int | None = None) -> bool:
        """Whether the truncation can drop a token (top-k at least the vocabulary drops none)."""
        k_on = self.top_k > 0 and (vocab_size is None or self.top_k < vocab_size)
        return k_on or self.top_p < 1.0


@torch.no_grad()
def kept_threshold(logits: torch.Tensor, truncation: Truncation) -> torch.Tensor:
    """τ (C, 1): the smallest temperature-scaled logit that `truncation` keeps in each row of
    `logits` (C, V); -inf when it keeps every token."""
    rows, vocab = logits.shape
    tau = logits.new_full((rows, 1), float("-inf"))  # (C, 1)
    top = logits
    if 0 < truncation.top_k < vocab:
        top = torch.topk(logits, truncation.top_k, dim=-1).values  # (C, k) descending
        tau = top[:, -1:]
    if truncation.top_p < 1.0:
        ranked = top if top is not logits else torch.sort(logits, dim=-1, descending=True).values
        probs = ranked.float().softmax(-1)  # (C, k or V) renormalised over the top-k survivors
        before = probs.cumsum(-1) - probs  # (C, ·) the mass strictly before each token
        kept = (before < truncation.top_p).sum(dim=-1, keepdim=True)  # (C, 1) at least 1
        tau = torch.maximum(tau, ranked.gather(-1, kept - 1))
    return tau


def restrict_(logits: torch.Tensor, tau: torch.Tensor, fill: float) -> torch.Tensor:
    """Logits (C, V) below their row's τ (C, 1) set to `fill`, in place."""
    return logits.masked_fill_(logits < tau, fill)
