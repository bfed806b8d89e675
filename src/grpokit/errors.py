"""Bad input, and how it is reported (docs/runs.md, Errors).

`UserError` and its kinds are input the user can fix (a config, a dataset row, a file, a resume
conflict): the command line prints the message alone and exits with status 2, never a traceback.
`read_text`, `read_yaml`, `read_json` and `read_json_lines` read a user's file and turn every
read, decode and parse failure into such an error naming the file and, where there is one, the
line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import yaml


class UserError(ValueError):
    """Bad input from the user (config, data, command-line arguments, a resume conflict): the
    command line prints the message alone and exits with status 2, never a traceback."""


class ConfigError(UserError):
    """A config key or value is invalid."""


class DataError(UserError):
    """A dataset, row or prompt is invalid; the message names the file, the row and the field."""


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
