"""Format rewards: the DeepSeek-R1 `<think>...</think><answer>...</answer>` layout.

`format` is 1.0 when the completion is exactly one think block followed by exactly one answer
block with nothing but whitespace before, between and after them, else 0.0. With
`prefilled_think=True` the prompt already ends with the opening think tag, so the completion must
start inside the think block (no opening tag of its own). `format_partial` gives 0.25 for each of
the four tags that appears exactly once (an opening tag prefilled by the prompt counts as present).
"""

from __future__ import annotations

import re

from grpokit.rewards.item import ItemReward
from grpokit.rewards.registry import register


def _check_tag(tag: object, arg: str) -> str:
    if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z_][\w.-]*", tag):
        raise ValueError(f"format: {arg} must be a tag name such as 'think', got {tag!r}")
    return tag


def _tags(think_tag: str, answer_tag: str) -> tuple[str, str, str, str]:
    think = _check_tag(think_tag, "think_tag")
    answer = _check_tag(answer_tag, "answer_tag")
    return f"<{think}>", f"</{think}>", f"<{answer}>", f"</{answer}>"


def format_score(completion: str, tags: tuple[str, str, str, str], prefilled_think: bool) -> float:
    """1.0 for exactly `<think>..</think>` then `<answer>..</answer>`, whitespace around, else 0.0."""
    think_open, think_close, answer_open, answer_close = tags
    text = think_open + completion if prefilled_think else completion
    if any(text.count(tag) != 1 for tag in tags):
        return 0.0
    pattern = (
        r"\s*" + re.escape(think_open) + r".*?" + re.escape(think_close)
        + r"\s*" + re.escape(answer_open) + r".*?" + re.escape(answer_close) + r"\s*"
    )
    return 1.0 if re.fullmatch(pattern, text, re.DOTALL) else 0.0


def partial_score(completion: str, tags: tuple[str, str, str, str], prefilled_think: bool) -> float:
    """0.25 for each of the four tags that appears exactly once."""
    text = tags[0] + completion if prefilled_think else completion
    return 0.25 * sum(text.count(tag) == 1 for tag in tags)


@register("format")
def build_format(
    think_tag: str = "think", answer_tag: str = "answer", prefilled_think: bool = False
) -> ItemReward:
    """Factory for `format` (args think_tag, answer_tag, prefilled_think)."""
    tags = _tags(think_tag, answer_tag)
    return ItemReward("format", lambda s: format_score(s.completion, tags, bool(prefilled_think)))


@register("format_partial")
def build_format_partial(
    think_tag: str = "think", answer_tag: str = "answer", prefilled_think: bool = False
) -> ItemReward:
    """Factory for `format_partial` (args think_tag, answer_tag, prefilled_think)."""
    tags = _tags(think_tag, answer_tag)
    return ItemReward(
        "format_partial", lambda s: partial_score(s.completion, tags, bool(prefilled_think))
    )

