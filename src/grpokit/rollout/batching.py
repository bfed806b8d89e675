"""Shared by the engines: input checks, left padding, and assembling the RolloutBatch."""

from __future__ import annotations

from typing import Any

import torch

from grpokit.rollout.base import RolloutBatch


def check_prompts(prompt_ids: list[list[int]], group_size: int, vocab_size: int) -> None:
    """Raise a clear error for an empty prompt list, an empty prompt or an out-of-vocab id."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: expected at least one prompt (a list of token ids)")
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} has no tokens: expected a non-empty list of token ids")
        if not all(isinstance(t, int) for t in ids):
            kinds = sorted({type(t).__name__ for t in ids})
            raise ValueError(f"prompt {i} must be a list of int token ids, got elements of type {kinds}")
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size}): {bad[:5]}")


def single_turn_only(engine: str, episodes: Any) -> None:
    """Raise for multi-turn episodes on an engine that samples single completions only."""
    if episodes is not None:
        raise ValueError(f"the {engine} engine samples single-turn completions only; multi-turn "
                         "episodes (tools.environment) need rollout.engine=hf")


def left_pad(
    prompt_ids: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts to (B, P) ids and a bool mask, True on real tokens."""
    width = max(len(ids) for ids in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.bool)
    for row, prompt in enumerate(prompt_ids):
        ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt) :] = True
    return ids.to(device), mask.to(device)


def stop_ids(tokenizer: Any, model: Any, extra: tuple[int, ...] = ()) -> list[int]:
    """The token ids that end a completion: the tokenizer's EOS, the generation config's, extras."""
    ids = set(int(t) for t in extra)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.update(int(t) for t in (config_eos if isinstance(config_eos, (list, tuple)) else [config_eos]))
    if not ids:
        raise ValueError("no stop token: the tokenizer has no EOS and no extra stop_token_ids were given")
    return sorted(ids)


def assemble(
    tokenizer: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    stopped: torch.Tensor,
    group_size: int,
    sampling_logprobs: torch.Tensor | None,
) -> RolloutBatch:
    """Build the RolloutBatch from (N, .) tensors whose groups are already contiguous."""
    n = completion_ids.shape[0]
    lengths = completion_mask.sum(-1).tolist()
    rows = completion_ids.tolist()
    texts = tokenizer.batch_decode(
        [row[:length] for row, length in zip(rows, lengths)], skip_special_tokens=True
    )
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        finish_reason=["stop" if s else "length" for s in stopped.tolist()],
        group_index=torch.arange(n // group_size, device=completion_ids.device).repeat_interleave(group_size),
        completions=texts,
        sampling_logprobs=sampling_logprobs,
    )


def _pad_cat(tensors: list[torch.Tensor], left: bool, value: int | bool) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        pad = (width - t.shape[1], 0) if left else (0, width - t.shape[1])
        padded.append(torch.nn.functional.pad(t, pad, value=value))
    return torch.cat(padded)


def concat_rollouts(rs: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
    """Join rollouts of the same group size, prompts left-padded, completions right-padded."""
    if len(rs) == 1:
        return rs[0]
    offsets = torch.tensor([0] + [int(r.group_index.max()) + 1 for r in rs]).cumsum(0)
    logps = [r.sampling_logprobs for r in rs]
    return RolloutBatch(
        prompt_ids=_pad_cat([r.prompt_ids for r in rs], True, pad_token_id),
        prompt_mask=_pad_cat([r.prompt_mask for r in rs], True, False),
        completion_ids=_pad_cat([r.completion_ids for r in rs], False, pad_token_id),
        completion_mask=_pad_cat([r.completion_mask for r in rs], False, False),
        finish_reason=[f for r in rs for f in r.finish_reason],
        group_index=torch.cat([r.group_index + o for r, o in zip(rs, offsets)]),
        completions=[c for r in rs for c in r.completions],
        sampling_logprobs=None if any(x is None for x in logps) else _pad_cat(logps, False, 0.0),
        rows=[row for r in rs for row in r.rows],
        generated_mask=_pad_cat([r.generated_mask for r in rs], False, False),
        episodes=None if any(r.episodes is None for r in rs)
        else [e for r in rs for e in r.episodes],
    )


class EngineBase:
    """What both engines hold: the policy module itself (so there are no weights to sync), its
    tokenizer, the stop and pad ids, and whether to run under bf16 autocast."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, stop_token_ids: tuple[int, ...] = (),
                 autocast: bool = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids(tokenizer, model, tuple(stop_token_ids))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.autocast = autocast
        """Sample under bf16 autocast (the decision is precision.use_bf16)."""

    def sync_weights(self) -> None:
        """Nothing to do: the engine samples from the policy module itself."""
