"""Reward functions by name, so that a config entry `{name, weight, args}` builds one; for each,
the module that registered it, the row fields it reads, and the check of its rows (if any)."""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, Optional, Union

from grpokit.rewards.base import RewardFunction, RewardSpec, RewardValue, Sample

_FACTORIES: dict[str, Callable[..., RewardFunction]] = {}
# Functions registered with isolate=True, and the module that registers them (imported again in
# the worker process that runs them).
_ISOLATED: dict[str, str] = {}
# The module that registered each function: outside grpokit, it is the user's.
_HOMES: dict[str, str] = {}
# The row fields each function reads: a tuple of alternative names, or args -> that tuple.
Fields = Union[tuple[str, ...], Callable[[dict[str, Any]], tuple[str, ...]]]
_FIELDS: dict[str, Fields] = {}
# Checks of the rows a function cannot score: check(fn, rows) -> a problem (or None) per row.
RowCheck = Callable[[RewardFunction, list[dict[str, Any]]], list[Optional[str]]]
_ROW_CHECKS: dict[str, RowCheck] = {}

# Modules whose import registers the built-in reward functions.
_BUILTIN_MODULES = (
    "grpokit.rewards.math",
    "grpokit.rewards.format",
    "grpokit.rewards.code",
    "grpokit.rewards.json_reward",
    "grpokit.rewards.language",
    "grpokit.rewards.overlong",
    "grpokit.rewards.model",
    "grpokit.rewards.judge",
    "grpokit.rewards.countdown",
    "grpokit.rewards.gold",
)
# The fields the built-in functions read (declared here, next to their registration by name).
_BUILTIN_FIELDS: dict[str, Fields] = {
    "math": ("answer",),
    "code": ("tests", "test"),
    "json_schema": ("schema",),
    "countdown": ("target",),
    "language": lambda args: () if args.get("target") is not None else ("language",),
}
_loaded = False


def register(
    name: str, isolate: bool = False, module: str | None = None, fields: Fields | None = None
) -> Callable[[Callable[..., RewardFunction]], Callable[..., RewardFunction]]:
    """Register a factory `factory(**args) -> RewardFunction` (the batch form).

    With `isolate=True` the runner runs the function in a killable worker process under a hard
    deadline (for functions that may hang, also while holding the interpreter lock). The worker
    imports the module that registers it, so that module must be importable (not a script).
    Without it the function runs in a thread of the trainer, which no deadline can stop.

    `fields` names the row fields the function reads, as alternatives (`("tests", "test")`: one
    of them), or a function of its args giving them: a dataset where no row has any of them stops
    the run before its first step, naming the field and the columns the rows have.
    """

    def decorator(factory: Callable[..., RewardFunction]) -> Callable[..., RewardFunction]:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"reward function {name!r} is registered twice")
        _FACTORIES[name] = factory
        home = module or factory.__module__
        _HOMES[name] = home
        if fields is not None:
            _FIELDS[name] = fields
        if isolate:
            if home == "__main__":
                raise ValueError(
                    f"reward function {name!r}: isolate=True needs it defined in an importable "
                    "module (the worker process imports it), not in the script being run"
                )
            _ISOLATED[name] = home
        return factory

    return decorator


def isolated_module(name: str) -> str | None:
    """The module to import in a worker for a function registered with isolate=True, else None."""
    _load_builtins()
    return _ISOLATED.get(name)


def home(name: str) -> str | None:
    """The module that registered the function (None when it is not registered)."""
    _load_builtins()
    return _HOMES.get(name)


def fields_of(spec: RewardSpec) -> tuple[str, ...]:
    """The row fields a config entry's function reads, as alternatives (empty: none declared)."""
    _load_builtins()
    fields = _FIELDS.get(spec.name, _BUILTIN_FIELDS.get(spec.name, ()))
    return tuple(fields(spec.args) if callable(fields) else fields)


def row_check(name: str) -> Callable[[RowCheck], RowCheck]:
    """Register `check(fn, rows) -> [problem or None per row]` for the function `name`: why it
    cannot score any completion of a row (a gold answer that does not parse). The runner gives
    those completions None without calling the function, and warns once per row."""

    def decorator(check: RowCheck) -> RowCheck:
        _ROW_CHECKS[name] = check
        return check

    return decorator


def row_check_of(name: str) -> RowCheck | None:
    """The row check registered for the function `name`, else None."""
    _load_builtins()
    return _ROW_CHECKS.get(name)


class _PerItem:
    """Adapts `fn(sample, **args) -> float | None` to the batch protocol."""

    def __init__(self, name: str, fn: Callable[..., RewardValue], args: dict[str, Any]):
        # Bad args are an error when the function is built, not at its first sample.
        inspect.signature(fn).bind(None, **args)
        self.name = name
        self._fn = fn
        self._args = args

    def __call__(self, samples: list[Sample]) -> list[RewardValue]:
        return [self._fn(sample, **self._args) for sample in samples]


def per_item(
    name: str, isolate: bool = False, fields: Fields | None = None
) -> Callable[[Callable[..., RewardValue]], Callable[..., RewardValue]]:
    """Register a simple per-completion function `fn(sample, **args) -> float | None` (isolate
    and fields: see `register`)."""

    def decorator(fn: Callable[..., RewardValue]) -> Callable[..., RewardValue]:
        register(name, isolate=isolate, module=fn.__module__, fields=fields)(
            lambda **args: _PerItem(name, fn, args))
        return fn

    return decorator


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded = True


def available() -> list[str]:
    """Names of all registered reward functions."""
    _load_builtins()
    return sorted(_FACTORIES)


def build(spec: RewardSpec) -> RewardFunction:
    """Build the reward function a config entry names."""
    _load_builtins()
    if spec.name not in _FACTORIES:
        close = difflib.get_close_matches(spec.name, _FACTORIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown reward function {spec.name!r}{hint}; available: {', '.join(available())}"
        )
    try:
        fn = _FACTORIES[spec.name](**spec.args)
    except TypeError as exc:
        raise ValueError(f"reward function {spec.name!r}: bad args {spec.args!r}: {exc}") from exc
    fn.name = spec.name
    return fn
