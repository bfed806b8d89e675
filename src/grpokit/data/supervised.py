"""Supervised rows, tokenized: a prompt rendered as `grpokit train` renders it and a target
completion (+ EOS) tokenized on its own, never cut; the row loaders and the padded batches that
SFT and DPO share (DPO's preference pairs encode two targets per prompt the same way)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from grpokit.config import Config, ConfigError
from grpokit.data import render
from grpokit.data.base import Task, load_task
from grpokit.data.datasets import dataset_rows, split_rows
from grpokit.errors import DataError


@dataclass
class SFTExample:
    """One tokenized training example."""

    prompt_ids: list[int]
    """The rendered prompt, as `grpokit train` feeds it to the policy."""
    completion_ids: list[int]
    """The target completion followed by EOS: the only tokens with a loss."""



def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def split_row(row: dict[str, Any], where: str,
              rule: Callable[[dict], str] | None = None) -> tuple[dict[str, Any], str]:
    """(prompt row, target text): from `completion`, a final assistant message, or the task rule."""
    messages = row.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    ends_with_assistant = isinstance(last, dict) and last.get("role") == "assistant"
    if "completion" in row:
        if ends_with_assistant:
            raise DataError(f"{where}: has both 'completion' and messages ending with an "
                             "assistant turn; keep one target")
        prompt_row, target, field = row, row["completion"], "'completion'"
    elif ends_with_assistant:
        if len(messages) < 2:
            raise DataError(f"{where}: messages hold only the assistant turn; a prompt message "
                             "must come before it")
        prompt_row = {**row, "messages": messages[:-1]}
        target, field = last.get("content"), "the last (assistant) message's 'content'"
    elif rule is not None:
        prompt_row, target, field = row, rule(row), "the reference solution"
    else:
        raise DataError(f"{where}: no SFT target; expected a 'completion' column (rename "
                         "yours with data.columns={your_column: completion}) or 'messages' ending "
                         f"with an assistant turn (keys: {sorted(row)})")
    if not isinstance(target, str) or not target.strip():
        raise DataError(f"{where}: {field} must be a non-empty string, got {_short(target)}")
    return prompt_row, target


def encode_prompt(prompt_row: dict[str, Any], tokenizer: Any, *, where: str,
                  system_prompt: str | None, max_prompt_length: int) -> list[int]:
    """Token ids of a row's prompt, rendered and checked as `grpokit train` does it
    (`render.encode_prompt`): over the cap is a DataError naming the row."""
    return render.encode_prompt(prompt_row, tokenizer, system_prompt, max_prompt_length, where)


def encode_target(target: str, tokenizer: Any, *, where: str, max_completion_length: int,
                  what: str = "the target", limit_key: str = "sft.max_target_length") -> list[int]:
    """Token ids of a completion followed by EOS; over the cap is a DataError (never cut)."""
    _require_eos(tokenizer)
    completion_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    completion_ids.append(tokenizer.eos_token_id)
    if len(completion_ids) > max_completion_length:
        raise DataError(f"{where}: {what} is {len(completion_ids)} tokens with EOS, longer "
                        f"than {limit_key}={max_completion_length} (never cut); "
                        "raise it or shorten it")
    return completion_ids


def _require_eos(tokenizer: Any) -> None:
    if tokenizer.eos_token_id is None:
        raise ConfigError("model.path: the tokenizer has no EOS token; SFT and DPO targets must "
                          "end with one")


def encode_example(row: dict[str, Any], tokenizer: Any, *, where: str, system_prompt: str | None,
                   max_prompt_length: int, max_completion_length: int,
                   rule: Callable[[dict], str] | None = None) -> SFTExample:
    """Token ids of a row's prompt and target + EOS; a row over either cap is an error."""
    _require_eos(tokenizer)
    prompt_row, target = split_row(row, where, rule)
    prompt_ids = encode_prompt(prompt_row, tokenizer, where=where, system_prompt=system_prompt,
                               max_prompt_length=max_prompt_length)
    return SFTExample(prompt_ids, encode_target(target, tokenizer, where=where,
                                                max_completion_length=max_completion_length))



def collate(examples: list[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts and right-padded completions with their masks."""
    prompts = [torch.tensor(e.prompt_ids) for e in examples]
    completions = [torch.tensor(e.completion_ids) for e in examples]
    pad = lambda seqs, value, side: pad_sequence(seqs, batch_first=True, padding_value=value,
                                                 padding_side=side)
    ones = lambda seqs: [torch.ones(len(x), dtype=torch.bool) for x in seqs]
    return {"prompt_ids": pad(prompts, pad_id, "left"),  # (N, P)
            "prompt_mask": pad(ones(prompts), False, "left"),  # (N, P)
            "completion_ids": pad(completions, pad_id, "right"),  # (N, T)
            "completion_mask": pad(ones(completions), False, "right")}  # (N, T)



def len_of(example: SFTExample) -> int:
    """Tokens of an example, prompt and completion."""
    return len(example.prompt_ids) + len(example.completion_ids)


def sized(sequences: int, tokens: int) -> str:
    """A micro-batch's size, as an out-of-memory error names it (`models.memory_named`)."""
    return f"{sequences} sequences, {tokens} tokens"



Encode = Callable[[dict[str, Any], str], Any]
"""encode(row, where) -> one example; `where` names the row in errors."""


def encode_rows(rows: list[dict[str, Any]], encode: Encode) -> list[Any]:
    """Each row encoded, named in errors as the row knows itself (datasets.Row: a file and its
    1-based line, a built-in task's 1-based row), else by its 1-based position."""
    return [encode(row, getattr(row, "where", None) or f"row {n}")
            for n, row in enumerate(rows, start=1)]


def load_split(cfg: Config, encode: Encode, task_rows: Task | None = None
               ) -> tuple[list[Any], list[Any]]:
    """(train, held-out) examples of `task_rows` or of the dataset of data.path. A dataset is split
    like `grpokit train` splits it (same seed and fraction), so the GRPO stage evaluates on rows
    never trained on; errors name the file row. SFT and DPO share it."""
    d, limit = cfg.data, cfg.eval.num_prompts
    if task_rows is not None:
        return (encode_rows(task_rows.train_rows, encode),
                encode_rows(task_rows.eval_rows[:limit], encode))
    rows, held_rows = dataset_rows(d)  # data.config, data.split, eval_path or eval_split
    examples = encode_rows(rows, encode)
    if held_rows is not None:
        return examples, encode_rows(held_rows, encode)[:limit]
    train, held_out = split_rows(examples, eval_fraction=d.eval_fraction, seed=d.seed)
    return train, held_out[:limit]


def task_rule(cfg: Config, rule_name: str, missing: str) -> tuple[Task | None, str | None, Any]:
    """(built-in task, system prompt, the task's rule `rule_name`) when data.path is not set,
    else (None, data.system_prompt, None); a task without the rule is an error ending `missing`."""
    d = cfg.data
    if d.path is not None:
        return None, d.system_prompt, None
    task = load_task(d.task, **d.task_args)
    rule = getattr(task, rule_name)
    if rule is None:
        raise ConfigError(f"data.task: task {d.task!r} has no rule that writes {missing}")
    return task, task.system_prompt_for(d.system_prompt), rule
