"""Parent side of the test harnesses: build the sandbox's files and input, judge its output.

Assert-style tests run through `harness_main.py` (see there for why two processes); the verdict
is a random nonce that the checker prints only after every assert passed, read by the parent from
the captured stdout. Stdin/stdout tests run the program once per case and compare text here.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from grpokit.sandbox.core import ExecResult

_HARNESS = Path(__file__).with_name("harness_main.py")


def assert_job(code: str, test: str, entry_point: str, helpers: str = "") -> tuple[dict, str]:
    """(run() keyword arguments, nonce) for an assert-style test `check(candidate)`.

    `helpers` is trusted code the test may need (HumanEval tests call functions of the prompt)."""
    nonce = secrets.token_hex(16)
    payload = {"nonce": nonce, "test": test, "entry_point": entry_point, "helpers": helpers}
    job = {
        "program": {"harness.py": _HARNESS.read_text(encoding="utf-8"), "solution.py": code},
        "stdin": json.dumps(payload),
        "argv": ["python", "-I", "-B", "harness.py", "check"],
    }
    return job, nonce


def assert_passed(result: ExecResult, nonce: str) -> bool:
    """Whether the checker printed the nonce (it does so only after `check` returned)."""
    return result.status == "ok" and nonce in result.stdout.splitlines()


def output_matches(actual: str, expected: str) -> bool:
    """Line-by-line equality after stripping trailing whitespace of each line; trailing empty
    lines are ignored, so "3\\n" and "3" match but the other line counts must agree."""

    def lines(text: str) -> list[str]:
        rows = [row.rstrip() for row in text.replace("\r\n", "\n").split("\n")]
        while rows and not rows[-1]:
            rows.pop()
        return rows

    return lines(actual) == lines(expected)


def stdio_passed(result: ExecResult, expected: str) -> bool:
    """A stdin/stdout case passes when the program exited normally and printed the expected
    text (a truncated output never passes)."""
    return result.status == "ok" and not result.stdout_truncated and output_matches(result.stdout, expected)
