"""From a rollout to a scored batch: rewards, tie handling, advantages and the loss mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from grpokit import distributed as dist
from grpokit.algo.advantages import (
    combine_rewards, compute_advantages, process_advantages, tied_groups,
)
from grpokit.config import Config
from grpokit.data.render import encode_prompts, render_prompt
from grpokit.rewards.base import Sample, StepRewards
from grpokit.rewards.runner import RewardRunner
from grpokit.rollout.base import RolloutBatch, SamplingParams

if TYPE_CHECKING:
    from grpokit.session import Session


@dataclass
class ScoredBatch:
    """A RolloutBatch plus its rewards and advantages (DESIGN.md §2)."""

    rollout: RolloutBatch
    rewards: torch.Tensor  # (N, K) float, NaN = not applicable / could not score
    reward: torch.Tensor  # (N,) weighted combination, NaN = unscorable
    step_rewards: list[StepRewards | None] | None = None  # (N,) process rewards, if any
    advantages: torch.Tensor | None = None  # (N,) or (N, T)
    loss_mask: torch.Tensor | None = None  # (N, T) bool: completion tokens that enter the loss
    included: torch.Tensor | None = None  # (N,) bool: sequences counted by the loss normalizer


def make_samples(rollout: RolloutBatch, prompts: list[str], max_tokens: int) -> list[Sample]:
    """One Sample per completion, carrying its dataset row (groups are contiguous)."""
    group = rollout.group_index.tolist()
    lengths = rollout.completion_mask.sum(dim=1).tolist()
    return [
        Sample(completion=text, row=rollout.rows[g], prompt=prompts[g], num_tokens=int(n),
               finish_reason=reason, max_tokens=max_tokens,
               completion_ids=tuple(ids[:int(n)].tolist()))
        for text, g, n, reason, ids in zip(rollout.completions, group, lengths,
                                           rollout.finish_reason, rollout.completion_ids)
    ]


def is_tied(reward: torch.Tensor, group_size: int, rule: str, interval: tuple[float, float]) -> torch.Tensor:
    """(B,) bool: groups without learning signal.

    rule "equal": all scorable rewards are equal (or fewer than two are scorable);
    rule "mean_outside": the group's mean reward is outside the open interval (lo, hi), e.g. with
    0/1 accuracy rewards and (0, 1), groups that are all wrong or all right.
    """
    if rule == "equal":
        return tied_groups(reward, group_size)
    grouped = reward.view(-1, group_size).to(torch.float64)  # (B, G)
    mean = torch.nanmean(grouped, dim=1)  # (B,)
    lo, hi = interval
    return ~((mean > lo) & (mean < hi)) | torch.isnan(mean)


def select_groups(scored: ScoredBatch, groups: list[int]) -> ScoredBatch:
    """The sub-batch made of the given groups, renumbered 0..len(groups)-1."""
    g = scored.rollout.group_size
    idx = torch.tensor([i for grp in groups for i in range(grp * g, grp * g + g)], dtype=torch.long)
    r = scored.rollout
    rollout = RolloutBatch(
        prompt_ids=r.prompt_ids[idx], prompt_mask=r.prompt_mask[idx],
        completion_ids=r.completion_ids[idx], completion_mask=r.completion_mask[idx],
        finish_reason=[r.finish_reason[i] for i in idx.tolist()],
        group_index=torch.arange(len(groups)).repeat_interleave(g),
        completions=[r.completions[i] for i in idx.tolist()],
        sampling_logprobs=None if r.sampling_logprobs is None else r.sampling_logprobs[idx],
        rows=[r.rows[grp] for grp in groups],
    )
    steps = None if scored.step_rewards is None else [scored.step_rewards[i] for i in idx.tolist()]
    return ScoredBatch(rollout, scored.rewards[idx], scored.reward[idx], steps)


def _pad_cat(tensors: list[torch.Tensor], left: bool, value: int | bool) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        pad = (width - t.shape[1], 0) if left else (0, width - t.shape[1])
        padded.append(torch.nn.functional.pad(t, pad, value=value))
    return torch.cat(padded)


def concat(parts: list[ScoredBatch], pad_token_id: int) -> ScoredBatch:
    """Join scored batches of the same group size (prompts left-padded, completions right-padded)."""
    if len(parts) == 1:
        return parts[0]
    rs = [p.rollout for p in parts]
    offsets = torch.tensor([0] + [len(r.rows) for r in rs]).cumsum(0)
    logps = [r.sampling_logprobs for r in rs]
    rollout = RolloutBatch(
        prompt_ids=_pad_cat([r.prompt_ids for r in rs], True, pad_token_id),
        prompt_mask=_pad_cat([r.prompt_mask for r in rs], True, False),
        completion_ids=_pad_cat([r.completion_ids for r in rs], False, pad_token_id),
        completion_mask=_pad_cat([r.completion_mask for r in rs], False, False),
        finish_reason=[f for r in rs for f in r.finish_reason],
        group_index=torch.cat([r.group_index + o for r, o in zip(rs, offsets)]),
        completions=[c for r in rs for c in r.completions],
        sampling_logprobs=None if any(x is None for x in logps) else _pad_cat(logps, False, 0.0),
        rows=[row for r in rs for row in r.rows],
    )
    steps = None
    if any(p.step_rewards is not None for p in parts):
        steps = [s for p in parts for s in (p.step_rewards or [None] * len(p.reward))]
    return ScoredBatch(rollout, torch.cat([p.rewards for p in parts]),
                       torch.cat([p.reward for p in parts]), steps)


def finish(scored: ScoredBatch, *, estimator: str, scale: str, eps: float, tied: torch.Tensor,
           tied_mode: str, overlong: str) -> ScoredBatch:
    """Advantages and the loss mask of the final training batch.

    Outcome advantages come from the combined reward; when a reward function returns step rewards
    their per-token process advantages are added (DeepSeekMath §4.1.3).
    """
    r = scored.rollout
    g = r.group_size
    adv = compute_advantages(scored.reward, g, estimator=estimator, scale=scale, eps=eps)  # (N,)
    if scored.step_rewards is not None:
        T = r.completion_ids.shape[1]
        proc = process_advantages(scored.step_rewards, g, T, eps=eps)  # (N, T)
        outcome = adv.unsqueeze(1) if not torch.isnan(scored.reward).all() else 0.0
        adv = proc + outcome
    # Excluded sequences leave the loss and its normalizer; an empty completion still counts.
    included = torch.ones(len(r.finish_reason), dtype=torch.bool)  # (N,)
    if tied_mode == "exclude":
        included &= ~tied.repeat_interleave(g)
    if overlong == "mask":
        included &= torch.tensor([f != "length" for f in r.finish_reason], dtype=torch.bool)
    scored.advantages, scored.included = adv, included
    scored.loss_mask = r.completion_mask.bool() & included.unsqueeze(1)  # (N, T)
    return scored


def step_rewards_of(result) -> list[StepRewards | None] | None:
    """The process rewards of a RewardResult as one list (at most one function may give them)."""
    if not result.step_rewards:
        return None
    if len(result.step_rewards) > 1:
        raise ValueError(f"only one reward function may return step rewards, got "
                         f"{sorted(result.step_rewards)}")
    return next(iter(result.step_rewards.values()))


class Rollouts:
    """Turns prompt indices into scored groups: generate, score.

    Every prompt is rendered and tokenized once, up front, so a prompt longer than
    data.max_prompt_length is an error before training starts, naming the row.
    """

    def __init__(self, session: "Session", rows: list[dict[str, Any]],
                 runner: RewardRunner | None = None):
        from grpokit.session import system_prompt

        cfg = session.cfg
        self.session, self.rows = session, rows
        system = system_prompt(cfg, session.task)
        tok = session.tokenizer
        self.prompts = [render_prompt(row, tok, system) for row in rows]
        self.prompt_ids = encode_prompts(rows, tok, system, cfg.data.max_prompt_length)
        self.params = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens,
                                     temperature=cfg.rollout.temperature,
                                     top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k)
        r = cfg.reward_runner
        self.runner = runner or RewardRunner(session.rewards, max_error_rate=r.max_error_rate,
                                             timeout=r.timeout)
        self.weights = [s.weight for s in session.rewards]
        self.names = [s.name for s in session.rewards]

    def score(self, indices: list[int], group_size: int, generator: torch.Generator,
              params: SamplingParams | None = None) -> ScoredBatch:
        params = params or self.params
        ids = [self.prompt_ids[i] for i in indices]
        rollout = self.session.engine.generate(ids, group_size, params, generator)
        rollout.rows = [self.rows[i] for i in indices]
        samples = make_samples(rollout, [self.prompts[i] for i in indices], params.max_new_tokens)
        result = self.runner.score(samples)
        reward = combine_rewards(result.rewards, self.weights).to(torch.float32)  # (N,)
        return ScoredBatch(rollout, result.rewards, reward, step_rewards_of(result))


def check_world(cfg: Config, world: int) -> None:
    """What a run over `world` ranks needs: an even split of prompts, rank-local statistics."""
    if world == 1:
        return
    B = cfg.rollout.prompts_per_step
    if B % world:
        raise ValueError(f"rollout.prompts_per_step={B} must be divisible by the world size "
                         f"{world}: each rank generates an equal, contiguous share of the prompts")
    if cfg.algo.scale == "batch":
        raise ValueError("algo.scale='batch' is not supported with more than one rank (the batch "
                         "std would be rank-local); use 'group' or 'none'")
    if cfg.algo.tied_groups == "drop_refill":
        raise ValueError("algo.tied_groups='drop_refill' is not supported with more than one rank "
                         "(refills would desynchronize the ranks' prompt order); use 'keep' or "
                         "'exclude'")


def collect(cfg: Config, rollouts: Rollouts, sampler, generator: torch.Generator) -> tuple[ScoredBatch, dict]:
    """B groups for this step; with drop_refill, tied groups are replaced by fresh prompts.

    Every rank draws the same B prompts from its sampler (the order stays identical) and
    generates and scores only its contiguous share of them.
    """
    a, G = cfg.algo, cfg.rollout.group_size
    B = cfg.rollout.prompts_per_step // dist.world_size()  # train() ran check_world at start
    interval = tuple(a.tie_interval)
    parts, kept, rounds, generated = [], 0, 0, 0
    indices = dist.shard(sampler.next_batch())
    while True:
        scored = rollouts.score(indices, G, generator)
        generated += len(indices)
        tied = is_tied(scored.reward, G, a.tie_rule, interval)
        if a.tied_groups != "drop_refill":
            parts = [scored]
            break
        keep = [g for g in range(len(indices)) if not tied[g]][: B - kept]
        if keep:
            parts.append(select_groups(scored, keep))
            kept += len(keep)
        if kept >= B or rounds >= a.max_refill_rounds:
            break
        rounds += 1
        indices = sampler.take(B - kept)
    # Every group tied in every round: the last round is returned for its metrics, and
    # groups/informative = 0 tells the trainer to skip the update (there is no signal).
    batch = concat(parts or [scored], rollouts.session.tokenizer.pad_token_id)
    tied = is_tied(batch.reward, G, a.tie_rule, interval)
    batch = finish(batch, estimator=a.estimator, scale=a.scale, eps=a.adv_eps, tied=tied,
                   tied_mode=a.tied_groups, overlong=a.overlong)
    stats = {"groups/tied_frac": tied.float().mean().item(), "groups/refill_rounds": rounds,
             "groups/prompts_generated": generated,
             "groups/informative": float((~tied).sum()),
             "groups/dropped_frac": 1 - (len(batch.rollout.rows) if parts else 0) / generated}
    return batch, stats
