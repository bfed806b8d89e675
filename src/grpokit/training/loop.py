"""The one run loop of every stage: `grpokit train`, `ppo`, `sft` and `dpo` (docs/runs.md).

A stage (GRPO, PPO, SFT, DPO) supplies what differs: `start` builds its parts from the config,
and the `Stage` it returns runs one step, evaluates on held-out data and names its sample lines.
Everything else happens here, once, in the same order for every stage: the tracker check and the
resume's checks before the run folder is claimed; the seed and `train.keep_freed_memory`; the
resume's frozen and changeable settings (a changed `train.lr` applied to the optimizer and the
schedule); config.yaml; the evaluation before training; every step's metrics, samples, periodic
evaluation, reference refresh, report and checkpoint; the last checkpoint, the evaluation after
training, eval.json and report.html.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from grpokit.config import Config
from grpokit.report import write_report
from grpokit.runtime import distributed as dist
from grpokit.runtime.allocator import keep_freed_memory
from grpokit.training.sinks import check_trackers, make_sinks, print_eval
from grpokit.training.state import (
    RunState,
    apply_learning_rate,
    claimed,
    load_resume,
    resume_changes,
    save_run,
    seed_everything,
    write_config,
)


class Stage(Protocol):
    """What a stage gives the run loop. `cfg` is the resolved config, `model` the trained model
    (checkpoints save it), `state` its run state, freshly built: the loop restores a resumed
    run's state into it."""

    cfg: Config
    model: torch.nn.Module
    tokenizer: Any
    state: RunState
    notes: list[str]
    """Lines printed at start (the resolved knobs, precision, the shared-prefix decision)."""

    def begin(self, out: Path) -> None:
        """After config.yaml is written, before the first evaluation: work that writes into the
        run folder (DPO's precomputed reference log-probs)."""
        ...

    def step(self) -> dict[str, float]:
        """One training step (state.step is the number of steps done before it): its metrics."""
        ...

    def samples(self, step: int, count: int) -> list[dict[str, Any]]:
        """Up to `count` sample records of the step just run, for samples.jsonl and the
        trackers' tables."""
        ...

    def evaluate(self, jsonl: Path | None) -> dict[str, float]:
        """Held-out metrics ({} without held-out data); rank 0 writes per-prompt records to
        `jsonl` when given."""
        ...

    def finish(self, out: Path) -> dict[str, Any]:
        """After the last checkpoint: what else the stage writes and returns (SFT and DPO: the
        final model for the next stage)."""
        ...


Start = Callable[[Config, "dict[str, Any] | None"], Stage]
"""Builds a stage from the config and, when resuming, the loaded checkpoint (its weights)."""


def run(cfg: Config, kind: str, start: Start, *, resume: str | Path | None = None,
        console: Any = None) -> dict[str, Any]:
    """Run a stage of `kind` (grpo, ppo, sft, dpo) from start or `resume` to train.steps;
    returns the held-out evaluations before and after, the checkpoint path and the stage's own
    results. Every check that can run before training runs before the folder is written to."""
    out = Path(cfg.log.output_dir)
    check_trackers(cfg)  # a missing tracker library stops the start, before anything is written
    saved = load_resume(resume, cfg, kind)
    with claimed(out, resume) as folder:
        dist.barrier()  # every rank has checked the folder before rank 0 writes into it
        seed_everything(cfg.train.seed)
        memory_note = _keep_freed_memory(cfg)
        stage = start(cfg, saved)
        changes = _restore(stage, saved)
        _print_start(console, stage, [memory_note], changes)
        write_config(out, stage.cfg, folder, kind)
        stage.begin(out)
        results = _before(stage, out, console)
        _steps(stage, out, console)
        _finish(stage, out, results)
    _print_after(console, results)
    return results


