"""Reward functions by name, so that a config entry `{name, weight, args}` builds one."""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable

from grpokit.rewards.base import RewardFunction, RewardSpec, RewardValue, Sample

_FACTORIES: dict[str, Callable[..., RewardFunction]] = {}
# Functions registered with isolate=True, and the module that registers them (imported again in
# the worker process that runs them).
_ISOLATED: dict[str, str] = {}

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
)
_loaded = False


def register(
    name: str, isolate: bool = False, module: str | None = None
) -> Callable[[Callable[..., RewardFunction]], Callable[..., RewardFunction]]:
    """Register a factory `factory(**args) -> RewardFunction` (the batch form).

    With `isolate=True` the runner runs the function in a killable worker process under a hard
    deadline (for functions that may hang, also while holding the interpreter lock). The worker
    imports the module that registers it, so that module must be importable (not a script).
    """

    def decorator(factory: Callable[..., RewardFunction]) -> Callable[..., RewardFunction]:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"reward function {name!r} is registered twice")
        _FACTORIES[name] = factory
        if isolate:
            home = module or factory.__module__
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
    name: str, isolate: bool = False
) -> Callable[[Callable[..., RewardValue]], Callable[..., RewardValue]]:
    """Register a simple per-completion function `fn(sample, **args) -> float | None` (isolate:
    see `register`)."""

    def decorator(fn: Callable[..., RewardValue]) -> Callable[..., RewardValue]:
        register(name, isolate=isolate, module=fn.__module__)(lambda **args: _PerItem(name, fn, args))
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
