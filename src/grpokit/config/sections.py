"""The sections of the config tree that describe the model and the training: model (and LoRA),
data, rollout (and its vLLM engine), algo and train (`grpokit.config` assembles the tree)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grpokit.algo.advantages import BUILT_IN_ESTIMATORS, SCALES
from grpokit.algo.covariance import COV_CONTROLS
from grpokit.algo.presets import PRESETS, preset_values
from grpokit.algo.surrogates import BUILT_IN_LOSSES, RATIO_LEVELS
from grpokit.config.typed import choice

LEFT_OUT: Any = None
"""The default of a knob the preset fills (or, for algo.overlong_buffer, the config resolves):
never left in a built config."""


def preset_knob(*choices: Any, import_paths: bool = False) -> Any:
    """An algo knob whose value the preset gives unless the config sets it (`choices`: the valid
    values, when the knob takes a name; `import_paths`: or a user's own, `module:function`).
    Null is not a value of it."""
    metadata = {"choices": choices, "import_paths": import_paths} if choices else {}
    return field(default=LEFT_OUT, metadata=metadata)


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
    gradients (grpokit/runtime/lean.py; Llama, Mistral, Qwen2, Qwen3 MLPs)."""
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
class VLLMConfig:
    kv_cache_gib: float | None = 1.0
    """KV-cache size in GiB; null lets vLLM take `gpu_memory_utilization` instead."""
    gpu_memory_utilization: float = 0.5
    """Share of GPU memory (CPU: of RAM) vLLM may take when `kv_cache_gib` is null."""
    block_size: int = 32
    """KV-cache block size in tokens, a multiple of 16 (the CPU backend wants 32s)."""
    max_model_len: int | None = None
    """Longest prompt + completion in tokens (null: the model's own limit)."""
    enforce_eager: bool = True
    """No CUDA-graph / torch.compile capture (start-up in seconds instead of minutes)."""
    probe_tolerance: float | None = None
    """Largest |Δ log-prob| of the sync probe (null: 1e-3 for fp32, 0.5 for bf16)."""
    probe_every: int = 1
    """Run the sync probe after every N-th weight sync (0: never, not even at start-up)."""


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
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """The vllm engine's settings (read whatever the engine, checked always)."""


@dataclass
class AlgoConfig:
    preset: str = choice("grpo", *PRESETS)
    """Fills every knob below marked "preset" that the config leaves out (explicit values win);
    the built config holds concrete values only (null is not a value of these knobs)."""
    estimator: str = preset_knob(*BUILT_IN_ESTIMATORS, import_paths=True)
    """Preset. Advantages: group-mean baseline (grpo), leave-one-out mean (rloo), batch mean
    (reinforce_pp), each reward normalized in its group then whitened (gdpo), none (0: only the
    teacher's per-token term trains, with algo.teacher), or a user's own estimator by import path
    (module:function; algo/advantages.py, the Estimator protocol)."""
    scale: str = preset_knob(*SCALES)
    """Preset. Advantage divisor: group std, batch std, whiten (re-centred on the batch, divided
    by its std: REINFORCE++-baseline), or none (Dr. GRPO)."""
    loss: str = preset_knob(*BUILT_IN_LOSSES, import_paths=True)
    """Preset. The per-token policy term: clip (PPO's clipped surrogate: GRPO, DAPO, GSPO), pg
    (−ρ·A, no clip), cispo, sapo, gmpo, or a user's own by import path (module:function;
    algo/surrogates.py)."""
    adv_eps: float = 1e-6
    """eps added to the std in the advantage denominator."""
    ratio: str = preset_knob(*RATIO_LEVELS)
    """Preset. Importance ratio level: token (GRPO), sequence (GSPO) or sequence_token
    (GSPO-token: the sequence ratio's value with each token's own gradient)."""
    clip_low: float = preset_knob()
    """Preset. ε_low of the clip band, in [0, 1] (1: no lower bound). gmpo: the band is in log
    space, log ρ ≥ −clip_low."""
    clip_high: float = preset_knob()
    """Preset. ε_high of the clip band (DAPO clip-higher: 0.28; cispo: the weight's cap is
    1 + clip_high). gmpo: log ρ ≤ clip_high."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages (null disables)."""
    beta: float = preset_knob()
    """Preset. KL coefficient; 0 loads no reference model."""
    kl: str = preset_knob("k1", "k2", "k3")
    """Preset. KL estimator."""
    kl_in_reward: bool = preset_knob()
    """Preset. REINFORCE++: fold β·KL into each token's reward instead of the loss (returns
    whitened over the step's tokens; estimator reinforce_pp, β > 0)."""
    aggregation: str = preset_knob("seq_mean_token_mean", "token_mean", "seq_sum_norm")
    """Preset. How per-token losses are averaged over an optimizer step."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    sapo_tau_pos: float = preset_knob()
    """Preset. loss=sapo: the soft gate's temperature for positive advantages."""
    sapo_tau_neg: float = preset_knob()
    """Preset. loss=sapo: the soft gate's temperature for negative advantages (SAPO: ≥ tau_pos,
    so that negative updates far from the old policy fade faster)."""
    cov_control: str = preset_knob(*COV_CONTROLS)
    """Preset. Entropy-collapse control on the step's highest-covariance tokens (Clip-Cov,
    KL-Cov; algo/covariance.py): none, clip_cov or kl_cov. Costs one no-grad forward per step."""
    cov_ratio: float = preset_knob()
    """Preset. The share of the step's loss tokens cov_control acts on (at least one), in (0, 1]."""
    clip_cov_low: float = 1.0
    """clip_cov: the lower bound of a candidate token's covariance."""
    clip_cov_high: float = 5.0
    """clip_cov: the upper bound of a candidate token's covariance."""
    kl_cov_coef: float = 1.0
    """kl_cov: the coefficient of |log π − log π_old| on the selected tokens."""
    teacher: str | None = None
    """On-policy distillation: the teacher model (a folder or hub name, the policy's tokenizer).
    Each token's advantage gains teacher_coef·(log π_teacher − log π_old) (preset distill)."""
    teacher_coef: float = 1.0
    """The weight of the teacher's per-token term in the advantage (> 0)."""
    dynamic_sampling: bool = preset_knob()
    """Preset. DAPO dynamic sampling: drop groups whose rewards tie and refill with fresh prompts."""
    max_refill_rounds: int = 3
    """Dynamic sampling: extra generation rounds per step before training on fewer groups."""
    exclude_tied: bool = preset_knob()
    """Preset. Leave tied groups out of the loss and of its normalizer (they stay in the metrics)."""
    mask_truncated: bool = preset_knob()
    """Preset. Leave completions cut at rollout.max_new_tokens out of the loss and its normalizer."""
    overlong_penalty: bool = preset_knob()
    """Preset. Add DAPO's soft overlong penalty (eq. 13) as the reward function `overlong`."""
    overlong_buffer: int = preset_knob()
    """Length of the penalty's linear ramp before max_new_tokens (left out: a quarter of it,
    resolved when the config is built)."""
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
            if getattr(self, key) is LEFT_OUT:
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
    a higher peak where freed blocks do not fit later ones (grpokit/runtime/allocator.py,
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
