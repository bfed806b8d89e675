"""Reward functions by name, so that a config entry `{name, weight, args}` builds one; for each,
the module that registered it, the row fields it reads, and the check of its rows (if any).

A name not registered may be an import path to a user's function (grpokit.rewards.user), and a
Python callable is registered under a name of its own with `register_callable`."""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, Optional, Union

from grpokit.rewards import user
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
# The user's callables registered with register_callable, by the name given to each.
_CALLABLES: dict[str, Callable[..., Any]] = {}

# Modules whose import registers the built-in reward functions.
_BUILTIN_MODULES = (
    "grpokit.rewards.math",
    "grpokit.rewards.format",
    "grpokit.rewards.code",
    "grpokit.rewards.json_reward",
    "grpokit.rewards.reasoning_gym",
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


def register_callable(fn: Callable[..., Any], name: str | None = None) -> str:
    """Register a user's reward function (TRL's batch form or grpokit's per-sample form, sync or
    async: see grpokit.rewards.user) and return the name to put in a config's `rewards` list.

    The default name is the function's `__name__`, with `_2`, `_3`, ... added when a different
    function has it; registering the same function object again returns its name. An explicit
    `name` of an earlier register_callable moves to `fn` (a notebook cell run again); one taken
    by a function registered otherwise (a built-in) is a ValueError, and so is a signature that
    cannot take the batch. With `isolate: true` in its config entry, the worker process imports it by its
    module and qualified name: a function of the script being run, or one defined inside a
    function, cannot be isolated (an error naming it when the rewards are built)."""
    _load_builtins()
    if not callable(fn):
        raise TypeError(f"register_callable needs a callable, got {type(fn).__name__}")
    for known, registered in _CALLABLES.items():
        if registered is fn and name in (None, known):
            return known
    base = name or getattr(fn, "__name__", None) or type(fn).__name__
    if name is not None and name in _FACTORIES and name not in _CALLABLES:
        raise ValueError(f"reward function {name!r} is already registered (another function)")
    user.form_of(fn, base)  # a signature that cannot take the batch fails here, not at step 1
    chosen, k = base, 2
    while chosen in _FACTORIES and chosen != name:
        chosen, k = f"{base}_{k}", k + 1
    _FACTORIES[chosen] = lambda **args: user.adapt(chosen, fn, args)
    _HOMES[chosen] = getattr(fn, "__module__", None) or "__main__"
    _CALLABLES[chosen] = fn
    return chosen


def isolation(spec: RewardSpec) -> tuple[tuple[str, ...], str, bool] | None:
    """(modules a worker imports first, the name it builds, whether it is a user's function by
    import path or callable) for a function that runs in a worker process: registered with
    isolate=True, or `isolate: true` in its entry. None otherwise. ValueError naming the entry
    when a fresh process cannot import it."""
    _load_builtins()
    if spec.name in _ISOLATED:
        return (_ISOLATED[spec.name],), spec.name, False
    if not spec.isolate:
        return None
    if spec.name in _CALLABLES:
        ref = user.importable_ref(_CALLABLES[spec.name])
        if ref is None:
            raise ValueError(_not_importable(spec.name, _HOMES[spec.name]))
        return (), ref, True
    if spec.name in _FACTORIES:
        if _HOMES[spec.name] == "__main__":
            raise ValueError(_not_importable(spec.name, "__main__"))
        return (_HOMES[spec.name],), spec.name, False
    return ((), user.locate(spec.name), True) if user.is_import_path(spec.name) else None


def _not_importable(name: str, module: str) -> str:
    return (f"reward {name!r}: isolate: true runs it in a fresh worker process, which cannot "
            f"import it (defined in {module}, the script being run, or inside a function); move "
            "it to a module or file and name it by its import path (module:function or "
            "file.py:function)")


def build(spec: RewardSpec) -> RewardFunction:
    """Build the reward function a config entry names: registered, or by import path."""
    _load_builtins()
    if spec.name not in _FACTORIES and user.is_import_path(spec.name):
        return user.build(spec.name, spec.args)
    if spec.name not in _FACTORIES:
        close = difflib.get_close_matches(spec.name, _FACTORIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown reward function {spec.name!r}{hint}; available: {', '.join(available())}; "
            "or your own function by its import path (module:function or path/file.py:function)"
        )
    try:
        fn = _FACTORIES[spec.name](**spec.args)
    except TypeError as exc:
        raise ValueError(f"reward function {spec.name!r}: bad args {spec.args!r}: {exc}") from exc
    fn.name = spec.name
    return fn
