"""GRPO: `train()` runs a whole run, `train_step()` one step, every stage of DESIGN.md §1 in order.

One step: sample B prompts → G completions each → rewards (DAPO: drop tied groups and refill) →
advantages and the loss mask → metrics → μ passes of minibatch updates → weight sync.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from grpokit import distributed as dist
from grpokit.algo.advantages import batch_advantages
from grpokit.algo.losses import LossKnobs, policy_loss
from grpokit.algo.masks import is_tied, loss_mask, top_entropy_mask
from grpokit.allocator import keep_freed_memory
from grpokit.batch import ScoredBatch, TrainingBatch
from grpokit.config import Config, to_dict
from grpokit.evaluation import evaluate, print_eval, write_eval_jsonl
from grpokit.groups import PromptGroups, check_world, sample_groups
from grpokit.logprobs import batched_logprobs, padded_chunks, plan_micro_batches, shares_prefix
from grpokit.metrics import reduce_metrics, rollout_metrics, write_samples
from grpokit.models import disabled_adapter, memory_named
from grpokit.precision import autocast_paused
from grpokit.report import write_report
from grpokit.rollout.base import is_truncated, sampling_seed
from grpokit.session import Session, build_session, sampling_truncation
from grpokit.sinks import check_trackers, make_sinks
from grpokit.training import (
    NonFiniteError, RunState, apply_learning_rate, claimed, load_resume, new_run_state,
    optimizer_step, resume_changes, save_run, seed_everything, write_config,
)


def train_step(session: Session, groups: PromptGroups, state: RunState
               ) -> tuple[TrainingBatch, dict[str, float]]:
    """One GRPO step; returns the training batch and the step's metrics."""
    cfg, start = session.cfg, time.perf_counter()
    scored, stats = sample_groups(groups, state.sampler, state.step, cfg)
    gen_time = time.perf_counter() - start
    advantages = advantages_of(scored, cfg)  # (N,) or (N, T)
    included, mask = loss_mask_of(scored, cfg)  # (N,), (N, T)
    device = batch_device(scored)
    batch = TrainingBatch(scored, advantages.to(device), mask.to(device), included.to(device))
    metrics = {**stats.metrics(), **rollout_metrics(batch, groups.names)}
    if stats.no_signal:
        # No group carried signal in any refill round: no optimizer step (AdamW's momentum and
        # weight decay would still move the weights).
        metrics.update({"train/skipped": 1.0, "train/tokens": 0.0})
    else:
        metrics.update(update_policy(session, state, batch))
        metrics["train/skipped"] = 0.0
        session.engine.sync_weights()
        metrics.update(sync_metrics(session.engine))
    metrics.update(perf_metrics(batch, metrics["train/tokens"], gen_time,
                                time.perf_counter() - start))
    return batch, metrics


def batch_device(scored: ScoredBatch) -> torch.device:
    """The rollout's device (the engine's, the policy's): the loss terms meet there."""
    return scored.rollout.completion_ids.device


def advantages_of(scored: ScoredBatch, cfg: Config) -> torch.Tensor:
    """Group-relative advantages (DESIGN.md §3), per sequence or, with step rewards, per token.
    The batch std (scale=batch) is the whole step's: over several ranks, every rank computes the
    advantages of the gathered batch and keeps its own rows."""
    a, r = cfg.algo, scored.rollout
    reward, steps, width = scored.reward, scored.step_rewards, r.completion_ids.shape[1]
    gather = a.scale == "batch" and dist.world_size() > 1
    if gather:
        parts = dist.all_gather_rows(reward)
        offset = sum(len(p) for p in parts[: dist.rank()])
        reward = torch.cat(parts)  # (N over every rank,)
        if steps is not None:
            steps = [s for part in dist.all_gather_object(steps) for s in part]
            width = int(dist.all_reduce_max(torch.tensor(width)))
    advantages = batch_advantages(reward, steps, r.group_size, width, estimator=a.estimator,
                                  scale=a.scale, eps=a.adv_eps)
    if not gather:
        return advantages
    mine = advantages[offset: offset + len(scored.reward)]
    return mine[:, : r.completion_ids.shape[1]] if steps is not None else mine


