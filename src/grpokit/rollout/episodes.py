"""Multi-turn episodes on the shared-prefill engine (docs/tools.md).

Every row decodes as in HFEngine until EOS, one of the environment's stop strings, or the token
budget (SamplingParams.max_new_tokens counts every token after the prompt, the inserted ones
too). A row whose turn ends with a stop string goes to the environment; the text it answers is
tokenized and appended to the row, and the next forward pass feeds it through the model on the
KV cache, together with the single new token of every other row: the history is never encoded
again. Feeds of different lengths are right-aligned in one (n, K) input. The columns a row does
not use are padding, masked out of attention for good (holes in its cache), and its real tokens
take the next positions of its own count, so every token sees exactly the context it has in the
contiguous sequence the training pass runs on.

A row's k-th sampled token draws the k-th uniform of its prompt's seeded stream, as in
single-turn decoding: an episode without tool calls is the single-turn completion, token for
token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from grpokit.rollout.base import EpisodeCounts, Episodes, ModelTurn, RolloutBatch, SamplingParams
from grpokit.rollout.batching import assemble
from grpokit.rollout.sampling import prompt_uniforms, sample_next

TAIL_SLACK_TOKENS = 4
"""Tokens decoded beyond a stop string's length in characters when looking for it at the end of
a turn: a token that is not special decodes to at least one character, so the window holds it."""


@dataclass
class _Row:
    """One episode's tokens so far and what happened in it."""

    ids: list[int] = field(default_factory=list)
    generated: list[bool] = field(default_factory=list)  # sampled by the model, else inserted
    logprobs: list[float] = field(default_factory=list)  # 0.0 on inserted tokens
    sampled: int = 0  # model tokens so far: the index of the row's next uniform
    turn_start: int = 0  # where the current model turn began
    turns: int = 1
    tool_calls: int = 0
    tool_errors: int = 0
    tool_timeouts: int = 0
    finish: str | None = None  # None while the episode runs

    def counts(self) -> EpisodeCounts:
        return EpisodeCounts(self.turns, self.tool_calls, self.tool_errors, self.tool_timeouts)


@dataclass
class _Batch:
    """The rows still in the decode batch (finished ones leave it when compacted)."""

    rows: torch.Tensor  # (n,) output row of each batch row
    positions: torch.Tensor  # (n,) position id of each batch row's next input token
    attention: torch.Tensor  # (n, L) attention mask over the cache, holes included

    def select(self, keep: torch.Tensor, cache: Any) -> None:
        cache.batch_select_indices(keep)
        self.rows, self.positions = self.rows[keep], self.positions[keep]
        self.attention = self.attention[keep]


