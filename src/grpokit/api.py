"""The public Python API (docs/api.md): `grpokit.train`, `ppo`, `sft`, `dpo`, `evaluate` and
`plan`.

Each takes a `Config`, or a YAML path (or nothing: the defaults) plus dotted overrides, exactly
as the command line does, and Python objects may stand in for config entries: reward functions
(any form `rewards=` accepts in YAML, or a callable), a dataset as a list of dicts or a
`datasets.Dataset`, and a multi-turn environment. Each object is registered under a name and the
config names it, so the run folder's config.yaml stays plain data, and everything is checked
before anything is written, as on the command line. A run returns a `RunResult`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpokit.config import Config, with_overrides
from grpokit.config import load_config as _load_yaml
from grpokit.data.memory import register_rows
from grpokit.errors import ConfigError

ConfigLike = Config | str | Path | None
"""A built config, a YAML file, or None (the built-in defaults)."""


@dataclass(frozen=True)
class RunResult:
    """What a run leaves: its folder and the numbers a script usually wants next."""

    run_dir: Path
    """The run folder (log.output_dir): metrics.jsonl, samples.jsonl, checkpoints, report."""
    checkpoint: Path | None
    """The last checkpoint (`--resume` takes it, or the run folder)."""
    before: dict[str, float]
    """Held-out results before training ({} when not evaluated)."""
    after: dict[str, float]
    """Held-out results after training ({} when not evaluated)."""
    metrics: dict[str, float]
    """The last logged step's metrics (the last line of metrics.jsonl)."""
    report: Path | None
    """report.html, when log.report is on."""
    final_model: Path | None
    """SFT and DPO: the trained model folder for the next stage (`model.path=`); else None."""


def load_config(config: ConfigLike = None, *overrides: str, **objects: Any) -> Config:
    """The config of a YAML file (or the defaults) with dotted overrides applied, e.g.
    `load_config("configs/r1_arithmetic.yaml", "train.steps=10")`; keyword objects as in `train`
    (rewards, data, eval_data, environment) become config entries."""
    extra = list(overrides) + _object_overrides(**objects)
    if isinstance(config, Config):
        return with_overrides(config, extra) if extra else config
    return _load_yaml(None if config is None else Path(config), extra)


def train(config: ConfigLike = None, *overrides: str, rewards: Sequence[Any] | None = None,
          data: Any = None, eval_data: Any = None, environment: Any = None,
          resume: str | Path | None = None, console: bool = True) -> RunResult:
    """GRPO (and its presets: dr_grpo, dapo, gspo) as `grpokit train` runs it."""
    from grpokit.stages.grpo import train as run

    cfg = load_config(config, *overrides, rewards=rewards, data=data, eval_data=eval_data,
                      environment=environment)
    return _result(cfg, run(cfg, resume=resume, console=_console(console)))


def ppo(config: ConfigLike = None, *overrides: str, rewards: Sequence[Any] | None = None,
        data: Any = None, eval_data: Any = None, resume: str | Path | None = None,
        console: bool = True) -> RunResult:
    """PPO with a learned critic, as `grpokit ppo` runs it."""
    from grpokit.stages.ppo import train_ppo as run

    cfg = load_config(config, *overrides, rewards=rewards, data=data, eval_data=eval_data)
    return _result(cfg, run(cfg, resume=resume, console=_console(console)))


def sft(config: ConfigLike = None, *overrides: str, data: Any = None, eval_data: Any = None,
        resume: str | Path | None = None, console: bool = True) -> RunResult:
    """Supervised fine-tuning on completion tokens, as `grpokit sft` runs it; `final_model`
    is the model for `train(..., f"model.path={result.final_model}")`."""
    from grpokit.stages.sft import run_sft as run

    cfg = load_config(config, *overrides, data=data, eval_data=eval_data)
    return _result(cfg, run(cfg, console=_console(console), resume=resume))


def dpo(config: ConfigLike = None, *overrides: str, data: Any = None, eval_data: Any = None,
        rewards: Sequence[Any] | None = None, resume: str | Path | None = None,
        console: bool = True) -> RunResult:
    """DPO on (prompt, chosen, rejected) rows, as `grpokit dpo` runs it (rewards score the
    greedy held-out evaluation, when given)."""
    from grpokit.stages.dpo import run_dpo as run

    cfg = load_config(config, *overrides, rewards=rewards, data=data, eval_data=eval_data)
    return _result(cfg, run(cfg, console=_console(console), resume=resume))


