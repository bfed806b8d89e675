"""Preference rows for `grpokit dpo`: a prompt (`prompt` or `messages`, rendered as for `grpokit
train`) with a `chosen` and a `rejected` completion, each a string or a chat list whose one
message is the assistant turn ({role: assistant, content}); a built-in task writes both from a
row by its own rule (`Task.preference_pair`). Every bad row is an error naming it and the field.
The rows tokenized, split like `grpokit sft` splits them: `PreferencePair`, `load_pairs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from grpokit.config import Config
from grpokit.data.base import Task
from grpokit.data.supervised import encode_prompt, encode_target, load_split, task_rule
from grpokit.errors import DataError

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


# ---------------------------------------------------------------- tokenized pairs


@dataclass
class PreferencePair:
    """One tokenized preference pair."""

    prompt_ids: list[int]
    """The rendered prompt, as `grpokit train` feeds it to the policy."""
    chosen_ids: list[int]
    """The preferred completion followed by EOS."""
    rejected_ids: list[int]
    """The dispreferred completion followed by EOS."""
    ref_logps: tuple[float, float] | None = None
    """The reference's summed log-probs (chosen, rejected), once precomputed."""


def encode_pair(row: dict[str, Any], tokenizer: Any, *, where: str, system_prompt: str | None,
                max_prompt_length: int, max_completion_length: int,
                rule: Callable[[dict], tuple[str, str]] | None = None) -> PreferencePair:
    """Token ids of a row's prompt and of both completions + EOS; over a cap is an error."""
    chosen, rejected = split_pair(row, where, rule)
    target = lambda text, what: encode_target(text, tokenizer, where=where, what=what,
                                              max_completion_length=max_completion_length,
                                              limit_key="dpo.max_completion_length")
    return PreferencePair(
        encode_prompt(row, tokenizer, where=where, system_prompt=system_prompt,
                      max_prompt_length=max_prompt_length),
        target(chosen, "'chosen'"), target(rejected, "'rejected'"))


def load_pairs(cfg: Config, tokenizer: Any
               ) -> tuple[list[PreferencePair], list[PreferencePair], Task | None]:
    """(train, held-out) pairs, split as `grpokit sft` and `grpokit train` split a dataset, and
    the built-in task when data.path is not set."""
    d = cfg.data
    task, system, rule = task_rule(cfg, "preference_pair", "preference pairs (arithmetic does); "
                                   "give a dataset with 'chosen' and 'rejected' columns in "
                                   "data.path")
    train, held_out = load_split(cfg, lambda row, where: encode_pair(
        row, tokenizer, where=where, system_prompt=system, max_prompt_length=d.max_prompt_length,
        max_completion_length=cfg.dpo.max_completion_length, rule=rule), task)
    return train, held_out, task