def loss_mask_of(scored: ScoredBatch, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequences and tokens that enter the loss: the tie and truncation rules of `algo`."""
    a, r = cfg.algo, scored.rollout
    tied = is_tied(scored.reward, r.group_size, a.tie_rule, tuple(a.tie_interval))  # (B,)
    truncated = is_truncated(r.finish_reason)  # (N,) on the CPU: token budget or turn limit
    # Only sampled tokens are trained; tool output inserted by an environment is context.
    included, mask = loss_mask(r.generated_mask, truncated, tied, exclude_tied=a.exclude_tied,
                               mask_truncated=a.mask_truncated)
    if scored.ghost:  # a rank's stand-in: in the passes, out of the loss and the normalizers
        return torch.zeros_like(included), torch.zeros_like(mask)
    return included, mask


def sync_metrics(engine: Any) -> dict[str, float]:
    """Time of the last weight sync and its probe's deviation, for engines that keep their own
    copy of the weights (the in-process engines sample from the policy itself: nothing to log)."""
    names = {"last_sync_s": "perf/sync_time_s", "last_probe_max_abs": "rollout/probe_max_abs"}
    return {key: float(getattr(engine, attr)) for attr, key in names.items()
            if getattr(engine, attr, None) is not None}


def perf_metrics(batch: TrainingBatch, train_tokens: float, gen_time: float,
                 step_time: float) -> dict[str, float]:
    gen_tokens = float(batch.rollout.generated_mask.sum())
    return {"perf/gen_time_s": gen_time, "perf/step_time_s": step_time,
            "perf/gen_tokens_per_s": gen_tokens / max(gen_time, 1e-9),
            "perf/train_tokens_per_s": train_tokens / max(step_time - gen_time, 1e-9)}


# ---------------------------------------------------------------- the policy update


def loss_knobs(cfg: Config) -> LossKnobs:
    return LossKnobs.from_values({**to_dict(cfg.algo),
                                  "max_completion_length": cfg.rollout.max_new_tokens})


def update_policy(session: Session, state: RunState, batch: TrainingBatch) -> dict[str, float]:
    """μ passes over the batch, `minibatches` optimizer steps each, micro-batch accumulation."""
    cfg, t = session.cfg, session.cfg.train
    knobs = loss_knobs(cfg)
    session.model.train()
    batch, old = _old_logprobs(session, batch, state.step + 1)
    ref = _reference_logprobs(session, batch, state.step + 1)
    r, parts, optim = batch.rollout, [], []
    rows = 0 if batch.scored.ghost else len(r.completion_ids)  # a stand-in holds no row of the step
    for epoch in range(t.epochs_per_batch):
        for mb in _minibatches(rows, t.minibatches, (t.seed, state.step, epoch)):
            counts = _global_counts(batch, mb)
            chunks = padded_chunks(plan_micro_batches(
                r.prompt_ids, r.prompt_mask, r.completion_mask, mb, max_seqs=t.micro_batch_size,
                max_tokens=t.max_tokens_per_micro_batch,
                share_prefix=shares_prefix(session.layout.scorer)))
            # One autocast region over the optimizer step's micro-batches: the weights' bf16
            # casts are made once and reused until the weights change.
            with session.autocast():
                for k, chunk in enumerate(chunks):
                    padding = bool(chunk[0] < 0)
                    idx = torch.tensor([0]) if padding else chunk
                    with session.layout.accumulating(last=k == len(chunks) - 1), \
                            memory_named(state.step + 1, k, len(chunks), r, idx):
                        part = _micro_step(session, batch, idx, old, ref, knobs, counts, padding)
                    parts += [part] if part else []
            optim.append(optimizer_step(session.model, state.optimizer, state.scheduler,
                                        t.max_grad_norm))
    # Every rank's micro-batches: the step's metrics, as one process would log them (each
    # micro-batch's loss is already normalized by the step's global counts, so they sum).
    parts = [p for rank_parts in dist.all_gather_object(parts) for p in rank_parts]
    metrics = {f"loss/{k}": v for k, v in reduce_metrics(parts).items()
               if k not in ("tokens", "loss")}
    metrics["loss/policy"] = sum(p["loss"] for p in parts) / max(len(optim), 1)
    metrics.update({k: sum(o[k] for o in optim) / len(optim) for k in optim[0]})
    metrics["optim/lr"] = optim[-1]["optim/lr"]
    metrics["train/tokens"] = float(sum(p.get("tokens", 0.0) for p in parts))
    return metrics


def _logprob_args(session: Session, step: int, phase: str) -> dict[str, Any]:
    """batched_logprobs' settings; `step` and `phase` name an out-of-memory error."""
    t = session.cfg.train
    return dict(micro_batch_size=t.micro_batch_size, max_tokens=t.max_tokens_per_micro_batch,
                temperature=session.cfg.rollout.temperature,
                chunk_size=t.logprob_chunk_size, autocast=session.autocast, step=step,
                phase=phase)


def _old_logprobs(session: Session, batch: TrainingBatch, step: int
                  ) -> tuple[TrainingBatch, torch.Tensor | None]:
    """The sampling policy's log-probs: None on-policy (μ = 1, one minibatch), where the loss uses
    logp.detach() and no extra forward pass runs (DESIGN.md §3); unless top-entropy selection
    needs the batch's entropies before the first update, which also narrows the loss mask."""
    a, t = session.cfg.algo, session.cfg.train
    on_policy = t.epochs_per_batch == 1 and t.minibatches == 1
    select = a.top_entropy_fraction < 1.0
    if on_policy and not select:
        return batch, None
    old, entropy = batched_logprobs(session.layout.scorer, batch.rollout, with_entropy=select,
                                    truncation=sampling_truncation(session.cfg),
                                    **_logprob_args(session, step, "the old log-probs"))
    if select:
        batch = dataclasses.replace(batch, loss_mask=top_entropy_mask(
            entropy, batch.loss_mask, a.top_entropy_fraction))
    return batch, None if on_policy else old


def _reference_logprobs(session: Session, batch: TrainingBatch, step: int
                        ) -> torch.Tensor | None:
    if not session.cfg.algo.beta:
        return None  # β = 0: no reference forward at all
    layout, args = session.layout, _logprob_args(session, step, "the reference log-probs")
    if layout.reference is not None:
        return batched_logprobs(layout.reference, batch.rollout, **args)[0]
    with disabled_adapter(session.model):  # LoRA: the reference is the base model
        return batched_logprobs(layout.scorer, batch.rollout, **args)[0]


def _minibatches(n: int, count: int, keys: tuple[int, ...]) -> list[torch.Tensor]:
    """This rank's rows of each of the step's `count` minibatches. The split is of the whole
    step's batch (every rank's rows in rank order, the ranks' shares may differ), from a seed of
    (seed, step, epoch), into exactly `count` parts whose sizes differ by at most one row; so it
    is the same whatever the number of ranks, and every rank runs `count` optimizer steps."""
    if count == 1:
        return [torch.arange(n)]
    sizes = [int(s) for s in dist.all_gather_tensor(torch.tensor([n]))]
    start = sum(sizes[: dist.rank()])
    generator = torch.Generator().manual_seed(sampling_seed(*keys, "minibatches"))
    order = torch.randperm(sum(sizes), generator=generator)
    return [part[(part >= start) & (part < start + n)] - start
            for part in order.tensor_split(count)]


def _global_counts(batch: TrainingBatch, idx: torch.Tensor) -> tuple[int, int]:
    """Sequences and loss tokens of an optimizer step over every rank (DESIGN.md §3)."""
    counts = torch.tensor([float(batch.included[idx].sum()), float(batch.loss_mask[idx].sum())])
    counts = dist.all_reduce_sum(counts)
    return int(counts[0]), int(counts[1])


def _micro_step(session, batch, idx, old, ref, knobs, counts, padding=False
                ) -> dict[str, float] | None:
    """Forward and backward of one micro-batch; the loss is normalized by the step's global counts.
    A padding pass (a rank with fewer micro-batches than another) backpropagates zero."""
    cfg, r, layout = session.cfg, batch.rollout, session.layout
    with session.autocast():
        logprobs, entropy = layout.scorer(
            r.prompt_ids[idx], r.prompt_mask[idx], r.completion_ids[idx], r.completion_mask[idx],
            temperature=cfg.rollout.temperature, chunk_size=cfg.train.logprob_chunk_size,
            with_entropy=True, entropy_grad=knobs.entropy_coef != 0.0,
            truncation=sampling_truncation(cfg))
    old_lp = logprobs.detach() if old is None else old[idx]
    sampler = None if r.sampling_logprobs is None else r.sampling_logprobs[idx]
    loss, metrics = policy_loss(logprobs, old_lp, batch.advantages[idx], batch.loss_mask[idx],
                                knobs, ref_logprobs=None if ref is None else ref[idx],
                                entropy=entropy, sampler_logprobs=sampler,
                                num_sequences=counts[0], num_tokens=counts[1],
                                sequence_mask=r.generated_mask[idx])
    if not torch.isfinite(loss):
        raise NonFiniteError(f"non-finite loss {loss.item()} in a micro-batch of sequences "
                             f"{idx.tolist()[:8]}...")
    with autocast_paused(batch_device(batch.scored)):  # backward runs in the forward's dtypes
        (loss * (0.0 if padding else layout.loss_scale)).backward()
    if padding:
        return None
    metrics["loss"] = loss.item()
    return metrics


# ---------------------------------------------------------------- the run


def train(cfg: Config, *, resume: str | Path | None = None, console=None) -> dict[str, Any]:
    """Run GRPO as the config says; returns the final evaluations and the checkpoint path.

    Everything that can be checked before training is checked before anything is written to
    the run folder, which is claimed with a lock for the whole run (docs/runs.md)."""
    dist.init_from_env()
    check_world(cfg, dist.world_size())
    return run(cfg, "grpo", _start, train_step, resume=resume, console=console)


def run(cfg: Config, kind: str, start, step, *, resume: str | Path | None = None, console=None
        ) -> dict[str, Any]:
    """The run of `train` (`grpokit ppo` shares it): the claimed folder, evaluations before and
    after, `step(session, groups, state)` until `train.steps`, sinks and checkpoints;
    `start(cfg, saved, console)` gives the session, prompt groups, run state and held-out."""
    out = Path(cfg.log.output_dir)
    check_trackers(cfg)  # a missing tracker library stops the start, before anything is written
    saved = load_resume(resume, cfg, kind)
    with claimed(out, resume) as folder:
        dist.barrier()  # every rank has checked the folder before rank 0 writes into it
        session, groups, state, held_out = start(cfg, saved, console)
        cfg = session.cfg
        write_config(out, cfg, folder)
        results: dict[str, Any] = {}
        if held_out and cfg.eval.before_and_after and state.step == 0:
            results["before"] = _evaluate(session, held_out, out / "eval_before.jsonl")
            if console is not None:
                print_eval(console, f"held-out evaluation before training ({len(held_out.rows)} "
                           "prompts)", {"before": results["before"]})
        sinks = make_sinks(cfg, out, console, start_step=state.step) if dist.is_main() else None
        try:
            while state.step < cfg.train.steps:
                batch, metrics = step(session, groups, state)
                state.step += 1
                _after_step(session, groups, state, batch, metrics, sinks, held_out, out)
        finally:
            if sinks is not None:
                sinks.close()
        return _finish(session, state, out, held_out, results, console)


def _start(cfg: Config, saved: dict[str, Any] | None, console):
    """Session, prompt groups, run state (restored when resuming) and held-out prompts: every
    check that can run before training (rewards, prompts, optimizer, resume conflicts)."""
    seed_everything(cfg.train.seed)
    memory_note = _keep_freed_memory(cfg)
    session = build_session(cfg, resume_from=None if saved is None else saved["path"] / "model")
    cfg = session.cfg
    changes = resume_changes(saved, cfg) if saved is not None else {}
    groups = PromptGroups(session, session.task.train_rows)
    rows = session.task.eval_rows[: cfg.eval.num_prompts]
    held_out = PromptGroups(session, rows, runner=groups.runner) if rows else None
    state = new_run_state("grpo", cfg, session.model, len(groups.rows), total_updates(cfg),
                          session.reference if cfg.algo.ref_refresh_steps else None)
    if saved is not None:
        state.load_state_dict(saved)
        if "train.lr" in changes:
            apply_learning_rate(state, cfg.train.lr)
    if console is not None:
        console.print(f"[bold]grpokit[/] {cfg.algo.preset}: " + json.dumps(to_dict(cfg.algo)))
        for note in (session.precision_note, session.prefix_note, memory_note):
            if note:
                console.print(note)
        for key, (old, new) in changes.items():
            console.print(f"resume: {key} {old!r} -> {new!r}")
    return session, groups, state, held_out


def _keep_freed_memory(cfg: Config) -> str | None:
    """Apply train.keep_freed_memory (grpokit/allocator.py); what to print about it."""
    if not cfg.train.keep_freed_memory:
        return None
    reason = keep_freed_memory()
    if reason is None:
        return "train.keep_freed_memory: freed memory stays in the process for reuse"
    return f"train.keep_freed_memory is not applied: {reason}"


def total_updates(cfg: Config) -> int:
    """Optimizer steps of the whole run: the horizon of the learning-rate schedule."""
    return cfg.train.steps * cfg.train.epochs_per_batch * cfg.train.minibatches


def _evaluate(session: Session, held_out: PromptGroups, jsonl: Path | None = None
              ) -> dict[str, float]:
    """Held-out evaluation, always from the run's seed: before and after differ only by weights.
    With `jsonl`, rank 0 writes each prompt's completions and scores there (the report's
    before/after samples)."""
    records: list[dict[str, Any]] = []
    results = evaluate(session, held_out, session.cfg.train.seed, records)
    if jsonl is not None and dist.is_main():
        write_eval_jsonl(jsonl, results, records)
    return results


def _after_step(session, groups, state, batch, metrics, sinks, held_out, out) -> None:
    cfg, step = session.cfg, state.step
    if cfg.algo.ref_refresh_steps and step % cfg.algo.ref_refresh_steps == 0:
        session.reference.load_state_dict(session.model.state_dict())  # iterative GRPO
    if cfg.eval.every and held_out and step % cfg.eval.every == 0:
        metrics.update({f"eval/{k}": v for k, v in _evaluate(session, held_out).items()})
    if sinks is not None:
        sinks.log(step, metrics)
        if cfg.log.samples_every and step % cfg.log.samples_every == 0:
            sinks.log_samples(step, write_samples(out / "samples.jsonl", step, batch,
                                                  groups.names, cfg.log.num_samples))
        if cfg.log.report and cfg.log.report_every and step % cfg.log.report_every == 0 \
                and step < cfg.train.steps:
            _report(out, None)
    if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < cfg.train.steps:
        save_run(out, cfg, session.model, session.tokenizer, state)


def _finish(session, state, out, held_out, results, console) -> dict[str, Any]:
    """The last checkpoint, the after-training evaluation and eval.json."""
    cfg = session.cfg
    path = save_run(out, cfg, session.model, session.tokenizer, state)
    if path is not None:
        results["checkpoint"] = str(path)
    if held_out and cfg.eval.before_and_after:
        results["after"] = _evaluate(session, held_out, out / "eval_after.jsonl")
    if dist.is_main():
        (out / "eval.json").write_text(json.dumps(results, indent=2))
    if console is not None and "after" in results:
        shown = {k: results[k] for k in ("before", "after") if k in results}
        print_eval(console, "held-out evaluation", shown)
    if dist.is_main() and cfg.log.report:
        results["report"] = str(_report(out, console))
    return results


def _report(out: Path, console) -> Path:
    """report.html of the run folder (rank 0), its path printed when there is a console."""
    path = write_report([out])
    if console is not None:
        console.print(f"report: {path}")
    return path
