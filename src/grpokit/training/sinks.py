"""Where metrics go: the console, a JSONL file and the trackers of `log.report_to` (TensorBoard,
Weights & Biases, MLflow), behind one small protocol."""

from __future__ import annotations

import importlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter

from grpokit.config import to_dict
from grpokit.config.typed import flatten
from grpokit.errors import UserError, read_json_lines, read_text
from grpokit.rewards.user import is_import_path, load_object
from grpokit.runtime import distributed as dist

# Metrics shown on the compact console line, in order, with their short labels.
CONSOLE_KEYS = (
    ("reward/mean", "reward"), ("reward/std", "±"), ("groups/tied_frac", "tied"),
    ("completion/len_mean", "len"), ("completion/truncated_frac", "trunc"), ("loss/kl", "kl"),
    ("distill/reverse_kl", "teacher kl"), ("loss/entropy", "ent"), ("loss/clip_frac", "clip"), ("loss/sft", "loss"),
    ("eval/loss", "eval loss"),
    ("optim/grad_norm", "gnorm"),
    ("perf/gen_tokens_per_s", "gen tok/s"), ("perf/step_time_s", "s/step"),
)


class MetricSink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_samples(self, step: int, records: list[dict[str, Any]]) -> None:
        """The sample completions of a step, the records `metrics.sample_records` made (samples.jsonl holds them)."""

    def close(self) -> None: ...


