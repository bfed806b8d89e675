"""GRPO: `train()` runs a whole run, `train_step()` one step, every stage of DESIGN.md §1 in order.

One step: sample B prompts → G completions each → rewards (DAPO: drop tied groups and refill) →
advantages and the loss mask → metrics → μ passes of minibatch updates → weight sync.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from grpokit.algo.advantages import batch_advantages
from grpokit.config import Config, to_dict
from grpokit.rl.metrics import perf_metrics, rollout_metrics, sync_metrics
from grpokit.rl.stage import RLStage, rl_parts, total_updates
from grpokit.rl.update import update_policy
from grpokit.runtime import distributed as dist
from grpokit.training.batch import ScoredBatch, TrainingBatch, batch_device, loss_mask_of
from grpokit.training.groups import PromptGroups, check_world, sample_groups
from grpokit.training.loop import run
from grpokit.training.session import Session
from grpokit.training.state import RunState, new_run_state


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



def advantages_of(scored: ScoredBatch, cfg: Config) -> torch.Tensor:
    """Advantages (DESIGN.md §3) of `algo.estimator` (algo/advantages.py), per sequence or, with
    step rewards, per token. Statistics beyond a group (the batch std, REINFORCE++'s batch mean,
    GDPO's whitening, a user's estimator) are the whole step's: over several ranks, every rank
    computes the advantages of the gathered batch and keeps its own rows."""
    a, r = cfg.algo, scored.rollout
    rewards, weights = reward_columns(scored, cfg)
    steps, width = scored.step_rewards, r.completion_ids.shape[1]
    gather = dist.world_size() > 1
    if gather:
        parts = dist.all_gather_rows(rewards)
        offset = sum(len(p) for p in parts[: dist.rank()])
        rewards = torch.cat(parts)  # (N over every rank, K)
        if steps is not None:
            steps = [s for part in dist.all_gather_object(steps) for s in part]
            width = int(dist.all_reduce_max(torch.tensor(width)))
    advantages = batch_advantages(rewards, weights, steps, r.group_size, width,
                                  estimator=a.estimator, scale=a.scale, eps=a.adv_eps)
    if not gather:
        return advantages
    mine = advantages[offset: offset + len(scored.reward)]
    return mine[:, : r.completion_ids.shape[1]] if steps is not None else mine


def reward_columns(scored: ScoredBatch, cfg: Config) -> tuple[torch.Tensor, list[float]]:
    """The reward matrix (N, K) and its weights. A config built without a session (no resolved
    `rewards`) has only the combined reward: one column of weight 1, which is exact for every
    estimator that reads the combined reward; gdpo, which reads each function's, needs them."""
    if cfg.rewards:
        return scored.rewards, [s.weight for s in cfg.rewards]
    if cfg.algo.estimator == "gdpo":
        raise ValueError("algo.estimator=gdpo needs the run's reward functions (config.rewards)")
    return scored.reward.unsqueeze(1), [1.0]


def kl_cov_note(cfg: Config) -> str | None:
    """Why KL-Cov leaves a run with one update per step unchanged, or None."""
    t = cfg.train
    if cfg.algo.cov_control != "kl_cov" or t.epochs_per_batch > 1 or t.minibatches > 1:
        return None
    return ("algo.cov_control=kl_cov: with one update per step (train.minibatches=1, "
            "train.epochs_per_batch=1) |log π − log π_old| is 0 with its gradient, so KL-Cov "
            "acts only from a step's second update; set train.minibatches > 1 for it to act")


def train(cfg: Config, *, resume: str | Path | None = None, console=None) -> dict[str, Any]:
    """Run GRPO as the config says; returns the final evaluations and the checkpoint path.

    Everything that can be checked before training is checked before anything is written to
    the run folder, which is claimed with a lock for the whole run (docs/runs.md)."""
    dist.init_from_env()
    check_world(cfg, dist.world_size())
    return run(cfg, "grpo", _start, resume=resume, console=console)



def _start(cfg: Config, saved: dict[str, Any] | None) -> RLStage:
    session, groups, held_out = rl_parts(cfg, saved)
    cfg = session.cfg
    state = new_run_state("grpo", cfg, session.model, len(groups.rows),
                          cfg.rollout.prompts_per_step, total_updates(cfg),
                          session.reference if cfg.algo.ref_refresh_steps else None)
    notes = [f"[bold]grpokit[/] {cfg.algo.preset}: " + json.dumps(to_dict(cfg.algo)),
             session.precision_note, session.prefix_note, kl_cov_note(cfg)]
    return RLStage(session, groups, held_out, state, [n for n in notes if n], train_step)
