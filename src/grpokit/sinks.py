"""Where metrics go: the console, a JSONL file and TensorBoard, behind one small protocol."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.tensorboard import SummaryWriter

# Metrics shown on the compact console line, in order, with their short labels.
CONSOLE_KEYS = (
    ("reward/mean", "reward"), ("reward/std", "±"), ("groups/tied_frac", "tied"),
    ("completion/len_mean", "len"), ("completion/truncated_frac", "trunc"), ("loss/kl", "kl"),
    ("loss/entropy", "ent"), ("loss/clip_frac", "clip"), ("loss/sft", "loss"),
    ("eval/loss", "eval loss"),
    ("optim/grad_norm", "gnorm"),
    ("perf/gen_tokens_per_s", "gen tok/s"), ("perf/step_time_s", "s/step"),
)


class MetricSink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


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

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """TensorBoard event files, one scalar per metric."""

    def __init__(self, path: Path, start_step: int = 0):
        # purge_step hides the events a killed run wrote after its last checkpoint
        self._writer = SummaryWriter(log_dir=str(path), purge_step=start_step + 1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


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

    def close(self) -> None:
        self._progress.stop()


class MultiSink:
    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def drop_after(path: Path, step: int) -> None:
    """Drop the lines of a JSONL log whose "step" is past `step` (left by a run that died after
    its last checkpoint), so a resumed or restarted run never logs a step twice."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)


def make_sinks(cfg: Any, out: Path, console: Console | None, start_step: int = 0) -> MultiSink:
    """The run's sinks: metrics.jsonl, TensorBoard (unless disabled), the console when given.
    Logs of steps after `start_step` (the step a run starts or resumes at) are dropped first."""
    drop_after(out / "samples.jsonl", start_step)
    sinks: list[Any] = [JsonlSink(out / "metrics.jsonl", start_step)]
    if cfg.log.tensorboard:
        sinks.append(TensorBoardSink(out / "tensorboard", start_step))
    if console is not None:
        sinks.append(ConsoleSink(cfg.train.steps, console))
    return MultiSink(sinks)
