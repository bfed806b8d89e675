"""`grpokit eval`: a model (the base or a checkpoint) on a task's held-out prompts."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING, Any

import torch

from grpokit.config import Config
from grpokit.rollout.base import SamplingParams
from grpokit.scoring import Rollouts

if TYPE_CHECKING:
    from grpokit.session import Session


def run_eval(cfg: Config, console=None) -> dict[str, Any]:
    """Mean reward per function, pass@k and maj@k on `eval.num_prompts` held-out prompts."""
    from grpokit.session import build_session, with_task_defaults
    from grpokit.trainer import seed_everything

    # Evaluation needs no reference model and no LoRA wrapper.
    cfg = dataclasses.replace(cfg, algo=dataclasses.replace(cfg.algo, beta=0.0))
    seed_everything(cfg.train.seed)
    session = build_session(cfg)
    session.cfg = cfg = with_task_defaults(cfg, session.task)
    rows = session.task.eval_rows[: cfg.eval.num_prompts]
    if not rows:
        raise ValueError(f"task {session.task.name!r} has no held-out rows to evaluate")
    results = evaluate(session, Rollouts(session, rows), cfg.train.seed)
    results["num_prompts"] = float(len(rows))
    results["samples_per_prompt"] = float(cfg.eval.samples_per_prompt)
    if console is not None:
        print_eval(console, f"{cfg.model.path} on {session.task.name}", {"value": results})
        console.print_json(json.dumps(results))
    return results


def evaluate(session: "Session", view: Rollouts, seed: int) -> dict[str, float]:
    """Held-out evaluation: mean reward per function, pass@k and maj@k over n samples per prompt."""
    from grpokit.evaluation import correctness, summarize
    from grpokit.rewards.extract import extract_answers, normalize

    e = session.cfg.eval
    n, generator = e.samples_per_prompt, torch.Generator().manual_seed(seed)
    params = SamplingParams(max_new_tokens=view.params.max_new_tokens, temperature=e.temperature,
                            top_p=view.params.top_p, top_k=view.params.top_k)
    rows, names = view.rows, view.names
    per_fn = {name: [] for name in names}
    correct, answers = [], []
    chunk = max(session.cfg.rollout.prompts_per_step * session.cfg.rollout.group_size // n, 1)
    for start in range(0, len(rows), chunk):
        sub = list(range(start, min(start + chunk, len(rows))))
        scored = view.score(sub, n, generator, params)
        for g in range(len(sub)):
            block = scored.rewards[g * n:(g + 1) * n]  # (n, K)
            for k, name in enumerate(names):
                per_fn[name].append([None if math.isnan(v) else v for v in block[:, k].tolist()])
            correct.append(correctness(per_fn[names[0]][-1], 1.0))
            texts = scored.rollout.completions[g * n:(g + 1) * n]
            found = [extract_answers(t, ("answer_tag", "boxed", "last_number")) for t in texts]
            answers.append([normalize(f[-1]) if f else None for f in found])
    return summarize(per_fn, correct, e.k, answers)


def print_eval(console, title: str, results: dict[str, dict[str, float]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    keys = sorted({k for r in results.values() for k in r})
    for key in keys:
        table.add_row(key, *[f"{r.get(key, float('nan')):.4f}" for r in results.values()])
    console.print(table)
