"""The configuration tree: dataclasses with a docstring under every field, YAML in and out, dotted
command-line overrides. Errors are raised while the config is built, naming the key and the valid
keys or values. The defaults are the built-in run of `grpokit train` with no arguments: the embedded
SmolLM2-135M-Instruct on one-digit arithmetic, sized to finish in minutes on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grpokit.algo.presets import PRESETS, preset_values
from grpokit.rewards.base import RewardSpec
from grpokit.rewards.user import note_config_dir
from grpokit.run_config import CheckpointConfig, EvalConfig, LogConfig, RewardRunnerConfig
from grpokit.stage_config import DPOConfig, PPOConfig, stage_checks
from grpokit.tool_config import ToolsConfig, tool_checks
from grpokit.typed_tree import ConfigError, build, choice, merge, parse_overrides, read_yaml


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train a LoRA adapter instead of all weights (the reference is the base, adapter disabled)."""
    rank: int = 16
    """LoRA rank r."""
    alpha: float = 32.0
    """LoRA scaling alpha (the update is scaled by alpha / rank)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Names of the linear modules that get adapters."""
    save_merged: bool = False
    """Also write the merged model (base + adapter) in checkpoints."""


@dataclass
class ModelConfig:
    path: str = "smollm2-135m-instruct"
    """A local Hugging Face model folder, a name in the local HF cache, or the embedded alias."""
    dtype: str = choice("float32", "float32", "bfloat16")
    """Dtype of the trained weights (fp32 master weights are recommended)."""
    autocast: str = choice("auto", "auto", "bf16", "off")
    """bf16 autocast for forward passes: auto = on where a matmul probe measures bf16 faster
    (CPU, cached per machine) or the GPU supports it."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    lean_mlp: bool = True
    """Training passes keep only gate(x) and up(x) of a gated (SwiGLU) MLP for backward and
    recompute silu(gate)·up there: two of the layer's largest activations fewer, the same
    gradients (grpokit/lean.py; Llama, Mistral, Qwen2, Qwen3 MLPs)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapter settings."""


@dataclass
class DataConfig:
    task: str | None = "arithmetic"
    """A built-in task (arithmetic, countdown, humaneval, multiply); null when `path` names a
    dataset."""
    task_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the built-in task (e.g. digits, style, train_size)."""
    path: str | None = None
    """A user dataset: JSONL, JSON, CSV, parquet file, a folder, or a hub name (openai/gsm8k)."""
    config: str | None = None
    """The configuration of a dataset repository (`main` of openai/gsm8k); null for none."""
    split: str = "train"
    """The split of `path` to train on (a repository's or DatasetDict's; `train[:1000]` slices)."""
    eval_path: str | None = None
    """A separate held-out dataset; else `eval_split`, else `eval_fraction` of `path`."""
    eval_split: str | None = None
    """A split of `path` held out for evaluation (`test`); null: `eval_fraction` is held out."""
    eval_fraction: float = 0.05
    """Share of a user dataset held out for evaluation when no eval_path or eval_split is given."""
    prompt_column: str = "prompt"
    """Column holding a plain prompt string."""
    messages_column: str | None = None
    """Column holding a chat `messages` list (used instead of prompt_column when set)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Renames dataset columns to the names reward functions read, e.g. {solution: answer}."""
    system_prompt: str | None = None
    """System prompt added to every prompt (replaces the task's default)."""
    max_prompt_length: int = 512
    """Longest prompt in tokens; a longer prompt is an error naming the row, never truncated."""
    seed: int = 0
    """Seed of the prompt order (epochs are seeded permutations)."""


@dataclass
class RolloutConfig:
    prompts_per_step: int = 8
    """B: prompts sampled per training step."""
    group_size: int = 8
    """G: completions sampled per prompt (at least 2)."""
    max_new_tokens: int = 32
    """Largest completion length in tokens."""
    temperature: float = 1.0
    """Sampling temperature, > 0 (training log-probs use the same temperature)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 disables it)."""
    top_k: int = 0
    """Top-k sampling (0 disables it)."""
    engine: str = choice("hf", "hf", "generate", "vllm")
    """hf: shared-prefill KV-cache sampler; generate: transformers `generate` (reference path);
    vllm: colocated vLLM engine with weight sync and a sync probe (needs `make setup-vllm`)."""
    vllm_kv_cache_gib: float | None = 1.0
    """vllm: KV-cache size in GiB; null lets vLLM take vllm_gpu_memory_utilization instead."""
    vllm_gpu_memory_utilization: float = 0.5
    """vllm: share of GPU memory (CPU: of RAM) vLLM may take when vllm_kv_cache_gib is null."""
    vllm_block_size: int = 32
    """vllm: KV-cache block size in tokens, a multiple of 16 (the CPU backend wants 32s)."""
    vllm_max_model_len: int | None = None
    """vllm: longest prompt + completion in tokens (null: the model's own limit)."""
    vllm_enforce_eager: bool = True
    """vllm: no CUDA-graph / torch.compile capture (start-up in seconds instead of minutes)."""
    vllm_probe_tolerance: float | None = None
    """vllm: largest |Δ log-prob| of the sync probe (null: 1e-3 for fp32, 0.5 for bf16)."""
    vllm_probe_every: int = 1
    """vllm: run the sync probe after every N-th weight sync (0: never, not even at start-up)."""


