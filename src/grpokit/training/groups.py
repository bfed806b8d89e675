"""Prompts → G completions each → rewards: the sampling stage of a step, with DAPO's dynamic
sampling (drop tied groups, refill with fresh prompts) when it is on."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from grpokit.algo.advantages import combine_rewards
from grpokit.algo.masks import is_tied
from grpokit.config import AlgoConfig, Config, ConfigError
from grpokit.data.datasets import Row
from grpokit.data.render import encode_prompts, render_prompt
from grpokit.data.sampler import PromptSampler
from grpokit.rewards.base import Sample, StepRewards
from grpokit.rewards.runner import RewardError, RewardRunner
from grpokit.rollout.base import Episodes, RolloutBatch, SamplingParams, sampling_seed
from grpokit.runtime import distributed as dist
from grpokit.runtime.models import memory_named
from grpokit.sandbox import SandboxUnavailable
from grpokit.training.batch import ScoredBatch, concat, select_groups
from grpokit.training.session import Session

GENERATION_REMEDY = ("lower rollout.prompts_per_step, rollout.group_size or rollout.max_new_tokens "
                     "(with rollout.engine=vllm: rollout.vllm.kv_cache_gib)")


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


def data_source(cfg: Config, task: str) -> str:
    """The data the rows come from, as the config names it (for messages)."""
    return f"data.path={cfg.data.path}" if cfg.data.path else f"task {task!r}"


def scorable_count(scored: ScoredBatch) -> int:
    """Completions with a reward: a combined reward, or process rewards."""
    scorable = ~torch.isnan(scored.reward)  # (N,)
    if scored.step_rewards is not None:
        scorable |= torch.tensor([s is not None for s in scored.step_rewards], dtype=torch.bool)
    return int(scorable.sum())


class PromptGroups:
    """Turns prompt indices into scored groups: generate G completions each, score them.

    Every prompt is rendered and tokenized once, up front, so a prompt longer than
    data.max_prompt_length is an error before training starts, naming the row; so is a dataset
    none of whose rows has a field a reward function reads.
    """

    def __init__(self, session: Session, rows: list[dict[str, Any]],
                 runner: RewardRunner | None = None):
        cfg, tok, env = session.cfg, session.tokenizer, session.env
        self.session, self.rows, self.max_turns = session, rows, cfg.tools.max_turns
        system = session.task.system_prompt_for(cfg.data.system_prompt)
        if env is not None:  # an episode starts from the environment's messages
            rows, system = [_like(row, {"messages": env.first_messages(row)}) for row in rows], None
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
        if runner is None:  # the whole dataset: a held-out slice may lack what other rows have
            self.runner.check_fields(session.task.train_rows + session.task.eval_rows,
                                     data_source(cfg, session.task.name))
        self.weights = [s.weight for s in session.rewards]
        self.names = [s.name for s in session.rewards]

    def score(self, indices: list[int], group_size: int, seeds: Sequence[int],
              params: SamplingParams | None = None, step: int | None = None) -> ScoredBatch:
        """Generate and score G completions (or multi-turn episodes, with an environment) of
        each prompt; prompt k's from seeds[k]. Running out of memory names `step` (1-based)."""
        params, env = params or self.params, self.session.env
        ids = [self.prompt_ids[i] for i in indices]
        extra = {} if env is None else \
            {"episodes": Episodes(env, [self.rows[i] for i in indices], self.max_turns)}
        size = lambda: (f"{len(ids)} prompts of {sum(map(len, ids))} tokens in all, {group_size} "
                        f"completions each of up to {params.max_new_tokens} tokens")
        with memory_named(step, 0, 1, phase="generation", size=size, remedy=GENERATION_REMEDY):
            rollout = self.session.engine.generate(ids, group_size, params, seeds, **extra)
        rollout.rows = [self.rows[i] for i in indices]
        samples = make_samples(rollout, [self.prompts[i] for i in indices], params.max_new_tokens)
        result = self.runner.score(samples)
        rewards = result.rewards  # (N, K)
        reward = combine_rewards(rewards, self.weights).to(torch.float32)  # (N,)
        return ScoredBatch(rollout, rewards, reward, step_rewards_of(result), result.error_mask)


