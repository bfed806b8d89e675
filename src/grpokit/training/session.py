"""What a run is made of, built from the config: model, tokenizer, reference, task, rewards and
the rollout engine. `grpokit train` and `grpokit eval` build one; `grpokit sft` needs only the
model and the data, and loads them itself."""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpokit.algo.support import Truncation
from grpokit.config import Config, ConfigError
from grpokit.data.base import Task, load_data
from grpokit.rewards.base import RewardSpec
from grpokit.rollout import RolloutEngine, make_engine
from grpokit.rollout.base import Environment
from grpokit.runtime import distributed as dist
from grpokit.runtime import models, precision
from grpokit.sandbox import SandboxUnavailable
from grpokit.tools import make_environment
from grpokit.training.logprobs import CompletionScorer, prefix_sharing_problem
from grpokit.training.parallel import GenerationCopy, Layout, SyncedEngine, lay_out


@dataclass
class Session:
    cfg: Config
    """The resolved config: the task's default rewards written in."""
    model: torch.nn.Module
    """The policy (LoRA-wrapped when configured)."""
    tokenizer: Any
    """The policy's tokenizer (left padding, with a pad token)."""
    reference: torch.nn.Module | None
    """The frozen reference of the KL term; None when β = 0, with LoRA, or for evaluation."""
    task: Task
    """Training and held-out rows."""
    rewards: list[RewardSpec]
    """The reward functions, weighted."""
    engine: RolloutEngine
    """Samples completions from `model`."""
    bf16: bool = False
    """Forward passes run under bf16 autocast (precision.bf16_decision)."""
    layout: Layout | None = None
    """The training pass laid out over the ranks (train.parallel)."""
    prefix_note: str | None = None
    """Why train.shared_prefix is off although asked for (the model cannot take it), else None."""
    precision_note: str | None = None
    """The bf16 decision and why (printed at start)."""
    env: Environment | None = None
    """The environment of multi-turn episodes (tools.environment); None: single-turn."""
    teacher: torch.nn.Module | None = None
    """The frozen teacher of on-policy distillation (algo.teacher); None without one."""

    def __post_init__(self) -> None:
        if self.layout is None:  # a session built by hand (tests): the plain layout
            share, self.prefix_note = shared_prefix(self.cfg, self.model)
            self.layout = lay_out(self.model, self.reference, self.cfg.train.parallel, self.bf16,
                                  share, self.teacher)

    def autocast(self) -> contextlib.AbstractContextManager:
        return precision.autocast(self.bf16, next(self.model.parameters()).device)


def sampling_truncation(cfg: Config) -> Truncation | None:
    """The sampler's top-k / top-p that the policy's log-probs replay (algo.sampling_support);
    None for `full`. The reference is never truncated: KL(π ‖ π_ref) is finite only against the
    reference's whole distribution."""
    if cfg.algo.sampling_support != "replay":
        return None
    return Truncation(cfg.rollout.top_k, cfg.rollout.top_p)


def reward_specs(cfg: Config, task: Task) -> list[RewardSpec]:
    """The configured reward functions (or the task's), plus DAPO's overlong penalty when on."""
    specs = list(cfg.rewards) if cfg.rewards else list(task.rewards)
    if not specs:
        hint = "a dataset given by data.path needs" if cfg.data.path else \
            f"task {task.name!r} has no default rewards; set"
        raise ConfigError(f"rewards: {hint} a `rewards` list (e.g. rewards=[{{name: math}}])")
    if cfg.algo.overlong_penalty and not any(s.name == "overlong" for s in specs):
        specs.append(RewardSpec("overlong", 1.0, {"cache": cfg.algo.overlong_buffer}))
    return specs


