"""Runs the configured reward functions over a batch: concurrently, with deadlines and checks.

Each function runs in its own thread (CPU-bound verifiers use worker processes inside). A function
registered with `isolate=True` runs in its own worker process instead (grpokit.rewards.isolated),
whose deadline always fires: the worker, and whatever it started, is killed. An in-process
function cannot be stopped: when it misses the deadline its batch is counted as errors, and while
it is still running a later batch does not start it again (so at most one thread per function is
ever left behind).

Errors: a sample whose function raised (a function that raises on the batch is retried one sample
at a time, through its `score_one` when it has one), returned a RewardFailure, or missed the
deadline. Each error gives None (NaN) and is counted per function; when a function's errors exceed
`max_error_rate` of the batch, `score` raises RewardError naming it and its last error.

Process rewards: a function may return StepRewards for a sample. Its column of the (N, K) matrix
then holds NaN for that sample, and the StepRewards are carried in `step_rewards[name][i]`.

Unscorable data is named, never silent (docs/rewards.md, the runner): `check_fields` refuses rows
none of which has a field a function reads; a function's row check (a gold answer that does not
parse) gives a row's completions None without calling the function, with one warning per row;
and the runner warns once, when it is built, about each user function that runs in this process,
where no deadline can stop it.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from grpokit.rewards.base import (
    REWARD_TIMEOUT_S, RewardFailure, RewardFunction, RewardSpec, RewardValue, Sample, StepRewards,
)
from grpokit.rewards.isolated import IsolatedReward
from grpokit.rewards.item import describe_row
from grpokit.rewards.outputs import RewardError, RewardResult, as_list, check_value, columns_of
from grpokit.rewards.registry import build, fields_of, home, isolation, row_check_of
from grpokit.rewards.user import probe_samples

logger = logging.getLogger(__name__)

_MAX_EXAMPLES = 3


@dataclass
class _Outcome:
    values: list[RewardValue] | None = None
    errors: dict[int, str] = field(default_factory=dict)
    seconds: list[float] | None = None
    asked: int | None = None
    """How many samples the function was given, when not the whole batch (rows it cannot score
    were left out)."""
    fatal: str | None = None
    """A malformed output (not a list of values): the run stops, naming the function."""


def _spread(outcome: _Outcome, keep: list[int], n: int) -> _Outcome:
    """The outcome of the samples `keep` of a batch of n, spread over the whole batch: None (and
    no time) for the samples left out."""
    values = outcome.values or []
    if len(values) != len(keep) or outcome.fatal:  # reported by `score`
        return _Outcome(values, outcome.errors, outcome.seconds, len(keep), outcome.fatal)
    spread = _Outcome(values=[None] * n, seconds=None if outcome.seconds is None else [0.0] * n)
    for j, i in enumerate(keep):
        spread.values[i] = values[j]
        if spread.seconds is not None:
            spread.seconds[i] = outcome.seconds[j]
    # The messages name the sample by its index in the whole batch, as everywhere else.
    spread.errors = {keep[j]: message.replace(f"sample {j} ", f"sample {keep[j]} ", 1)
                     for j, message in outcome.errors.items()}
    return spread


def _failed(sample: Sample, i: int, what: str) -> str:
    return f"sample {i} ({describe_row(sample.row)}): {what}"


def _caller(fn: RewardFunction, deadline: float | None) -> Callable[[list[Sample]], list[RewardValue]]:
    if isinstance(fn, IsolatedReward):
        return lambda batch: as_list(fn.name, fn.run(batch, deadline))
    return lambda batch: as_list(fn.name, fn(batch))


def _one_by_one(fn: RewardFunction, samples: list[Sample], call, timed: bool) -> _Outcome:
    score_one = getattr(fn, "score_one", None)
    if isinstance(fn, IsolatedReward) or score_one is None:
        score_one = lambda sample: call([sample])[0]  # noqa: E731 - the batch-of-one fallback
    outcome = _Outcome(values=[], seconds=[] if timed else None)
    for i, sample in enumerate(samples):
        start = time.perf_counter()
        try:
            outcome.values.append(score_one(sample))
        except Exception as exc:  # noqa: BLE001 - one bad sample must not stop the batch
            outcome.values.append(None)
            outcome.errors[i] = _failed(sample, i, f"{type(exc).__name__}: {exc}")
            logger.warning("reward %s: %s", fn.name, outcome.errors[i])
        if outcome.seconds is not None:
            outcome.seconds.append(time.perf_counter() - start)
    return outcome


def _call_safely(fn: RewardFunction, samples: list[Sample], deadline: float | None, timed: bool) -> _Outcome:
    call = _caller(fn, deadline)
    if timed:
        return _one_by_one(fn, samples, call, timed=True)
    try:
        return _Outcome(values=call(samples))
    except RewardError as exc:  # a malformed output: retrying sample by sample cannot fix it
        return _Outcome(values=[], fatal=str(exc))
    except Exception as batch_exc:  # noqa: BLE001 - retried per sample to find the culprit
        logger.warning("reward %s failed on the batch (%r); scoring one sample at a time", fn.name, batch_exc)
    return _one_by_one(fn, samples, call, timed=False)


def user_module(spec: RewardSpec, fn: RewardFunction) -> str | None:
    """The user's module a function comes from (registered or passed outside grpokit), else
    None: a built-in, or an isolated function (its deadline always fires)."""
    if isinstance(fn, IsolatedReward):
        return None
    module = home(spec.name) or getattr(fn, "__module__", None) or ""
    return None if module.split(".")[0] == "grpokit" else module


def build_function(spec: RewardSpec, timeout: float | None) -> RewardFunction:
    """The function of a config entry: in its own worker process when registered isolate=True
    or its entry says `isolate: true`."""
    where = isolation(spec)
    if where is None:
        return build(spec)
    preload, target, users = where
    if users:  # a user's function: checked here, naming the entry, before the worker starts
        build(spec)
    fn = IsolatedReward(spec, preload, timeout if timeout is not None else REWARD_TIMEOUT_S, target)
    fn.user_function = users  # type: ignore[attr-defined] - probed before training
    return fn


class RewardRunner:
    """Builds the reward functions of a config and scores batches with them."""

    def __init__(
        self,
        specs: list[RewardSpec],
        *,
        max_error_rate: float = 0.1,
        timeout: float | None = REWARD_TIMEOUT_S,
        functions: list[RewardFunction] | None = None,
    ):
        if not specs:
            raise ValueError("RewardRunner needs at least one reward function in `rewards`")
        names = [spec.name for spec in specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rewards: each function may appear once, repeated: {duplicates}")
        if not 0.0 <= max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must be in [0, 1], got {max_error_rate!r}")
        if timeout is not None and not 0 < timeout < math.inf:
            raise ValueError(f"reward timeout must be a positive number of seconds, got {timeout!r}")
        self.specs = list(specs)
        self.names = names
        self.weights = [float(spec.weight) for spec in specs]
        self.max_error_rate = max_error_rate
        self.timeout = timeout
        self.functions = functions if functions is not None else [build_function(s, timeout) for s in specs]
        # In-process functions still running past an earlier deadline, by column.
        self._stuck: dict[int, threading.Thread] = {}
        self._row_checks = [row_check_of(spec.name) for spec in specs]
        self._warned_rows: set[tuple[str, str]] = set()
        self._warn_in_process()

    def _warn_in_process(self) -> None:
        """Once, at start: the user functions that run in this process, where a call stuck while
        holding the interpreter lock (C code, a regex) overruns any deadline (docs/rewards.md)."""
        found = {s.name: m for s, fn in zip(self.specs, self.functions) if (m := user_module(s, fn))}
        if not found:
            return
        where = ", ".join(f"{name!r} ({module})" for name, module in found.items())
        script = any(module == "__main__" for module in found.values())
        logger.warning(
            "reward functions %s run in this process: reward_runner.timeout=%ss counts a late batch "
            "as errors but cannot stop a call stuck while holding the interpreter lock (C code, a "
            "long regex). To bound them, set `isolate: true` in their config entry (or register them "
            "with isolate=True)%s: each then runs in a worker process "
            "that is killed at the deadline (docs/rewards.md, Deadlines)",
            where, self.timeout, ", from an importable module, not the script being run" if script else "",
        )

    def check_fields(self, rows: list[dict[str, Any]], source: str) -> None:
        """Refuse rows none of which has a field a function reads (`source` names the data): every
        completion would be unscorable, every step. Then try the user's functions given by
        import path or as callables on a probe batch (`probe`)."""
        for spec, fn in zip(self.specs, self.functions):
            for column in getattr(fn, "required_columns", ()):
                if rows and not any(column in row for row in rows):
                    raise RewardError(
                        f"reward {spec.name!r} takes the argument {column!r} (no default), which is "
                        f"not a column of the {len(rows)} rows of {source}: {columns_of(rows)}")
        self._check_declared_fields(rows, source)
        self.probe(rows)

    def _check_declared_fields(self, rows: list[dict[str, Any]], source: str) -> None:
        for spec in self.specs:
            fields = fields_of(spec)
            if not fields or not rows or any(row.get(f) is not None for row in rows for f in fields):
                continue
            named = " or ".join(repr(f) for f in fields)
            raise RewardError(
                f"reward {spec.name!r} reads the row field {named}, but none of the {len(rows)} rows "
                f"of {source} has it; the rows have the columns: {columns_of(rows)}. Rename the "
                "column in the data, or configure reward functions that read the columns it has"
            )

    def probe(self, rows: list[dict[str, Any]]) -> None:
        """Before training: score made-up completions of the first rows with each user function
        (by import path or callable), so that a wrong number of outputs, a value of the wrong
        type, an exception on every item or a hang stops the run before anything is written."""
        cols = [k for k, fn in enumerate(self.functions) if getattr(fn, "user_function", False)]
        if not cols or not rows:
            return
        probe = copy.copy(self)
        for attr in ("specs", "names", "weights", "functions", "_row_checks"):
            setattr(probe, attr, [getattr(self, attr)[k] for k in cols])
        probe._stuck = {}
        samples = probe_samples(rows)
        try:
            probe.score(samples)
        except RewardError as exc:
            texts = [s.completion for s in samples]
            raise RewardError(f"{exc}\n  (before training, on a probe batch: the completions "
                              f"{texts!r} of the first {len(samples)} rows)") from None
        for k in cols:
            if k in probe._stuck:
                self._stuck[k] = probe._stuck[k]

    def score(self, samples: list[Sample], timed: bool = False) -> RewardResult:
        """Score every sample with every function (see the module docstring). With `timed`, each
        function scores one sample at a time and the seconds of each are returned."""
        outcomes = self._run_all(samples, timed, self._scorable(samples))
        n, k = len(samples), len(self.functions)
        rewards = [[math.nan] * k for _ in range(n)]  # (N, K)
        error_mask = [[False] * k for _ in range(n)]  # (N, K)
        step_rewards: dict[str, list[StepRewards | None]] = {}
        for col, (name, outcome) in enumerate(zip(self.names, outcomes)):
            values, asked = outcome.values or [], n if outcome.asked is None else outcome.asked
            if outcome.fatal:
                raise RewardError(outcome.fatal)
            if len(values) != asked:
                raise RewardError(f"reward {name!r} returned {len(values)} values for {asked} samples")
            for i, raw in enumerate(values):
                value = check_value(name, i, raw)
                if isinstance(value, RewardFailure):
                    outcome.errors.setdefault(i, _failed(samples[i], i, value.message))
                elif isinstance(value, StepRewards):
                    step_rewards.setdefault(name, [None] * n)[i] = value
                elif value is not None:
                    rewards[i][col] = float(value)
            for i in outcome.errors:
                rewards[i][col], error_mask[i][col] = math.nan, True
        self._check_error_rates(outcomes, n)
        seconds = None
        if timed:
            per_function = [o.seconds or [math.nan] * n for o in outcomes]  # (K, N)
            seconds = [list(row) for row in zip(*per_function)] if per_function else []  # (N, K)
        return RewardResult(
            values=rewards, names=list(self.names), weights=list(self.weights),
            errors={name: len(o.errors) for name, o in zip(self.names, outcomes)},
            error_examples={name: [o.errors[i] for i in sorted(o.errors)][:_MAX_EXAMPLES]
                            for name, o in zip(self.names, outcomes)},
            step_rewards=step_rewards or None, failures=error_mask, timings=seconds,
        )

    def _scorable(self, samples: list[Sample]) -> list[list[int]]:
        """Per function, the samples it scores: all but those whose row its row check refuses
        (each such row is warned about once)."""
        n, keep = len(samples), []
        rows = list({id(s.row): s.row for s in samples}.values())  # a row's G samples share it
        for name, fn, check in zip(self.names, self.functions, self._row_checks):
            problems = {} if check is None or not rows else self._row_problems(name, fn, check, rows)
            keep.append([i for i in range(n) if id(samples[i].row) not in problems])
        return keep

    def _row_problems(self, name: str, fn: RewardFunction, check, rows: list[dict[str, Any]]
                      ) -> dict[int, str]:
        """{id(row): problem} of the rows `fn` cannot score."""
        try:
            found = check(fn, rows)
        except Exception as exc:  # noqa: BLE001 - a check that fails leaves the rows to the function
            logger.warning("reward %s: checking the rows failed (%r); scoring them all", name, exc)
            return {}
        problems = {id(row): problem for row, problem in zip(rows, found) if problem}
        for row in rows:
            key = (name, describe_row(row))
            if id(row) in problems and key not in self._warned_rows:
                self._warned_rows.add(key)
                logger.warning("reward %s: %s: %s; its completions score None", name,
                               describe_row(row), problems[id(row)])
        return problems

    def _run_all(self, samples: list[Sample], timed: bool, keep: list[list[int]]) -> list[_Outcome]:
        outcomes: list[_Outcome | None] = [None] * len(self.functions)
        start = time.monotonic()
        deadline = None if self.timeout is None else start + self.timeout

        def work(col: int) -> None:
            if len(keep[col]) == len(samples):
                outcomes[col] = _call_safely(self.functions[col], samples, deadline, timed)
                return
            batch = [samples[i] for i in keep[col]]
            outcome = _call_safely(self.functions[col], batch, deadline, timed) if batch else \
                _Outcome([], seconds=[] if timed else None)
            outcomes[col] = _spread(outcome, keep[col], len(samples))

        threads: dict[int, threading.Thread] = {}
        for col in range(len(outcomes)):
            if col in self._stuck and self._stuck[col].is_alive():
                message = "still running on an earlier batch that missed its deadline; not started"
                outcomes[col] = self._all_failed(samples, message, col)
                continue
            self._stuck.pop(col, None)
            # Daemon threads: an in-process function stuck past the deadline is never joined.
            threads[col] = threading.Thread(target=work, args=(col,), daemon=True)
            threads[col].start()
        for col, thread in threads.items():
            hard = isinstance(self.functions[col], IsolatedReward)
            # An isolated function keeps its own deadline (its worker is killed at it).
            thread.join(None if deadline is None or hard else max(0.0, deadline - time.monotonic()))
        snapshot = list(outcomes)  # a late thread may still write into the original list
        for col, outcome in enumerate(snapshot):
            if outcome is None:
                self._stuck[col] = threads[col]
                snapshot[col] = self._all_failed(samples, f"missed the {self.timeout}s deadline", col)
        return snapshot  # type: ignore[return-value]

    def _all_failed(self, samples: list[Sample], message: str, col: int) -> _Outcome:
        logger.warning("reward %s %s (batch of %d)", self.names[col], message, len(samples))
        return _Outcome(values=[None] * len(samples),
                        errors={i: _failed(s, i, message) for i, s in enumerate(samples)})

    def _check_error_rates(self, outcomes: list[_Outcome], n: int) -> None:
        for name, outcome in zip(self.names, outcomes):
            if n and len(outcome.errors) / n > self.max_error_rate:
                ordered = [outcome.errors[i] for i in sorted(outcome.errors)]
                examples = "\n  ".join(ordered[:_MAX_EXAMPLES])
                raise RewardError(
                    f"reward {name!r} failed on {len(ordered)} of {n} samples, more than "
                    f"max_error_rate={self.max_error_rate} (reward_runner.max_error_rate); "
                    f"last error: {ordered[-1]}"
                    f"\n  examples:\n  {examples}"
                )

    def close(self) -> None:
        """Stop the worker processes of isolated functions."""
        for fn in self.functions:
            if isinstance(fn, IsolatedReward):
                fn.close()
