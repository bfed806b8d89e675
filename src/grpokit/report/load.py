"""Reading what a run left on disk (config.yaml, metrics.jsonl, samples.jsonl, eval.json, the
held-out completions, run.json) and eval results written by `grpokit eval --jsonl`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grpokit.typed_tree import UserError, flatten


@dataclass
class EvalResult:
    """Held-out results: the summary (rewards, pass@k, maj@k and their 95% intervals) and, when
    written, one record per prompt with its completions and scores."""

    label: str
    summary: dict[str, float]
    prompts: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Run:
    path: Path
    label: str
    config: dict[str, Any]  # the resolved config, flattened to dotted keys
    metrics: list[dict[str, Any]]  # one record per logged step, in step order
    samples: list[dict[str, Any]]
    evals: dict[str, EvalResult]  # "before", "after" of the training run's held-out evaluation
    info: dict[str, Any]  # run.json: the machine and start times

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """The steps that logged `key` and its finite values there."""
        steps, values = [], []
        for m in self.metrics:
            v = m.get(key)
            if isinstance(v, (int, float)) and v == v and abs(v) != float("inf"):
                steps.append(int(m["step"]))
                values.append(float(v))
        return steps, values

    def keys(self) -> set[str]:
        return {k for m in self.metrics for k in m}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file; a line that is not a JSON object is an error naming it."""
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{path}:{n}: not a JSON line ({exc})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def load_eval_jsonl(path: Path, label: str | None = None) -> EvalResult:
    """Eval results as `grpokit eval --jsonl` writes them: a record per prompt, then a summary."""
    records = read_jsonl(path)
    summaries = [r["summary"] for r in records if r.get("kind") == "summary"]
    prompts = [r for r in records if r.get("kind") == "prompt"]
    if not summaries:
        raise UserError(f"{path}: no summary record; is it written by `grpokit eval --jsonl`?")
    return EvalResult(label or path.stem, summaries[-1], prompts)


def load_run(path: str | Path) -> Run:
    """A run folder of `grpokit train` or `grpokit sft`."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a run folder (no such directory)")
    metrics_path = path / "metrics.jsonl"
    if not metrics_path.is_file():
        raise UserError(f"{path}: no metrics.jsonl; is it a run folder of grpokit train or sft?")
    config = {}
    if (path / "config.yaml").is_file():
        config = flatten(yaml.safe_load((path / "config.yaml").read_text()) or {})
    metrics = sorted(read_jsonl(metrics_path), key=lambda m: m.get("step", 0))
    samples = read_jsonl(path / "samples.jsonl") if (path / "samples.jsonl").is_file() else []
    evals: dict[str, EvalResult] = {}
    if (path / "eval.json").is_file():
        saved = json.loads((path / "eval.json").read_text())
        for when in ("before", "after"):
            if isinstance(saved.get(when), dict):
                records = path / f"eval_{when}.jsonl"
                prompts = load_eval_jsonl(records).prompts if records.is_file() else []
                evals[when] = EvalResult(when, saved[when], prompts)
    info = json.loads((path / "run.json").read_text()) if (path / "run.json").is_file() else {}
    return Run(path, path.name, config, metrics, samples, evals, info)


def label_runs(runs: list[Run]) -> None:
    """Short distinct labels: the folder name, or parent/name where two names collide."""
    names = [r.path.resolve().name for r in runs]
    for run, name in zip(runs, names):
        run.label = name if names.count(name) == 1 else f"{run.path.resolve().parent.name}/{name}"
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label += f" ({seen[run.label]})"
