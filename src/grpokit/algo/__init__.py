"""The GRPO math: pure torch, no transformers or torch.distributed (DESIGN.md §3)."""

from grpokit.algo.advantages import (
    combine_rewards,
    compute_advantages,
    process_advantages,
    tied_groups,
)
from grpokit.algo.losses import (
    LossKnobs,
    aggregate,
    clipped_surrogate,
    importance_ratio,
    kl_penalty,
    logprobs_from_logits,
    per_token_loss,
    policy_loss,
    selective_logprobs,
)
from grpokit.algo.presets import PRESETS, preset_values

__all__ = [
    "LossKnobs", "PRESETS", "aggregate", "clipped_surrogate", "combine_rewards",
    "compute_advantages", "importance_ratio", "kl_penalty", "logprobs_from_logits",
    "per_token_loss", "policy_loss", "preset_values", "process_advantages",
    "selective_logprobs", "tied_groups",
]
