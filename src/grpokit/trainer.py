"""The training loop, plain code that reads top to bottom (DESIGN.md §1).

One step: sample B prompts → G completions each → rewards → (drop tied groups and refill) →
advantages → μ passes of minibatch updates → log → maybe checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from grpokit import checkpoint as ckpt
from grpokit import distributed as dist
from grpokit import scoring
from grpokit.algo.losses import LossKnobs, policy_loss, top_entropy_mask
from grpokit.config import Config, ConfigError, to_dict
from grpokit.data.sampler import PromptSampler
from grpokit.metrics import (
    global_group_stats, make_sinks, reduce_metrics, rollout_metrics, write_samples,
)
from grpokit.evaluate_cmd import evaluate, print_eval
from grpokit.policy import batched_logprobs, completion_logprobs, length_sorted_chunks
from grpokit.scoring import Rollouts, collect
from grpokit.session import Session


class NonFiniteError(RuntimeError):
    """A reward, loss or gradient was NaN or infinite: the step is stopped, never applied."""


@dataclass
class TrainState:
    """What changes during a run and is saved in checkpoints."""

    step: int
    sampler: PromptSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loss_knobs(cfg: Config) -> LossKnobs:
    a = cfg.algo
    return LossKnobs(ratio=a.ratio, clip_low=a.clip_low, clip_high=a.clip_high,
                     dual_clip=a.dual_clip, kl=a.kl, beta=a.beta, aggregation=a.aggregation,
                     max_completion_length=cfg.rollout.max_new_tokens, entropy_coef=a.entropy_coef)


def lr_lambda(cfg: Config, total_updates: int):
    """Multiplier of the peak learning rate at optimizer step s: linear warm-up, then the schedule."""
    t = cfg.train

    def factor(s: int) -> float:
        if s < t.warmup_steps:
            return (s + 1) / (t.warmup_steps + 1)
        progress = (s - t.warmup_steps) / max(total_updates - t.warmup_steps, 1)
        if t.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if t.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


def make_state(cfg: Config, model: torch.nn.Module, num_rows: int) -> TrainState:
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas),
                                  weight_decay=t.weight_decay)
    total_updates = t.steps * t.epochs_per_batch * t.minibatches
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_updates))
    sampler = PromptSampler(num_rows, cfg.rollout.prompts_per_step, seed=cfg.data.seed)
    generator = torch.Generator().manual_seed(t.seed + 1_000_003 * dist.rank())
    return TrainState(0, sampler, optimizer, scheduler, generator)


# ---------------------------------------------------------------- the policy update


def _reference_logprobs(session: Session, batch: scoring.ScoredBatch,
                        kw: dict[str, Any]) -> torch.Tensor | None:
    if not session.cfg.algo.beta:
        return None  # β = 0: no reference forward at all
    if session.reference is not None:
        return batched_logprobs(session.reference, batch.rollout, **kw)[0]
    from grpokit.models import disabled_adapter

    with disabled_adapter(session.model):
        return batched_logprobs(session.model, batch.rollout, **kw)[0]


def _minibatches(n: int, count: int, generator: torch.Generator) -> list[torch.Tensor]:
    if count == 1:
        return [torch.arange(n)]
    return list(torch.randperm(n, generator=generator).chunk(count))


def _micro_step(session, batch, idx, old, ref, knobs, counts) -> dict[str, float]:
    """Forward and backward of one micro-batch; the loss is normalized by the step's global counts."""
    cfg, r = session.cfg, batch.rollout
    with session.autocast():
        logprobs, entropy = completion_logprobs(
            session.model, r.prompt_ids[idx], r.prompt_mask[idx], r.completion_ids[idx],
            r.completion_mask[idx], temperature=cfg.rollout.temperature,
            chunk_size=cfg.train.logprob_chunk_size, with_entropy=True)
    old_lp = logprobs.detach() if old is None else old[idx]
    if knobs.entropy_coef == 0.0:
        entropy = entropy.detach()
    loss, metrics = policy_loss(logprobs, old_lp, batch.advantages[idx], batch.loss_mask[idx],
                                knobs, ref_logprobs=None if ref is None else ref[idx],
                                entropy=entropy, num_sequences=counts[0], num_tokens=counts[1])
    if not torch.isfinite(loss):
        raise NonFiniteError(f"non-finite loss {loss.item()} in a micro-batch of sequences "
                             f"{idx.tolist()[:8]}...")
    loss.backward()
    metrics["loss"] = loss.item()
    return metrics


