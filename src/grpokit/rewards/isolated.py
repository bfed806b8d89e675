"""Reward functions that run in a killable worker process, under a deadline that always fires.

A function registered with `isolate=True` is built and called inside its own worker process
(grpokit.rewards.workers): the trainer only waits on a socket, so a function stuck in C code that
holds the interpreter lock, or one that never returns, is killed at its deadline together with
every process it started, and a fresh worker starts at once for the next batch (its start-up
counts against that batch's deadline only while it is not ready yet). Samples go to the worker and
values come back pickled, so rows and return values must be picklable (plain data).
"""

from __future__ import annotations

import time
from typing import Any

from grpokit.rewards.base import RewardFailure, RewardSpec, RewardValue, Sample
from grpokit.rewards.registry import build
from grpokit.rewards.workers import WorkerPool

_BUILD_TIMEOUT = 120.0
# Worker side: the functions built in this process, by (name, args).
_BUILT: dict[str, Any] = {}


def _built(name: str, args: dict[str, Any]) -> Any:
    key = f"{name}:{sorted(args.items())!r}"
    if key not in _BUILT:
        _BUILT[key] = build(RewardSpec(name, 1.0, dict(args)))
    return _BUILT[key]


def build_in_worker(name: str, args: dict[str, Any]) -> bool:
    """Worker side: build the function once (bad args raise here, before any batch)."""
    _built(name, args)
    return True


def score_in_worker(name: str, args: dict[str, Any], samples: list[Sample]) -> list[RewardValue]:
    """Worker side: score a batch with the function built for (name, args)."""
    return list(_built(name, args)(samples))


class IsolatedReward:
    """A registered reward function run in its own worker process (see the module docstring)."""

    isolated = True

    def __init__(self, spec: RewardSpec, preload: tuple[str, ...], timeout: float,
                 target: str | None = None):
        self.name = spec.name
        self.timeout = float(timeout)
        self._args = dict(spec.args)
        # What the worker builds: the entry's name, or an import path that finds it from there.
        self._target = target or spec.name
        self._pool = WorkerPool(size=1, preload=preload)
        try:
            result = self._pool.run(build_in_worker, (self._target, self._args), _BUILD_TIMEOUT)
        except RuntimeError as exc:
            raise ValueError(f"reward function {self.name!r} (isolated): {exc}") from exc
        if result.status != "ok":
            self._pool.close()
            raise ValueError(f"reward function {self.name!r} (isolated): {result.value}")

    def run(self, samples: list[Sample], deadline: float | None = None) -> list[RewardValue]:
        """Score `samples` before `deadline` (time.monotonic(); default: now + timeout). A missed
        deadline or a dead worker gives a RewardFailure per sample; an exception of the function
        is raised again here as RuntimeError, so the runner can retry sample by sample."""
        if not samples:
            return []
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        left = max(deadline - time.monotonic(), 0.0)
        result = self._pool.run(score_in_worker, (self._target, self._args, samples), left,
                                deadline)
        if result.status == "ok":
            return result.value
        if result.status == "timeout":
            message = f"missed its deadline ({left:.3g}s left for {len(samples)} samples); worker killed"
            return [RewardFailure(message)] * len(samples)
        if result.status == "died":
            return [RewardFailure(str(result.value))] * len(samples)
        raise RuntimeError(result.value)

    def __call__(self, samples: list[Sample]) -> list[RewardValue]:
        return self.run(samples)

    def score_one(self, sample: Sample) -> RewardValue:
        return self.run([sample])[0]

    def close(self) -> None:
        """Stop the worker."""
        self._pool.close()
