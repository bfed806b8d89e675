"""The config tree assembled (`Config`), its cross-field checks, and YAML in and out with dotted
command-line overrides. Errors are raised while the config is built, naming the key and the valid
keys or values."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grpokit.config.run import (
    CheckpointConfig,
    EvalConfig,
    LogConfig,
    RewardRunnerConfig,
    run_checks,
)
from grpokit.config.sections import (
    LEFT_OUT,
    AlgoConfig,
    DataConfig,
    ModelConfig,
    RolloutConfig,
    TrainConfig,
    VLLMConfig,
)
from grpokit.config.stages import DPOConfig, PPOConfig, SFTConfig, stage_checks
from grpokit.config.tools import ToolsConfig, tool_checks
from grpokit.config.typed import build, merge, parse_overrides
from grpokit.errors import ConfigError, read_yaml
from grpokit.rewards.base import RewardSpec
from grpokit.rewards.user import note_config_dir


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompts and their reward fields."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Sampling of completions."""
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    """Multi-turn episodes with tools (docs/tools.md)."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """The GRPO variant's knobs."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimization."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out evaluation."""
    log: LogConfig = field(default_factory=LogConfig)
    """Metrics and samples."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """State on disk."""
    rewards: list[RewardSpec] | None = None
    """Reward functions [{name, weight, args}]; null uses the task's defaults."""
    reward_runner: RewardRunnerConfig = field(default_factory=RewardRunnerConfig)
    """Error handling and deadlines of reward scoring."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """`grpokit sft`: rows per step and the longest target (docs/sft.md)."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """`grpokit dpo`: β, label smoothing and the reference (docs/dpo.md)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """`grpokit ppo`: the critic, GAE and the value loss (docs/ppo.md)."""

    def __post_init__(self) -> None:
        if self.algo.overlong_buffer is LEFT_OUT:
            self.algo.overlong_buffer = max(self.rollout.max_new_tokens // 4, 1)
        if self.dpo.reference == "auto":
            self.dpo.reference = "adapter_off" if self.model.lora.enabled else "copy"


# Keys of earlier releases, each split into independent knobs.
_REPLACED = {
    "algo.tied_groups": "algo.dynamic_sampling=true (was drop_refill; with algo.max_refill_rounds) "
                        "and algo.exclude_tied=true (was exclude); keep is both false",
    "algo.overlong": "algo.mask_truncated=true (was mask) and algo.overlong_penalty=true (was "
                     "shape; with algo.overlong_buffer); keep is both false",
    "log.tensorboard": "log.report_to: [tensorboard] (was true) or [] (was false)",
    **{f"rollout.vllm_{f.name}": f"rollout.vllm.{f.name} (the vllm engine's settings are the "
                                 f"section rollout.vllm)" for f in dataclasses.fields(VLLMConfig)},
}


def _vllm_checks(v: VLLMConfig) -> list[tuple[bool, str]]:
    """The rollout.vllm section (checked whatever the engine, so a config stays valid when only
    rollout.engine changes)."""
    return [
        (0 < v.gpu_memory_utilization <= 1,
         f"rollout.vllm.gpu_memory_utilization must be in (0, 1], got "
         f"{v.gpu_memory_utilization}"),
        (v.block_size >= 16 and v.block_size % 16 == 0,
         f"rollout.vllm.block_size must be a positive multiple of 16 (vLLM's attention kernels "
         f"take 16s on GPU, 32s on CPU), got {v.block_size}"),
        (v.kv_cache_gib is None or v.kv_cache_gib > 0,
         f"rollout.vllm.kv_cache_gib must be > 0 or null, got {v.kv_cache_gib}"),
        (v.max_model_len is None or v.max_model_len >= 1,
         f"rollout.vllm.max_model_len must be >= 1 or null, got {v.max_model_len}"),
        (v.probe_every >= 0, f"rollout.vllm.probe_every must be >= 0 (0: never), got "
                             f"{v.probe_every}"),
        (v.probe_tolerance is None or v.probe_tolerance > 0,
         f"rollout.vllm.probe_tolerance must be > 0 or null, got {v.probe_tolerance}"),
    ]


def _rollout_checks(cfg: Config) -> list[tuple[bool, str]]:
    """The rollout.vllm section and the tools section (multi-turn episodes)."""
    return _vllm_checks(cfg.rollout.vllm) + tool_checks(cfg.tools, cfg.rollout.engine)


def _teacher_and_cov_checks(a: Any) -> list[tuple[bool, str]]:
    """On-policy distillation (algo.teacher) and Clip-Cov / KL-Cov."""
    return [
        (0 < a.cov_ratio <= 1 and a.clip_cov_low < a.clip_cov_high and a.kl_cov_coef >= 0,
         f"algo.cov_ratio must be in (0, 1], algo.clip_cov_low < algo.clip_cov_high and "
         f"algo.kl_cov_coef >= 0; got {a.cov_ratio}, [{a.clip_cov_low}, {a.clip_cov_high}], "
         f"{a.kl_cov_coef}"),
        (a.teacher_coef > 0, f"algo.teacher_coef must be > 0, got {a.teacher_coef}"),
        (a.estimator != "none" or a.teacher is not None,
         "algo.estimator=none trains on nothing without algo.teacher (preset distill): set "
         "algo.teacher to the teacher model's folder or hub name"),
        (not a.kl_in_reward or (a.estimator == "reinforce_pp" and a.beta > 0),
         "algo.kl_in_reward folds β·KL into REINFORCE++'s returns: it needs algo.estimator="
         f"reinforce_pp and algo.beta > 0 (got {a.estimator!r}, {a.beta})"),
        (a.teacher is None or a.loss != "gmpo",
         "algo.loss=gmpo takes one advantage per completion; algo.teacher makes them per token"),
    ]


def validate(cfg: Config) -> None:
    """Cross-field checks that a single field's type cannot express."""
    r, t, a = cfg.rollout, cfg.train, cfg.algo
    checks = [
        (r.group_size >= 2, f"rollout.group_size must be at least 2 (got {r.group_size}): "
                            "a group of one has no baseline"),
        (r.prompts_per_step >= 1, "rollout.prompts_per_step must be at least 1"),
        (r.max_new_tokens >= 1, "rollout.max_new_tokens must be at least 1"),
        (r.temperature > 0, "rollout.temperature must be > 0: greedy completions of one prompt "
                            "are identical, so every group ties (eval.temperature may be 0)"),
        (0 < r.top_p <= 1, "rollout.top_p must be in (0, 1]"),
        (t.steps >= 0 and t.epochs_per_batch >= 1, "train.steps >= 0 and train.epochs_per_batch >= 1"),
        (t.minibatches >= 1 and (r.prompts_per_step * r.group_size) % t.minibatches == 0,
         f"train.minibatches={t.minibatches} must divide the rollout batch of "
         f"{r.prompts_per_step * r.group_size} completions (prompts_per_step × group_size)"),
        (t.micro_batch_size >= 1 and t.max_tokens_per_micro_batch >= 1,
         "train.micro_batch_size and train.max_tokens_per_micro_batch must be at least 1"),
        (t.lr > 0, "train.lr must be positive"),
        (len(t.adam_betas) == 2 and all(0 <= b < 1 for b in t.adam_betas),
         f"train.adam_betas must be two numbers in [0, 1), got {t.adam_betas}"),
        (min(t.weight_decay, t.warmup_steps, t.max_grad_norm) >= 0,
         "train.weight_decay, train.warmup_steps and train.max_grad_norm must be >= 0"),
        (t.logprob_chunk_size >= 1 and cfg.data.max_prompt_length >= 1 and r.top_k >= 0,
         "train.logprob_chunk_size and data.max_prompt_length must be >= 1, rollout.top_k >= 0"),
        (cfg.model.lora.rank >= 1 and 0 <= cfg.model.lora.dropout < 1 and a.adv_eps >= 0,
         "model.lora.rank must be >= 1, model.lora.dropout in [0, 1), algo.adv_eps >= 0"),
        (0 <= a.clip_low <= 1, "algo.clip_low must be in [0, 1] (1: no lower bound)"),
        (a.sapo_tau_pos > 0 and a.sapo_tau_neg > 0,
         f"algo.sapo_tau_pos and algo.sapo_tau_neg must be > 0, got {a.sapo_tau_pos}, "
         f"{a.sapo_tau_neg}"),
        (a.estimator != "gdpo" or a.scale != "whiten",
         "algo.estimator=gdpo whitens the summed advantages itself; take algo.scale group, batch "
         "or none (the per-reward divisor)"),
        (a.clip_high >= 0, "algo.clip_high must be >= 0"),
        (a.dual_clip is None or a.dual_clip > 1, "algo.dual_clip must be > 1 (or null: off)"),
        (a.beta >= 0, "algo.beta must be >= 0"),
        (len(a.tie_interval) == 2 and a.tie_interval[0] < a.tie_interval[1],
         "algo.tie_interval must be [lo, hi] with lo < hi"),
        (0 < a.top_entropy_fraction <= 1, "algo.top_entropy_fraction must be in (0, 1]"),
        (1 < a.rollout_correction_threshold < float("inf"),  # NaN fails both comparisons
         f"algo.rollout_correction_threshold must be a finite number > 1, got "
         f"{a.rollout_correction_threshold}"),
        (a.max_refill_rounds >= 0 and a.ref_refresh_steps >= 0 and a.overlong_buffer >= 1,
         "algo.max_refill_rounds and algo.ref_refresh_steps must be >= 0, algo.overlong_buffer "
         ">= 1"),
        (not (cfg.model.lora.enabled and a.ref_refresh_steps > 0),
         "algo.ref_refresh_steps needs full fine-tuning: with LoRA the reference is the base model"),
        (cfg.data.task is not None or cfg.data.path is not None,
         "data: set either data.task (a built-in task) or data.path (a dataset file)"),
        (0 <= cfg.data.eval_fraction < 1, "data.eval_fraction must be in [0, 1)"),
    ] + _rollout_checks(cfg) + _teacher_and_cov_checks(cfg.algo) + run_checks(cfg.eval, cfg.log, cfg.checkpoint, cfg.reward_runner) \
        + stage_checks(cfg.sft, cfg.dpo, cfg.ppo, cfg.model.lora.enabled)
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (optional), apply dotted overrides, fill the preset and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        note_config_dir(path.parent)  # reward import paths are searched from here first
    data = merge(data, parse_overrides(overrides or []))
    cfg = build(Config, data, replaced=_REPLACED)
    validate(cfg)
    return cfg


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A built config with dotted overrides applied on top, built and checked again."""
    cfg = build(Config, merge(to_dict(cfg), parse_overrides(overrides)), replaced=_REPLACED)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (for YAML and JSON)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML; load_config(path) rebuilds the same config."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