def _global_counts(batch: scoring.ScoredBatch, idx: torch.Tensor) -> tuple[int, int]:
    """Sequences and loss tokens of an optimizer step over every rank (DESIGN.md §3)."""
    counts = torch.tensor([float(batch.included[idx].sum()), float(batch.loss_mask[idx].sum())])
    counts = dist.all_reduce_sum(counts)
    return int(counts[0]), int(counts[1])


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, max_norm: float) -> dict[str, float]:
    """Sum gradients over ranks, clip, refuse non-finite gradients, step, zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    dist.all_reduce_gradients(params)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if not torch.isfinite(norm):
        bad = [n for n, p in model.named_parameters()
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(f"non-finite gradient (norm {norm.item()}) in {bad[:5]}")
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"optim/grad_norm": norm.item(), "optim/lr": lr}


def update_policy(session: Session, state: TrainState, batch: scoring.ScoredBatch) -> dict[str, float]:
    """μ passes over the batch, `minibatches` optimizer steps each, micro-batch accumulation."""
    cfg, t = session.cfg, session.cfg.train
    knobs = loss_knobs(cfg)
    session.model.train()
    on_policy = t.epochs_per_batch == 1 and t.minibatches == 1
    kw = dict(micro_batch_size=t.micro_batch_size, temperature=cfg.rollout.temperature,
              chunk_size=t.logprob_chunk_size, autocast=session.autocast)
    # On-policy, old = logp.detach() inside the loss: no extra forward pass (DESIGN.md §3),
    # unless top-entropy selection needs the batch's entropies before the first update.
    select = cfg.algo.top_entropy_fraction < 1.0
    old, entropy = (None, None)
    if select or not on_policy:
        old, entropy = batched_logprobs(session.model, batch.rollout, with_entropy=select, **kw)
        old = None if on_policy else old
    if select:
        batch = dataclasses.replace(batch, loss_mask=top_entropy_mask(
            entropy, batch.loss_mask, cfg.algo.top_entropy_fraction))
    ref = _reference_logprobs(session, batch, kw)
    lengths = batch.rollout.prompt_mask.sum(1) + batch.rollout.completion_mask.sum(1)
    parts, optim = [], []
    for _ in range(t.epochs_per_batch):
        for mb in _minibatches(len(lengths), t.minibatches, state.generator):
            counts = _global_counts(batch, mb)
            for chunk in length_sorted_chunks(lengths[mb], t.micro_batch_size):
                parts.append(_micro_step(session, batch, mb[chunk], old, ref, knobs, counts))
            optim.append(optimizer_step(session.model, state.optimizer, state.scheduler,
                                        t.max_grad_norm))
    metrics = {f"loss/{k}": v for k, v in reduce_metrics(parts).items() if k != "tokens"}
    metrics["loss/policy"] = sum(p["loss"] for p in parts) / max(len(optim), 1)
    metrics.update({k: sum(o[k] for o in optim) / len(optim) for k in optim[0]})
    metrics["optim/lr"] = optim[-1]["optim/lr"]
    tokens = torch.tensor(float(sum(p.get("tokens", 0.0) for p in parts)), dtype=torch.float64)
    metrics["train/tokens"] = dist.all_reduce_sum(tokens).item()  # the step's, over every rank
    return metrics


# ---------------------------------------------------------------- the run


def check_output_dir(out: Path, resume: str | Path | None) -> None:
    if resume is None and (out / "config.yaml").exists():
        raise ConfigError(f"log.output_dir: {out} already holds a run; resume it with "
                          f"--resume {out}, or choose another log.output_dir")


def _trainer_state(state: TrainState, session: Session) -> dict[str, Any]:
    # Each rank samples with its own generator: all of them are saved, in rank order.
    generators = dist.all_gather_tensor(state.generator.get_state())
    saved = {"optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
             "sampler": state.sampler.state_dict(), "generator": generators[0],
             "rank_generators": generators}
    if session.cfg.algo.ref_refresh_steps and session.reference is not None:
        saved["reference"] = session.reference.state_dict()
    return saved


def _restore(state: TrainState, session: Session, saved: dict[str, Any]) -> None:
    if saved.get("task") == "sft":
        raise ConfigError(f"--resume: {saved['path']} is an SFT checkpoint; start GRPO from it with "
                          f"model.path={saved['path'] / 'model'}")
    generators = saved.get("rank_generators", [saved["generator"]])
    if len(generators) != dist.world_size():  # checked first: nothing is restored on error
        raise ValueError(f"the checkpoint was written by {len(generators)} rank(s); resume it "
                         f"with the same number of ranks, not {dist.world_size()}")
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.sampler.load_state_dict(saved["sampler"])
    state.generator.set_state(generators[dist.rank()])
    if "reference" in saved:
        session.reference.load_state_dict(saved["reference"])
    ckpt.set_rng_state(saved["rng"])
    state.step = saved["step"]


def save(session: Session, state: TrainState, out: Path) -> Path | None:
    """Called on every rank (the generators are gathered); rank 0 writes and returns the path."""
    from grpokit.models import save_model

    cfg = session.cfg
    merge = cfg.model.lora.enabled and cfg.model.lora.save_merged
    trainer_state = _trainer_state(state, session)
    if not dist.is_main():
        return None
    return ckpt.save_checkpoint(
        out / "checkpoints", state.step,
        lambda tmp: save_model(session.model, session.tokenizer, tmp / "model", merge_lora=merge),
        trainer_state, yaml.safe_dump(to_dict(cfg), sort_keys=False), cfg.checkpoint.keep_last)


def refresh_reference(session: Session) -> None:
    """Iterative GRPO: the reference becomes the current policy."""
    session.reference.load_state_dict(session.model.state_dict())


def run_step(session: Session, rollouts: Rollouts, state: TrainState) -> tuple[scoring.ScoredBatch, dict]:
    """One full training step; returns the batch and its metrics."""
    cfg = session.cfg
    t0 = time.perf_counter()
    batch, stats = collect(cfg, rollouts, state.sampler, state.generator)
    t_gen = time.perf_counter() - t0
    metrics = {**global_group_stats(stats), **rollout_metrics(batch, rollouts.names)}
    if stats["groups/informative"] == 0 and cfg.algo.tied_groups == "drop_refill":
        # Every group tied in every refill round: no signal, so no optimizer step (which would
        # still move the weights through AdamW's momentum and weight decay).
        metrics.update({"train/skipped": 1.0, "train/tokens": 0.0})
    else:
        metrics.update(update_policy(session, state, batch))
        metrics["train/skipped"] = 0.0
        session.engine.sync_weights()
    step_time = time.perf_counter() - t0
    gen_tokens = float(batch.rollout.completion_mask.sum())
    metrics.update({"perf/gen_time_s": t_gen, "perf/step_time_s": step_time,
                    "perf/gen_tokens_per_s": gen_tokens / max(t_gen, 1e-9),
                    "perf/train_tokens_per_s": metrics["train/tokens"] / max(step_time - t_gen, 1e-9)})
    return batch, metrics


def train(cfg: Config, *, resume: str | Path | None = None, console=None) -> dict[str, Any]:
    """Run GRPO as the config says; returns the final metrics and evaluations."""
    from grpokit.session import build_session, with_task_defaults

    dist.init_from_env()
    scoring.check_world(cfg, dist.world_size())
    out = Path(cfg.log.output_dir)
    saved = ckpt.load_state(Path(resume)) if resume is not None else None
    check_output_dir(out, resume)
    dist.barrier()  # every rank has checked the folder before rank 0 writes into it
    seed_everything(cfg.train.seed)
    session = build_session(cfg, resume_from=None if saved is None else saved["path"] / "model")
    session.cfg = cfg = with_task_defaults(cfg, session.task)
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    if console is not None:
        console.print(f"[bold]grpokit[/] {cfg.algo.preset}: " + json.dumps(to_dict(cfg.algo)))
    rollouts = Rollouts(session, session.task.train_rows)
    state = make_state(cfg, session.model, len(session.task.train_rows))
    if saved is not None:
        _restore(state, session, saved)
    rows = session.task.eval_rows[: cfg.eval.num_prompts]
    held_out = Rollouts(session, rows, runner=rollouts.runner) if rows else None
    results: dict[str, Any] = {}
    if held_out and cfg.eval.before_and_after and state.step == 0:
        results["before"] = evaluate(session, held_out, cfg.train.seed)
        if console is not None:
            print_eval(console, f"held-out evaluation before training ({len(rows)} prompts)",
                       {"before": results["before"]})
    sinks = make_sinks(cfg, out, console) if dist.is_main() else None
    try:
        while state.step < cfg.train.steps:
            batch, metrics = run_step(session, rollouts, state)
            state.step += 1
            _after_step(session, rollouts, state, batch, metrics, sinks, held_out, out)
    finally:
        if sinks is not None:
            sinks.close()
    path = save(session, state, out)
    if path is not None:
        results["checkpoint"] = str(path)
    if held_out and cfg.eval.before_and_after:
        results["after"] = evaluate(session, held_out, cfg.train.seed)
    if dist.is_main():
        (out / "eval.json").write_text(json.dumps(results, indent=2))
    if console is not None and "after" in results:
        shown = {k: results[k] for k in ("before", "after") if k in results}
        print_eval(console, "held-out evaluation", shown)
    return results


def _after_step(session, rollouts, state, batch, metrics, sinks, held_out, out) -> None:
    cfg, step = session.cfg, state.step
    if cfg.algo.ref_refresh_steps and step % cfg.algo.ref_refresh_steps == 0:
        refresh_reference(session)
    if cfg.eval.every and held_out and step % cfg.eval.every == 0:
        metrics.update({f"eval/{k}": v for k, v in
                        evaluate(session, held_out, cfg.train.seed).items()})
    if sinks is not None:
        sinks.log(step, metrics)
        if cfg.log.samples_every and step % cfg.log.samples_every == 0:
            write_samples(out / "samples.jsonl", step, batch, rollouts.names, cfg.log.num_samples)
    if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < cfg.train.steps:
        save(session, state, out)
