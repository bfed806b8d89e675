"""Held-out evaluation: the loop over held-out prompts, pass@k (unbiased) and maj@k, the table,
`grpokit eval`, and the same evaluation bound to a policy trained without a session
(`greedy_evaluation`: the held-out accuracy of `grpokit dpo`)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from grpokit.config import Config, ConfigError, EvalConfig
from grpokit.data.base import Task, load_data
from grpokit.errors import UserError
from grpokit.rewards.extract import extract_answers, normalize
from grpokit.rollout import make_engine
from grpokit.rollout.base import SamplingParams, sampling_seed
from grpokit.runtime import distributed as dist
from grpokit.training.groups import PromptGroups
from grpokit.training.logprobs import CompletionScorer
from grpokit.training.parallel import Layout
from grpokit.training.session import Session, build_session, reward_specs
from grpokit.training.sinks import print_eval


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 − C(n−c, k) / C(n, k) for n samples of which c are correct.

    Computed as a product, 1 − Π_{i=n−c+1}^{n} (1 − k/i), so large n never overflows.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1.0 when the most frequent answer among the first k samples is correct.

    Samples without an extractable answer (None) do not vote; ties go to the answer seen first.
    With no votes at all the result is 0.0.
    """
    if len(answers) != len(correct) or not 1 <= k <= len(answers):
        raise ValueError(f"maj@{k} needs k <= {len(answers)} samples with one verdict each")
    votes = Counter(a for a in answers[:k] if a is not None)
    if not votes:
        return 0.0
    top = max(votes.values())
    winner = next(a for a in answers[:k] if a is not None and votes[a] == top)
    return 1.0 if any(ok for a, ok in zip(answers[:k], correct[:k]) if a == winner) else 0.0


