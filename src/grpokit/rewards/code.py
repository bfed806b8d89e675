"""The `code` reward: run a completion's program against the row's tests in the sandbox.

Row formats:
- assert-style (HumanEval): `test` (source defining `check(candidate)`), `entry_point`, and
  usually `prompt` (the function header the completion continues).
- stdin/stdout: `tests`, a list of {"input": str, "output": str}; one sandbox run per case.
A row with neither is not applicable (None). Reward: pass fraction (`mode="fraction"`) or 1.0
only when everything passes (`mode="all"`). A program that times out or crashes fails; only a
sandbox that cannot start at all raises.
"""

from __future__ import annotations

import re
from typing import Any

from grpokit.rewards.base import RewardValue, Sample
from grpokit.rewards.registry import register
from grpokit.sandbox import SandboxPool, harness, resolve

MODES = ("fraction", "all")
EXTRACTS = ("auto", "fenced", "none")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(completion: str, how: str = "auto") -> str:
    """The program in a completion: the first ```python (or ```py) block, else the first plain
    ``` block; an unclosed fence (truncated completion) runs to the end. "auto" falls back to the
    whole completion when there is no fence, "fenced" to the empty string, "none" never looks."""
    if how == "none":
        return completion
    blocks = _FENCE.findall(completion)
    for tag, body in blocks:
        if tag.lower() in ("python", "py", "python3"):
            return body
    for tag, body in blocks:
        if not tag:
            return body
    return completion if how == "auto" else ""


def assemble(code: str, row: dict[str, Any], prepend_prompt: bool) -> str:
    """The candidate module. With prepend_prompt the row's prompt comes first: a completion that
    continues the function body completes it, and a full definition simply replaces the stub
    while keeping the prompt's imports and helper functions."""
    prompt = row.get("prompt")
    if not prepend_prompt or not isinstance(prompt, str):
        return code
    return prompt + ("" if prompt.endswith("\n") or not prompt else "\n") + code


def _row_kind(row: dict[str, Any], index: int) -> str | None:
    """"assert", "stdio" or None (no tests); malformed tests raise naming the field."""
    if row.get("test"):
        if not isinstance(row["test"], str) or not isinstance(row.get("entry_point"), str):
            raise ValueError(
                f"code reward, row {index}: an assert-style row needs `test` (str) and "
                f"`entry_point` (str), got test={type(row['test']).__name__}, "
                f"entry_point={row.get('entry_point')!r}"
            )
        return "assert"
    tests = row.get("tests")
    if not tests:
        return None
    if not isinstance(tests, list) or not all(
        isinstance(case, dict) and isinstance(case.get("input"), str) and isinstance(case.get("output"), str)
        for case in tests
    ):
        raise ValueError(
            f"code reward, row {index}: `tests` must be a list of {{'input': str, 'output': str}}"
        )
    return "stdio"


class CodeReward:
    """Batch reward: every (completion, test case) of the batch goes through one sandbox pool."""

    name = "code"

    def __init__(self, mode: str = "fraction", timeout: float = 5.0, memory_mb: int = 512,
                 backend: str = "auto", extract: str = "auto", prepend_prompt: bool = True,
                 workers: int | None = None):
        if mode not in MODES:
            raise ValueError(f"code reward: mode must be one of {MODES}, got {mode!r}")
        if extract not in EXTRACTS:
            raise ValueError(f"code reward: extract must be one of {EXTRACTS}, got {extract!r}")
        if timeout <= 0 or memory_mb <= 0:
            raise ValueError(f"code reward: timeout and memory_mb must be > 0, got {timeout}, {memory_mb}")
        self.mode, self.timeout, self.memory_mb = mode, timeout, memory_mb
        self.backend = resolve(backend)
        self.extract, self.prepend_prompt = extract, prepend_prompt
        self._pool = SandboxPool(workers)

    def _jobs(self, index: int, sample: Sample) -> list[tuple[dict, Any]]:
        """(run() arguments, what judges the result) per test of one sample."""
        kind = _row_kind(sample.row, index)
        if kind is None:
            return []
        code = extract_code(sample.completion, self.extract)
        limits = {"timeout": self.timeout, "memory_mb": self.memory_mb, "backend": self.backend}
        if kind == "stdio":
            return [({"program": code, "stdin": case["input"], **limits}, ("stdio", case["output"]))
                    for case in sample.row["tests"]]
        row = sample.row
        program = assemble(code, row, self.prepend_prompt)
        helpers = row["prompt"] if isinstance(row.get("prompt"), str) else ""
        job, nonce = harness.assert_job(program, row["test"], row["entry_point"], helpers)
        return [({**job, **limits}, ("assert", nonce))]

    def __call__(self, samples: list[Sample]) -> list[RewardValue]:
        per_sample = [self._jobs(i, sample) for i, sample in enumerate(samples)]
        flat = [job for jobs in per_sample for job, _ in jobs]
        results = iter(self._pool.run_many(flat))
        rewards: list[RewardValue] = []
        for jobs in per_sample:
            if not jobs:
                rewards.append(None)
                continue
            passed = [_judge(next(results), judge) for _, judge in jobs]
            fraction = sum(passed) / len(passed)
            rewards.append(fraction if self.mode == "fraction" else float(fraction == 1.0))
        return rewards


def _judge(result, judge: tuple[str, str]) -> bool:
    kind, value = judge
    if kind == "assert":
        return harness.assert_passed(result, value)
    return harness.stdio_passed(result, value)


@register("code")
def code_reward(**args: Any) -> CodeReward:
    """`code` reward factory; args: mode, timeout, memory_mb, backend, extract, prepend_prompt,
    workers."""
    return CodeReward(**args)
