"""The policy update GRPO and PPO share: μ passes over a step's batch, `minibatches` optimizer
steps each, micro-batch accumulation; the loss normalized by the step's global counts over every
rank (DESIGN.md §3)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from grpokit.algo.advantages import distill_advantages, kl_reward_advantages
from grpokit.algo.covariance import cov_selection
from grpokit.algo.losses import LossKnobs, kl_penalty, policy_loss
from grpokit.algo.masks import top_entropy_mask
from grpokit.config import Config, ConfigError, to_dict
from grpokit.rl.metrics import reduce_metrics
from grpokit.rollout.base import sampling_seed
from grpokit.runtime import distributed as dist
from grpokit.runtime.models import disabled_adapter, memory_named
from grpokit.runtime.precision import autocast_paused, fp32_attention
from grpokit.training.batch import TrainingBatch, batch_device
from grpokit.training.logprobs import (
    batched_logprobs,
    padded_chunks,
    plan_micro_batches,
    shares_prefix,
)
from grpokit.training.session import Session, sampling_truncation
from grpokit.training.state import NonFiniteError, RunState, optimizer_step


def loss_knobs(cfg: Config) -> LossKnobs:
    return LossKnobs.from_values({**to_dict(cfg.algo),
                                  "max_completion_length": cfg.rollout.max_new_tokens})


def update_policy(session: Session, state: RunState, batch: TrainingBatch) -> dict[str, float]:
    """μ passes over the batch, `minibatches` optimizer steps each, micro-batch accumulation."""
    cfg, t = session.cfg, session.cfg.train
    knobs = loss_knobs(cfg)
    session.model.train()
    batch, old, ref, step_metrics = _step_inputs(session, batch, state.step + 1)
    r, parts, optim = batch.rollout, [], []
    rows = 0 if batch.scored.ghost else len(r.completion_ids)  # a stand-in holds no row of the step
    for epoch in range(t.epochs_per_batch):
        for i, mb in enumerate(_minibatches(rows, t.minibatches, (t.seed, state.step, epoch))):
            counts = _global_counts(batch, mb)
            # The step's first update runs on the weights that sampled: its old log-probs are
            # the pass's own, detached, as on-policy (exactly ρ = 1, no rounding noise).
            mb_old = None if epoch == 0 and i == 0 else old
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
                        part = _micro_step(session, batch, idx, mb_old, ref, knobs, counts,
                                           padding)
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
    return {**metrics, **step_metrics}


def _logprob_args(session: Session, step: int, phase: str) -> dict[str, Any]:
    """batched_logprobs' settings; `step` and `phase` name an out-of-memory error."""
    t = session.cfg.train
    return dict(micro_batch_size=t.micro_batch_size, max_tokens=t.max_tokens_per_micro_batch,
                temperature=session.cfg.rollout.temperature,
                chunk_size=t.logprob_chunk_size, autocast=session.autocast, step=step,
                phase=phase)


def _step_inputs(session: Session, batch: TrainingBatch, step: int
                 ) -> tuple[TrainingBatch, torch.Tensor | None, torch.Tensor | None,
                            dict[str, float]]:
    """What the step's updates hold fixed beyond the rollout: the old log-probs (None on-policy)
    and the reference's (None at β = 0); the batch with REINFORCE++'s KL-in-reward advantages
    (algo.kl_in_reward), the teacher's per-token term (algo.teacher) and the tokens of
    algo.cov_control; and the metrics of these."""
    batch, start, old = _old_logprobs(session, batch, step)
    ref = _reference_logprobs(session, batch, step)
    metrics: dict[str, float] = {}
    if session.cfg.algo.kl_in_reward:
        batch = _kl_in_reward(session, batch, start, ref)
    if session.layout.teacher is not None:
        batch, metrics["distill/reverse_kl"] = _distilled(session, batch, start, step)
    if session.cfg.algo.cov_control != "none":
        batch = dataclasses.replace(batch, cov_mask=_cov_selected(session, batch, start, step))
    return batch, old, ref, metrics


def _old_logprobs(session: Session, batch: TrainingBatch, step: int
                  ) -> tuple[TrainingBatch, torch.Tensor | None, torch.Tensor | None]:
    """The batch, the policy's log-probs at the step's start (computed only when something
    needs them before the first update), and the old log-probs of the ratio. These are None
    on-policy (μ = 1, one minibatch), where the loss uses logp.detach() and no extra forward
    pass runs (DESIGN.md §3). Top-entropy selection needs the batch's entropies, and narrows
    the loss mask; KL-in-reward, distillation and Clip-Cov / KL-Cov need the step-start
    log-probs."""
    a, t = session.cfg.algo, session.cfg.train
    on_policy = t.epochs_per_batch == 1 and t.minibatches == 1
    select = a.top_entropy_fraction < 1.0
    if on_policy and not select and a.teacher is None and a.cov_control == "none" \
            and not a.kl_in_reward:
        return batch, None, None
    start, entropy = batched_logprobs(session.layout.scorer, batch.rollout, with_entropy=select,
                                      truncation=sampling_truncation(session.cfg),
                                      **_logprob_args(session, step, "the old log-probs"))
    if select:
        batch = dataclasses.replace(batch, loss_mask=top_entropy_mask(
            entropy, batch.loss_mask, a.top_entropy_fraction))
    return batch, start, None if on_policy else start


