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
`rollout.max_new_tokens` caps the target (EOS included): a longer row is an error, never cut.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from grpokit import checkpoint as ckpt
from grpokit.config import Config, ConfigError, to_dict
from grpokit.data.render import has_chat_template, render_prompt
from grpokit.data.sampler import PromptSampler
from grpokit.policy import completion_logprobs, length_sorted_chunks
from grpokit.rollout.batching import left_pad
from grpokit.session import load_trainable
from grpokit.metrics import make_sinks
from grpokit.trainer import NonFiniteError, lr_lambda, optimizer_step, seed_everything


@dataclass
class SFTExample:
    """One tokenized training example."""

    prompt_ids: list[int]
    """The rendered prompt, as `grpokit train` feeds it to the policy."""
    completion_ids: list[int]
    """The target completion followed by EOS: the only tokens with a loss."""


@dataclass
class SFTState:
    """What changes during an SFT run and is saved in checkpoints."""

    step: int
    sampler: PromptSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR


# ---------------------------------------------------------------- targets


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _arithmetic_target(style: str) -> Callable[[dict[str, Any]], str]:
    if style == "short":
        return lambda row: f"<answer>{row['answer']}</answer>"
    return lambda row: (f"<think>{row['expression']} = {row['answer']}</think> "
                        f"<answer>{row['answer']}</answer>")


def _countdown_target(row: dict[str, Any]) -> str:
    if not row.get("solution"):
        return ""  # reported as an empty target by split_row
    return f"<think>{row['solution']} = {row['target']}</think> <answer>{row['solution']}</answer>"


def task_target_rule(task: str | None, task_args: dict[str, Any]) -> Callable[[dict], str] | None:
    """The rule that writes a built-in task row's reference completion, or None when none exists."""
    if task == "arithmetic":
        return _arithmetic_target(task_args.get("style", "r1"))
    if task == "countdown":
        return _countdown_target
    return None


def split_row(row: dict[str, Any], where: str,
              rule: Callable[[dict], str] | None = None) -> tuple[dict[str, Any], str]:
    """(prompt row, target text): from `completion`, a final assistant message, or the task rule."""
    messages = row.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    ends_with_assistant = isinstance(last, dict) and last.get("role") == "assistant"
    if "completion" in row:
        if ends_with_assistant:
            raise ValueError(f"{where}: has both 'completion' and messages ending with an "
                             "assistant turn; keep one target")
        prompt_row, target, field = row, row["completion"], "'completion'"
    elif ends_with_assistant:
        if len(messages) < 2:
            raise ValueError(f"{where}: messages hold only the assistant turn; a prompt message "
                             "must come before it")
        prompt_row = {**row, "messages": messages[:-1]}
        target, field = last.get("content"), "the last (assistant) message's 'content'"
    elif rule is not None:
        prompt_row, target, field = row, rule(row), "the reference solution"
    else:
        raise ValueError(f"{where}: no SFT target; expected a 'completion' column (rename "
                         "yours with data.columns={your_column: completion}) or 'messages' ending "
                         f"with an assistant turn (keys: {sorted(row)})")
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"{where}: {field} must be a non-empty string, got {_short(target)}")
    return prompt_row, target


def encode_example(row: dict[str, Any], tokenizer: Any, *, where: str, system_prompt: str | None,
                   max_prompt_length: int, max_completion_length: int,
                   rule: Callable[[dict], str] | None = None) -> SFTExample:
    """Token ids of a row's prompt and target + EOS; a row over either cap is an error."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: SFT targets must end with one")
    prompt_row, target = split_row(row, where, rule)
    text = render_prompt(prompt_row, tokenizer, system_prompt)
    # A chat template writes its own special tokens (BOS); adding them again would double them.
    special = not has_chat_template(tokenizer)
    prompt_ids = list(tokenizer(text, add_special_tokens=special)["input_ids"])
    completion_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    completion_ids.append(tokenizer.eos_token_id)
    if len(prompt_ids) > max_prompt_length:
        raise ValueError(f"{where}: the prompt is {len(prompt_ids)} tokens, longer than "
                         f"data.max_prompt_length={max_prompt_length}; raise it or shorten the "
                         "prompt")
    if len(completion_ids) > max_completion_length:
        raise ValueError(f"{where}: the target is {len(completion_ids)} tokens with EOS, longer "
                         f"than rollout.max_new_tokens={max_completion_length} (never cut); "
                         "raise it or shorten the target")
    return SFTExample(prompt_ids, completion_ids)


# ---------------------------------------------------------------- the loss


def collate(examples: list[SFTExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts and right-padded completions with their masks."""
    prompt_ids, prompt_mask = left_pad([e.prompt_ids for e in examples], pad_id,
                                       torch.device("cpu"))  # (N, P)
    width = max(len(e.completion_ids) for e in examples)
    completion_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (N, T)
    completion_mask = torch.zeros((len(examples), width), dtype=torch.bool)  # (N, T)
    for i, e in enumerate(examples):
        completion_ids[i, : len(e.completion_ids)] = torch.tensor(e.completion_ids)
        completion_mask[i, : len(e.completion_ids)] = True
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
            "completion_ids": completion_ids, "completion_mask": completion_mask}


