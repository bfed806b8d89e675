"""`math`: final-answer accuracy against row["answer"], equivalence through math-verify.

Definition (docs/rewards.md, math): the gold answer is read once per distinct answer and cached
(its parts, and the form of each: number, text, equation, system, math); the completion's
candidate answers are extracted (grpokit.rewards.extract) and paired with the gold's parts. The
reward is 1.0 when there is at least one candidate and every pair agrees, 0.0 otherwise, and None
when the row has no answer, the gold does not parse (a warning names the row) or the verification
missed its deadline. Numbers and text are decided in this process; anything else goes to a
worker process with a hard deadline, because SymPy can hang on inputs such as 9^{9^{9^{9^{9}}}}.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from grpokit.rewards.answers import (
    Answer, GoldPart, clean, gold_part, name_key, plain_value, split_alternatives, text_key, top_level_split,
)
from grpokit.rewards.base import RewardFailure, RewardValue, Sample
from grpokit.rewards.extract import boxed_contents, check_strategies, find_answers, normalize
from grpokit.rewards.item import describe_row
from grpokit.rewards.registry import register
from grpokit.rewards.workers import Lease, WorkerPool, shared_pool

logger = logging.getLogger(__name__)

DEFAULT_EXTRACT = ("boxed", "answer_tag", "answer_line", "last_number")
_LIST = re.compile(r"[,;]")
_GOLD_CACHE_SIZE = 4096
# More answers than this in one completion is a spray of guesses: wrong, without reading them all.
_MAX_ANSWERS = 64
# Worker side: parsed gold answers by their text, so a row's gold is parsed once per worker.
_PARSED_GOLD: "OrderedDict[str, Any]" = OrderedDict()


@dataclass(frozen=True)
class Gold:
    """A gold answer as read once: its parts, or why it cannot be used."""

    parts: tuple[GoldPart, ...]
    problem: str | None = None


@lru_cache(maxsize=_GOLD_CACHE_SIZE)
def read_gold(answer: str) -> Gold:
    """The gold answer's parts: after a `####` marker if any; one part per `\\boxed{}` when it has
    several (a multi-part answer), else the whole answer."""
    text = normalize(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    boxes = boxed_contents(text)
    raw = boxes if boxes else [text]
    if any(not part.strip() for part in raw):
        return Gold((), "the gold answer is empty")
    return Gold(tuple(gold_part(part) for part in raw))


def gold_answer(answer: object) -> str:
    """The value of a single-part gold answer as compared (text answers normalised)."""
    gold = read_gold(str(answer))
    return gold.parts[0].value if len(gold.parts) == 1 else ", ".join(p.value for p in gold.parts)


def _parse(latex: str) -> Any:
    from math_verify import parse

    # Boxing makes math-verify read the whole string as one LaTeX expression ("x^2+1" alone is
    # not recognised as math).
    return parse("\\boxed{" + latex + "}", parsing_timeout=None)


def verify_pairs(pairs: list[tuple[str, str]]) -> bool | None:
    """Worker side: True when every candidate is equivalent to its gold; None when a gold does not
    parse. Returns only a bool: a parsed SymPy object is never sent back or turned into a string."""
    # Imported in the worker only: SymPy (and its import time) stays out of the trainer process.
    import math_verify.grader
    import math_verify.parser
    from math_verify import verify

    # The worker's deadline is enforced by the parent; math-verify's own signal-based timeouts
    # are off, and so is its warning about them.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    for gold, candidate in pairs:
        if gold not in _PARSED_GOLD:
            _PARSED_GOLD[gold] = _parse(gold)
            if len(_PARSED_GOLD) > _GOLD_CACHE_SIZE:
                _PARSED_GOLD.popitem(last=False)
        gold_parsed = _PARSED_GOLD[gold]
        if not gold_parsed:
            return None
        parsed = _parse(candidate)
        if not parsed or not verify(gold_parsed, parsed, timeout_seconds=None):
            return False
    return True


def parsed_gold_count() -> int:
    """Worker side: how many gold answers this worker has parsed (and cached)."""
    return len(_PARSED_GOLD)


Pair = tuple[GoldPart, Answer]


def _values(part: GoldPart, raw: list[str]) -> list[Answer]:
    """The candidate values a part is compared with; listed values are joined into one."""
    if part.kind in ("text", "system"):
        return list(dict.fromkeys(Answer(a) for a in raw))
    values = [Answer(clean(v.value), v.name)
              for a in raw for v in split_alternatives(a, keep_equations=part.kind == "equation")]
    if part.items > 1:
        names = {name_key(v.name) for v in values if v.name}
        name = next(iter(names)) if len(names) == 1 else None
        return [Answer(", ".join(v.value for v in values), name)]
    return list(dict.fromkeys(values))


def pairs_of(gold: Gold, raw: list[str]) -> list[Pair] | None:
    """The (gold part, candidate value) pairs that decide the reward; None when the candidates
    cannot match the gold's shape (a multi-part gold needs as many parts, in order)."""
    if len(gold.parts) == 1:
        return [(gold.parts[0], value) for value in _values(gold.parts[0], raw)]
    if len(raw) == 1:
        raw = top_level_split(raw[0], _LIST)
    if len(raw) != len(gold.parts):
        return None
    return [(part, value) for part, answer in zip(gold.parts, raw) for value in _values(part, [answer])]


