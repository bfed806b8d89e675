"""Resumable order in which training prompts are drawn.

Epoch e visits every row once, in the order `torch.randperm(num_rows)` gives with a generator
seeded with `seed + e` (or in index order when shuffle is off). The whole state is therefore
(epoch, position): a run restored from `state_dict()` continues with exactly the prompts an
uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


class PromptSampler:
    """Yields batches of row indices forever, epoch after epoch; a batch may span two epochs."""

    def __init__(self, num_rows: int, batch_size: int, seed: int = 0, shuffle: bool = True):
        for name, value in (("num_rows", num_rows), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PromptSampler: {name} must be a positive integer, got {value!r}")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self._epoch = 0
        self._position = 0
        self._order = self._epoch_order(0)

    @property
    def epoch(self) -> int:
        """0-based epoch of the most recently drawn prompt (0 before any is drawn)."""
        return self._epoch

    @property
    def prompts_consumed(self) -> int:
        """Number of prompts handed out so far, over all epochs."""
        return self._epoch * self.num_rows + self._position

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_rows))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_rows, generator=generator).tolist()

    def take(self, n: int) -> list[int]:
        """The next n row indices (e.g. extra prompts to refill a batch after dropping groups)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"PromptSampler.take: n must be a non-negative integer, got {n!r}")
        indices: list[int] = []
        while len(indices) < n:
            if self._position == self.num_rows:
                self._epoch += 1
                self._position = 0
                self._order = self._epoch_order(self._epoch)
            stop = min(self.num_rows, self._position + n - len(indices))
            indices.extend(self._order[self._position : stop])
            self._position = stop
        return indices

    def next_batch(self) -> list[int]:
        """The next batch_size row indices."""
        return self.take(self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same order (plain ints and bools, JSON-friendly)."""
        return {
            "epoch": self._epoch,
            "position": self._position,
            "num_rows": self.num_rows,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state; the dataset size, seed and shuffle must match."""
        for key in ("num_rows", "seed", "shuffle"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"PromptSampler: saved {key}={state.get(key)!r} but this sampler has "
                    f"{key}={getattr(self, key)!r}; the data order would not continue"
                )
        epoch, position = state.get("epoch"), state.get("position")
        if not isinstance(epoch, int) or not isinstance(position, int) or epoch < 0:
            raise ValueError(f"PromptSampler: bad saved epoch/position {epoch!r}/{position!r}")
        if not 0 <= position <= self.num_rows:
            raise ValueError(f"PromptSampler: saved position {position} outside 0..{self.num_rows}")
        self._epoch, self._position = epoch, position
        self._order = self._epoch_order(epoch)
