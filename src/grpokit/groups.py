"""Prompts → G completions each → rewards: the sampling stage of a step, with DAPO's dynamic
sampling (drop tied groups, refill with fresh prompts) when it is on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from grpokit import distributed as dist
from grpokit.algo.advantages import combine_rewards
from grpokit.algo.masks import is_tied
from grpokit.batch import ScoredBatch, concat, select_groups
from grpokit.config import AlgoConfig, Config, ConfigError
from grpokit.data.render import encode_prompts, render_prompt
from grpokit.data.sampler import PromptSampler
from grpokit.rewards.base import Sample, StepRewards
from grpokit.rewards.runner import RewardRunner
from grpokit.rollout.base import RolloutBatch, SamplingParams
from grpokit.sandbox import SandboxUnavailable
from grpokit.session import Session


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


def step_rewards_of(result) -> list[StepRewards | None] | None:
    """The process rewards of a RewardResult as one list (at most one function may give them)."""
    if not result.step_rewards:
        return None
    if len(result.step_rewards) > 1:
        raise ValueError(f"only one reward function may return step rewards, got "
                         f"{sorted(result.step_rewards)}")
    return next(iter(result.step_rewards.values()))


class PromptGroups:
    """Turns prompt indices into scored groups: generate G completions each, score them.

    Every prompt is rendered and tokenized once, up front, so a prompt longer than
    data.max_prompt_length is an error before training starts, naming the row.
    """

    def __init__(self, session: Session, rows: list[dict[str, Any]],
                 runner: RewardRunner | None = None):
        cfg, tok = session.cfg, session.tokenizer
        self.session, self.rows = session, rows
        system = session.task.system_prompt_for(cfg.data.system_prompt)
        self.prompts = [render_prompt(row, tok, system) for row in rows]
        self.prompt_ids = encode_prompts(rows, tok, system, cfg.data.max_prompt_length)
        self.params = SamplingParams(max_new_tokens=cfg.rollout.max_new_tokens,
                                     temperature=cfg.rollout.temperature,
                                     top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k)
        r = cfg.reward_runner
        try:
            self.runner = runner or RewardRunner(session.rewards, max_error_rate=r.max_error_rate,
                                                 timeout=r.timeout)
        except (ValueError, SandboxUnavailable) as exc:  # bad reward names or arguments, or no
            raise ConfigError(f"rewards: {exc}") from exc  # sandbox for the code reward here
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
        return ScoredBatch(rollout, result.rewards, reward, step_rewards_of(result), result.error_mask)


@dataclass
class GroupStats:
    """How the step's groups were drawn (summed over ranks by `over_ranks`)."""

    groups: int
    """Groups in the training batch."""
    tied: int
    """Of those, groups without signal under the tie rule."""
    prompts_generated: int
    """Prompts generated this step, refills included."""
    refill_rounds: int = 0
    """Extra generation rounds of dynamic sampling."""
    no_signal: bool = False
    """Dynamic sampling found no informative group in any round: the update is skipped."""

    def over_ranks(self) -> "GroupStats":
        if dist.world_size() == 1:
            return self
        counts = torch.tensor([self.groups, self.tied, self.prompts_generated], dtype=torch.float64)
        groups, tied, generated = (int(x) for x in dist.all_reduce_sum(counts).tolist())
        return GroupStats(groups, tied, generated, self.refill_rounds, self.no_signal)

    def metrics(self) -> dict[str, float]:
        trained = 0 if self.no_signal else self.groups
        return {"groups/tied_frac": self.tied / max(self.groups, 1),
                "groups/informative": float(self.groups - self.tied),
                "groups/refill_rounds": float(self.refill_rounds),
                "groups/prompts_generated": float(self.prompts_generated),
                "groups/dropped_frac": 1 - trained / max(self.prompts_generated, 1)}


def sample_groups(source: PromptGroups, sampler: PromptSampler, generator: torch.Generator,
                  cfg: Config) -> tuple[ScoredBatch, GroupStats]:
    """This step's B scored groups. Every rank draws the same B prompts from its sampler (the
    order stays identical) and generates and scores only its contiguous share of them."""
    G, a = cfg.rollout.group_size, cfg.algo
    indices = dist.shard(sampler.next_batch())
    scored = source.score(indices, G, generator)
    if a.dynamic_sampling:
        return _refill(source, sampler, generator, scored, len(indices), a, G)
    tied = int(is_tied(scored.reward, G, a.tie_rule, tuple(a.tie_interval)).sum())
    return scored, GroupStats(len(indices), tied, len(indices)).over_ranks()


def _refill(source: PromptGroups, sampler: PromptSampler, generator: torch.Generator,
            scored: ScoredBatch, B: int, a: AlgoConfig, G: int) -> tuple[ScoredBatch, GroupStats]:
    """DAPO dynamic sampling (Yu et al., 2025, eq. 11): keep the informative groups, draw B − kept
    fresh prompts per extra round, up to max_refill_rounds, then train on what was kept."""
    parts, kept, rounds, generated = [], 0, 0, B
    while True:
        tied = is_tied(scored.reward, G, a.tie_rule, tuple(a.tie_interval))
        keep = [g for g in range(len(tied)) if not tied[g]][: B - kept]
        if keep:
            parts.append(select_groups(scored, keep))
            kept += len(keep)
        if kept >= B or rounds >= a.max_refill_rounds:
            break
        rounds += 1
        indices = sampler.take(B - kept)
        scored = source.score(indices, G, generator)
        generated += len(indices)
    if not parts:  # every group tied in every round: the last round is kept for its metrics
        return scored, GroupStats(len(tied), len(tied), generated, rounds, no_signal=True)
    batch = concat(parts, source.session.tokenizer.pad_token_id)
    return batch, GroupStats(kept, 0, generated, rounds)


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
    if cfg.algo.dynamic_sampling:
        raise ValueError("algo.dynamic_sampling is not supported with more than one rank "
                         "(refills would desynchronize the ranks' prompt order)")
