"""Reward functions by name, so that a config entry `{name, weight, args}` builds one."""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable

from grpokit.rewards.base import RewardFunction, RewardSpec, RewardValue, Sample

_FACTORIES: dict[str, Callable[..., RewardFunction]] = {}

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


def register(name: str) -> Callable[[Callable[..., RewardFunction]], Callable[..., RewardFunction]]:
    """Register a factory `factory(**args) -> RewardFunction` (the batch form)."""

    def decorator(factory: Callable[..., RewardFunction]) -> Callable[..., RewardFunction]:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"reward function {name!r} is registered twice")
        _FACTORIES[name] = factory
        return factory

    return decorator


class _PerItem:
    """Adapts `fn(sample, **args) -> float | None` to the batch protocol."""

    def __init__(self, name: str, fn: Callable[..., RewardValue], args: dict[str, Any]):
        self.name = name
        self._fn = fn
        self._args = args

    def __call__(self, samples: list[Sample]) -> list[RewardValue]:
        return [self._fn(sample, **self._args) for sample in samples]


def per_item(name: str) -> Callable[[Callable[..., RewardValue]], Callable[..., RewardValue]]:
    """Register a simple per-completion function `fn(sample, **args) -> float | None`."""

    def decorator(fn: Callable[..., RewardValue]) -> Callable[..., RewardValue]:
        register(name)(lambda **args: _PerItem(name, fn, args))
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
