"""GRPO, Dr. GRPO, DAPO and GSPO as values of independent knobs (DESIGN.md §3 table).

A preset fills the `algo` section of the config when it is built; any knob the user sets
explicitly wins.
"""

from __future__ import annotations

from typing import Any

_COMMON = dict(estimator="grpo", scale="group", ratio="token", clip_low=0.2, clip_high=0.2,
               aggregation="seq_mean_token_mean", beta=0.0, kl="k3", dynamic_sampling=False,
               exclude_tied=False, mask_truncated=False, overlong_penalty=False)

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
}


def preset_values(name: str) -> dict[str, Any]:
    """The knob values of a preset, as a fresh dict."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return dict(PRESETS[name])
