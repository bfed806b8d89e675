"""Tasks: prompts with what their reward functions check, plus the default rewards.

A row is a dict with either `prompt` (str) or `messages` (a chat list of {role, content}); every
other key (answer, tests, entry_point, schema, ...) passes through to the reward functions.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from grpokit.data.datasets import dataset_rows, named_rows, split_rows
from grpokit.errors import DataError
from grpokit.rewards.base import RewardSpec
from grpokit.rewards.user import is_import_path, load_object


@dataclass
class Task:
    """A built-in or user task: training rows, held-out rows and the rewards that score them."""

    name: str
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    rewards: list[RewardSpec] = field(default_factory=list)
    """Default reward functions for this task (a config's `rewards` list replaces them)."""
    system_prompt: str | None = None
    """Default system prompt for this task (a config's `data.system_prompt` replaces it)."""
    sft_target: Callable[[dict[str, Any]], str] | None = None
    """Writes a row's reference completion for `grpokit sft`; None when the task has none."""
    preference_pair: Callable[[dict[str, Any]], tuple[str, str]] | None = None
    """Writes a row's (chosen, rejected) completions for `grpokit dpo`; None when it has none."""

    def system_prompt_for(self, override: str | None) -> str | None:
        """The system prompt of a run: the config's `data.system_prompt`, else the task's."""
        return override if override is not None else self.system_prompt


_TASKS: dict[str, Callable[..., Task]] = {}
_BUILTIN_MODULES = ("grpokit.data.arithmetic", "grpokit.data.countdown", "grpokit.data.humaneval",
                    "grpokit.data.multiply", "grpokit.data.reasoning_gym")
_loaded = False


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Register a factory `factory(**args) -> Task` under a name."""

    def decorator(factory: Callable[..., Task]) -> Callable[..., Task]:
        _TASKS[name] = factory
        return factory

    return decorator


def task_names() -> list[str]:
    """Names of the built-in tasks."""
    global _loaded
    if not _loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded = True
    return sorted(_TASKS)


def load_task(name: str, **args: Any) -> Task:
    """Build a task by name with its keyword arguments: a built-in one, or one an import path
    names (`my_tasks:make_task`, `./tasks.py:make_task`), a function of the args returning a
    `Task`, searched like reward functions (docs/data.md)."""
    if is_import_path(name):
        return _named(_user_task(name, args), name)
    names = task_names()
    if name not in _TASKS:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(f"unknown task {name!r}{hint}; built-in tasks: {', '.join(names)}")
    try:
        task = _TASKS[name](**args)
    except TypeError as exc:
        raise DataError(f"task {name!r}: bad args {args!r}: {exc}") from exc
    return _named(task, name)


def _named(task: Task, name: str) -> Task:
    """Rows named so that a later error (a prompt too long) says which row, 1-based, of which
    split."""
    task.train_rows = named_rows(task.train_rows, f"task {name!r}: training row")
    task.eval_rows = named_rows(task.eval_rows, f"task {name!r}: held-out row")
    return task


def _user_task(name: str, args: dict[str, Any]) -> Task:
    """The Task a user's function (by import path) makes from the task args."""
    try:
        make = load_object(name, "task")
    except ValueError as exc:
        raise DataError(str(exc)) from None
    try:
        task = make(**args)
    except TypeError as exc:
        raise DataError(f"task {name!r}: bad args {args!r}: {exc}") from exc
    if not isinstance(task, Task):
        raise DataError(f"task {name!r} returned {type(task).__name__}; expected a "
                        "grpokit.data.base.Task (name, train_rows, eval_rows, rewards, ...)")
    return task


def load_data(data: Any) -> Task:
    """The task that the config's `data` section names: a built-in task, or the user's dataset
    (`data.path`: a file, a folder, or a dataset repository by name with `data.config` and
    `data.split`) with its held-out rows (`data.eval_path`, `data.eval_split` of the same
    dataset, or a seeded `eval_fraction` split)."""
    if data.path is None:
        return load_task(data.task, **data.task_args)
    rows, held_out = dataset_rows(data)
    if held_out is not None:
        train = rows
    else:
        train, held_out = split_rows(rows, eval_fraction=data.eval_fraction, seed=data.seed)
    return Task(name=Path(data.path).stem, train_rows=train, eval_rows=held_out)
