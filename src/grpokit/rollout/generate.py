"""The reference engine: plain `model.generate` on the prompts repeated G times.

It re-runs each prompt's prefill G times; it exists to check and benchmark HFEngine against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig

from grpokit.rollout.base import Episodes, RolloutBatch, SamplingParams
from grpokit.rollout.batching import (
    EngineBase,
    assemble,
    check_prompts,
    concat_rollouts,
    single_turn_only,
)
from grpokit.rollout.sampling import check_params
from grpokit.runtime.precision import autocast


class GenerateEngine(EngineBase):
    """Rollouts through transformers' `generate` (seeded from the generator, global RNG untouched)."""

    def generate(
        self,
        prompt_ids: list[list[int]],
        group_size: int,
        params: SamplingParams,
        seeds: Sequence[int],
        episodes: Episodes | None = None,
    ) -> RolloutBatch:
        """Sample group_size completions for each prompt (token ids, no padding); one `generate`
        call per prompt, under the global RNG seeded with the prompt's seed (then restored)."""
        single_turn_only("generate", episodes)
        check_params(params)
        check_prompts(prompt_ids, group_size, self.model.get_input_embeddings().num_embeddings)
        parts = [self._one_prompt(ids, group_size, params, seed)
                 for ids, seed in zip(prompt_ids, seeds)]
        return concat_rollouts(parts, self.pad_id)

    def _one_prompt(self, prompt: list[int], group_size: int, params: SamplingParams,
                    seed: int) -> RolloutBatch:
        device = self.model.get_input_embeddings().weight.device
        ids = torch.tensor([prompt] * group_size, device=device)  # (G, P)
        mask = torch.ones_like(ids, dtype=torch.bool)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(int(seed))
                with torch.no_grad(), autocast(self.autocast, device):
                    out = self.model.generate(
                        input_ids=ids,
                        attention_mask=mask.long(),
                        generation_config=self._config(params),
                    )
        finally:
            self.model.train(was_training)
        return self._to_batch(ids, mask, out, group_size)

    def _config(self, params: SamplingParams) -> Any:
        sample = params.temperature > 0
        return GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            temperature=params.temperature if sample else None,
            top_p=params.top_p if sample else None,
            top_k=params.top_k if sample and params.top_k > 0 else None,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_scores=True,
        )

    def _to_batch(
        self, ids: torch.Tensor, mask: torch.Tensor, out: Any, group_size: int
    ) -> RolloutBatch:
        completion = out.sequences[:, ids.shape[1] :]  # (N, T)
        is_stop = torch.isin(completion, torch.tensor(self.stop_ids, device=completion.device))
        stopped = is_stop.any(-1)  # (N,)
        width = completion.shape[1]
        lengths = torch.where(stopped, is_stop.int().argmax(-1) + 1, width)  # (N,)
        completion_mask = torch.arange(width, device=completion.device)[None, :] < lengths[:, None]
        scores = torch.stack(out.scores, dim=1).float()  # (N, T, V) the processed logits
        logprobs = scores.log_softmax(-1).gather(-1, completion[..., None]).squeeze(-1)
        logprobs = torch.where(completion_mask, logprobs, 0.0)
        completion = completion.masked_fill(~completion_mask, self.pad_id)
        return assemble(
            self.tokenizer, ids, mask, completion, completion_mask, stopped, group_size, logprobs
        )
