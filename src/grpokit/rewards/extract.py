"""Final-answer extraction from a completion, before any equivalence check.

Strategies are tried in the order given; the first one that finds anything decides, and all of its
matches are candidates (several boxed answers are several candidates). Each candidate is then split
into alternatives: "3 or 4" is two candidates, and an equation chain "x = 7 = 8 = 42" is the
candidates 7, 8 and 42 (a leading left-hand side without digits, such as "x" or "f(x)", is
dropped). The math reward requires every candidate to match the gold answer, so hedging is wrong.
"""

from __future__ import annotations

import re
import unicodedata

STRATEGIES = ("boxed", "answer_tag", "answer_line", "last_number")
"""The extraction strategies, by name."""

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_LINE = re.compile(
    r"\b(?:final\s+)?answer(?:\s+is|\s*[:=])[\s*_]*(.+?)\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
# "=" that is not part of "<=", ">=", "!=", "==" or ":=".
_EQUALS = re.compile(r"(?<![<>!=:])=(?!=)")
_OR = re.compile(r"\s+(?:or|\\text\{\s*or\s*\}|\\lor|\\vee)\s+|\\text\{\s*or\s*\}", re.IGNORECASE)
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))


def normalize(text: str) -> str:
    """NFKC-normalise (full-width digits and signs become ASCII) and strip."""
    return unicodedata.normalize("NFKC", text).strip()


def boxed_contents(text: str) -> list[str]:
    """The contents of every complete `\\boxed{...}` / `\\fbox{...}`, nested braces included.

    A box whose closing brace is missing (a truncated completion) is ignored.
    """
    found = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    found.append(text[start:pos])
                    break
    return found


def _find(text: str, strategy: str) -> list[str]:
    if strategy == "boxed":
        return boxed_contents(text)
    if strategy == "answer_tag":
        return _ANSWER_TAG.findall(text)
    if strategy == "answer_line":
        return _ANSWER_LINE.findall(text)
    if strategy == "last_number":
        numbers = _NUMBER.findall(text)
        return numbers[-1:]
    raise ValueError(f"unknown extraction strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")


def check_strategies(strategies: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate an ordered list of strategy names (raises ValueError listing the valid ones)."""
    if isinstance(strategies, str):
        strategies = [strategies]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies:
        raise ValueError(
            f"extract must be a non-empty list among {', '.join(STRATEGIES)}; got {strategies!r}"
        )
    return tuple(strategies)


def unwrap(answer: str) -> str:
    """Strip math delimiters, a trailing full stop and a whole-answer `\\boxed{}`."""
    answer = answer.strip()
    changed = True
    while changed and answer:
        changed = False
        for left, right in _WRAPPERS:
            if len(answer) > len(left) + len(right) and answer.startswith(left) and answer.endswith(right):
                answer, changed = answer[len(left) : -len(right)].strip(), True
        boxed = boxed_contents(answer)
        if len(boxed) == 1 and _BOXED.match(answer) and answer.endswith("}"):
            inner = boxed[0].strip()
            if len(inner) < len(answer):
                answer, changed = inner, True
        if answer.endswith("."):
            answer, changed = answer[:-1].rstrip(), True
    return answer


def split_alternatives(answer: str) -> list[str]:
    """Split "a or b" and equation chains "x = a = b" into their candidate values."""
    parts = []
    for alternative in _OR.split(answer):
        sides = [side.strip() for side in _EQUALS.split(alternative)]
        if len(sides) > 1 and not re.search(r"\d", sides[0]):
            sides = sides[1:]
        parts.extend(side for side in sides)
    return [unwrap(part) for part in parts]


def extract_answers(text: str, strategies: tuple[str, ...]) -> list[str]:
    """Candidate final answers of a completion (deduplicated, in order); [] when none is found."""
    text = normalize(text)
    for strategy in strategies:
        found = _find(text, strategy)
        if found:
            candidates: list[str] = []
            for answer in found:
                for part in split_alternatives(unwrap(answer)):
                    if part not in candidates:
                        candidates.append(part)
            return candidates
    return []