def quick_match(part: GoldPart, value: Answer) -> bool | None:
    """A pair decided in this process (True / False), or None when a worker must decide."""
    if part.name and value.name and name_key(part.name) != name_key(value.name):
        return False
    if not value.value:
        return False
    if part.kind == "text":
        return text_key(value.value) == part.value
    if part.kind == "number":
        candidate = plain_value(value.value)
        return None if candidate is None else candidate == plain_value(part.value)
    return None


def plan(gold: Gold, raw: list[str], max_answer_chars: int) -> float | list[tuple[str, str]]:
    """The reward when it is decided without SymPy, else the (gold, candidate) pairs a worker
    must verify."""
    if not raw or len(raw) > _MAX_ANSWERS or any(not a.strip() or len(a) > max_answer_chars for a in raw):
        return 0.0
    pairs = pairs_of(gold, raw)
    if not pairs:
        return 0.0
    pending: list[tuple[str, str]] = []
    for part, value in pairs:
        if part.kind == "system":
            system = system_pairs(part, value.value)
            if system is None:
                return 0.0
            pending.extend(system)
            continue
        verdict = quick_match(part, value)
        if verdict is False:
            return 0.0
        if verdict is None:
            pending.append((part.value, value.value))
    return pending or 1.0


def system_pairs(part: GoldPart, candidate: str) -> list[tuple[str, str]] | None:
    """A system gold (`x=1, y=2`) against one candidate value: every name bound once, in any
    order, each value paired with the gold's value for that name; None when the names differ."""
    values = split_alternatives(candidate)
    names = [name_key(v.name) if v.name else None for v in values]
    gold = {name_key(b.name or ""): b.value for b in part.bindings}
    if None in names or sorted(names) != sorted(gold):
        return None
    return [(gold[name], v.value) for name, v in zip(names, values)]


# Pending work of one sample: (index in the batch, pairs for the worker).
_Task = tuple[int, list[tuple[str, str]]]


class MathReward:
    """The `math` reward function (see the module docstring)."""

    def __init__(
        self,
        extract: list[str] | tuple[str, ...] = DEFAULT_EXTRACT,
        timeout: float = 5.0,
        max_answer_chars: int = 500,
        pool: WorkerPool | None = None,
    ):
        if not timeout > 0:
            raise ValueError(f"math: timeout must be > 0 seconds, got {timeout!r}")
        if not isinstance(max_answer_chars, int) or max_answer_chars <= 0:
            raise ValueError(f"math: max_answer_chars must be a positive integer, got {max_answer_chars!r}")
        self.name = "math"
        self.strategies = check_strategies(extract)
        self.timeout = float(timeout)
        self.max_answer_chars = max_answer_chars
        self._pool = pool
        self._warned: set[str] = set()

    @property
    def pool(self) -> WorkerPool:
        if self._pool is None:
            self._pool = shared_pool(preload=("math_verify",))
        return self._pool

    def __call__(self, samples: list[Sample]) -> list[RewardValue]:
        results: list[RewardValue] = [None] * len(samples)
        by_gold: dict[str, list[_Task]] = {}
        for i, sample in enumerate(samples):
            answer = sample.row.get("answer")
            if answer is None:
                continue
            gold = read_gold(str(answer))
            if gold.problem:
                self._warn(str(answer), sample, gold.problem)
                continue
            raw = find_answers(sample.completion, self.strategies, self.max_answer_chars)
            verdict = plan(gold, raw, self.max_answer_chars)
            if isinstance(verdict, float):
                results[i] = verdict
            else:
                by_gold.setdefault(str(answer), []).append((i, verdict))
        if by_gold:
            # One job per gold answer, all of it on one leased worker: the worker parses that gold
            # once and answers every sample of the row from its cache.
            with ThreadPoolExecutor(max_workers=min(self.pool.size, len(by_gold))) as executor:
                jobs = [executor.submit(self._verify_row, gold, tasks, samples) for gold, tasks in by_gold.items()]
                for job in jobs:
                    for i, value in job.result():
                        results[i] = value
        return results

    def score_one(self, sample: Sample) -> RewardValue:
        return self([sample])[0]

    def _verify_row(self, answer: str, tasks: list[_Task], samples: list[Sample]) -> list[tuple[int, RewardValue]]:
        with self.pool.lease() as lease:
            return [(i, self._verify(lease, answer, pairs, samples[i])) for i, pairs in tasks]

    def _verify(self, lease: Lease, answer: str, pairs: list[tuple[str, str]], sample: Sample) -> RewardValue:
        result = lease.run(verify_pairs, (pairs,), self.timeout)
        if result.status == "ok":
            if result.value is None:
                self._warn(answer, sample, "math-verify cannot parse the gold answer")
                return None
            return float(result.value)
        logger.warning("math: verification %s for %s, candidates %r: %s", result.status,
                       describe_row(sample.row), [c[:100] for _, c in pairs], result.value)
        # A candidate that hangs SymPy is the policy's doing: could not score, not an outage.
        if result.status == "timeout":
            return None
        return RewardFailure(f"math worker failed: {result.value}")

    def _warn(self, answer: str, sample: Sample, problem: str) -> None:
        if answer not in self._warned:
            self._warned.add(answer)
            logger.warning("math: %s: gold answer %r: %s; its samples score None",
                           describe_row(sample.row), answer[:200], problem)


@register("math")
def build_math(**args) -> MathReward:
    """Factory for the `math` reward: args extract, timeout, max_answer_chars."""
    return MathReward(**args)