def build_session(cfg: Config, *, resume_from: Path | None = None,
                  training: bool = True) -> Session:
    """Load and check everything the config names; errors name the field.

    `training=False` (evaluation) loads the model as it is: no LoRA wrapper, no reference.
    """
    path = models.resolve_model_path(cfg.model.path)
    task = load_data(cfg.data)
    if not task.train_rows and training:
        raise ConfigError(f"data: task {task.name!r} has no training rows")
    specs = reward_specs(cfg, task)
    cfg = dataclasses.replace(cfg, rewards=specs)
    env = environment(cfg, task)
    tokenizer = models.load_tokenizer(path)
    if training:
        model = models.load_trainable(cfg.model, path, resume_from)
    else:
        model = models.load_policy(path, dtype=cfg.model.dtype)
    reference = None
    if training and not cfg.model.lora.enabled and cfg.algo.beta > 0:
        reference = models.load_reference(path, dtype=cfg.model.dtype).to(dist.device())
    teacher = load_teacher(cfg, tokenizer) if training else None
    model = model.to(dist.device())  # this rank's GPU, or the CPU
    bf16, note = precision.bf16_decision(cfg.model.autocast, dist.device())
    if training and bf16:
        _bf16_training_side(cfg, model, reference, teacher)
    if not training:
        engine = make_engine(cfg.rollout.engine, model, tokenizer, bf16, cfg.rollout)
        return Session(cfg, model, tokenizer, reference, task, specs, engine, bf16,
                       Layout("single", CompletionScorer(model), None), env=env)
    engine, layout, prefix = _engine_and_layout(cfg, model, (reference, teacher), tokenizer,
                                                bf16)
    return Session(cfg, model, tokenizer, reference, task, specs, engine, bf16, layout, prefix,
                   note, env, teacher)


def load_teacher(cfg: Config, tokenizer: Any) -> torch.nn.Module | None:
    """The frozen teacher of `algo.teacher` on this rank's device, or None. Distillation compares
    log-probs of the same token ids, so the teacher's tokenizer must be the policy's: a teacher
    with another vocabulary is a ConfigError naming both sizes."""
    if cfg.algo.teacher is None:
        return None
    path = models.resolve_model_path(cfg.algo.teacher, "algo.teacher")
    vocab = models.load_tokenizer(path).get_vocab()
    if vocab != tokenizer.get_vocab():
        raise ConfigError(f"algo.teacher={cfg.algo.teacher!r}: its tokenizer differs from the "
                          f"policy's ({len(vocab)} vs {len(tokenizer.get_vocab())} tokens); "
                          f"on-policy distillation needs the same token ids")
    return models.load_reference(path, dtype=cfg.model.dtype).to(dist.device())


def environment(cfg: Config, task: Task) -> Environment | None:
    """The environment `tools.environment` names, with the run's system prompt (None when
    off); its tools are built here, so an unknown tool or a missing sandbox is a config error."""
    if cfg.tools.environment is None:
        return None
    try:
        return make_environment(cfg.tools, task.system_prompt_for(cfg.data.system_prompt))
    except (ValueError, SandboxUnavailable) as exc:
        raise ConfigError(f"tools: {exc}") from exc


def _bf16_training_side(cfg: Config, model, reference, teacher=None) -> None:
    """Under bf16 autocast: the frozen reference and teacher keep their Linear weights in bf16
    (the same forward, half the memory, no casts; not when FSDP shards them), and on the CPU the
    training passes run attention in fp32, where its backward is faster
    (precision.use_fp32_attention)."""
    sharded = cfg.train.parallel == "fsdp" and dist.world_size() > 1
    for frozen in (reference, teacher):
        if frozen is not None and not sharded and cfg.model.dtype == "float32":
            precision.bf16_linear_weights(frozen)
    if dist.device().type == "cpu":
        for m in (model, reference, teacher):
            if m is not None:
                precision.use_fp32_attention(m)


def shared_prefix(cfg: Config, model: torch.nn.Module) -> tuple[bool, str | None]:
    """Whether the training passes share prompts (train.shared_prefix, where the model can), and
    the reason when it was asked for and cannot."""
    if not cfg.train.shared_prefix:
        return False, None
    problem = prefix_sharing_problem(model)
    if problem is None:
        return True, None
    return False, f"train.shared_prefix is off for this model: {problem}"


def _engine_and_layout(cfg: Config, model, frozen, tokenizer, bf16: bool):
    """The rollout engine and the training layout (`frozen`: the reference and the teacher, each
    or None). A sharded policy's forward is collective, so its engine samples from a whole copy
    that each weight sync refreshes."""
    reference, teacher = frozen
    sharded = cfg.train.parallel == "fsdp" and dist.world_size() > 1
    if sharded and cfg.model.lora.enabled:
        raise ConfigError("train.parallel: 'fsdp' does not take LoRA here (its adapter-only "
                          "checkpoints are not sharded); use 'ddp' with model.lora.enabled")
    copy = GenerationCopy(model) if sharded else None
    engine = make_engine(cfg.rollout.engine, model if copy is None else copy.module, tokenizer,
                         bf16, cfg.rollout)
    share, note = shared_prefix(cfg, model)
    layout = lay_out(model, reference, cfg.train.parallel, bf16, share, teacher)
    return (engine if copy is None else SyncedEngine(engine, copy, model)), layout, note
