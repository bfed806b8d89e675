"""The config sections of the stages beside GRPO: `grpokit sft` (docs/sft.md), `grpokit dpo`
(docs/dpo.md) and `grpokit ppo` (docs/ppo.md). `grpokit.config` puts them in the tree as `sft`,
`dpo` and `ppo` and re-exports them."""

from __future__ import annotations

from dataclasses import dataclass

from grpokit.config.typed import choice

DPO_REFERENCES = ("copy", "adapter_off", "precomputed")


@dataclass
class SFTConfig:
    batch_size: int = 8
    """Rows per optimizer step (drawn by the seeded, resumable row order)."""
    max_target_length: int = 512
    """The longest target in tokens, EOS included: a longer row is an error naming it, never
    cut."""


@dataclass
class DPOConfig:
    batch_size: int = 8
    """Pairs per optimizer step (drawn by the seeded, resumable row order)."""
    max_completion_length: int = 512
    """The longest chosen or rejected completion in tokens, EOS included: a longer pair is an
    error naming it, never cut."""
    beta: float = 0.1
    """β: a completion's implicit reward is β · Σ_t (log π − log π_ref) over its tokens."""
    label_smoothing: float = 0.0
    """ε of conservative DPO: the share of pairs taken as mislabelled, in [0, 0.5)."""
    reference: str = choice("auto", "auto", *DPO_REFERENCES)
    """copy: a frozen copy of the start model; adapter_off: the LoRA base with the adapter
    disabled; precomputed: reference log-probs computed once at start, cached in the run folder;
    auto: adapter_off with LoRA, else copy (resolved when the config is built)."""


@dataclass
class PPOConfig:
    value_model: str = choice("separate", "separate", "head")
    """separate: a value network initialised from the policy (its own decoder and optimizer
    state); head: a linear value head on the policy's hidden states (detached)."""
    gamma: float = 1.0
    """Discount γ of GAE, in [0, 1]."""
    gae_lambda: float = 0.95
    """λ of GAE, in [0, 1]: 0 is the one-step TD error, 1 the Monte-Carlo return minus V."""
    value_clip: float | None = 0.2
    """Value-loss clipping: the new value is kept within ±value_clip of the old (null: off)."""
    value_lr: float = 1e-5
    """Learning rate of the critic's AdamW (constant; betas and weight decay of train)."""
    whiten_advantages: bool = True
    """Normalize the GAE advantages to mean 0, std 1 over the step's completion tokens."""


def stage_checks(sft: SFTConfig, dpo: DPOConfig, ppo: PPOConfig,
                 lora: bool) -> list[tuple[bool, str]]:
    """Cross-field checks of the sft, dpo and ppo sections (config.validate runs them)."""
    return [
        (min(sft.batch_size, sft.max_target_length, dpo.batch_size,
             dpo.max_completion_length) >= 1,
         f"sft.batch_size, sft.max_target_length, dpo.batch_size and dpo.max_completion_length "
         f"must be >= 1, got {sft.batch_size}, {sft.max_target_length}, {dpo.batch_size}, "
         f"{dpo.max_completion_length}"),
        (dpo.beta > 0, f"dpo.beta must be > 0, got {dpo.beta}"),
        (0 <= dpo.label_smoothing < 0.5,
         f"dpo.label_smoothing must be in [0, 0.5), got {dpo.label_smoothing}"),
        (dpo.reference != "adapter_off" or lora,
         "dpo.reference=adapter_off needs model.lora.enabled=true; valid values: "
         f"{', '.join(DPO_REFERENCES)}"),
        (0 <= ppo.gamma <= 1 and 0 <= ppo.gae_lambda <= 1,
         f"ppo.gamma and ppo.gae_lambda must be in [0, 1], got {ppo.gamma}, {ppo.gae_lambda}"),
        (ppo.value_clip is None or ppo.value_clip > 0,
         f"ppo.value_clip must be > 0 or null, got {ppo.value_clip}"),
        (ppo.value_lr > 0, f"ppo.value_lr must be > 0, got {ppo.value_lr}"),
    ]
