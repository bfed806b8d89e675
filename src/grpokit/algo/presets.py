"""GRPO, Dr. GRPO, DAPO and GSPO as values of independent knobs (DESIGN.md §3 table).

A preset fills the `algo` section of the config when it is built; any knob the user sets
explicitly wins.
"""

from __future__ import annotations

from typing import Any

_COMMON = dict(estimator="grpo", scale="group", loss="clip", ratio="token", clip_low=0.2,
               clip_high=0.2, aggregation="seq_mean_token_mean", beta=0.0, kl="k3",
               dynamic_sampling=False, exclude_tied=False, mask_truncated=False,
               overlong_penalty=False, sapo_tau_pos=1.0, sapo_tau_neg=1.05, cov_control="none",
               cov_ratio=2e-4, kl_in_reward=False)

PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath (Shao et al., 2024), eq. 3 with the k3 KL of eq. 4.
    "grpo": dict(_COMMON, beta=0.04),
    # Dr. GRPO (Liu et al., 2025): no std scaling, constant-length normalizer, no KL.
    "dr_grpo": dict(_COMMON, scale="none", aggregation="seq_sum_norm"),
    # DAPO (Yu et al., 2025): clip-higher, token-mean, dynamic sampling, overlong shaping, no KL.
    "dapo": dict(_COMMON, clip_high=0.28, aggregation="token_mean", dynamic_sampling=True,
                 overlong_penalty=True),
    # GSPO (Zheng et al., 2025): sequence-level ratio with tight clipping, no KL.
    "gspo": dict(_COMMON, ratio="sequence", clip_low=3e-4, clip_high=4e-4),
    # GSPO-token (Zheng et al., 2025, §4.3): GSPO's ratio value with each token's own gradient,
    # for per-token advantages.
    "gspo_token": dict(_COMMON, ratio="sequence_token", clip_low=3e-4, clip_high=4e-4),
    # CISPO (MiniMax-M1, 2025, eq. 4): the clipped weight held fixed, no lower bound, token mean;
    # the paper tunes the cap, grpokit takes 1 + 4 = 5.
    "cispo": dict(_COMMON, loss="cispo", clip_low=1.0, clip_high=4.0, aggregation="token_mean"),
    # SAPO (Gao et al., 2025): soft gate, τ_pos = 1.0, τ_neg = 1.05, token mean.
    "sapo": dict(_COMMON, loss="sapo", aggregation="token_mean"),
    # GMPO (Zhao et al., 2025): geometric mean of the token ratios, log-space band (−0.4, 0.4).
    "gmpo": dict(_COMMON, loss="gmpo", clip_low=0.4, clip_high=0.4),
    # REINFORCE++ (Hu et al., 2025): a k1 KL folded into each token's reward, the returns
    # whitened over the batch's tokens; β = 0.01 (the paper tunes it).
    "reinforce_pp": dict(_COMMON, estimator="reinforce_pp", scale="batch", kl_in_reward=True,
                         beta=0.01, kl="k1"),
    # REINFORCE++-baseline: the group mean as baseline, then whitened over the batch.
    "reinforce_pp_baseline": dict(_COMMON, scale="whiten"),
    # GDPO (Liu et al., 2026): each reward function normalized in its group, summed, whitened.
    "gdpo": dict(_COMMON, estimator="gdpo"),
    # Clip-Cov (Cui et al., 2025, §4): the clipped surrogate with the gradient of a random 0.02%
    # of the tokens whose covariance lies in (1, 5) taken away.
    "clip_cov": dict(_COMMON, cov_control="clip_cov", cov_ratio=2e-4, aggregation="token_mean"),
    # KL-Cov (same paper): the unclipped policy gradient, |log ρ| on the top 0.2% covariance
    # tokens (the paper's 7B setting).
    "kl_cov": dict(_COMMON, loss="pg", cov_control="kl_cov", cov_ratio=2e-3,
                   aggregation="token_mean"),
    # On-policy distillation: no outcome advantage, the per-token reverse-KL advantage
    # log π_teacher − log π_old on the student's samples (needs algo.teacher).
    "distill": dict(_COMMON, estimator="none", aggregation="token_mean"),
}


def preset_values(name: str) -> dict[str, Any]:
    """The knob values of a preset, as a fresh dict."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return dict(PRESETS[name])
