"""Preference rows for `grpokit dpo`: a prompt (`prompt` or `messages`, rendered as for `grpokit
train`) with a `chosen` and a `rejected` completion, each a string or a chat list whose one
message is the assistant turn ({role: assistant, content}); a built-in task writes both from a
row by its own rule (`Task.preference_pair`). Every bad row is an error naming it and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpokit.typed_tree import DataError

FIELDS = ("chosen", "rejected")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def completion_text(value: Any, where: str, field: str) -> str:
    """The text of a `chosen` / `rejected` value: a string, or [{role: assistant, content}]."""
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) \
                or value[0].get("role") != "assistant":
            raise DataError(f"{where}: {field!r} as a chat list must hold exactly one message "
                            f"with role 'assistant' (earlier turns go in 'prompt' or "
                            f"'messages'), got {_short(value)}")
        value = value[0].get("content")
    if not isinstance(value, str):
        raise DataError(f"{where}: {field!r} must be a string or a one-message assistant chat "
                        f"list, got {_short(value)}")
    if not value.strip():
        raise DataError(f"{where}: {field!r} is empty; a completion needs at least one "
                        "non-blank character")
    return value


def split_pair(row: dict[str, Any], where: str,
               rule: Callable[[dict], tuple[str, str]] | None = None) -> tuple[str, str]:
    """(chosen text, rejected text) of a row: its columns, else the task's rule."""
    if rule is not None and not any(f in row for f in FIELDS):
        chosen, rejected = rule(row)
    else:
        missing = [f for f in FIELDS if f not in row or row[f] is None]
        if missing:
            raise DataError(f"{where}: no {' and no '.join(repr(f) for f in missing)} column; a "
                            "preference row needs 'chosen' and 'rejected' (rename yours with "
                            f"data.columns={{your_column: chosen}}; keys: {sorted(row)})")
        chosen, rejected = (completion_text(row[f], where, f) for f in FIELDS)
    if chosen == rejected:
        raise DataError(f"{where}: 'chosen' and 'rejected' are identical ({_short(chosen)}): "
                        "the pair carries no preference")
    return chosen, rejected