def finite(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics a tracker's charts take: numbers, finite (a NaN mean of no rows is left out)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(v)}


def sample_table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of the samples; nested values (row, rewards) as JSON text."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    return columns, [[_cell(r.get(c)) for c in columns] for r in records]


def _cell(value: Any) -> Any:
    return json.dumps(value, default=str) if isinstance(value, (dict, list)) else value


class JsonlSink:
    """One JSON object per step: {"step": s, "time": t, **metrics}."""

    def __init__(self, path: Path, start_step: int = 0):
        path.parent.mkdir(parents=True, exist_ok=True)
        drop_after(path, start_step)
        self._file = open(path, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, "time": time.time(), **metrics}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()

    def log_samples(self, step: int, records: list[dict[str, Any]]) -> None:
        """Nothing: the samples are in samples.jsonl already."""

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """TensorBoard event files, one scalar per metric."""

    def __init__(self, path: Path, start_step: int = 0):
        # purge_step hides the events a killed run wrote after its last checkpoint
        self._writer = SummaryWriter(log_dir=str(path), purge_step=start_step + 1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in finite(metrics).items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def log_samples(self, step: int, records: list[dict[str, Any]]) -> None:
        """The samples as a markdown table in the Text tab."""
        columns, rows = sample_table(records)
        lines = [columns, ["---"] * len(columns)]
        lines += [[str(v).replace("|", "\\|").replace("\n", "<br>") for v in row] for row in rows]
        self._writer.add_text("samples", "\n".join("| " + " | ".join(x) + " |" for x in lines), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _tracker_library(name: str, extra: str) -> Any:
    """The tracker's library, imported only when the config names it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(f"log.report_to names {extra}, whose library {name} is not installed: "
                        f"pip install 'grpokit[{extra}]'") from None
    except Exception as exc:  # a broken install (mismatched dependencies) fails on import
        raise UserError(f"log.report_to names {extra}, whose library {name} fails to import "
                        f"({type(exc).__name__}: {exc}); reinstall it: "
                        f"pip install --force-reinstall 'grpokit[{extra}]'") from exc


# The trackers of `log.report_to` that need a library of their own (TensorBoard comes with torch).
_TRACKER_LIBRARIES = {"wandb": "wandb", "mlflow": "mlflow"}


def check_trackers(cfg: Any) -> None:
    """Import the library of each tracker `log.report_to` names (on rank 0, where the trackers
    run): called before anything is written to the run folder, so a missing one stops the start,
    not a run already under way."""
    if not dist.is_main():
        return
    for name in dict.fromkeys(cfg.log.report_to):
        if name in _TRACKER_LIBRARIES:
            _tracker_library(_TRACKER_LIBRARIES[name], name)
        elif is_import_path(name):
            _user_sink(name)


def _user_sink(name: str) -> Any:
    """The factory `factory(cfg, out, start_step) -> MetricSink` an import path names."""
    try:
        factory = load_object(name, "metric sink")
    except ValueError as exc:
        raise UserError(f"log.report_to: {exc}") from None
    if not callable(factory):
        raise UserError(f"log.report_to: metric sink {name!r} is a {type(factory).__name__}; "
                        "expected a class or function (cfg, out, start_step) -> sink")
    return factory


def _tracker_run(out: Path, tracker: str, start_step: int) -> str | None:
    """The run id a tracker continues: the one of out/trackers.json when resuming (start_step > 0);
    a new run (step 0, a run started over) gets a new tracker run."""
    path = out / "trackers.json"
    return json.loads(path.read_text()).get(tracker) if start_step and path.is_file() else None


def _save_tracker_run(out: Path, tracker: str, run_id: str) -> None:
    path = out / "trackers.json"
    ids = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**ids, tracker: run_id}, indent=2) + "\n")


class WandbSink:
    """A Weights & Biases run in the project WANDB_PROJECT (else grpokit), its files under
    out/wandb; the mode and credentials are the user's (WANDB_MODE=offline, WANDB_API_KEY)."""

    def __init__(self, cfg: Any, out: Path, start_step: int = 0):
        wandb = _tracker_library("wandb", "wandb")
        self._table = wandb.Table
        previous = _tracker_run(out, "wandb", start_step)
        (out / "wandb").mkdir(parents=True, exist_ok=True)
        project = os.environ.get("WANDB_PROJECT") or "grpokit"
        self._run = wandb.init(project=project, dir=str(out), name=out.name,
                               id=previous, resume="allow" if previous else None)
        self._run.config.update(to_dict(cfg), allow_val_change=True)  # a resume may change log.*
        _save_tracker_run(out, "wandb", self._run.id)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._run.log(finite(metrics), step=step)

    def log_samples(self, step: int, records: list[dict[str, Any]]) -> None:
        columns, rows = sample_table(records)
        self._run.log({"samples": self._table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        self._run.finish()


# MLflow's longest parameter value (longer ones are cut, the config.yaml artifact has them whole)
MLFLOW_PARAM_LENGTH = 6000


class MlflowSink:
    """An MLflow run in the experiment MLFLOW_EXPERIMENT_NAME (else grpokit): metrics, the config
    as dotted parameters and config.yaml, samples as tables. The store is MLFLOW_TRACKING_URI,
    else out/mlflow.db."""

    def __init__(self, cfg: Any, out: Path, start_step: int = 0):
        self._mlflow = mlflow = _tracker_library("mlflow", "mlflow")
        user_uri = os.environ.get("MLFLOW_TRACKING_URI")
        self._client = mlflow.MlflowClient(user_uri or f"sqlite:///{out.resolve()}/mlflow.db")
        self._run_id = self._continued(_tracker_run(out, "mlflow", start_step))
        if self._run_id is None:
            local = None if user_uri else (out / "mlflow-artifacts").resolve().as_uri()
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "grpokit"
            experiment_id = self._experiment(name, local)
            self._run_id = self._client.create_run(experiment_id, run_name=out.name).info.run_id
        self._log_config(to_dict(cfg), start_step)
        _save_tracker_run(out, "mlflow", self._run_id)

    def _experiment(self, name: str, artifacts: str | None) -> str:
        """The experiment's id; created with its artifacts in the run folder for the local store."""
        found = self._client.get_experiment_by_name(name)
        return found.experiment_id if found else self._client.create_experiment(name, artifacts)

    def _continued(self, run_id: str | None) -> str | None:
        """The saved run, reopened, when it is in this store."""
        if run_id is None:
            return None
        try:
            self._client.update_run(run_id, status="RUNNING")
        except self._mlflow.exceptions.MlflowException:  # another store, or a deleted run
            return None
        return run_id

    def _log_config(self, config: dict[str, Any], start_step: int) -> None:
        """Parameters cannot change in MLflow: a resume records the values it changed as tags."""
        logged = self._client.get_run(self._run_id).data.params
        params = {k: str(v)[:MLFLOW_PARAM_LENGTH] for k, v in flatten(config).items()}
        new = [self._mlflow.entities.Param(k, v) for k, v in params.items() if k not in logged]
        tags = [self._mlflow.entities.RunTag(f"resumed_at_step_{start_step}.{k}", v)
                for k, v in params.items() if k in logged and logged[k] != v]
        for i in range(0, len(new), 100):  # log_batch takes at most 100 parameters
            self._client.log_batch(self._run_id, params=new[i:i + 100])
        self._client.log_batch(self._run_id, tags=tags)
        self._client.log_dict(self._run_id, config, "config.yaml")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [self._mlflow.entities.Metric(k, v, now, step) for k, v in finite(metrics).items()]
        for i in range(0, len(batch), 1000):  # log_batch takes at most 1000 metrics
            self._client.log_batch(self._run_id, metrics=batch[i:i + 1000])

    def log_samples(self, step: int, records: list[dict[str, Any]]) -> None:
        columns, rows = sample_table(records)
        self._client.log_table(self._run_id, data={c: [row[i] for row in rows]
                                                   for i, c in enumerate(columns)},
                               artifact_file=f"samples/step_{step:06d}.json")

    def close(self) -> None:
        self._client.set_terminated(self._run_id)


def format_line(step: int, total: int, metrics: dict[str, float]) -> str:
    """The compact one-line summary of a step."""
    parts = [f"step {step}/{total}"]
    for key, label in CONSOLE_KEYS:
        if key in metrics and metrics[key] is not None:
            value = metrics[key]
            parts.append(f"{label} {value:.3g}" if label != "±" else f"± {value:.3g}")
    return "  ".join(parts).replace("  ± ", "±")


class ConsoleSink:
    """One compact line per step, printed above a rich progress bar with ETA."""

    def __init__(self, total_steps: int, console: Console | None = None):
        self.console = console or Console(stderr=False)
        self.total = total_steps
        self._progress = Progress(TextColumn("training"), BarColumn(),
                                  TextColumn("{task.completed}/{task.total}"),
                                  TimeRemainingColumn(), console=self.console, transient=True)
        self._task = self._progress.add_task("train", total=total_steps)
        self._progress.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._progress.console.print(format_line(step, self.total, metrics), highlight=False)
        self._progress.update(self._task, completed=step)

    def log_samples(self, step: int, records: list[dict[str, Any]]) -> None:
        """Nothing: the console shows the step line only."""

    def close(self) -> None:
        self._progress.stop()


class MultiSink:
    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def log_samples(self, step: int, records: list[dict[str, Any]]) -> None:
        for sink in self.sinks if records else ():
            sink.log_samples(step, records)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def drop_after(path: Path, step: int) -> None:
    """Drop the lines of a JSONL log whose "step" is past `step` (left by a run that died after
    its last checkpoint), so a resumed or restarted run never logs a step twice. A torn last line
    (no newline, not JSON: the run was killed while writing it) is dropped too, so the next line
    is not appended onto it; a damaged line before it is a UserError naming the file and line."""
    if not path.is_file():
        return
    text = read_text(path, UserError)
    lines = text.split("\n")  # as read_json_lines numbers them
    kept = [lines[number - 1] + "\n" for number, record in read_json_lines(path, UserError,
                                                                           partial_tail=True)
            if _step_of(record, path, number) <= step]
    if "".join(kept) != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)


def _step_of(record: Any, path: Path, number: int) -> int:
    step = record.get("step", 0) if isinstance(record, dict) else None
    if not isinstance(step, int) or isinstance(step, bool):
        raise UserError(f"{path}:{number}: expected a JSON object with a whole 'step', got "
                        f"{str(record)[:60]}; remove or repair the line to resume")
    return step


# One constructor per name of `log.report_to`: (cfg, run folder, start step) -> sink.
_TRACKER_SINKS = {
    "tensorboard": lambda cfg, out, start_step: TensorBoardSink(out / "tensorboard", start_step),
    "wandb": WandbSink,
    "mlflow": MlflowSink,
}


def make_sinks(cfg: Any, out: Path, console: Console | None, start_step: int = 0) -> MultiSink:
    """The run's sinks: metrics.jsonl, the trackers of `log.report_to`, the console when given.
    Logs of steps after `start_step` (the step a run starts or resumes at) are dropped first."""
    drop_after(out / "samples.jsonl", start_step)
    sinks: list[Any] = [JsonlSink(out / "metrics.jsonl", start_step)]
    try:
        for name in dict.fromkeys(cfg.log.report_to):  # each tracker once
            factory = _TRACKER_SINKS.get(name) or _user_sink(name)
            sinks.append(factory(cfg, out, start_step))
    except BaseException:
        MultiSink(sinks).close()  # a tracker that cannot start: close the ones that did
        raise
    if console is not None:
        sinks.append(ConsoleSink(cfg.train.steps, console))
    return MultiSink(sinks)


def print_eval(console: Console, title: str, results: dict[str, dict[str, float]]) -> None:
    """Held-out results on the console, one table: a row per metric, a column per result set (e.g. before / after)."""
    table = Table(title=title)
    table.add_column("metric")
    for name in results:
        table.add_column(name, justify="right")
    keys = sorted({k for r in results.values() for k in r})
    for key in keys:
        table.add_row(key, *[f"{r.get(key, float('nan')):.4f}" for r in results.values()])
    console.print(table)
