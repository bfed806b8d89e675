"""Which groups carry a learning signal and which tokens enter the loss (design-notes.md).

Each knob of this stage branches here and nowhere else: the tie rule, excluding tied groups,
masking truncated completions, and top-entropy token selection.
"""

from __future__ import annotations

import math

import torch

from grpokit.algo.advantages import tied_groups

TIE_RULES = ("equal", "mean_outside")


def is_tied(reward: torch.Tensor, group_size: int, rule: str = "equal",
            interval: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """(B,) bool: groups without learning signal.

    rule "equal": all scorable rewards are equal (or fewer than two are scorable);
    rule "mean_outside": the group's mean reward is outside the open interval (lo, hi), e.g. with
    0/1 accuracy rewards and (0, 1), groups that are all wrong or all right (DAPO eq. 11).
    """
    if rule == "equal":
        return tied_groups(reward, group_size)
    if rule != "mean_outside":
        raise ValueError(f"tie rule must be one of {TIE_RULES}, got {rule!r}")
    grouped = reward.view(-1, group_size).to(torch.float64)  # (B, G)
    mean = torch.nanmean(grouped, dim=1)  # (B,)
    lo, hi = interval
    return ~((mean > lo) & (mean < hi)) | torch.isnan(mean)


def loss_mask(completion_mask: torch.Tensor, truncated: torch.Tensor, tied: torch.Tensor, *,
              exclude_tied: bool, mask_truncated: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(included (N,), loss mask (N, T)): the sequences the loss and its normalizer count, and
    their completion tokens.

    `truncated` (N,) marks completions that hit the length cap, `tied` (B,) the tied groups.
    An excluded sequence leaves the loss and the normalizer alike; an empty completion that is
    not excluded still counts as a sequence.
    """
    group_size = completion_mask.shape[0] // tied.shape[0]
    included = torch.ones(completion_mask.shape[0], dtype=torch.bool)  # (N,)
    if exclude_tied:
        included &= ~tied.cpu().repeat_interleave(group_size)
    if mask_truncated:
        included &= ~truncated.cpu().bool()
    included = included.to(completion_mask.device)
    return included, completion_mask.bool() & included.unsqueeze(1)  # (N,), (N, T)


def top_entropy_mask(entropy: torch.Tensor, completion_mask: torch.Tensor,
                     fraction: float) -> torch.Tensor:
    """Keep only the `fraction` of masked tokens with the highest entropy (the high-entropy
    "forking" tokens of Wang et al., 2025); ties at the threshold are kept."""
    mask = completion_mask.bool()
    values = entropy[mask].float()  # (M,)
    if fraction >= 1.0 or values.numel() == 0:
        return mask
    k = max(1, math.ceil(fraction * values.numel()))
    threshold = values.topk(k).values.min()
    return mask & (entropy.float() >= threshold)  # (N, T)