@dataclass
class AlgoConfig:
    preset: str = choice("grpo", *PRESETS)
    """Fills every knob below that is left null when the config is built (explicit values win)."""
    estimator: str | None = choice(None, None, "grpo", "rloo")
    """Advantage baseline: group mean (grpo) or leave-one-out mean (rloo)."""
    scale: str | None = choice(None, None, "group", "batch", "none")
    """Advantage divisor: group std, batch std, or none (Dr. GRPO)."""
    adv_eps: float = 1e-6
    """eps added to the std in the advantage denominator."""
    ratio: str | None = choice(None, None, "token", "sequence")
    """Importance ratio level: token (GRPO) or sequence (GSPO)."""
    clip_low: float | None = None
    """ε_low of the clipped surrogate."""
    clip_high: float | None = None
    """ε_high of the clipped surrogate (DAPO clip-higher: 0.28)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages (null disables)."""
    beta: float | None = None
    """KL coefficient; 0 loads no reference model."""
    kl: str | None = choice(None, None, "k1", "k2", "k3")
    """KL estimator."""
    aggregation: str | None = choice(None, None, "seq_mean_token_mean", "token_mean", "seq_sum_norm")
    """How per-token losses are averaged over an optimizer step."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    dynamic_sampling: bool | None = None
    """DAPO dynamic sampling: drop groups whose rewards tie and refill with fresh prompts."""
    max_refill_rounds: int = 3
    """Dynamic sampling: extra generation rounds per step before training on fewer groups."""
    exclude_tied: bool | None = None
    """Leave tied groups out of the loss and of its normalizer (they stay in the metrics)."""
    mask_truncated: bool | None = None
    """Leave completions cut at rollout.max_new_tokens out of the loss and its normalizer."""
    overlong_penalty: bool | None = None
    """Add DAPO's soft overlong penalty (eq. 13) as the reward function `overlong`."""
    overlong_buffer: int | None = None
    """Length of the penalty's linear ramp before max_new_tokens (null: a quarter of it)."""
    tie_rule: str = choice("equal", "equal", "mean_outside")
    """A group is tied when its rewards are all equal, or when its mean is outside tie_interval."""
    tie_interval: list[float] = field(default_factory=lambda: [0.0, 1.0])
    """Open interval (lo, hi) for tie_rule=mean_outside."""
    ref_refresh_steps: int = 0
    """Copy the policy into the reference model every N steps (0: frozen reference)."""
    top_entropy_fraction: float = 1.0
    """Train only on this share of tokens with the highest entropy (1.0: all tokens); costs one
    no-grad forward pass per step to find the batch's threshold."""
    rollout_correction: str = choice("none", "none", "tis", "mis")
    """Sampler–trainer mismatch correction: none, tis (truncated IS) or mis (masked IS)."""
    rollout_correction_level: str = choice("token", "token", "sequence")
    """Importance ratio of the correction per token, or per sequence (summed log-ratio)."""
    rollout_correction_threshold: float = 2.0
    """C > 1: tis weighs by min(ρ, C); mis drops tokens (or sequences) whose ρ exceeds C."""
    sampling_support: str = choice("replay", "replay", "full")
    """With rollout.top_k / top_p: replay computes the trainer's log-probs over the set the
    sampler kept at each position (the sampler's distribution); full over the whole vocabulary
    (the ratio to the sampler then carries the kept mass). Docs: design-notes.md."""

    def __post_init__(self) -> None:
        for key, value in preset_values(self.preset).items():
            if getattr(self, key) is None:
                setattr(self, key, value)


