"""Typed trees of dataclasses from plain data (YAML, JSON, dotted overrides).

`build` checks every value against its field's annotation and `choice` metadata and fails on
unknown keys with a close match and the valid keys; the messages name the dotted key.
`read_text`, `read_yaml`, `read_json` and `read_json_lines` read a user's file and turn every
read, decode and parse failure into a `UserError` naming the file and, where there is one, the
line: the command line prints it and exits 2 (docs/runs.md, Errors).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Iterator

import yaml


class Loader(yaml.SafeLoader):
    """YAML with the booleans of YAML 1.2: only true / false. YAML 1.1 also reads on, off, yes
    and no as booleans, so a documented value such as `model.autocast=off` could not be given."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Loader.add_implicit_resolver("tag:yaml.org,2002:bool",
                             re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    """Parse YAML text with `Loader`."""
    return yaml.load(text, Loader=Loader)


def choice(default: Any, *choices: Any) -> Any:
    """A field whose value must be one of `choices`."""
    return field(default=default, metadata={"choices": choices})


def choice_list(default: list[Any], *choices: Any, import_paths: bool = False) -> Any:
    """A list field each of whose items must be one of `choices` (or, with `import_paths`, an
    import path `module:attr` naming a user's own)."""
    return field(default_factory=lambda: list(default),
                 metadata={"choices": choices, "import_paths": import_paths})


class UserError(ValueError):
    """Bad input from the user (config, data, command-line arguments, a resume conflict): the
    command line prints the message alone and exits with status 2, never a traceback."""


class ConfigError(UserError):
    """A config key or value is invalid."""


class DataError(UserError):
    """A dataset, row or prompt is invalid; the message names the file, the row and the field."""


# ---------------------------------------------------------------- reading a user's files


def read_text(path: str | Path, error: type[UserError] = UserError) -> str:
    """The UTF-8 text of a user's file; a file that cannot be read or decoded is `error`, naming
    the file, and for bad bytes the line and column."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise error(f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column "
                    f"{column}); save the file as UTF-8") from None


def read_yaml(path: str | Path, error: type[UserError] = ConfigError) -> Any:
    """A YAML file parsed with `Loader`; invalid YAML is `error` naming the file and the line."""
    text = read_text(path, error)
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else f"{path}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        column = f" at column {mark.column + 1}" if mark is not None else ""
        raise error(f"{where}: not valid YAML: {problem}{column}"
                    f"{f' ({context})' if context else ''}") from None


def read_json(path: str | Path, error: type[UserError] = UserError) -> Any:
    """A JSON file; invalid JSON (a truncated file, say) is `error` naming the file and the line."""
    text = read_text(path, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: not valid JSON: {exc.msg} at column {exc.colno}"
                    ) from None


def read_json_lines(path: str | Path, error: type[UserError] = UserError,
                    partial_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """(1-based line number, value) of each non-blank line of a JSONL file; a line that is not
    JSON is `error` naming the file and the line. With `partial_tail`, a last line that has no
    newline yet and does not parse is skipped: a live run is still writing it."""
    text = read_text(path, error)
    # "\n" only: str.splitlines also breaks at U+2028 and others, which JSON strings may hold.
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            if partial_tail and number == len(lines):  # no "\n" after it: still being written
                return
            raise error(f"{path}:{number}: not valid JSON: {exc.msg} at column {exc.colno}"
                        ) from None
        yield number, value


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
