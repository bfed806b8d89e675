"""Completion log-probs from a causal LM, with no wasted work (DESIGN.md §4).

The backbone runs on prompt + completion with padding trimmed to the micro-batch; only the
positions that predict completion tokens go through the vocabulary projection, in chunks.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from grpokit import distributed as dist
from grpokit.algo.losses import selective_logprobs


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each sequence's first real token (left padding gets 0)."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)  # (N, L)


def trim(prompt_ids, prompt_mask, completion_ids, completion_mask):
    """Drop the padding columns that no sequence of this micro-batch needs."""
    p = int(prompt_mask.sum(dim=1).max())
    t = max(int(completion_mask.sum(dim=1).max()), 1)
    return prompt_ids[:, -p:], prompt_mask[:, -p:], completion_ids[:, :t], completion_mask[:, :t]


def _decoder_and_head(model: torch.nn.Module):
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError("the model needs a bias-free output projection (lm_head) for log-probs")
    return model.get_decoder(), head.weight


def completion_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N, T) of the completion tokens (0 on padding), and entropies when asked."""
    t_full = completion_ids.shape[1]
    p_ids, p_mask, c_ids, c_mask = trim(prompt_ids, prompt_mask, completion_ids, completion_mask)
    p, t = p_ids.shape[1], c_ids.shape[1]
    input_ids = torch.cat([p_ids, c_ids], dim=1)  # (n, P + T)
    attention = torch.cat([p_mask, c_mask], dim=1).long()  # (n, P + T)
    decoder, weight = _decoder_and_head(model)
    hidden = decoder(input_ids=input_ids, attention_mask=attention,
                     position_ids=position_ids(attention), use_cache=False).last_hidden_state
    # hidden at position P - 1 + j predicts completion token j
    predicting = hidden[:, p - 1 : p - 1 + t]  # (n, T, H)
    mask = c_mask.bool()
    lp, ent = selective_logprobs(predicting[mask], weight, c_ids[mask],
                                 temperature=max(temperature, 1e-6), chunk_size=chunk_size,
                                 with_entropy=with_entropy)
    return _unflatten(lp, mask, t_full), (None if ent is None else _unflatten(ent, mask, t_full))


class CompletionScorer(torch.nn.Module):
    """`completion_logprobs` as a module, so that DDP or FSDP can wrap the whole training pass
    (backbone, and the output projection used outside the model's own forward)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, prompt_ids, prompt_mask, completion_ids, completion_mask, *,
                temperature: float = 1.0, chunk_size: int = 1024, with_entropy: bool = False):
        return completion_logprobs(self.model, prompt_ids, prompt_mask, completion_ids,
                                   completion_mask, temperature=temperature,
                                   chunk_size=chunk_size, with_entropy=with_entropy)


def as_scorer(module: torch.nn.Module) -> torch.nn.Module:
    """A causal LM becomes a CompletionScorer; a scorer (plain, DDP or FSDP) stays as it is."""
    return CompletionScorer(module) if hasattr(module, "get_decoder") else module


def _unflatten(values: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
    """(M,) values at the mask's True positions -> (N, width), zero elsewhere."""
    dense = torch.zeros(mask.shape, dtype=values.dtype, device=values.device
                        ).masked_scatter(mask, values)  # (N, T')
    return torch.nn.functional.pad(dense, (0, width - mask.shape[1]))  # (N, T)


def length_sorted_chunks(lengths: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    """Index chunks of at most `size`, longest first, so each chunk pads to similar lengths."""
    order = torch.argsort(lengths, descending=True, stable=True)
    yield from torch.split(order, size)


def padded_chunks(lengths: torch.Tensor, size: int) -> list[torch.Tensor]:
    """`length_sorted_chunks`, padded to the largest count over ranks with passes that keep
    sharded (FSDP) ranks in step: such a pass holds index -1 and its results are dropped."""
    chunks = list(length_sorted_chunks(lengths, size))
    most = int(dist.all_reduce_max(torch.tensor(len(chunks))))
    return chunks + [torch.tensor([-1])] * (most - len(chunks))


@torch.no_grad()
def batched_logprobs(model, batch, *, micro_batch_size: int, temperature: float,
                     chunk_size: int, autocast=contextlib.nullcontext,
                     with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """No-grad log-probs (and entropies) for a whole batch, micro-batch by micro-batch: the old or
    reference log-probs, or the entropies of top-entropy token selection."""
    logprobs = torch.zeros(batch.completion_ids.shape, dtype=torch.float32,
                           device=batch.completion_ids.device)  # (N, T)
    entropy = torch.zeros_like(logprobs) if with_entropy else None  # (N, T)
    lengths = batch.prompt_mask.sum(1) + batch.completion_mask.sum(1)
    scorer = as_scorer(model)
    for idx in padded_chunks(lengths, micro_batch_size):
        with autocast():
            lp, ent = scorer(batch.prompt_ids[idx], batch.prompt_mask[idx],
                             batch.completion_ids[idx], batch.completion_mask[idx],
                             temperature=temperature, chunk_size=chunk_size,
                             with_entropy=with_entropy)
        if bool(idx[0] < 0):
            continue  # a rank's padding pass (see padded_chunks)
        logprobs[idx] = lp
        if entropy is not None:
            entropy[idx] = ent
    return logprobs, entropy
