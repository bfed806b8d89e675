"""Supervised fine-tuning on completion tokens: the cold start before GRPO (DeepSeek-R1 stage 1).

Each row gives a prompt and a target completion: `prompt` (or `messages`) plus `completion`, or
`messages` whose last message is the assistant turn, or a built-in task row whose reference
solution gives the target by a fixed rule (arithmetic, countdown). The prompt is rendered exactly
as `grpokit train` renders it; the target is tokenized on its own and followed by EOS, so the
model learns the token sequence it will later sample. The loss is the mean negative log-prob over
the completion tokens of an optimizer step (token_mean); prompt and padding tokens carry none.

Config mapping: `train.steps` optimizer steps of `sft.batch_size` rows each, drawn by the seeded
PromptSampler; `train.micro_batch_size`, `train.lr`, the schedule, warm-up and
clipping as in `grpokit train`. `data.max_prompt_length` caps the prompt and
`sft.max_target_length` caps the target (EOS included): a longer row is an error (DataError, exit
2) naming the row by its file and line, or a built-in task's 1-based row; never cut. A prompt
whose characters alone prove it too long is refused before it is tokenized. The rows and their
encoding live in data/supervised.py (DPO shares them); here: the loss, the step and the stage.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grpokit.config import Config
from grpokit.data.supervised import (
    SFTExample,
    collate,
    encode_example,
    len_of,
    load_split,
    sized,
    task_rule,
)
from grpokit.runtime import models, precision
from grpokit.training.logprobs import completion_logprobs, length_sorted_chunks
from grpokit.training.loop import run
from grpokit.training.state import NonFiniteError, RunState, new_run_state, optimizer_step

# ---------------------------------------------------------------- the loss (rows: data/supervised)


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_tokens: int,
             chunk_size: int = 1024) -> torch.Tensor:
    """−Σ log p(completion tokens) / num_tokens; num_tokens counts the whole optimizer step, so
    micro-batches add up to the step's token mean."""
    logprobs, _ = completion_logprobs(
        model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
        batch["completion_mask"], temperature=1.0, chunk_size=chunk_size)  # (N, T)
    return -(logprobs * batch["completion_mask"]).sum() / max(num_tokens, 1)


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


def load_examples(cfg: Config, tokenizer: Any) -> tuple[list[SFTExample], list[SFTExample]]:
    """(train, held-out) SFT examples (see `load_split`)."""
    task, system, rule = task_rule(cfg, "sft_target", "a target completion (arithmetic and "
                                   "countdown do); give a dataset with targets in data.path")
    return load_split(cfg, lambda row, where: encode_example(
        row, tokenizer, where=where, system_prompt=system,
        max_prompt_length=cfg.data.max_prompt_length,
        max_completion_length=cfg.sft.max_target_length, rule=rule), task)


def make_state(cfg: Config, model: torch.nn.Module, num_rows: int) -> RunState:
    """AdamW over the trainable weights, the warm-up + schedule of `train`, the seeded row order."""
    return new_run_state("sft", cfg, model, num_rows, cfg.sft.batch_size, cfg.train.steps)


@dataclass
class SFTStage:
    """Supervised fine-tuning on the run loop (grpokit/training/loop.py)."""

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
            f"of {cfg.sft.batch_size} rows, {len(eval_examples)} held out")
    return SFTStage(cfg, model, tokenizer, make_state(cfg, model, len(train_examples)), [note],
                    train_examples, eval_examples, lambda: precision.autocast(bf16))