def _kl_in_reward(session: Session, batch: TrainingBatch, start: torch.Tensor,
                  ref: torch.Tensor) -> TrainingBatch:
    """The batch with REINFORCE++'s per-token advantages: the returns of the combined reward
    and −β·KL(π_old ‖ π_ref) per token (algo.kl), whitened over every rank's loss tokens."""
    a = session.cfg.algo
    if batch.scored.step_rewards is not None:
        raise ConfigError("algo.kl_in_reward folds the KL into the outcome reward, and a reward "
                          "function returned step rewards; set algo.kl_in_reward=false")
    kl = kl_penalty(start, ref, kind=a.kl)  # (N, T)
    mask = batch.loss_mask.bool()
    advantages = kl_reward_advantages(batch.reward.to(mask.device), kl, mask, beta=a.beta,
                                      eps=a.adv_eps, reduce=dist.all_reduce_sum)
    return dataclasses.replace(batch, advantages=advantages)


def _distilled(session: Session, batch: TrainingBatch, student: torch.Tensor, step: int
               ) -> tuple[TrainingBatch, float]:
    """The batch with the advantages plus algo.teacher_coef·(log π_teacher − log π_old) at each
    loss token, and the reverse KL(π ‖ π_teacher) estimated on them (token mean over every
    rank, k1). The teacher's log-probs are over its whole vocabulary, as the reference's."""
    teacher = batched_logprobs(session.layout.teacher, batch.rollout,
                               **_logprob_args(session, step, "the teacher log-probs"))[0]
    mask = batch.loss_mask.bool()
    gap = torch.where(mask, student.float() - teacher.float(), 0.0)  # (N, T)
    sums = dist.all_reduce_sum(torch.stack([gap.sum(), mask.sum().float()]).cpu())
    advantages = distill_advantages(batch.advantages, teacher, student, mask,
                                    session.cfg.algo.teacher_coef)  # (N, T)
    return dataclasses.replace(batch, advantages=advantages), float(sums[0] / sums[1].clamp(min=1))


def _cov_selected(session: Session, batch: TrainingBatch, start: torch.Tensor, step: int
                  ) -> torch.Tensor:
    """(N, T) bool: this rank's tokens of algo.cov_control, chosen over the loss tokens of every
    rank in row order (algo/covariance.py) with a generator of (seed, step): the same tokens
    whatever the rank and micro-batch split."""
    a, mask = session.cfg.algo, batch.loss_mask.bool()
    adv = batch.advantages if batch.advantages.ndim == 2 else \
        batch.advantages.unsqueeze(1).expand_as(mask)
    mine = torch.stack([adv[mask].float(), start[mask].float()], dim=1)  # (M_rank, 2)
    parts = [p.cpu() for p in dist.all_gather_rows(mine)]
    offset = sum(len(p) for p in parts[: dist.rank()])
    flat = torch.cat(parts)  # (M, 2)
    generator = torch.Generator().manual_seed(sampling_seed(session.cfg.train.seed, step, "cov"))
    chosen = cov_selection(flat[:, 0], flat[:, 1], mode=a.cov_control, ratio=a.cov_ratio,
                           low=a.clip_cov_low, high=a.clip_cov_high, generator=generator)
    selected = torch.zeros_like(mask)
    selected[mask] = chosen[offset: offset + len(mine)].to(mask.device)
    return selected


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
                                sequence_mask=r.generated_mask[idx],
                                selected=None if batch.cov_mask is None else batch.cov_mask[idx])
    if not torch.isfinite(loss):
        raise NonFiniteError(f"non-finite loss {loss.item()} in a micro-batch of sequences "
                             f"{idx.tolist()[:8]}...")
    # Backward runs in the forward's dtypes; a checkpointed layer's replay runs attention in fp32
    # as its forward did (precision.use_fp32_attention).
    with autocast_paused(batch_device(batch.scored)), fp32_attention():
        (loss * (0.0 if padding else layout.loss_scale)).backward()
    if padding:
        return None
    metrics["loss"] = loss.item()
    return metrics