def sft_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_tokens: int,
             chunk_size: int = 1024) -> torch.Tensor:
    """−Σ log p(completion tokens) / num_tokens; num_tokens counts the whole optimizer step, so
    micro-batches add up to the step's token mean."""
    logprobs, _ = completion_logprobs(
        model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
        batch["completion_mask"], temperature=1.0, chunk_size=chunk_size)  # (N, T)
    return -(logprobs * batch["completion_mask"]).sum() / max(num_tokens, 1)


def _chunks(examples: list[SFTExample], size: int):
    lengths = torch.tensor([len(e.prompt_ids) + len(e.completion_ids) for e in examples])
    for idx in length_sorted_chunks(lengths, size):
        yield [examples[i] for i in idx.tolist()]


def train_step(model: torch.nn.Module, examples: list[SFTExample], state: SFTState, cfg: Config,
               pad_id: int, autocast: Callable = contextlib.nullcontext) -> dict[str, float]:
    """One optimizer step on `examples`, micro-batched and length-sorted; returns its metrics."""
    start = time.perf_counter()
    model.train()
    num_tokens = sum(len(e.completion_ids) for e in examples)
    total = 0.0
    for part in _chunks(examples, cfg.train.micro_batch_size):
        with autocast():
            loss = sft_loss(model, collate(part, pad_id), num_tokens, cfg.train.logprob_chunk_size)
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


def _encode_rows(rows: list[dict[str, Any]], where: str, tokenizer: Any, cfg: Config,
                 system_prompt: str | None, rule: Callable[[dict], str] | None = None,
                 ) -> list[SFTExample]:
    return [encode_example(row, tokenizer, where=f"{where} {i}", system_prompt=system_prompt,
                           max_prompt_length=cfg.data.max_prompt_length,
                           max_completion_length=cfg.rollout.max_new_tokens, rule=rule)
            for i, row in enumerate(rows)]


def load_examples(cfg: Config, tokenizer: Any) -> tuple[list[SFTExample], list[SFTExample]]:
    """(train, held-out) examples. A dataset is split like `grpokit train` splits it (same seed and
    fraction), so the GRPO stage evaluates on rows SFT never saw; errors name the file row."""
    from grpokit.data import datasets as ds
    from grpokit.data.base import load_task
    from grpokit.session import system_prompt

    d, limit = cfg.data, cfg.eval.num_prompts
    if d.path is None:
        rule = task_target_rule(d.task, d.task_args)
        if rule is None:
            raise ConfigError(f"data.task: task {d.task!r} has no rule that writes a target "
                              "completion (arithmetic and countdown do); give a dataset with "
                              "targets in data.path")
        task = load_task(d.task, **d.task_args)
        where, system = f"task {task.name!r}:", system_prompt(cfg, task)
        return (_encode_rows(task.train_rows, f"{where} train row", tokenizer, cfg, system, rule),
                _encode_rows(task.eval_rows[:limit], f"{where} eval row", tokenizer, cfg, system,
                             rule))
    columns = {"prompt_column": d.prompt_column, "messages_column": d.messages_column,
               "columns": d.columns}
    examples = _encode_rows(ds.load_rows(d.path, **columns), f"{d.path}: row", tokenizer, cfg,
                            d.system_prompt)
    if d.eval_path is not None:
        held_out = _encode_rows(ds.load_rows(d.eval_path, **columns), f"{d.eval_path}: row",
                                tokenizer, cfg, d.system_prompt)
        return examples, held_out[:limit]
    train, held_out = ds.split_rows(examples, eval_fraction=d.eval_fraction, seed=d.seed)
    return train, held_out[:limit]


def _resolve(cfg: Config) -> Path:
    from grpokit.models import resolve_model

    try:
        return resolve_model(cfg.model.path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"model.path: {exc}") from exc


