"""Untrusted text through every built-in reward: 32k characters of whitespace, brace soup, tag
soup and the like return within the reward's deadline, from any thread, because extraction is
linear in the text and the length cap comes before any splitting."""

import threading
import time

import pytest

from grpokit.rewards.base import RewardSpec, Sample
from grpokit.rewards.code import extract_code
from grpokit.rewards.extract import extract_answers
from grpokit.rewards.registry import build

N = 32_768
SOUPS = {
    "spaces": " " * N,
    "newlines": "\n" * N,
    "braces": "{" * N,
    "closing braces": "}" * N,
    "boxes": "\\boxed{" * (N // 7),
    "nested boxes": "\\boxed{" * (N // 14) + "1" + "}" * (N // 14),
    "answer tags": "<answer>" * (N // 8),
    "think tags": "<think>" * (N // 7),
    "fences": "```\n" * (N // 4),
    "answer then spaces": "Answer: 1" + " " * N + "x",
    "answer lines": "Answer:\n" * (N // 8),
    "or spaces": "Answer: 1 " + "or " * (N // 3),
    "parentheses": "(" * N,
    "dollars": "$" * N,
    "digits and commas": "1," * (N // 2),
    "equals": "=" * N,
    "brackets": "[" * N,
    "final": "final " * (N // 6),
}
BUILTINS = [
    RewardSpec("math", args={"timeout": 5}), RewardSpec("format"), RewardSpec("format_partial"),
    RewardSpec("json_valid"), RewardSpec("json_schema"), RewardSpec("language", args={"target": "en"}),
    RewardSpec("countdown"), RewardSpec("overlong", args={"cache": 4}),
]
ROW = {"answer": "5", "schema": {"type": "object"}, "target": 5, "numbers": [1, 2, 3]}
DEADLINE = 5.0


def _in_a_thread(fn, *args):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(DEADLINE)
    return out, time.monotonic() - start


@pytest.fixture(scope="module")
def functions():
    return {spec.name: build(spec) for spec in BUILTINS}


@pytest.mark.parametrize("soup", list(SOUPS))
@pytest.mark.parametrize("name", [spec.name for spec in BUILTINS])
def test_soup_returns_within_the_deadline(functions, name, soup):
    sample = Sample(SOUPS[soup], ROW, num_tokens=10, max_tokens=20)
    out, seconds = _in_a_thread(functions[name], [sample])
    assert out, f"{name} on {soup}: still running after {DEADLINE}s"
    assert seconds < DEADLINE
    assert out[0][0] in (0.0, None) or name in ("language", "format_partial", "overlong")


@pytest.mark.parametrize("soup", list(SOUPS))
def test_extraction_alone_is_fast(soup):
    start = time.perf_counter()
    extract_answers(SOUPS[soup], ("boxed", "answer_tag", "answer_line", "last_number"))
    extract_code(SOUPS[soup])
    # Linear scans of 32k characters take milliseconds; the quadratic ones took 1-22 s.
    assert time.perf_counter() - start < 1.0