def evaluate(config: ConfigLike = None, *overrides: str, rewards: Sequence[Any] | None = None,
             data: Any = None, eval_data: Any = None, jsonl: str | Path | None = None,
             console: bool = True) -> dict[str, float]:
    """`grpokit eval`: the model of `model.path` as it is on the held-out prompts (pass@k,
    maj@k and the reward means with 95% intervals)."""
    from grpokit.training.evaluation import run_eval

    cfg = load_config(config, *overrides, rewards=rewards, data=data, eval_data=eval_data)
    return run_eval(cfg, _console(console), jsonl)


def plan(config: ConfigLike = None, *overrides: str, world_size: int = 1,
         device: str | None = None, memory: int | str | None = None) -> Any:
    """`grpokit plan`: the run's predicted peak memory per rank, phase by phase, from the config
    and the model's config.json alone (docs/plan.md). Returns a `Plan`: `.peak_bytes`,
    `.fits(bytes)`, `.table()`, `.phases`. `device` is "cpu" or "cuda" (default: cuda where a
    GPU is present); `memory` (bytes, or a size such as "80GB") sizes vLLM's KV cache where
    rollout.vllm.kv_cache_gib is null."""
    from grpokit.runtime.plan import plan as predict
    from grpokit.runtime.plan_report import default_device, parse_memory

    cfg = load_config(config, *overrides)
    if isinstance(memory, str):
        memory = parse_memory(memory)
    return predict(cfg, world_size, device or default_device(), memory)


def reward(fn: Callable | None = None, *, name: str | None = None) -> Any:
    """Register a reward function so that configs and the command line can name it:
    `@grpokit.reward` (under its own name) or `@grpokit.reward(name="length")`. Any form a
    `rewards` entry accepts (docs/rewards.md): a batch function with the keyword signature
    `fn(completions, prompts=None, completion_ids=None, **columns)`, or one taking a `Sample`;
    plain or async. The function is returned unchanged."""
    from grpokit.rewards.registry import register_callable

    def apply(f: Callable) -> Callable:
        register_callable(f, name)
        return f

    return apply(fn) if fn is not None else apply


def _object_overrides(rewards: Sequence[Any] | None = None, data: Any = None,
                      eval_data: Any = None, environment: Any = None) -> list[str]:
    """Dotted overrides that name the Python objects, registered under names."""
    out = []
    if rewards is not None:
        out.append("rewards=" + json.dumps([_reward_entry(r) for r in rewards]))
    if data is not None:
        out += ["data.task=null", f"data.path={register_rows(data, 'data')}"]
    if eval_data is not None:
        out.append(f"data.eval_path={register_rows(eval_data, 'eval_data')}")
    if environment is not None:
        out.append(f"tools.environment={_environment_name(environment)}")
    return out


def _reward_entry(entry: Any) -> dict[str, Any]:
    """A `rewards` list entry: a name (registered or an import path), a {name, weight, args}
    mapping, or a callable, registered under its name."""
    from grpokit.rewards.registry import register_callable

    if isinstance(entry, str):
        return {"name": entry}
    if isinstance(entry, dict):
        return dict(entry)
    if callable(entry):
        return {"name": register_callable(entry)}
    raise ConfigError(f"rewards: expected a function, a name or a {{name, weight, args}} "
                      f"mapping, got {type(entry).__name__}")


def _environment_name(environment: Any) -> str:
    """A registered environment's name, or the name an environment object (or a factory
    `f(tools config, system prompt) -> Environment`) is registered under: its class's (or the
    factory's) import path, so that a resume passing the same kind of object names it alike."""
    from grpokit.tools.env import register_environment

    if isinstance(environment, str):
        return environment
    is_object = hasattr(environment, "first_messages") and not isinstance(environment, type)
    factory: Callable = (lambda _cfg, _system: environment) if is_object else environment
    kind = type(environment) if is_object else environment
    name = f"python/{kind.__module__}.{kind.__qualname__}"  # no ":": not an import path
    register_environment(name, factory, replace=True)
    return name


def _console(on: bool) -> Any:
    if not on:
        return None
    from rich.console import Console

    return Console()


def _result(cfg: Config, results: dict[str, Any]) -> RunResult:
    """The RunResult of a finished run of `cfg`."""
    out = Path(cfg.log.output_dir)
    lines = (out / "metrics.jsonl").read_text().splitlines() \
        if (out / "metrics.jsonl").is_file() else []
    metrics = json.loads(lines[-1]) if lines else {}

    def path(key: str) -> Path | None:
        return Path(results[key]) if results.get(key) else None

    return RunResult(run_dir=out, checkpoint=path("checkpoint"),
                     before=dict(results.get("before", {})), after=dict(results.get("after", {})),
                     metrics=metrics, report=path("report"), final_model=path("final"))
