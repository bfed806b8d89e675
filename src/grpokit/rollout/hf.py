"""The shared-prefill engine: prefill each prompt once, expand its KV cache G times, then decode.

DESIGN.md §4. The B prompts are left-padded and prefilled in one forward pass (only the last
position's logits are computed), the cache is repeat-interleaved to N = B·G rows so that rows
g·G .. g·G+G-1 share prompt g, and the N sequences are decoded one token per forward pass.
Rows that stop are dropped from the batch once enough of them have, so finished sequences stop
costing compute. Multi-turn episodes (tool calls) decode from the same prefill in
rollout/episodes.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from grpokit.rollout.base import Episodes, RolloutBatch, SamplingParams
from grpokit.rollout.batching import EngineBase, assemble, check_prompts, left_pad
from grpokit.rollout.episodes import EpisodeDecoder
from grpokit.rollout.sampling import check_params, prompt_uniforms, sample_next
from grpokit.runtime.models import cache_kwarg
from grpokit.runtime.precision import autocast


class HFEngine(EngineBase):
    """Rollouts from a transformers causal LM (the policy module itself, so no weight sync)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        stop_token_ids: tuple[int, ...] = (),
        autocast: bool = False,
        compact_fraction: float = 0.125,
    ) -> None:
        if not 0.0 < compact_fraction <= 1.0:
            raise ValueError(f"compact_fraction must be in (0, 1], got {compact_fraction}")
        super().__init__(model, tokenizer, stop_token_ids, autocast)
        self.compact_fraction = compact_fraction
        """Drop finished rows from the batch once they are this fraction of it."""
        self._cache_kwarg = cache_kwarg(model)


    def generate(
        self,
        prompt_ids: list[list[int]],
        group_size: int,
        params: SamplingParams,
        seeds: Sequence[int],
        episodes: Episodes | None = None,
    ) -> RolloutBatch:
        """Sample group_size completions for each prompt (token ids, no padding); with
        `episodes`, multi-turn episodes (rollout/episodes.py)."""
        check_params(params)
        check_prompts(prompt_ids, group_size, self.model.get_input_embeddings().num_embeddings)
        if episodes is not None and len(episodes.rows) != len(prompt_ids):
            raise ValueError(f"episodes.rows has {len(episodes.rows)} rows for {len(prompt_ids)} "
                             "prompts: one dataset row per prompt")
        device = self.model.get_input_embeddings().weight.device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), autocast(self.autocast, device):
                prefilled = self._prefill(prompt_ids, group_size, device)
                if episodes is not None:
                    decoder = EpisodeDecoder(self, params, episodes, group_size)
                    return decoder.run(*prefilled, seeds, self._forward)
                return self._generate(*prefilled, group_size, params, seeds, device)
        finally:
            self.model.train(was_training)

    def _prefill(self, prompt_ids: list[list[int]], group_size: int, device: torch.device):
        """One forward pass over the B left-padded prompts, its cache expanded to N = B·G rows:
        (cache, prompt ids (N, P), prompt mask (N, P), next positions (N,), logits (N, V))."""
        ids, mask = left_pad(prompt_ids, self.pad_id, device)  # (B, P)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, P), as model.generate does
        cache = DynamicCache(config=self.model.config)  # filled in place by every forward
        out = self.model(
            input_ids=ids,
            attention_mask=mask.long(),
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: cache},
        )
        cache.batch_repeat_interleave(group_size)
        return (cache, ids.repeat_interleave(group_size, 0), mask.repeat_interleave(group_size, 0),
                positions[:, -1].repeat_interleave(group_size) + 1,
                out.logits[:, -1].repeat_interleave(group_size, 0))

    def _forward(self, ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor,
                 cache: Any) -> torch.Tensor:
        """The next-token logits (n, V) after feeding `ids` (n, K) on the cache."""
        out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions,
                         use_cache=True, logits_to_keep=1, **{self._cache_kwarg: cache})
        return out.logits[:, -1]

    def _generate(
        self,
        cache: Any,
        prompt_ids_n: torch.Tensor,
        prompt_mask_n: torch.Tensor,
        positions: torch.Tensor,
        logits: torch.Tensor,
        group_size: int,
        params: SamplingParams,
        seeds: Sequence[int],
        device: torch.device,
    ) -> RolloutBatch:
        state = _DecodeState.start(prompt_mask_n, positions, params, self.pad_id)
        stop = torch.tensor(self.stop_ids, device=device)
        uniforms = prompt_uniforms(seeds, group_size, params.max_new_tokens, device)  # (N, T)
        for step in range(params.max_new_tokens):
            draws = sample_next(logits, params, uniforms[state.rows, step])
            tokens = state.record(step, *draws, stop)
            if step == params.max_new_tokens - 1 or not state.alive.any():
                break
            tokens = state.maybe_compact(tokens, cache, self.compact_fraction)
            logits = self._forward(tokens[:, None], state.attention[:, : state.prompt_len + step + 1],
                                   state.positions[:, None], cache)  # (n, V)
            state.positions = state.positions + 1
        completion_ids, completion_mask, logprobs = state.finish()
        return assemble(
            self.tokenizer, prompt_ids_n, prompt_mask_n, completion_ids, completion_mask,
            state.stopped, group_size, logprobs,
        )


