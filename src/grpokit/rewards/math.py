"""`math`: final-answer accuracy against row["answer"], equivalence through math-verify.

Definition (docs/rewards.md): extract the candidate answers (grpokit.rewards.extract); the reward
is 1.0 when there is at least one candidate and every candidate is equivalent to the gold answer,
0.0 otherwise (no answer, a wrong one, several different ones, or one longer than
`max_answer_chars`), and None when the row has no answer or the verifier failed or timed out.
Plain integers and decimals are compared exactly in this process; anything else goes to a worker
process with a hard deadline, because SymPy can hang on inputs such as 9^{9^{9^{9^{9}}}}.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

from grpokit.rewards.base import RewardValue, Sample
from grpokit.rewards.extract import (
    boxed_contents,
    check_strategies,
    extract_answers,
    normalize,
    split_alternatives,
    unwrap,
)
from grpokit.rewards.item import describe_row
from grpokit.rewards.registry import register
from grpokit.rewards.workers import WorkerPool, shared_pool

logger = logging.getLogger(__name__)

DEFAULT_EXTRACT = ("boxed", "answer_tag", "answer_line", "last_number")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)")
# Pending work for a worker: (index in the batch, gold, candidates).
_Task = tuple[int, str, list[str]]


def _as_latex(answer: str) -> str:
    # Boxing makes math-verify read the whole string as one LaTeX expression ("x^2+1" alone is
    # not recognised as math).
    return "\\boxed{" + answer + "}"


def verify_answers(gold: str, candidates: list[str]) -> bool | None:
    """Worker side: True when every candidate is equivalent to gold; None when gold does not parse.

    Returns only a bool: a parsed SymPy object is never sent back or turned into a string.
    """
    # Imported in the worker only: SymPy (and its import time) stays out of the trainer process.
    import math_verify.grader
    import math_verify.parser
    from math_verify import parse, verify

    # The worker's deadline is enforced by the parent; math-verify's own signal-based timeouts
    # are off, and so is its warning about them.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    gold_parsed = parse(_as_latex(gold), parsing_timeout=None)
    if not gold_parsed:
        return None
    for candidate in candidates:
        parsed = parse(_as_latex(candidate), parsing_timeout=None)
        if not parsed or not verify(gold_parsed, parsed, timeout_seconds=None):
            return False
    return True


def gold_answer(answer: object) -> str:
    """The gold answer as text: NFKC, a boxed or "####" final answer, "x = 5" -> "5"."""
    text = normalize(str(answer))
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    boxed = boxed_contents(text)
    if boxed:
        text = boxed[-1]
    parts = split_alternatives(unwrap(text))
    return parts[-1] if len(parts) == 1 else unwrap(text)


def _plain(answer: str) -> Fraction | None:
    if _PLAIN_NUMBER.fullmatch(answer):
        return Fraction(answer.replace(",", ""))
    return None


def quick_verdict(gold: str, candidates: list[str], max_answer_chars: int) -> float | None:
    """The reward when it is decided without SymPy, else None (a worker must decide)."""
    if not candidates or any(not c or len(c) > max_answer_chars for c in candidates):
        return 0.0
    gold_value = _plain(gold)
    if gold_value is None:
        return None
    values = [_plain(c) for c in candidates]
    if any(v is not None and v != gold_value for v in values):
        return 0.0
    return 1.0 if all(v is not None for v in values) else None


class MathReward:
    """The `math` reward function (see the module docstring)."""

    def __init__(
        self,
        extract: list[str] | tuple[str, ...] = DEFAULT_EXTRACT,
        timeout: float = 5.0,
        max_answer_chars: int = 500,
        pool: WorkerPool | None = None,
    ):
        if timeout <= 0:
            raise ValueError(f"math: timeout must be > 0 seconds, got {timeout!r}")
        if max_answer_chars <= 0:
            raise ValueError(f"math: max_answer_chars must be > 0, got {max_answer_chars!r}")
        self.name = "math"
        self.strategies = check_strategies(extract)
        self.timeout = float(timeout)
        self.max_answer_chars = int(max_answer_chars)
        self._pool = pool

    @property
    def pool(self) -> WorkerPool:
        if self._pool is None:
            self._pool = shared_pool(preload=("math_verify",))
        return self._pool

    def __call__(self, samples: list[Sample]) -> list[RewardValue]:
        results: list[RewardValue] = [None] * len(samples)
        tasks: list[_Task] = []
        for i, sample in enumerate(samples):
            answer = sample.row.get("answer")
            if answer is None:
                continue
            gold = gold_answer(answer)
            candidates = extract_answers(sample.completion, self.strategies)
            verdict = quick_verdict(gold, candidates, self.max_answer_chars)
            if verdict is None:
                tasks.append((i, gold, candidates))
            else:
                results[i] = verdict
        if tasks:
            with ThreadPoolExecutor(max_workers=self.pool.size) as executor:
                for i, value in executor.map(lambda t: self._verify(t, samples[t[0]]), tasks):
                    results[i] = value
        return results

    def score_one(self, sample: Sample) -> RewardValue:
        return self([sample])[0]

    def _verify(self, task: _Task, sample: Sample) -> tuple[int, float | None]:
        i, gold, candidates = task
        result = self.pool.run(verify_answers, (gold, candidates), self.timeout)
        if result.status == "ok":
            return i, None if result.value is None else float(result.value)
        logger.warning(
            "math: verification %s for sample %d (%s), candidates %r: %s",
            result.status, i, describe_row(sample.row), [c[:100] for c in candidates], result.value,
        )
        return i, None


@register("math")
def build_math(**args) -> MathReward:
    """Factory for the `math` reward: args extract, timeout, max_answer_chars."""
    return MathReward(**args)
