"""The rollout contract: what an engine takes and what it returns (DESIGN.md §2)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    completion_mask: torch.Tensor  # (N, T) bool, True on every token after the prompt
    finish_reason: list[str]  # (N,) "stop", "length" (token budget) or "max_turns"
    group_index: torch.Tensor  # (N,) int64, index of the prompt in the step's B prompts
    completions: list[str]  # (N,) decoded completion text, special tokens removed
    sampling_logprobs: torch.Tensor | None = None  # (N, T) log-probs the sampler used, if known
    rows: list[dict] = field(default_factory=list)  # (B,) the dataset rows the prompts came from
    generated_mask: torch.Tensor | None = None
    """(N, T) bool, True on the tokens the model sampled (EOS included), False on the tokens an
    environment inserted (tool output) and on padding: the tokens the loss can train. Left None,
    it is completion_mask itself (single-turn: every completion token is sampled)."""
    episodes: list["EpisodeCounts"] | None = None
    """(N,) turns and tool calls of each multi-turn episode; None for single-turn rollouts."""

    def __post_init__(self) -> None:
        if self.generated_mask is None:
            self.generated_mask = self.completion_mask

    @property
    def group_size(self) -> int:
        return self.completion_ids.shape[0] // int(self.group_index.max().item() + 1)


TRUNCATED = ("length", "max_turns")
"""Finish reasons of an episode that was cut (token budget, turn limit), not ended by the model or
its environment: what algo.mask_truncated leaves out."""


def is_truncated(finish_reason: list[str]) -> torch.Tensor:
    """(N,) bool on the CPU: the rows whose finish reason is one of TRUNCATED."""
    return torch.tensor([f in TRUNCATED for f in finish_reason], dtype=torch.bool)


@dataclass(frozen=True)
class EpisodeCounts:
    """What happened in one multi-turn episode."""

    turns: int = 1
    """Model turns (a turn ends with EOS, a tool call, or the budget)."""
    tool_calls: int = 0
    """Tool calls the environment ran."""
    tool_errors: int = 0
    """Of those, calls that failed (an exception, a malformed call, an unknown tool)."""
    tool_timeouts: int = 0
    """Of those, calls cut at their deadline."""


@dataclass(frozen=True)
class ModelTurn:
    """One model turn that ended with one of the environment's stop strings."""

    row: dict[str, Any]
    """The dataset row of the episode."""
    text: str
    """This turn's text (from the end of the last inserted text), special tokens removed."""
    transcript: str
    """Everything after the prompt so far, this turn included."""
    turn: int
    """1-based index of the turn in its episode."""


@dataclass(frozen=True)
class EnvReply:
    """The environment's answer to a turn: the text to insert before the model's next turn."""

    text: str | None
    """Inserted after the turn (tokenized, out of the loss); None ends the episode ("stop")."""
    tool_calls: int = 0
    """Tool calls run for this reply."""
    tool_errors: int = 0
    """Of those, calls that failed."""
    tool_timeouts: int = 0
    """Of those, calls cut at their deadline."""


class Environment(Protocol):
    """A multi-turn episode's other side (docs/tools.md): it writes the first messages from a
    dataset row, and answers every model turn that ends with one of its stop strings."""

    stop_strings: tuple[str, ...]
    """Text that ends a model turn and hands it to `respond` (e.g. "</python>")."""

    def first_messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """The chat messages ({role, content}) the episode starts from."""
        ...

    def respond(self, turns: list[ModelTurn]) -> list[EnvReply]:
        """One reply per turn, in order (the turns of one decode step, answered together)."""
        ...


@dataclass(frozen=True)
class Episodes:
    """What an engine needs to run multi-turn episodes instead of single completions."""

    env: Environment
    """Answers the model's turns."""
    rows: list[dict[str, Any]]
    """(B,) the dataset rows of the prompts (the environment sees them)."""
    max_turns: int
    """Most model turns in an episode; one that ends turn max_turns with a tool call is cut there
    (finish reason "max_turns")."""


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
        episodes: Episodes | None = None,
    ) -> RolloutBatch:
        """Sample group_size completions for each prompt (token ids, no padding); prompt i's
        samples are drawn from randomness seeded by seeds[i] alone. With `episodes`, each
        completion is a multi-turn episode (engines that cannot run them raise)."""
        ...

    def sync_weights(self) -> None:
        """Make the engine sample from the policy's current weights."""
        ...
