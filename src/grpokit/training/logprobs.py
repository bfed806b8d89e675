"""Completion log-probs from a causal LM, with no wasted work (DESIGN.md §4).

The backbone runs on prompt + completion with padding trimmed to the micro-batch; only the
positions that predict completion tokens go through the vocabulary projection, in chunks.

With a shared prefix (the default) the G completions of a prompt do not each carry it: the
distinct prompts of a micro-batch run once, their keys and values (with their gradient) are
indexed out to the completions, and the completions run on top of them. The log-probs and the
gradients are those of the joint pass (tests/unit/test_shared_prefix.py); the prompt tokens are
computed once per micro-batch instead of once per completion.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from grpokit.algo.selective import selective_logprobs
from grpokit.algo.support import Truncation
from grpokit.runtime import distributed as dist
from grpokit.runtime.models import cache_kwarg, memory_named
from grpokit.runtime.precision import fp32_attention


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
    entropy_grad: bool = False,
    share_prefix: bool = False,
    truncation: Truncation | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N, T) of the completion tokens (0 on padding), and entropies when asked (with a
    gradient only with `entropy_grad`). `share_prefix`: run each distinct prompt once (see the
    module docstring). `truncation`: over the sampler's top-k / top-p kept set at each position
    (algo.sampling_support=replay)."""
    t_full = completion_ids.shape[1]
    p_ids, p_mask, c_ids, c_mask = trim(prompt_ids, prompt_mask, completion_ids, completion_mask)
    decoder, weight = _decoder_and_head(model)
    run = _shared_hidden if share_prefix else _joint_hidden
    predicting = run(decoder, p_ids, p_mask, c_ids, c_mask)  # (n, T, H)
    mask = c_mask.bool()
    lp, ent = selective_logprobs(predicting[mask], weight, c_ids[mask],
                                 temperature=max(temperature, 1e-6), chunk_size=chunk_size,
                                 with_entropy=with_entropy, entropy_grad=entropy_grad,
                                 truncation=truncation)
    return _unflatten(lp, mask, t_full), (None if ent is None else _unflatten(ent, mask, t_full))


def _joint_hidden(decoder, p_ids, p_mask, c_ids, c_mask) -> torch.Tensor:
    """Hidden states (n, T, H) predicting each completion token, prompt and completion in one
    pass per sequence."""
    p, t = p_ids.shape[1], c_ids.shape[1]
    input_ids = torch.cat([p_ids, c_ids], dim=1)  # (n, P + T)
    attention = torch.cat([p_mask, c_mask], dim=1).long()  # (n, P + T)
    hidden = decoder(input_ids=input_ids, attention_mask=attention,
                     position_ids=position_ids(attention), use_cache=False).last_hidden_state
    return hidden[:, p - 1 : p - 1 + t]  # position P - 1 + j predicts completion token j


class _Captured(DynamicLayer):
    """The prompt pass's cache layer: it keeps the layer's keys and values as they come. A replay
    under activation checkpointing stores equal values again, so replaying is safe."""

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys, self.values, self.is_initialized = key_states, value_states, True
        self.device = key_states.device
        return key_states, value_states


class _Prefix(DynamicLayer):
    """The completion pass's cache layer: the prompts' keys and values, one row per completion,
    ahead of the completion's own. It stores nothing, so a replay sees the same prefix."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.is_initialized, self.device = keys, values, True, keys.device

    def update(self, key_states, value_states, *args, **kwargs):
        return (torch.cat([self.keys, key_states], dim=-2),
                torch.cat([self.values, value_states], dim=-2))


def distinct_prompts(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct (left-padded) prompts (U, P), their masks, and each row's prompt (n,)."""
    p = prompt_ids.shape[1]
    keyed = torch.cat([prompt_ids * prompt_mask, prompt_mask.long()], dim=1)  # (n, 2P)
    distinct, index = torch.unique(keyed, dim=0, return_inverse=True)  # (U, 2P), (n,)
    return distinct[:, :p], distinct[:, p:].to(prompt_mask.dtype), index


