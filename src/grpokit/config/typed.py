"""Typed trees of dataclasses from plain data (YAML, JSON, dotted overrides).

`build` checks every value against its field's annotation and `choice` metadata and fails on
unknown keys with a close match and the valid keys; the messages name the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from typing import Any

from grpokit.errors import ConfigError, load_yaml


def choice(default: Any, *choices: Any) -> Any:
    """A field whose value must be one of `choices`."""
    return field(default=default, metadata={"choices": choices})


def choice_list(default: list[Any], *choices: Any, import_paths: bool = False) -> Any:
    """A list field each of whose items must be one of `choices` (or, with `import_paths`, an
    import path `module:attr` naming a user's own)."""
    return field(default_factory=lambda: list(default),
                 metadata={"choices": choices, "import_paths": import_paths})


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _convert(value: Any, tp: Any, where: str, replaced: dict[str, str] | None = None) -> Any:
    """Check `value` against the annotation `tp`, building nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where, replaced)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, replaced)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{where}[{i}]", replaced) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML reads "1e-6" (no dot) as a string
            number = float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def build(cls: type, data: Any, where: str = "config", replaced: dict[str, str] | None = None) -> Any:
    """Build dataclass `cls` from a mapping, failing on unknown keys and invalid values.

    `replaced` maps dotted keys of earlier releases to a note on what replaced them."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        sub = f"{where}.{key}" if where != "config" else key
        if sub in (replaced or {}):
            raise ConfigError(f"{sub} was replaced by {replaced[sub]}")
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, list(fields))}; "
                              f"valid keys: {', '.join(fields)}")
        choices = fields[key].metadata.get("choices")
        shown = ", ".join(repr(c) if c is not None else "null" for c in choices or ())
        try:
            kwargs[key] = _convert(value, hints[key], sub, replaced)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; valid values: {shown}" if choices else str(exc)) from None
        for item in kwargs[key] if isinstance(kwargs[key], list) else [kwargs[key]]:
            user = fields[key].metadata.get("import_paths") and ":" in str(item)
            if choices and item not in choices and not user:  # a list's: of its items
                raise ConfigError(f"{sub}: invalid value {item!r}; valid values: {shown}")
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`a.b=value` strings to a nested dict; values are parsed as YAML (numbers, lists, null)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override")
        node[parts[-1]] = load_yaml(raw) if raw.strip() else ""
    return tree


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested tree: {"train": {"lr": 1e-5}} -> {"train.lr": 1e-5}; lists and
    scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