class EpisodeDecoder:
    """Decodes N episodes from a prefilled cache: `run` returns the RolloutBatch."""

    def __init__(self, engine: Any, params: SamplingParams, episodes: Episodes, group_size: int):
        self.engine, self.params, self.episodes = engine, params, episodes
        self.group_size = group_size
        self.stop_ids = set(engine.stop_ids)
        strings = tuple(episodes.env.stop_strings)
        if not strings or not all(isinstance(s, str) and s for s in strings):
            raise ValueError(f"the environment's stop_strings must be non-empty strings, got "
                             f"{strings!r}")
        self.stop_strings = strings
        self.window = max(len(s) for s in strings) + TAIL_SLACK_TOKENS

    def run(self, cache: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
            positions: torch.Tensor, logits: torch.Tensor, seeds: Sequence[int],
            forward: Any) -> RolloutBatch:
        """`forward(ids, attention, positions, cache)` runs the model on the cache and returns
        the last position's logits (n, V)."""
        n, device = prompt_ids.shape[0], prompt_ids.device
        budget = self.params.max_new_tokens
        rows = [_Row() for _ in range(n)]
        batch = _Batch(torch.arange(n, device=device), positions, prompt_mask.long())
        uniforms = prompt_uniforms(seeds, self.group_size, budget, device)  # (N, budget)
        while True:
            index = torch.tensor([min(rows[r].sampled, budget - 1) for r in batch.rows.tolist()],
                                 device=device)
            tokens, logprobs = sample_next(logits, self.params, uniforms[batch.rows, index])
            feeds = self._advance(rows, batch.rows.tolist(), tokens.tolist(), logprobs.tolist())
            live = [i for i, r in enumerate(batch.rows.tolist()) if rows[r].finish is None]
            if not live:
                break
            if len(live) < len(feeds):
                batch.select(torch.tensor(live, device=device), cache)
                feeds = [feeds[i] for i in live]
            ids, mask, feed_positions = self._feed(feeds, batch.positions, device)
            batch.attention = torch.cat([batch.attention, mask], dim=1)
            batch.positions = batch.positions + mask.sum(dim=1)
            logits = forward(ids, batch.attention, feed_positions, cache)
        return self._assemble(rows, prompt_ids, prompt_mask, device)

    def _advance(self, rows: list[_Row], batch_rows: list[int], tokens: list[int],
                 logprobs: list[float]) -> list[list[int]]:
        """Record each live row's sampled token, end the rows that are done, hand the turns that
        ended with a stop string to the environment; the tokens each batch row feeds next."""
        budget = self.params.max_new_tokens
        feeds: list[list[int]] = [[] for _ in batch_rows]
        handoffs: list[int] = []
        for i, (r, token, logprob) in enumerate(zip(batch_rows, tokens, logprobs)):
            row = rows[r]
            if row.finish is not None:
                continue
            row.ids.append(token)
            row.generated.append(True)
            row.logprobs.append(logprob)
            row.sampled += 1
            feeds[i] = [token]
            if token in self.stop_ids:
                row.finish = "stop"
            elif self._ends_with_stop_string(row):
                handoffs.append(i)
            elif len(row.ids) >= budget:
                row.finish = "length"
        self._hand_off(rows, batch_rows, handoffs, feeds)
        return feeds

    def _ends_with_stop_string(self, row: _Row) -> bool:
        tail = row.ids[max(row.turn_start, len(row.ids) - self.window):]
        # The text the environment reads: special tokens removed, as in the turn it gets.
        text = self.engine.tokenizer.decode(tail, skip_special_tokens=True)
        return any(s in text for s in self.stop_strings)

    def _hand_off(self, rows: list[_Row], batch_rows: list[int], handoffs: list[int],
                  feeds: list[list[int]]) -> None:
        """Ask the environment about the turns that ended with a stop string; append its
        answers (out of the generated mask) within the budget and the turn limit."""
        budget, e = self.params.max_new_tokens, self.episodes
        asked = []
        for i in handoffs:
            row = rows[batch_rows[i]]
            if row.turns >= e.max_turns:
                row.finish = "max_turns"
            elif len(row.ids) >= budget:
                row.finish = "length"
            else:
                asked.append(i)
        if not asked:
            return
        tok = self.engine.tokenizer
        turns = [self._turn(rows[batch_rows[i]], batch_rows[i]) for i in asked]
        replies = e.env.respond(turns)
        if len(replies) != len(turns):
            raise ValueError(f"the environment answered {len(replies)} turns, expected "
                             f"{len(turns)}: respond returns one reply per turn")
        for i, reply in zip(asked, replies):
            row = rows[batch_rows[i]]
            row.tool_calls += reply.tool_calls
            row.tool_errors += reply.tool_errors
            row.tool_timeouts += reply.tool_timeouts
            if reply.text is None:
                row.finish = "stop"
                continue
            inserted = list(tok(reply.text, add_special_tokens=False)["input_ids"])
            room = budget - len(row.ids)
            row.ids += inserted[:room]
            row.generated += [False] * min(len(inserted), room)
            row.logprobs += [0.0] * min(len(inserted), room)
            if len(inserted) >= room:
                row.finish = "length"  # no room left for the model to answer
                continue
            feeds[i] = feeds[i] + inserted
            row.turns += 1
            row.turn_start = len(row.ids)

    def _turn(self, row: _Row, r: int) -> ModelTurn:
        tok = self.engine.tokenizer
        return ModelTurn(row=self.episodes.rows[r // self.group_size],
                         text=tok.decode(row.ids[row.turn_start:], skip_special_tokens=True),
                         transcript=tok.decode(row.ids, skip_special_tokens=True),
                         turn=row.turns)

    def _feed(self, feeds: list[list[int]], positions: torch.Tensor, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(n, K) input ids, attention mask and position ids: each row's feed right-aligned, its
        tokens at the row's next positions, padding (masked) on the left."""
        width = max(len(f) for f in feeds)
        ids = torch.full((len(feeds), width), self.engine.pad_id, dtype=torch.long)
        mask = torch.zeros((len(feeds), width), dtype=torch.long)
        offsets = torch.zeros((len(feeds), width), dtype=torch.long)
        for i, feed in enumerate(feeds):
            ids[i, width - len(feed):] = torch.tensor(feed, dtype=torch.long)
            mask[i, width - len(feed):] = 1
            offsets[i, width - len(feed):] = torch.arange(len(feed))
        ids, mask, offsets = ids.to(device), mask.to(device), offsets.to(device)
        return ids, mask, (positions[:, None] + offsets) * mask  # (n, K) each

    def _assemble(self, rows: list[_Row], prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                  device: torch.device) -> RolloutBatch:
        width = max(len(row.ids) for row in rows)
        pad = self.engine.pad_id
        ids = torch.tensor([row.ids + [pad] * (width - len(row.ids)) for row in rows],
                           dtype=torch.long, device=device)  # (N, T)
        generated = torch.tensor([row.generated + [False] * (width - len(row.ids))
                                  for row in rows], dtype=torch.bool, device=device)  # (N, T)
        logprobs = torch.tensor([row.logprobs + [0.0] * (width - len(row.ids)) for row in rows],
                                dtype=torch.float32, device=device)  # (N, T)
        lengths = torch.tensor([len(row.ids) for row in rows], device=device)
        mask = torch.arange(width, device=device)[None, :] < lengths[:, None]  # (N, T)
        stopped = torch.tensor([row.finish == "stop" for row in rows])
        batch = assemble(self.engine.tokenizer, prompt_ids, prompt_mask, ids, mask, stopped,
                         self.group_size, logprobs)
        batch.finish_reason = [row.finish for row in rows]
        batch.generated_mask = generated
        batch.episodes = [row.counts() for row in rows]
        batch.rows = list(self.episodes.rows)
        return batch