def _restore(stage: Stage, saved: dict[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    """A resumed run's state, with its changeable settings applied; a frozen key changed is a
    ConfigError (resume_changes) raised before anything is written."""
    if saved is None:
        return {}
    changes = resume_changes(saved, stage.cfg)
    stage.state.load_state_dict(saved)
    if "train.lr" in changes:
        apply_learning_rate(stage.state, stage.cfg.train.lr)
    return changes


def _print_start(console: Any, stage: Stage, notes: list[str | None],
                 changes: dict[str, tuple[Any, Any]]) -> None:
    if console is None:
        return
    for line in [*stage.notes, *notes, *(f"resume: {k} {o!r} -> {n!r}"
                                         for k, (o, n) in changes.items())]:
        if line:
            console.print(line)


def _keep_freed_memory(cfg: Config) -> str | None:
    """Apply train.keep_freed_memory (grpokit/runtime/allocator.py); what to print about it."""
    if not cfg.train.keep_freed_memory:
        return None
    reason = keep_freed_memory()
    if reason is None:
        return "train.keep_freed_memory: freed memory stays in the process for reuse"
    return f"train.keep_freed_memory is not applied: {reason}"


def _before(stage: Stage, out: Path, console: Any) -> dict[str, Any]:
    """The held-out evaluation before training (a fresh run only)."""
    if not (stage.cfg.eval.before_and_after and stage.state.step == 0):
        return {}
    before = stage.evaluate(out / "eval_before.jsonl")
    if not before:
        return {}
    if console is not None:
        print_eval(console, "held-out evaluation before training", {"before": before})
    return {"before": before}


def _steps(stage: Stage, out: Path, console: Any) -> None:
    """Steps until train.steps, each followed by `_after_step`."""
    cfg, state = stage.cfg, stage.state
    sinks = make_sinks(cfg, out, console, start_step=state.step) if dist.is_main() else None
    try:
        while state.step < cfg.train.steps:
            metrics = stage.step()
            state.step += 1
            _after_step(stage, metrics, sinks, out)
    finally:
        if sinks is not None:
            sinks.close()


def _after_step(stage: Stage, metrics: dict[str, float], sinks: Any, out: Path) -> None:
    """Reference refresh, periodic evaluation, metrics, samples, report and checkpoint."""
    cfg, state, step = stage.cfg, stage.state, stage.state.step
    refresh = getattr(cfg.algo, "ref_refresh_steps", 0)
    if refresh and state.reference is not None and step % refresh == 0:
        state.reference.load_state_dict(stage.model.state_dict())  # iterative GRPO
    if cfg.eval.every and step % cfg.eval.every == 0:
        metrics.update({f"eval/{k}": v for k, v in stage.evaluate(None).items()})
    if sinks is not None:
        sinks.log(step, metrics)
        if cfg.log.samples_every and step % cfg.log.samples_every == 0:
            _log_samples(sinks, out, step, stage.samples(step, cfg.log.num_samples))
        if cfg.log.report and cfg.log.report_every and step % cfg.log.report_every == 0 \
                and step < cfg.train.steps:
            write_report([out])
    if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < cfg.train.steps:
        save_run(out, cfg, stage.model, stage.tokenizer, state)


def _log_samples(sinks: Any, out: Path, step: int, records: list[dict[str, Any]]) -> None:
    """Append the records to samples.jsonl and hand them to the trackers."""
    if not records:
        return
    with open(out / "samples.jsonl", "a", encoding="utf-8") as f:
        f.writelines(json.dumps({"step": step, **r}, default=str) + "\n" for r in records)
    sinks.log_samples(step, [{"step": step, **r} for r in records])


def _finish(stage: Stage, out: Path, results: dict[str, Any]) -> None:
    """Into `results`: the last checkpoint, the stage's own artifacts, the evaluation after
    training; then eval.json and report.html."""
    cfg, state = stage.cfg, stage.state
    path = save_run(out, cfg, stage.model, stage.tokenizer, state)
    if path is not None:
        results["checkpoint"] = str(path)
    results.update(stage.finish(out))
    if cfg.eval.before_and_after:
        after = stage.evaluate(out / "eval_after.jsonl")
        if after:
            results["after"] = after
    if dist.is_main():
        (out / "eval.json").write_text(json.dumps(results, indent=2, default=str))
        if cfg.log.report:
            results["report"] = str(write_report([out]))


def _print_after(console: Any, results: dict[str, Any]) -> None:
    if console is None:
        return
    if "after" in results:
        shown = {k: results[k] for k in ("before", "after") if k in results}
        print_eval(console, "held-out evaluation", shown)
    for key in ("final", "report"):
        if key in results:
            console.print(f"{'final model' if key == 'final' else key}: {results[key]}")
