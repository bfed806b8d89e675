"""Supervised fine-tuning on completion tokens: the cold start before GRPO (DeepSeek-R1 stage 1).

Each row gives a prompt and a target completion: `prompt` (or `messages`) plus `completion`, or
`messages` whose last message is the assistant turn, or a built-in task row whose reference
solution gives the target by a fixed rule (arithmetic, countdown). The prompt is rendered exactly
as `grpokit train` renders it; the target is tokenized on its own and followed by EOS, so the
model learns the token sequence it will later sample. The loss is the mean negative log-prob over
the completion tokens of an optimizer step (token_mean); prompt and padding tokens carry none.

Config mapping: `train.steps` optimizer steps of `rollout.prompts_per_step` rows each, drawn by
the seeded PromptSampler; `train.micro_batch_size`, `train.lr`, the schedule, warm-up and
clipping as in `grpokit train`. `data.max_prompt_length` caps the prompt and
`rollout.max_new_tokens` caps the target (EOS included): a longer row is an error (DataError, exit
2) naming the row by its file and line, or a built-in task's 1-based row; never cut. A prompt
whose characters alone prove it too long is refused before it is tokenized.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from grpokit import models, precision
from grpokit.config import Config, ConfigError
from grpokit.typed_tree import DataError
from grpokit.data.base import Task, load_task
from grpokit.data import render
from grpokit.data.datasets import dataset_rows, split_rows
from grpokit.logprobs import completion_logprobs, length_sorted_chunks
from grpokit.loop import run
from grpokit.training import NonFiniteError, RunState, new_run_state, optimizer_step


@dataclass
class SFTExample:
    """One tokenized training example."""

    prompt_ids: list[int]
    """The rendered prompt, as `grpokit train` feeds it to the policy."""
    completion_ids: list[int]
    """The target completion followed by EOS: the only tokens with a loss."""


# ---------------------------------------------------------------- targets


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
                  what: str = "the target") -> list[int]:
    """Token ids of a completion followed by EOS; over the cap is a DataError (never cut)."""
    _require_eos(tokenizer)
    completion_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    completion_ids.append(tokenizer.eos_token_id)
    if len(completion_ids) > max_completion_length:
        raise DataError(f"{where}: {what} is {len(completion_ids)} tokens with EOS, longer "
                        f"than rollout.max_new_tokens={max_completion_length} (never cut); "
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


# ---------------------------------------------------------------- the loss


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


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_tokens: int,
             chunk_size: int = 1024) -> torch.Tensor:
    """−Σ log p(completion tokens) / num_tokens; num_tokens counts the whole optimizer step, so
    micro-batches add up to the step's token mean."""
    logprobs, _ = completion_logprobs(
        model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
        batch["completion_mask"], temperature=1.0, chunk_size=chunk_size)  # (N, T)
    return -(logprobs * batch["completion_mask"]).sum() / max(num_tokens, 1)


def len_of(example: SFTExample) -> int:
    """Tokens of an example, prompt and completion."""
    return len(example.prompt_ids) + len(example.completion_ids)


def sized(sequences: int, tokens: int) -> str:
    """A micro-batch's size, as an out-of-memory error names it (`models.memory_named`)."""
    return f"{sequences} sequences, {tokens} tokens"


def _chunks(examples: list[SFTExample], size: int):
    lengths = torch.tensor([len_of(e) for e in examples])
    for idx in length_sorted_chunks(lengths, size):
        yield [examples[i] for i in idx.tolist()]


def train_step(model: torch.nn.Module, examples: list[SFTExample], state: RunState, cfg: Config,
               pad_id: int, autocast: Callable = contextlib.nullcontext) -> dict[str, float]:
    """One optimizer step on `examples`, micro-batched and length-sorted; returns its metrics."""
    start = time.perf_counter()
    model.train()
    num_tokens = sum(len(e.completion_ids) for e in examples)
    total = 0.0
    parts = list(_chunks(examples, cfg.train.micro_batch_size))
    for k, part in enumerate(parts):
        with models.memory_named(state.step + 1, k, len(parts), phase="the SFT update",
                                 size=lambda: sized(len(part), sum(map(len_of, part)))):
            with autocast():
                loss = sft_loss(model, collate(part, pad_id), num_tokens,
                                cfg.train.logprob_chunk_size)
            if not torch.isfinite(loss):
                raise NonFiniteError(f"non-finite SFT loss {loss.item()} at step {state.step + 1}")
            loss.backward()
        total += loss.item()
    metrics = {"loss/sft": total, **optimizer_step(model, state.optimizer, state.scheduler,
                                                   cfg.train.max_grad_norm)}
    elapsed = time.perf_counter() - start
    metrics.update({"train/tokens": float(num_tokens), "perf/step_time_s": elapsed,
                    "perf/train_tokens_per_s": num_tokens / max(elapsed, 1e-9)})
    return metrics


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, examples: list[SFTExample], pad_id: int, *,
                  micro_batch_size: int = 16, chunk_size: int = 1024,
                  autocast: Callable = contextlib.nullcontext) -> float:
    """Token-mean negative log-prob of the targets of `examples` (held-out loss)."""
    model.eval()
    num_tokens = sum(len(e.completion_ids) for e in examples)
    total = 0.0
    for part in _chunks(examples, micro_batch_size):
        with autocast():
            total += sft_loss(model, collate(part, pad_id), num_tokens, chunk_size).item()
    return total


