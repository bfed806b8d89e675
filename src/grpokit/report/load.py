"""Reading what a run left on disk (config.yaml, metrics.jsonl, samples.jsonl, eval.json, the
held-out completions, run.json) and eval results written by `grpokit eval --jsonl`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpokit.config.typed import flatten
from grpokit.errors import UserError, read_json, read_json_lines, read_yaml


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


def read_jsonl(path: Path, live: bool = False) -> list[dict[str, Any]]:
    """The records of a JSONL file; a line that is not a JSON object is an error naming it. With
    `live` (a run's own logs), a half-written last line is left out: the run is writing it."""
    records = []
    for n, record in read_json_lines(path, partial_tail=live):
        if not isinstance(record, dict):
            raise UserError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl or samples.jsonl in step order; a record without a
    whole, non-negative `step` is an error naming its line, a half-written last line is left
    out."""
    records = []
    for n, record in read_json_lines(path, partial_tail=True):
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            shown = f"step {step!r}" if isinstance(record, dict) else type(record).__name__
            raise UserError(f"{path}:{n}: expected a JSON object with a whole, non-negative "
                            f"`step`, got {shown}")
        records.append(record)
    return sorted(records, key=lambda m: m["step"])


def _object(path: Path, read) -> dict[str, Any]:
    """The mapping in a run's JSON or YAML file (empty when the file is absent)."""
    if not path.is_file():
        return {}
    value = read(path, UserError)
    if value is None and path.suffix == ".yaml":
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a mapping at the top, got {type(value).__name__}")
    return value


def load_eval_jsonl(path: Path, label: str | None = None) -> EvalResult:
    """Eval results as `grpokit eval --jsonl` writes them: a record per prompt, then a summary."""
    records = read_jsonl(path)
    summaries = [r.get("summary") for r in records if r.get("kind") == "summary"]
    prompts = [r for r in records if r.get("kind") == "prompt"]
    if not summaries:
        raise UserError(f"{path}: no summary record; is it written by `grpokit eval --jsonl`?")
    if not isinstance(summaries[-1], dict):
        raise UserError(f"{path}: the summary record holds no `summary` mapping")
    return EvalResult(label or path.stem, summaries[-1], prompts)


def _run_evals(path: Path) -> dict[str, EvalResult]:
    """The held-out results of a training run: eval.json and its eval_before/after.jsonl."""
    saved, evals = _object(path / "eval.json", read_json), {}
    for when in ("before", "after"):
        if isinstance(saved.get(when), dict):
            records = path / f"eval_{when}.jsonl"
            prompts = read_jsonl(records, live=True) if records.is_file() else []
            prompts = [r for r in prompts if r.get("kind") == "prompt"]
            evals[when] = EvalResult(when, saved[when], prompts)
    return evals


def _run_info(path: Path) -> dict[str, Any]:
    """run.json: its `starts` must be a list of objects (the page reads the last machine)."""
    info = _object(path, read_json)
    starts = info.get("starts", [])
    if not isinstance(starts, list) or not all(isinstance(s, dict) and
                                               isinstance(s.get("machine", {}), dict)
                                               for s in starts):
        raise UserError(f"{path}: `starts` must be a list of objects with a `machine` object")
    return info


def load_run(path: str | Path) -> Run:
    """A run folder of `grpokit train` or `grpokit sft`, finished or still being written."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a run folder (no such directory)")
    metrics_path = path / "metrics.jsonl"
    if not metrics_path.is_file():
        raise UserError(f"{path}: no metrics.jsonl; is it a run folder of grpokit train or sft?")
    config = flatten(_object(path / "config.yaml", read_yaml))
    metrics = read_steps(metrics_path)
    samples_path = path / "samples.jsonl"
    samples = read_steps(samples_path) if samples_path.is_file() else []
    return Run(path, path.name, config, metrics, samples, _run_evals(path),
               _run_info(path / "run.json"))


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
