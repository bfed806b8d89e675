"""What a step logs (rollout and group statistics, sample completions) and where it goes: the
console, a JSONL file and TensorBoard, behind one small protocol."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console

from grpokit import distributed as dist
from grpokit import scoring

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

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, "time": time.time(), **metrics}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardSink:
    """TensorBoard event files, one scalar per metric."""

    def __init__(self, path: Path):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(path))

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
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

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


def reduce_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """Combine per-micro-batch metrics: min/max keep extremes, the rest are token-weighted means."""
    out: dict[str, float] = {}
    weights = [p.get("tokens", 0.0) for p in parts]
    total = sum(weights)
    keys = {k for p in parts for k in p if k != "tokens"}
    for key in sorted(keys):
        pairs = [(p[key], w) for p, w in zip(parts, weights) if key in p and w > 0]
        if not pairs:
            continue
        if key.endswith("_min"):
            out[key] = min(v for v, _ in pairs)
        elif key.endswith("_max"):
            out[key] = max(v for v, _ in pairs)
        else:
            out[key] = sum(v * w for v, w in pairs) / sum(w for _, w in pairs)
    out["tokens"] = total
    return out


def make_sinks(cfg: Any, out: Path, console: Console | None) -> MultiSink:
    """The run's sinks: metrics.jsonl, TensorBoard (unless disabled), the console when given."""
    sinks: list[Any] = [JsonlSink(out / "metrics.jsonl")]
    if cfg.log.tensorboard:
        sinks.append(TensorBoardSink(out / "tensorboard"))
    if console is not None:
        sinks.append(ConsoleSink(cfg.train.steps, console))
    return MultiSink(sinks)


# ---------------------------------------------------------------- what a step logs


def _sum_count(values: torch.Tensor) -> list[float]:
    """[Σx, Σx², count] over the finite entries, to be summed over ranks."""
    v = values.double()[~torch.isnan(values)]
    return [v.sum().item(), (v * v).sum().item(), float(v.numel())]


def _mean_std(s: float, sq: float, n: float) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    mean = s / n
    return mean, math.sqrt(max(sq / n - mean * mean, 0.0))


def rollout_metrics(batch: scoring.ScoredBatch, names: list[str]) -> dict[str, float]:
    """Reward, length and advantage statistics over the whole step (every rank's share)."""
    r = batch.rollout
    lengths = r.completion_mask.sum(dim=1).double()  # (N,)
    truncated = torch.tensor([f == "length" for f in r.finish_reason], dtype=torch.float64)
    columns = [batch.reward, lengths, truncated, batch.advantages.double().reshape(-1)]
    columns += [batch.rewards[:, k] for k in range(len(names))]
    sums = dist.all_reduce_sum(torch.tensor(
        [x for col in columns for x in _sum_count(col)] + [float(len(lengths))], dtype=torch.float64))
    extremes = dist.all_reduce_max(torch.stack([lengths.max(), -lengths.min()]))
    triples = sums[:-1].view(-1, 3).tolist()
    reward_mean, reward_std = _mean_std(*triples[0])
    adv_mean, adv_std = _mean_std(*triples[3])
    metrics = {
        "reward/mean": reward_mean, "reward/std": reward_std,
        "reward/unscorable_frac": 1.0 - triples[0][2] / sums[-1].item(),
        "completion/len_mean": triples[1][0] / triples[1][2],
        "completion/len_min": -extremes[1].item(),
        "completion/len_max": extremes[0].item(),
        "completion/truncated_frac": triples[2][0] / triples[2][2],
        "advantage/mean": adv_mean, "advantage/std": adv_std,
    }
    for name, triple in zip(names, triples[4:]):
        metrics[f"reward/{name}"] = _mean_std(*triple)[0]
    return metrics


def global_group_stats(stats: dict[str, float]) -> dict[str, float]:
    """Group counters of collect() summed over ranks (fractions re-weighted by group counts)."""
    if dist.world_size() == 1:
        return stats
    keys = ["groups/prompts_generated", "groups/informative"]
    total = dist.all_reduce_sum(torch.tensor([stats[k] for k in keys], dtype=torch.float64))
    out = dict(stats)
    out.update({k: v for k, v in zip(keys, total.tolist())})
    out["groups/tied_frac"] = dist.all_reduce_sum(
        torch.tensor(stats["groups/tied_frac"], dtype=torch.float64)).item() / dist.world_size()
    return out


def write_samples(path: Path, step: int, batch: scoring.ScoredBatch, names: list[str], n: int) -> None:
    """A few completions with their prompt row, rewards and advantage, one JSON object each."""
    r = batch.rollout
    g = r.group_size
    with open(path, "a", encoding="utf-8") as f:
        for i in range(min(n, len(r.completions))):
            i_seq = i * g if i * g < len(r.completions) else i  # one per group first
            adv = batch.advantages[i_seq]
            record = {
                "step": step, "index": i_seq, "row": r.rows[i_seq // g],
                "completion": r.completions[i_seq], "finish_reason": r.finish_reason[i_seq],
                "rewards": {nm: (None if math.isnan(v) else v)
                            for nm, v in zip(names, batch.rewards[i_seq].tolist())},
                "reward": None if math.isnan(batch.reward[i_seq]) else batch.reward[i_seq].item(),
                "advantage": adv.mean().item() if adv.ndim else adv.item(),
            }
            f.write(json.dumps(record, default=str) + "\n")