@dataclass
class TrainConfig:
    steps: int = 12
    """Training steps (one rollout batch each)."""
    epochs_per_batch: int = 1
    """μ: passes over each rollout batch."""
    minibatches: int = 1
    """Optimizer steps per pass over a rollout batch."""
    micro_batch_size: int = 32
    """At most this many sequences per forward/backward (gradient accumulation inside a
    minibatch)."""
    max_tokens_per_micro_batch: int = 512
    """At most this many padded tokens per forward/backward, prompts counted once per distinct
    prompt with shared_prefix (a longer sequence runs alone). Bounds activation memory."""
    keep_freed_memory: bool = False
    """Keep memory the C allocator frees for reuse instead of returning it to the system (glibc):
    no page faulting and zero-filling of the same large tensors every micro-batch, at the cost of
    a higher peak where freed blocks do not fit later ones (grpokit/allocator.py,
    docs/performance.md)."""
    shared_prefix: bool = True
    """Run each distinct prompt of a micro-batch once, its completions on its keys and values
    (the same log-probs and gradients, fewer tokens). Off where the model's cache cannot take it
    (sliding-window attention): printed at start."""
    lr: float = 1e-5
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    """AdamW betas."""
    schedule: str = choice("constant", "constant", "linear", "cosine")
    """Learning-rate schedule after warm-up."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping threshold (0 disables)."""
    seed: int = 0
    """Seed of sampling, initialisation and everything random."""
    parallel: str = choice("ddp", "ddp", "fsdp")
    """Over several ranks: ddp (whole model per rank) or fsdp (FSDP2 shards policy and reference)."""
    logprob_chunk_size: int = 256
    """Positions per chunk of the vocabulary projection (a chunk's fp32 logits: 4·V bytes each)."""


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
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """`grpokit dpo`: β, label smoothing and the reference (docs/dpo.md)."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """`grpokit ppo`: the critic, GAE and the value loss (docs/ppo.md)."""

    def __post_init__(self) -> None:
        if self.algo.overlong_buffer is None:
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
}


def _vllm_checks(r: RolloutConfig) -> list[tuple[bool, str]]:
    """The rollout.vllm_* fields (checked whatever the engine, so a config stays valid when only
    rollout.engine changes)."""
    return [
        (0 < r.vllm_gpu_memory_utilization <= 1,
         f"rollout.vllm_gpu_memory_utilization must be in (0, 1], got "
         f"{r.vllm_gpu_memory_utilization}"),
        (r.vllm_block_size >= 16 and r.vllm_block_size % 16 == 0,
         f"rollout.vllm_block_size must be a positive multiple of 16 (vLLM's attention kernels "
         f"take 16s on GPU, 32s on CPU), got {r.vllm_block_size}"),
        (r.vllm_kv_cache_gib is None or r.vllm_kv_cache_gib > 0,
         f"rollout.vllm_kv_cache_gib must be > 0 or null, got {r.vllm_kv_cache_gib}"),
        (r.vllm_max_model_len is None or r.vllm_max_model_len >= 1,
         f"rollout.vllm_max_model_len must be >= 1 or null, got {r.vllm_max_model_len}"),
        (r.vllm_probe_every >= 0, f"rollout.vllm_probe_every must be >= 0 (0: never), got "
                                  f"{r.vllm_probe_every}"),
        (r.vllm_probe_tolerance is None or r.vllm_probe_tolerance > 0,
         f"rollout.vllm_probe_tolerance must be > 0 or null, got {r.vllm_probe_tolerance}"),
    ]


def _rollout_checks(cfg: Config) -> list[tuple[bool, str]]:
    """The rollout.vllm_* fields and the tools section (multi-turn episodes)."""
    return _vllm_checks(cfg.rollout) + tool_checks(cfg.tools, cfg.rollout.engine)


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
        (min(cfg.eval.num_prompts, cfg.eval.every, cfg.log.samples_every, cfg.log.num_samples,
             cfg.log.report_every, cfg.checkpoint.every, cfg.checkpoint.keep_last) >= 0
         and cfg.eval.samples_per_prompt >= 1,
         "eval.num_prompts, eval.every, log.samples_every, log.num_samples, log.report_every, "
         "checkpoint.every and checkpoint.keep_last must be >= 0, eval.samples_per_prompt >= 1"),
        (0 <= cfg.reward_runner.max_error_rate <= 1 and cfg.reward_runner.timeout > 0,
         "reward_runner.max_error_rate must be in [0, 1] and reward_runner.timeout > 0"),
        (cfg.model.lora.rank >= 1 and 0 <= cfg.model.lora.dropout < 1 and a.adv_eps >= 0,
         "model.lora.rank must be >= 1, model.lora.dropout in [0, 1), algo.adv_eps >= 0"),
        (a.clip_low is None or 0 <= a.clip_low < 1, "algo.clip_low must be in [0, 1)"),
        (a.clip_high is None or a.clip_high >= 0, "algo.clip_high must be >= 0"),
        (a.dual_clip is None or a.dual_clip > 1, "algo.dual_clip must be > 1 (or null)"),
        (a.beta is None or a.beta >= 0, "algo.beta must be >= 0"),
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
        (cfg.eval.temperature > 0 or cfg.eval.samples_per_prompt == 1,
         "eval.samples_per_prompt > 1 needs eval.temperature > 0 (greedy samples are identical)"),
        (all(1 <= k <= cfg.eval.samples_per_prompt for k in cfg.eval.k),
         f"eval.k values must be between 1 and eval.samples_per_prompt "
         f"({cfg.eval.samples_per_prompt}), got {cfg.eval.k}"),
    ] + _rollout_checks(cfg) + stage_checks(cfg.dpo, cfg.ppo, cfg.model.lora.enabled)
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