def _like(row: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """`data` rebuilt from `row`, keeping where the row came from (datasets.Row) for messages."""
    where = getattr(row, "where", None)
    return data if where is None else Row(data, where)


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


def sample_groups(source: PromptGroups, sampler: PromptSampler, step: int,
                  cfg: Config) -> tuple[ScoredBatch, GroupStats]:
    """This step's B scored groups. Every rank draws the same B prompts from its sampler (the
    order stays identical) and generates and scores only its contiguous share of them; prompt k
    of the step samples from the seed (train.seed, step, k), wherever it runs (DESIGN.md §5)."""
    G, a = cfg.rollout.group_size, cfg.algo
    draw = _Draw(source, cfg.train.seed, step, G)
    scored = draw.round(sampler.next_batch())
    if a.dynamic_sampling:
        scored, stats = _refill(draw, sampler, scored, cfg.rollout.prompts_per_step, a)
    else:
        tied = int(is_tied(scored.reward, G, a.tie_rule, tuple(a.tie_interval)).sum())
        stats = GroupStats(len(scored.rollout.rows), tied, len(scored.rollout.rows)).over_ranks()
    if not cfg.reward_runner.allow_unscorable:
        draw.check_scorable(source.names)
    return scored, stats


@dataclass
class _Draw:
    """One step's generation rounds: global prompt positions continue across refill rounds."""

    source: PromptGroups
    seed: int
    step: int
    group_size: int
    drawn: int = 0
    """Prompts drawn this step so far, over every rank."""
    span: tuple[int, int] = (0, 0)
    """This rank's share [start, stop) of the last round's prompts."""
    completions: int = 0
    """Completions this rank generated this step, refills included."""
    scorable: int = 0
    """Of those, the ones with a reward."""

    def round(self, indices: list[int]) -> ScoredBatch | None:
        """Generate and score this rank's share of `indices` (None when the share is empty: a
        refill round smaller than the world)."""
        start, stop = dist.share(len(indices))
        seeds = [sampling_seed(self.seed, self.step, self.drawn + k) for k in range(start, stop)]
        self.drawn += len(indices)
        self.span = (start, stop)
        if start == stop:
            return None
        scored = self.source.score(indices[start:stop], self.group_size, seeds,
                                   step=self.step + 1)
        self.completions += len(scored.reward)
        self.scorable += scorable_count(scored)
        return scored

    def check_scorable(self, names: list[str]) -> None:
        """Stop on a step none of whose completions (over every rank) could be scored: it has
        no signal, and it usually means the data does not fit the reward functions."""
        counts = dist.all_reduce_sum(torch.tensor([self.scorable, self.completions],
                                                  dtype=torch.float64))
        scorable, total = (int(x) for x in counts.tolist())
        if scorable or not total:
            return
        raise RewardError(
            f"step {self.step + 1}: none of its {total} completions could be scored: every reward "
            f"function ({', '.join(names)}) gave None or failed on each of them. The warnings "
            "above name the rows (a gold answer that does not parse, a field the function reads "
            "missing). Set reward_runner.allow_unscorable=true to train through such steps"
        )

    def global_tied(self, scored: ScoredBatch | None, a: AlgoConfig, total: int) -> list[bool]:
        """The tie decision of every prompt of the last round, in global order, on every rank."""
        tied = torch.zeros(0, dtype=torch.bool) if scored is None else \
            is_tied(scored.reward, self.group_size, a.tie_rule, tuple(a.tie_interval))
        return dist.gather_shares(tied.to(torch.int64), total).bool().tolist()


def _refill(draw: _Draw, sampler: PromptSampler, scored: ScoredBatch, B: int,
            a: AlgoConfig) -> tuple[ScoredBatch, GroupStats]:
    """DAPO dynamic sampling (Yu et al., 2025, eq. 11): keep the informative groups, draw B − kept
    fresh prompts per extra round, up to max_refill_rounds, then train on what was kept. The
    decision is global: every rank sees every prompt's tie flag and keeps the same first
    informative prompts, so the kept set does not depend on the number of ranks."""
    parts, kept, rounds, size, first = [], 0, 0, B, scored
    while True:
        tied = draw.global_tied(scored, a, size)
        keep = [g for g in range(size) if not tied[g]][: B - kept]
        start, stop = draw.span
        local = [g - start for g in keep if start <= g < stop]
        parts.append(select_groups(scored, local) if local else None)
        kept += len(keep)
        if kept >= B or rounds >= a.max_refill_rounds:
            break
        rounds += 1
        size = B - kept
        scored = draw.round(sampler.take(size))
    if kept == 0:  # every group tied in every round: the first round is kept for its metrics
        return first, GroupStats(B, B, draw.drawn, rounds, no_signal=True)
    return _rebalance(parts, kept, draw.source.session.tokenizer.pad_token_id), \
        GroupStats(kept, 0, draw.drawn, rounds)


def _rebalance(parts: list[ScoredBatch | None], kept: int, pad_id: int) -> ScoredBatch:
    """The kept groups in global order (round by round, rank by rank), then this rank's equal
    share of them, so every rank trains on kept / world groups."""
    gathered = dist.all_gather_object([None if p is None else p.to("cpu") for p in parts])
    ordered = [by_rank[r] for r in range(len(parts)) for by_rank in gathered
               if by_rank[r] is not None]
    batch = concat(ordered, pad_id)
    start, stop = dist.share(kept)
    if (start, stop) == (0, kept):
        return batch
    if start == stop:  # fewer kept groups than ranks: a stand-in that carries no weight
        ghost = select_groups(batch, [0])
        nan = torch.full_like(ghost.reward, float("nan"))
        return dataclasses.replace(ghost, reward=nan, rewards=torch.full_like(ghost.rewards, float("nan")),
                                   step_rewards=None, ghost=True)
    return select_groups(batch, list(range(start, stop)))


def check_world(cfg: Config, world: int) -> None:
    """What a run over `world` ranks needs: an equal share of the step's prompts per rank."""
    B = cfg.rollout.prompts_per_step
    if B % world:
        raise ValueError(f"rollout.prompts_per_step={B} must be divisible by the world size "
                         f"{world}: each rank trains on an equal, contiguous share of the prompts")