def _shared_hidden(decoder, p_ids, p_mask, c_ids, c_mask) -> torch.Tensor:
    """`_joint_hidden` with each distinct prompt run once: its keys and values serve every
    completion of it, and gradients flow back through them to the prompt pass."""
    u_ids, u_mask, index = distinct_prompts(p_ids, p_mask)
    kw, layers = cache_kwarg(decoder), len(decoder.layers)
    captured = Cache(layers=[_Captured() for _ in range(layers)])
    out = decoder(input_ids=u_ids, attention_mask=u_mask, position_ids=position_ids(u_mask),
                  use_cache=True, **{kw: captured})
    last = out.last_hidden_state[:, -1][index]  # (n, H): predicts completion token 0
    prefix = Cache(layers=[_Prefix(c.keys[index], c.values[index]) for c in captured.layers])
    starts = u_mask.sum(dim=1)[index]  # (n,): the first completion position of each row
    positions = starts[:, None] + torch.arange(c_ids.shape[1], device=c_ids.device)  # (n, T)
    attention = torch.cat([u_mask[index], c_mask], dim=1).long()  # (n, P + T)
    hidden = decoder(input_ids=c_ids, attention_mask=attention, position_ids=positions,
                     use_cache=True, **{kw: prefix}).last_hidden_state  # (n, T, H)
    return torch.cat([last[:, None], hidden[:, :-1]], dim=1)  # token j is predicted at j - 1


def prefix_sharing_problem(model: torch.nn.Module) -> str | None:
    """Why the shared-prefix pass cannot run on this model, or None when it can: it needs a plain
    full-attention KV cache in every layer and, under activation checkpointing, layers that keep
    the cache when replayed (see models.keep_cache_under_checkpointing)."""
    decoder, _ = _decoder_and_head(model)
    config = decoder.config
    template = DynamicCache(config=config)
    if any(type(layer) is not DynamicLayer for layer in template.layers):
        kinds = sorted({type(layer).__name__ for layer in template.layers} - {"DynamicLayer"})
        return f"its attention layers keep {', '.join(kinds)} caches (sliding window or others)"
    if not hasattr(decoder, "layers"):
        return "its decoder has no `layers` list"
    checkpointed = any(getattr(layer, "gradient_checkpointing", False) for layer in decoder.layers)
    if checkpointed and not all(getattr(layer, "_can_checkpoint_with_cache", False)
                                for layer in decoder.layers):
        return "its layers drop the KV cache under activation checkpointing"
    return None


class CompletionScorer(torch.nn.Module):
    """`completion_logprobs` as a module, so that DDP or FSDP can wrap the whole training pass
    (backbone, and the output projection used outside the model's own forward)."""

    def __init__(self, model: torch.nn.Module, share_prefix: bool = False):
        super().__init__()
        self.model = model
        self.share_prefix = share_prefix

    def forward(self, prompt_ids, prompt_mask, completion_ids, completion_mask, *,
                temperature: float = 1.0, chunk_size: int = 1024, with_entropy: bool = False,
                entropy_grad: bool = False, truncation: Truncation | None = None):
        with fp32_attention():  # where models.use_fp32_attention set the model up
            return completion_logprobs(self.model, prompt_ids, prompt_mask, completion_ids,
                                       completion_mask, temperature=temperature,
                                       chunk_size=chunk_size, with_entropy=with_entropy,
                                       entropy_grad=entropy_grad, share_prefix=self.share_prefix,
                                       truncation=truncation)


def shares_prefix(scorer: torch.nn.Module) -> bool:
    """Whether a scorer (plain, FSDP, or inside DDP's `module`) runs the shared-prefix pass."""
    return bool(getattr(getattr(scorer, "module", scorer), "share_prefix", False))


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


PASS_OVERHEAD_TOKENS = 64
"""The fixed cost of one more forward/backward pass, in tokens: what the planner weighs against
padding saved by splitting (a few hundred kernel launches of this model kind, measured on CPU)."""


