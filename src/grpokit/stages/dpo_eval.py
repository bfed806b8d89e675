"""The held-out accuracy of `grpokit dpo`: greedy completions of the held-out prompts scored by
the task's (or the config's) reward functions, exactly as `grpokit train` evaluates before and
after training; kept apart from dpo.py, whose loss and run need none of the rollout stack."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpokit.config import Config
from grpokit.data.base import Task, load_data
from grpokit.evaluation import evaluate, write_eval_jsonl
from grpokit.groups import PromptGroups
from grpokit.logprobs import CompletionScorer
from grpokit.parallel import Layout
from grpokit.rollout import make_engine
from grpokit.session import Session, reward_specs


@dataclass
class Greedy:
    """The held-out evaluation of `grpokit train`, bound to the policy being trained."""

    session: Session
    held_out: PromptGroups
    seed: int

    def __call__(self, jsonl: Path | None) -> dict[str, float]:
        records: list[dict[str, Any]] = []
        results = evaluate(self.session, self.held_out, self.seed, records)
        if jsonl is not None:
            write_eval_jsonl(jsonl, results, records)
        return results


def greedy_evaluation(cfg: Config, model: torch.nn.Module, tokenizer: Any, task: Task | None,
                      bf16: bool) -> Greedy | None:
    """The evaluation of the first eval.num_prompts held-out prompts: for a built-in task, or for
    a dataset when the config names `rewards`; None otherwise (the pair metrics remain)."""
    if cfg.eval.num_prompts == 0 or (task is None and not cfg.rewards):
        return None
    task = task if task is not None else load_data(cfg.data)
    rows = task.eval_rows[: cfg.eval.num_prompts]
    if not rows:
        return None
    specs = reward_specs(cfg, task)
    cfg = dataclasses.replace(cfg, rewards=specs)
    engine = make_engine(cfg.rollout.engine, model, tokenizer, bf16, cfg.rollout)
    session = Session(cfg, model, tokenizer, None, task, specs, engine, bf16,
                      Layout("single", CompletionScorer(model), None))
    return Greedy(session, PromptGroups(session, rows), cfg.train.seed)