def summarize(
    rewards: dict[str, list[list[float | None]]],
    correct: list[list[bool]],
    ks: Sequence[int],
    answers: list[list[str | None]] | None = None,
) -> dict[str, float]:
    """Aggregate per-prompt samples: rewards[name][prompt][sample], correct[prompt][sample]."""
    out: dict[str, float] = {}
    for name, per_prompt in rewards.items():
        values = [v for samples in per_prompt for v in samples if v is not None]
        out[f"reward/{name}"] = sum(values) / len(values) if values else float("nan")
        out[f"scored_frac/{name}"] = len(values) / max(sum(len(s) for s in per_prompt), 1)
    for k in ks:
        per_prompt = {"pass": [pass_at_k(len(c), sum(c), k) for c in correct]}
        if answers is not None:
            per_prompt["maj"] = [maj_at_k(a, c, k) for a, c in zip(answers, correct)]
        for kind, values in per_prompt.items():
            out[f"{kind}@{k}"] = _mean(values)
            out[f"{kind}@{k}_ci95"] = ci95(values)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def ci95(values: list[float]) -> float:
    """Half-width of the normal 95% interval of the mean over prompts: 1.96·s/√n, with s the
    sample standard deviation of the per-prompt estimates (NaN below two prompts)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return 1.96 * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def correctness(values: list[float | None], threshold: float) -> list[bool]:
    """A sample is correct when its accuracy reward reaches the threshold (None is not correct)."""
    return [v is not None and v >= threshold for v in values]



def correct_reward_index(names: Sequence[str], e: EvalConfig) -> int:
    """The position among the run's reward functions of the one that decides correctness
    (eval.correct_reward; null: the first); a name the run does not have is an error."""
    if e.correct_reward is None:
        return 0
    if e.correct_reward not in names:
        raise ConfigError(f"eval.correct_reward={e.correct_reward!r} is not one of the run's "
                          f"reward functions: {', '.join(names)}")
    return list(names).index(e.correct_reward)


def evaluate(session: Session, held_out: PromptGroups, seed: int,
             records: list[dict[str, Any]] | None = None) -> dict[str, float]:
    """Mean reward per function, pass@k and maj@k over eval.samples_per_prompt samples of each
    held-out prompt, sampled with the eval settings; prompt k from the seed (seed, "eval", k).
    With `records`, one record per prompt (its completions, scores and answers) is appended."""
    e = session.cfg.eval
    n = e.samples_per_prompt
    params = SamplingParams(max_new_tokens=held_out.params.max_new_tokens,
                            temperature=e.temperature, top_p=held_out.params.top_p,
                            top_k=held_out.params.top_k)
    names = held_out.names
    judge = names[correct_reward_index(names, e)]
    per_fn: dict[str, list[list[float | None]]] = {name: [] for name in names}
    correct, answers = [], []
    chunk = max(e.batch_size // n, 1)
    for start in range(0, len(held_out.rows), chunk):
        sub = list(range(start, min(start + chunk, len(held_out.rows))))
        scored = held_out.score(sub, n, [sampling_seed(seed, "eval", k) for k in sub], params)
        for g in range(len(sub)):
            block = scored.rewards[g * n:(g + 1) * n]  # (n, K)
            for k, name in enumerate(names):
                per_fn[name].append([None if math.isnan(v) else v for v in block[:, k].tolist()])
            correct.append(correctness(per_fn[judge][-1], e.correct_threshold))
            texts = scored.rollout.completions[g * n:(g + 1) * n]
            found = [extract_answers(t, tuple(e.answer_extractors)) for t in texts]
            answers.append([normalize(f[-1]) if f else None for f in found])
            if records is not None:
                records.append({"kind": "prompt", "index": sub[g], "row": held_out.rows[sub[g]],
                                "completions": texts,
                                "rewards": {name: per_fn[name][-1] for name in names},
                                "correct": correct[-1], "answers": answers[-1]})
    return summarize(per_fn, correct, e.k, answers)


def write_eval_jsonl(path: Path, summary: dict[str, float], records: list[dict[str, Any]]) -> None:
    """The per-prompt records, then {"kind": "summary", "summary": {...}}; `grpokit report`
    reads this file."""
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, default=str) + "\n")
        f.write(json.dumps({"kind": "summary", "summary": summary}) + "\n")


def run_eval(cfg: Config, console=None, jsonl: str | Path | None = None) -> dict[str, Any]:
    """`grpokit eval`: the model as it is (no reference, no LoRA wrapper) on the first
    `eval.num_prompts` held-out prompts of the task. Sampling draws only from a generator seeded
    with train.seed, so the same config gives the same numbers. With `jsonl`, the per-prompt
    completions and scores and the summary are written there."""
    session = build_session(cfg, training=False)
    bad = [n for n, p in session.model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise UserError(f"model.path={cfg.model.path}: {len(bad)} weight tensors hold NaN or "
                        f"infinite values (e.g. {', '.join(bad[:3])}); the model cannot be "
                        "evaluated")
    rows = session.task.eval_rows[: cfg.eval.num_prompts]
    if not rows:
        raise UserError(f"task {session.task.name!r} has no held-out rows to evaluate "
                        f"(eval.num_prompts={cfg.eval.num_prompts})")
    records: list[dict[str, Any]] = []
    results = evaluate(session, PromptGroups(session, rows), cfg.train.seed, records)
    results["num_prompts"] = float(len(rows))
    results["samples_per_prompt"] = float(cfg.eval.samples_per_prompt)
    if jsonl is not None:
        write_eval_jsonl(Path(jsonl), results, records)
    if console is not None:
        print_eval(console, f"{cfg.model.path} on {session.task.name}", {"value": results})
        console.print_json(json.dumps(results))
    return results


# ---------------------------------------------------------------- a policy without a session


@dataclass
class Greedy:
    """The held-out evaluation of `grpokit train`, bound to the policy being trained (GRPO and
    PPO's, and DPO's greedy accuracy): always from the run's seed, so before and after differ
    only by weights. With `jsonl`, rank 0 writes each prompt's completions and scores there (the
    report's before/after samples)."""

    session: Session
    held_out: PromptGroups
    seed: int

    def __post_init__(self) -> None:
        correct_reward_index(self.held_out.names, self.session.cfg.eval)  # refused at start

    def __call__(self, jsonl: Path | None) -> dict[str, float]:
        records: list[dict[str, Any]] = []
        results = evaluate(self.session, self.held_out, self.seed, records)
        if jsonl is not None and dist.is_main():
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