# ---------------------------------------------------------------- the run


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


def load_examples(cfg: Config, tokenizer: Any) -> tuple[list[SFTExample], list[SFTExample]]:
    """(train, held-out) SFT examples (see `load_split`)."""
    task, system, rule = task_rule(cfg, "sft_target", "a target completion (arithmetic and "
                                   "countdown do); give a dataset with targets in data.path")
    return load_split(cfg, lambda row, where: encode_example(
        row, tokenizer, where=where, system_prompt=system,
        max_prompt_length=cfg.data.max_prompt_length,
        max_completion_length=cfg.rollout.max_new_tokens, rule=rule), task)


def make_state(cfg: Config, model: torch.nn.Module, num_rows: int) -> RunState:
    """AdamW over the trainable weights, the warm-up + schedule of `train`, the seeded row order."""
    return new_run_state("sft", cfg, model, num_rows, cfg.train.steps)


@dataclass
class SFTStage:
    """Supervised fine-tuning on the run loop (grpokit/loop.py)."""

    cfg: Config
    model: torch.nn.Module
    tokenizer: Any
    state: RunState
    notes: list[str]
    train_examples: list[SFTExample]
    eval_examples: list[SFTExample]
    autocast: Callable
    last: list[SFTExample] = field(default_factory=list)
    """The rows of the step just run (its samples)."""
    loss: float = float("nan")
    """The last step's loss."""

    def begin(self, out: Path) -> None:
        pass

    def step(self) -> dict[str, float]:
        self.last = [self.train_examples[i] for i in self.state.sampler.next_batch()]
        metrics = train_step(self.model, self.last, self.state, self.cfg,
                             self.tokenizer.pad_token_id, self.autocast)
        self.loss = metrics["loss/sft"]
        return metrics

    def samples(self, step: int, count: int) -> list[dict[str, Any]]:
        """The step's first rows as trained on: the rendered prompt and the target tokens."""
        decode = self.tokenizer.decode
        return [{"index": i, "prompt": decode(e.prompt_ids), "target": decode(e.completion_ids)}
                for i, e in enumerate(self.last[:count])]

    def evaluate(self, jsonl: Path | None) -> dict[str, float]:
        """The held-out loss (token_mean over the held-out targets); {} without held-out rows."""
        if not self.eval_examples:
            return {}
        t = self.cfg.train
        return {"loss": evaluate_loss(self.model, self.eval_examples, self.tokenizer.pad_token_id,
                                      autocast=self.autocast, micro_batch_size=t.micro_batch_size,
                                      chunk_size=t.logprob_chunk_size)}

    def finish(self, out: Path) -> dict[str, Any]:
        """`<output_dir>/final` (merged when LoRA), for `grpokit train model.path=...`."""
        final = models.save_model(self.model, self.tokenizer, out / "final", merge_lora=True)
        return {"train_loss": self.loss, "final": str(final)}


def run_sft(cfg: Config, console: Any = None, resume: str | Path | None = None) -> dict[str, Any]:
    """Supervised fine-tuning as the config says, on the run loop of every stage; writes
    checkpoints and `<output_dir>/final` (merged when LoRA) for `grpokit train
    model.path=<output_dir>/final`. Returns the results."""
    return run(cfg, "sft", _start, resume=resume, console=console)


def _start(cfg: Config, saved: dict[str, Any] | None) -> SFTStage:
    """Tokenizer, every example (checked before the weights load: a bad row fails in seconds),
    the model, and a fresh run state (the loop restores a resumed one)."""
    path = models.resolve_model_path(cfg.model.path)
    tokenizer = models.load_tokenizer(path)
    train_examples, eval_examples = load_examples(cfg, tokenizer)
    model = models.load_trainable(cfg.model, path,
                                  resume_from=None if saved is None else saved["path"] / "model")
    bf16 = precision.use_bf16(cfg.model.autocast)
    note = (f"[bold]grpokit sft[/]: {len(train_examples)} training rows, {cfg.train.steps} steps "
            f"of {cfg.rollout.prompts_per_step} rows, {len(eval_examples)} held out")
    return SFTStage(cfg, model, tokenizer, make_state(cfg, model, len(train_examples)), [note],
                    train_examples, eval_examples, lambda: precision.autocast(bf16))