def make_state(cfg: Config, model: torch.nn.Module, num_rows: int) -> SFTState:
    """AdamW over the trainable weights, the warm-up + schedule of `train`, the seeded row order."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas),
                                  weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, t.steps))
    sampler = PromptSampler(num_rows, cfg.rollout.prompts_per_step, seed=cfg.data.seed)
    return SFTState(0, sampler, optimizer, scheduler)


def save(model: torch.nn.Module, tokenizer: Any, state: SFTState, cfg: Config, out: Path) -> Path:
    """A checkpoint in the layout of `grpokit train`: checkpoints/step-NNNNNN/model + trainer.pt."""
    from grpokit.models import save_model

    merge = cfg.model.lora.enabled and cfg.model.lora.save_merged
    saved = {"optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
             "sampler": state.sampler.state_dict(), "task": "sft"}
    return ckpt.save_checkpoint(
        out / "checkpoints", state.step,
        lambda tmp: save_model(model, tokenizer, tmp / "model", merge_lora=merge),
        saved, yaml.safe_dump(to_dict(cfg), sort_keys=False), cfg.checkpoint.keep_last)


def _restore(state: SFTState, saved: dict[str, Any]) -> None:
    """Optimizer, schedule, row order, RNG streams and step of an SFT checkpoint."""
    if saved.get("task") != "sft":
        raise ConfigError(f"--resume: {saved['path']} is not an SFT checkpoint")
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.sampler.load_state_dict(saved["sampler"])
    ckpt.set_rng_state(saved["rng"])
    state.step = saved["step"]


def _train_loop(cfg, model, tokenizer, state, train_examples, evaluate, out, console) -> float:
    """Steps until train.steps; logs each and checkpoints every checkpoint.every; the last loss."""
    sinks = make_sinks(cfg, out, console)
    loss = float("nan")
    try:
        while state.step < cfg.train.steps:
            rows = [train_examples[i] for i in state.sampler.next_batch()]
            metrics = train_step(model, rows, state, cfg, tokenizer.pad_token_id, evaluate.autocast)
            state.step += 1
            loss = metrics["loss/sft"]
            if cfg.eval.every and evaluate.examples and state.step % cfg.eval.every == 0:
                metrics["eval/loss"] = evaluate()
            sinks.log(state.step, metrics)
            if cfg.checkpoint.every and state.step % cfg.checkpoint.every == 0 \
                    and state.step < cfg.train.steps:
                save(model, tokenizer, state, cfg, out)
    finally:
        sinks.close()
    return loss


@dataclass
class _HeldOut:
    """The held-out loss, bound to its model, examples and settings."""

    model: torch.nn.Module
    examples: list[SFTExample]
    pad_id: int
    cfg: Config
    autocast: Callable

    def __call__(self) -> float:
        t = self.cfg.train
        return evaluate_loss(self.model, self.examples, self.pad_id, autocast=self.autocast,
                             micro_batch_size=t.micro_batch_size, chunk_size=t.logprob_chunk_size)


def run_sft(cfg: Config, console: Any = None, resume: str | Path | None = None) -> dict[str, Any]:
    """Supervised fine-tuning as the config says; writes checkpoints and `<output_dir>/final`
    (merged when LoRA) for `grpokit train model.path=<output_dir>/final`. Returns the results."""
    from grpokit.models import autocast_context, load_tokenizer, save_model

    out = Path(cfg.log.output_dir)
    saved = ckpt.load_state(Path(resume)) if resume is not None else None
    if saved is None and (out / "config.yaml").exists():
        raise ConfigError(f"log.output_dir: {out} already holds a run; resume it with "
                          f"--resume {out}, or choose another log.output_dir")
    seed_everything(cfg.train.seed)
    path = _resolve(cfg)
    tokenizer = load_tokenizer(path)
    # Every row is checked before the weights load: a bad row fails in seconds, not minutes.
    train_examples, eval_examples = load_examples(cfg, tokenizer)
    model = load_trainable(cfg, path, resume_from=None if saved is None else saved["path"] / "model")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    mode = cfg.model.autocast
    autocast = lambda: autocast_context("cpu", mode != "off", force=mode == "bf16")
    evaluate = _HeldOut(model, eval_examples, tokenizer.pad_token_id, cfg, autocast)
    state = make_state(cfg, model, len(train_examples))
    if saved is not None:
        _restore(state, saved)
    before_after = bool(eval_examples) and cfg.eval.before_and_after and state.step == 0
    results: dict[str, Any] = {"before": {"loss": evaluate()}} if before_after else {}
    if console is not None:
        console.print(f"[bold]grpokit sft[/]: {len(train_examples)} training rows, "
                      f"{cfg.train.steps} steps of {cfg.rollout.prompts_per_step} rows, "
                      f"{len(eval_examples)} held out")
    results["train_loss"] = _train_loop(cfg, model, tokenizer, state, train_examples, evaluate,
                                        out, console)
    results["checkpoint"] = str(save(model, tokenizer, state, cfg, out))
    results["final"] = str(save_model(model, tokenizer, out / "final", merge_lora=True))
    if before_after:
        results["after"] = {"loss": evaluate()}
    (out / "eval.json").write_text(json.dumps(results, indent=2))
    if console is not None:
        for k in ("before", "after"):
            if k in results:
                console.print(f"held-out loss {k} training: {results[k]['loss']:.4g}")
        console.print(f"final model: {results['final']}")
    return results
