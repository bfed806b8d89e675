"""GRPO: `train()` runs a whole run, `train_step()` one step, every stage of DESIGN.md §1 in order.

One step: sample B prompts → G completions each → rewards (DAPO: drop tied groups and refill) →
advantages and the loss mask → metrics → μ passes of minibatch updates → weight sync.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpokit import distributed as dist
from grpokit.algo.advantages import batch_advantages
from grpokit.algo.losses import LossKnobs, policy_loss
from grpokit.algo.masks import is_tied, loss_mask, top_entropy_mask
from grpokit.batch import ScoredBatch, TrainingBatch
from grpokit.config import Config, to_dict
from grpokit.evaluation import evaluate, write_eval_jsonl
from grpokit.groups import PromptGroups, check_world, sample_groups
from grpokit.logprobs import batched_logprobs, padded_chunks, plan_micro_batches, shares_prefix
from grpokit.loop import run
from grpokit.metrics import reduce_metrics, rollout_metrics, sample_records
from grpokit.models import disabled_adapter, memory_named
from grpokit.precision import autocast_paused
from grpokit.rollout.base import is_truncated, sampling_seed
from grpokit.session import Session, build_session, sampling_truncation
from grpokit.training import NonFiniteError, RunState, new_run_state, optimizer_step


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


# ---------------------------------------------------------------- the stage


@dataclass
class RLStage:
    """GRPO (and PPO, with its own step) on the run loop (grpokit/loop.py): a session, the
    training and held-out prompts, the run state, and the last step's batch for its samples."""

    session: Session
    groups: PromptGroups
    held_out: PromptGroups | None
    state: RunState
    notes: list[str]
    step_fn: Callable[[Session, PromptGroups, RunState], tuple[TrainingBatch, dict[str, float]]]
    batch: TrainingBatch | None = None

    @property
    def cfg(self) -> Config:
        return self.session.cfg

    @property
    def model(self) -> torch.nn.Module:
        return self.session.model

    @property
    def tokenizer(self) -> Any:
        return self.session.tokenizer

    def begin(self, out: Path) -> None:
        pass

    def step(self) -> dict[str, float]:
        self.batch, metrics = self.step_fn(self.session, self.groups, self.state)
        return metrics

    def samples(self, step: int, count: int) -> list[dict[str, Any]]:
        return sample_records(self.batch, self.groups.names, count)

    def evaluate(self, jsonl: Path | None) -> dict[str, float]:
        """Held-out evaluation, always from the run's seed: before and after differ only by
        weights. With `jsonl`, rank 0 writes each prompt's completions and scores there (the
        report's before/after samples)."""
        if self.held_out is None:
            return {}
        records: list[dict[str, Any]] = []
        results = evaluate(self.session, self.held_out, self.cfg.train.seed, records)
        if jsonl is not None and dist.is_main():
            write_eval_jsonl(jsonl, results, records)
        return results

    def finish(self, out: Path) -> dict[str, Any]:
        return {}


def train(cfg: Config, *, resume: str | Path | None = None, console=None) -> dict[str, Any]:
    """Run GRPO as the config says; returns the final evaluations and the checkpoint path.

    Everything that can be checked before training is checked before anything is written to
    the run folder, which is claimed with a lock for the whole run (docs/runs.md)."""
    dist.init_from_env()
    check_world(cfg, dist.world_size())
    return run(cfg, "grpo", _start, resume=resume, console=console)


def rl_parts(cfg: Config, saved: dict[str, Any] | None
             ) -> tuple[Session, PromptGroups, PromptGroups | None]:
    """The session (weights from the checkpoint when resuming), the training prompts and the
    held-out prompts of an RL stage: every check of rewards and prompts runs here."""
    session = build_session(cfg, resume_from=None if saved is None else saved["path"] / "model")
    cfg = session.cfg
    groups = PromptGroups(session, session.task.train_rows)
    rows = session.task.eval_rows[: cfg.eval.num_prompts]
    held_out = PromptGroups(session, rows, runner=groups.runner) if rows else None
    return session, groups, held_out


def _start(cfg: Config, saved: dict[str, Any] | None) -> RLStage:
    session, groups, held_out = rl_parts(cfg, saved)
    cfg = session.cfg
    state = new_run_state("grpo", cfg, session.model, len(groups.rows), total_updates(cfg),
                          session.reference if cfg.algo.ref_refresh_steps else None)
    notes = [f"[bold]grpokit[/] {cfg.algo.preset}: " + json.dumps(to_dict(cfg.algo)),
             session.precision_note, session.prefix_note]
    return RLStage(session, groups, held_out, state, [n for n in notes if n], train_step)


def total_updates(cfg: Config) -> int:
    """Optimizer steps of the whole run: the horizon of the learning-rate schedule."""
    return cfg.train.steps * cfg.train.epochs_per_batch * cfg.train.minibatches
