"""What a step logs: loss metrics reduced over micro-batches, rollout statistics over every rank,
a few sample completions, and the step's timing and weight-sync metrics."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from grpokit.rollout.base import RolloutBatch, is_truncated
from grpokit.runtime import distributed as dist
from grpokit.training.batch import TrainingBatch


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




def _sum_count(values: torch.Tensor) -> list[float]:
    """[Σx, Σx², count] over the finite entries, to be summed over ranks."""
    v = values.double()[~torch.isnan(values)]
    return [v.sum().item(), (v * v).sum().item(), float(v.numel())]


def _mean_std(s: float, sq: float, n: float) -> tuple[float, float]:
    if n == 0:
        return float("nan"), float("nan")
    mean = s / n
    return mean, math.sqrt(max(sq / n - mean * mean, 0.0))


def _no_rows(batch: TrainingBatch) -> TrainingBatch:
    none = torch.zeros(0, dtype=torch.long)
    r = batch.rollout
    rollout = dataclasses.replace(r, completion_mask=r.completion_mask[none], finish_reason=[],
                                  generated_mask=r.generated_mask[none],
                                  episodes=None if r.episodes is None else [])
    errors = batch.scored.reward_errors
    scored = dataclasses.replace(batch.scored, rollout=rollout, rewards=batch.rewards[none],
                                 reward=batch.reward[none],
                                 reward_errors=None if errors is None else errors[none])
    return dataclasses.replace(batch, scored=scored, advantages=batch.advantages[none])


def rollout_metrics(batch: TrainingBatch, names: list[str]) -> dict[str, float]:
    """Reward, length and advantage statistics over the whole step (every rank's share)."""
    r = batch.rollout
    if batch.scored.ghost:  # a rank's zero-weight stand-in: none of its rows is the step's
        batch = _no_rows(batch)
        r = batch.rollout
    lengths = r.completion_mask.sum(dim=1).double()  # (N,)
    truncated = is_truncated(r.finish_reason).double()  # (N,)
    columns = [batch.reward, lengths, truncated, batch.advantages.double().reshape(-1)]
    columns += [batch.rewards[:, k] for k in range(len(names))]
    errors = batch.scored.reward_errors
    if errors is None:
        errors = torch.zeros((len(lengths), len(names)), dtype=torch.bool)
    columns += [errors[:, k].double() for k in range(len(names))]  # (N,) 1.0 where it failed
    sums = dist.all_reduce_sum(torch.tensor(
        [x for col in columns for x in _sum_count(col)] + [float(len(lengths))], dtype=torch.float64))
    extremes = dist.all_reduce_max(torch.stack([lengths.max(), -lengths.min()]) if len(lengths)
                                   else torch.full((2,), -torch.inf, dtype=torch.float64))
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
    for name, triple in zip(names, triples[4:4 + len(names)]):
        metrics[f"reward/{name}"] = _mean_std(*triple)[0]
    for name, triple in zip(names, triples[4 + len(names):]):
        metrics[f"reward_error_frac/{name}"] = triple[0] / max(triple[2], 1.0)
    if r.episodes is not None:
        metrics.update(tool_metrics(r))
    return metrics


def tool_metrics(r: RolloutBatch) -> dict[str, float]:
    """Multi-turn episodes over the whole step: turns and tool calls per episode, the share of
    episodes that called a tool, errors and timeouts (counts and shares of the calls), the share
    of completion tokens an environment inserted, and the share of episodes cut at max_turns."""
    counts = [[e.turns, e.tool_calls, e.tool_errors, e.tool_timeouts, float(e.tool_calls > 0)]
              for e in r.episodes]
    inserted = (r.completion_mask & ~r.generated_mask).sum()
    limit = sum(f == "max_turns" for f in r.finish_reason)
    local = torch.tensor(counts, dtype=torch.float64).reshape(-1, 5).sum(dim=0).tolist()
    totals = dist.all_reduce_sum(torch.tensor(
        local + [float(len(counts)), float(inserted), float(r.completion_mask.sum()), float(limit)],
        dtype=torch.float64)).tolist()
    turns, calls, errors, timeouts, users, episodes, tool_tokens, tokens, cut = totals
    per_episode, per_call = max(episodes, 1.0), max(calls, 1.0)
    return {"tools/turns_mean": turns / per_episode, "tools/calls_mean": calls / per_episode,
            "tools/use_frac": users / per_episode, "tools/calls": calls,
            "tools/errors": errors, "tools/timeouts": timeouts,
            "tools/error_frac": errors / per_call, "tools/timeout_frac": timeouts / per_call,
            "tools/output_token_frac": tool_tokens / max(tokens, 1.0),
            "tools/max_turns_frac": cut / per_episode}


def sample_records(batch: TrainingBatch, names: list[str], n: int) -> list[dict[str, Any]]:
    """A few completions of a step with their prompt row, rewards and advantage (one per group
    first): the lines of samples.jsonl and the trackers' sample tables."""
    r = batch.rollout
    g = r.group_size
    records = []
    for i in range(min(n, len(r.completions))):
        i_seq = i * g if i * g < len(r.completions) else i  # one per group first
        adv = batch.advantages[i_seq]
        records.append({
            "index": i_seq, "row": r.rows[i_seq // g],
            "completion": r.completions[i_seq], "finish_reason": r.finish_reason[i_seq],
            "rewards": {nm: (None if math.isnan(v) else v)
                        for nm, v in zip(names, batch.rewards[i_seq].tolist())},
            "reward": None if math.isnan(batch.reward[i_seq]) else batch.reward[i_seq].item(),
            "advantage": adv.mean().item() if adv.ndim else adv.item(),
        })
    return records


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
