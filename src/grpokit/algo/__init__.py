"""The GRPO math: pure torch, no transformers or torch.distributed (DESIGN.md §3)."""

from grpokit.algo.advantages import (
    batch_advantages,
    combine_rewards,
    compute_advantages,
    gdpo_advantages,
    outcome_advantages,
    process_advantages,
    register_estimator,
    tied_groups,
)
from grpokit.algo.correction import rollout_correction_weights
from grpokit.algo.dpo import (
    dpo_loss,
    implicit_rewards,
    preference_metrics,
    sequence_logprobs,
)
from grpokit.algo.losses import (
    LossKnobs,
    aggregate,
    clipped_surrogate,
    importance_ratio,
    kl_penalty,
    per_token_loss,
    policy_loss,
)
from grpokit.algo.selective import logprobs_from_logits, selective_logprobs
from grpokit.algo.surrogates import register_loss
from grpokit.algo.masks import is_tied, loss_mask, top_entropy_mask
from grpokit.algo.presets import PRESETS, preset_values

__all__ = [
    "LossKnobs", "PRESETS", "aggregate", "batch_advantages", "clipped_surrogate",
    "combine_rewards", "compute_advantages", "dpo_loss", "gdpo_advantages", "outcome_advantages",
    "register_estimator", "register_loss", "implicit_rewards", "importance_ratio",
    "is_tied", "kl_penalty", "logprobs_from_logits", "loss_mask", "per_token_loss", "policy_loss",
    "preference_metrics", "preset_values", "process_advantages", "rollout_correction_weights",
    "selective_logprobs", "sequence_logprobs", "tied_groups", "top_entropy_mask",
]
