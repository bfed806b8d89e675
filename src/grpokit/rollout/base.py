"""The rollout contract: what an engine takes and what it returns (DESIGN.md §2)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How completions are sampled."""

    max_new_tokens: int = 128
    """Largest number of completion tokens; a completion that reaches it has finish_reason "length"."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 disables it)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 disables it)."""


@dataclass
class RolloutBatch:
    """G completions for each of B prompts, groups contiguous: rows g*G .. g*G+G-1 share prompt g."""

    prompt_ids: torch.Tensor  # (N, P) left-padded with pad_token_id
    prompt_mask: torch.Tensor  # (N, P) bool, True on real prompt tokens
    completion_ids: torch.Tensor  # (N, T) right-padded with pad_token_id
    completion_mask: torch.Tensor  # (N, T) bool, True on generated tokens (EOS included)
    finish_reason: list[str]  # (N,) "stop" (EOS or stop string) or "length"
    group_index: torch.Tensor  # (N,) int64, index of the prompt in the step's B prompts
    completions: list[str]  # (N,) decoded completion text, special tokens removed
    sampling_logprobs: torch.Tensor | None = None  # (N, T) log-probs the sampler used, if known
    rows: list[dict] = field(default_factory=list)  # (B,) the dataset rows the prompts came from

    @property
    def group_size(self) -> int:
        return self.completion_ids.shape[0] // int(self.group_index.max().item() + 1)


def sampling_seed(*keys: int | str) -> int:
    """A 62-bit seed that depends only on `keys`, e.g. (run seed, step, global prompt index):
    a prompt's completions then do not depend on which rank, batch or engine call draws them
    (DESIGN.md §5), so runs stay exact across world sizes and resumes."""
    digest = hashlib.blake2b("/".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


class RolloutEngine(Protocol):
    """Generates G completions per prompt from the current policy."""

    def generate(
        self,
        prompt_ids: list[list[int]],
        group_size: int,
        params: SamplingParams,
        seeds: Sequence[int],
    ) -> RolloutBatch:
        """Sample group_size completions for each prompt (token ids, no padding); prompt i's
        samples are drawn from randomness seeded by seeds[i] alone."""
        ...

    def sync_weights(self) -> None:
        """Make the engine sample from the policy's current weights."""
        ...