def plan_micro_batches(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                       completion_mask: torch.Tensor, rows: torch.Tensor, *, max_seqs: int,
                       max_tokens: int, share_prefix: bool) -> list[torch.Tensor]:
    """The given rows of a batch in micro-batches of at most `max_seqs` sequences and
    `max_tokens` padded tokens (a row over the budget alone gets a micro-batch of its own).

    A micro-batch costs the tokens its passes run: n·(P + T) jointly, U·P + n·T with a shared
    prefix (U distinct prompts, P and T the longest prompt and completion in it), plus
    PASS_OVERHEAD_TOKENS. Rows are put in order, longest first (with a shared prefix, also prompt
    by prompt), and cut where the total cost is least (dynamic programming); the cheaper order
    wins."""
    p_len = prompt_mask[rows].sum(dim=1).tolist()
    c_len = completion_mask[rows].sum(dim=1).clamp(min=1).tolist()
    n = len(p_len)
    key = distinct_prompts(prompt_ids[rows], prompt_mask[rows])[2].tolist() if share_prefix \
        else list(range(n))

    def cut(order: list[int]) -> tuple[int, list[list[int]]]:
        best, start = [0] + [None] * n, [0] * (n + 1)  # best[i]: least cost of order[:i]
        for i in range(1, n + 1):
            keys: set[int] = set()
            longest_p = longest_c = 0
            for j in range(i - 1, -1, -1):  # the last micro-batch is order[j:i]
                r = order[j]
                keys.add(key[r])
                longest_p, longest_c = max(longest_p, p_len[r]), max(longest_c, c_len[r])
                cost = longest_p * len(keys) + longest_c * (i - j)
                if i - j > max_seqs or (cost > max_tokens and i - j > 1):
                    break  # the cost only grows as the micro-batch takes more rows
                total = best[j] + cost + PASS_OVERHEAD_TOKENS
                if best[i] is None or total < best[i]:
                    best[i], start[i] = total, j
        plan, i = [], n
        while i > 0:
            plan.append(order[start[i]:i])
            i = start[i]
        return best[n], plan[::-1]

    orders = [sorted(range(n), key=lambda i: -(p_len[i] + c_len[i]))]
    if share_prefix:
        longest: dict[int, int] = {}
        for i in range(n):
            longest[key[i]] = max(longest.get(key[i], 0), c_len[i])
        orders.append(sorted(range(n), key=lambda i: (-longest[key[i]], key[i], -c_len[i])))
    _, best = min((cut(order) for order in orders), key=lambda c: (c[0], len(c[1])))
    return [rows[torch.tensor(mb, dtype=torch.long)] for mb in best]


def padded_chunks(chunks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Micro-batches padded to the largest count over ranks with passes that keep sharded
    (FSDP) ranks in step: such a pass holds index -1 and its results are dropped."""
    most = int(dist.all_reduce_max(torch.tensor(len(chunks))))
    return chunks + [torch.tensor([-1])] * (most - len(chunks))


NO_GRAD_REMEDY = "lower train.max_tokens_per_micro_batch or train.micro_batch_size"
"""What lowers the peak of a no-grad pass (no activations are kept: checkpointing cannot help)."""


@torch.no_grad()
def batched_logprobs(model, batch, *, micro_batch_size: int, temperature: float,
                     max_tokens: int = 2**62,
                     chunk_size: int, autocast=contextlib.nullcontext,
                     with_entropy: bool = False, truncation: Truncation | None = None,
                     step: int | None = None, phase: str = "a no-grad log-prob pass: the old "
                     "or reference log-probs") -> tuple[torch.Tensor, torch.Tensor | None]:
    """No-grad log-probs (and entropies) for a whole batch, micro-batch by micro-batch: the old or
    reference log-probs, or the entropies of top-entropy token selection; over the sampler's kept
    sets with a `truncation`. Running out of memory names `phase`, `step` and the micro-batch."""
    logprobs = torch.zeros(batch.completion_ids.shape, dtype=torch.float32,
                           device=batch.completion_ids.device)  # (N, T)
    entropy = torch.zeros_like(logprobs) if with_entropy else None  # (N, T)
    scorer = as_scorer(model)
    rows = torch.arange(len(batch.completion_ids))
    plan = plan_micro_batches(batch.prompt_ids, batch.prompt_mask, batch.completion_mask, rows,
                              max_seqs=micro_batch_size, max_tokens=max_tokens,
                              share_prefix=shares_prefix(scorer))
    chunks = padded_chunks(plan)
    with autocast():
        for k, idx in enumerate(chunks):
            with memory_named(step, k, len(chunks), batch, idx, phase=phase, remedy=NO_GRAD_REMEDY):
                lp, ent = scorer(batch.prompt_ids[idx], batch.prompt_mask[idx],
                                 batch.completion_ids[idx], batch.completion_mask[idx],
                                 temperature=temperature, chunk_size=chunk_size,
                                 with_entropy=with_entropy, truncation=truncation)
            if bool(idx[0] < 0):
                continue  # a rank's padding pass (see padded_chunks)
            logprobs[idx] = lp
            if entropy is not None:
                entropy[idx] = ent
    return logprobs, entropy