@dataclass
class _DecodeState:
    """Output buffers over all N rows plus the n rows still in the decode batch."""

    prompt_len: int
    attention: torch.Tensor  # (n, P + max_new_tokens) attention mask of the batch rows
    positions: torch.Tensor  # (n,) position id of each batch row's next input token
    rows: torch.Tensor  # (n,) output row of each batch row
    alive: torch.Tensor  # (n,) bool, False once the row sampled a stop token
    tokens: torch.Tensor  # (N, max_new_tokens) sampled ids, pad after the end
    logprobs: torch.Tensor  # (N, max_new_tokens) sampling log-probs
    lengths: torch.Tensor  # (N,) completion length so far (EOS included)
    stopped: torch.Tensor  # (N,) bool, ended with a stop token

    @classmethod
    def start(
        cls, prompt_mask: torch.Tensor, positions: torch.Tensor, params: SamplingParams, pad_id: int
    ) -> "_DecodeState":
        n, prompt_len = prompt_mask.shape
        device = prompt_mask.device
        attention = torch.ones((n, prompt_len + params.max_new_tokens), dtype=torch.long, device=device)
        attention[:, :prompt_len] = prompt_mask.long()
        return cls(
            prompt_len=prompt_len,
            attention=attention,
            positions=positions,
            rows=torch.arange(n, device=device),
            alive=torch.ones(n, dtype=torch.bool, device=device),
            tokens=torch.full((n, params.max_new_tokens), pad_id, dtype=torch.long, device=device),
            logprobs=torch.zeros((n, params.max_new_tokens), dtype=torch.float32, device=device),
            lengths=torch.zeros(n, dtype=torch.long, device=device),
            stopped=torch.zeros(n, dtype=torch.bool, device=device),
        )

    def record(
        self, step: int, tokens: torch.Tensor, logprobs: torch.Tensor, stop: torch.Tensor
    ) -> torch.Tensor:
        """Write the sampled tokens of live rows; mark rows that sampled a stop token."""
        live = self.rows[self.alive]
        self.tokens[live, step] = tokens[self.alive]
        self.logprobs[live, step] = logprobs[self.alive]
        self.lengths[live] = step + 1
        done = self.alive & torch.isin(tokens, stop)
        self.stopped[self.rows[done]] = True
        self.alive = self.alive & ~done
        return tokens

    def maybe_compact(self, tokens: torch.Tensor, cache: Any, fraction: float) -> torch.Tensor:
        """Drop finished rows (cache included) once they are `fraction` of the batch."""
        dead = int((~self.alive).sum())
        if dead == 0 or dead < fraction * self.alive.numel():
            return tokens
        keep = self.alive.nonzero().squeeze(-1)
        cache.batch_select_indices(keep)
        self.attention, self.positions = self.attention[keep], self.positions[keep]
        self.rows, self.alive = self.rows[keep], self.alive[keep]
        return tokens[keep]

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, T) completion ids, mask and sampling log-probs, T the longest completion."""
        width = int(self.lengths.max())
        mask = torch.arange(width, device=self.lengths.device)[None, :] < self.lengths[:, None]
        return self.tokens[:, :width], mask, self.logprobs[:, :width] * mask
