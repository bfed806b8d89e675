"""Everything a run needs, built from the config: model, tokenizer, reference, data, rewards, engine.

`grpokit train`, `grpokit eval` and `grpokit sft` share this set-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from grpokit.config import Config, ConfigError
from grpokit.data.base import Task, load_task
from grpokit.rewards.base import RewardSpec


@dataclass
class Session:
    cfg: Config
    model: torch.nn.Module
    tokenizer: Any
    reference: torch.nn.Module | None
    task: Task
    rewards: list[RewardSpec]
    engine: Any
    autocast: Callable[[], contextlib.AbstractContextManager]
    model_path: Path


def load_data(cfg: Config) -> Task:
    """The built-in task, or the user's dataset with a held-out split, as a Task."""
    d = cfg.data
    if d.path is None:
        return load_task(d.task, **d.task_args)
    from grpokit.data import datasets as ds

    kwargs = dict(prompt_column=d.prompt_column, messages_column=d.messages_column, columns=d.columns)
    rows = ds.load_rows(d.path, **kwargs)
    if d.eval_path is not None:
        train, held_out = rows, ds.load_rows(d.eval_path, **kwargs)
    else:
        train, held_out = ds.split_rows(rows, eval_fraction=d.eval_fraction, seed=d.seed)
    if not cfg.rewards:
        raise ConfigError("rewards: a dataset given by data.path needs a `rewards` list "
                          "(e.g. rewards=[{name: math}])")
    return Task(name=Path(d.path).stem, train_rows=train, eval_rows=held_out)


def reward_specs(cfg: Config, task: Task) -> list[RewardSpec]:
    """The configured reward functions (or the task's), plus DAPO overlong shaping when selected."""
    specs = list(cfg.rewards) if cfg.rewards else list(task.rewards)
    if not specs:
        raise ConfigError(f"task {task.name!r} has no default rewards; set the `rewards` list")
    if cfg.algo.overlong == "shape" and not any(s.name == "overlong" for s in specs):
        cache = max(cfg.rollout.max_new_tokens // 4, 1)
        specs.append(RewardSpec("overlong", 1.0, {"cache": cache}))
    return specs


def _autocast_factory(cfg: Config, device: str):
    from grpokit.models import autocast_context

    enabled = cfg.model.autocast != "off"
    force = cfg.model.autocast == "bf16"
    return lambda: autocast_context(device, enabled, force=force)


def load_trainable(cfg: Config, model_path: Path, device: str = "cpu",
                   resume_from: Path | None = None) -> torch.nn.Module:
    """The model to train: the base (or, resuming, the checkpoint's weights), LoRA-wrapped when
    configured (resuming LoRA loads the checkpoint's adapter onto the base)."""
    from grpokit import models

    lora = cfg.model.lora
    policy_path = resume_from if resume_from is not None and not lora.enabled else model_path
    model = models.load_policy(policy_path, dtype=cfg.model.dtype, device=device)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if lora.enabled:
        model = models.apply_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                                  target_modules=lora.target_modules)
        if resume_from is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(resume_from / "adapter_model.safetensors"))
    return model


def _load_models(cfg: Config, model_path: Path, device: str, resume_from: Path | None):
    """Policy, tokenizer and reference (always the base; none with LoRA or when β = 0)."""
    from grpokit import models

    tokenizer = models.load_tokenizer(model_path)
    model = load_trainable(cfg, model_path, device, resume_from)
    reference = None
    if not cfg.model.lora.enabled and cfg.algo.beta and cfg.algo.beta > 0:
        reference = models.load_reference(model_path, dtype=cfg.model.dtype, device=device)
    return model, tokenizer, reference


def build_session(cfg: Config, *, resume_from: Path | None = None, device: str = "cpu") -> Session:
    """Load and check everything the config names; errors name the field."""
    from grpokit import models

    try:
        path = models.resolve_model(cfg.model.path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"model.path: {exc}") from exc
    task = load_data(cfg)
    if not task.train_rows:
        raise ConfigError(f"data: task {task.name!r} has no training rows")
    specs = reward_specs(cfg, task)
    model, tokenizer, reference = _load_models(cfg, path, device, resume_from)
    autocast = _autocast_factory(cfg, device)
    engine = make_engine(cfg, model, tokenizer, device)
    return Session(cfg, model, tokenizer, reference, task, specs, engine, autocast, path)


def make_engine(cfg: Config, model: torch.nn.Module, tokenizer: Any, device: str) -> Any:
    """The rollout engine the config names, sampling from the policy module itself."""
    from grpokit.models import cpu_has_bf16
    from grpokit.rollout.generate import GenerateEngine
    from grpokit.rollout.hf import HFEngine

    mode = cfg.model.autocast
    bf16 = mode == "bf16" or (mode == "auto" and (device != "cpu" or cpu_has_bf16()))
    engine = HFEngine if cfg.rollout.engine == "hf" else GenerateEngine
    return engine(model, tokenizer, autocast=bf16)


def system_prompt(cfg: Config, task: Task) -> str | None:
    return cfg.data.system_prompt if cfg.data.system_prompt is not None else task.system_prompt


def with_task_defaults(cfg: Config, task: Task) -> Config:
    """The config with the task's rewards written in, so the saved config is fully resolved."""
    return dataclasses.replace(cfg, rewards=reward_specs(cfg, task))
