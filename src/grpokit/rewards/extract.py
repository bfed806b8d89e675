"""Final-answer extraction from a completion, before any equivalence check.

Strategies are tried in the order given; the first one that finds anything decides, and all of its
matches are candidates (several boxed answers are several candidates). Every scan here is linear
in the length of the completion (a completion is untrusted text: 32k spaces or an unclosed brace
soup must cost one pass, not a quadratic backtrack), and each candidate is cut to the length cap
before it is unwrapped or split, so the work after extraction is bounded by the cap.
"""

from __future__ import annotations

import re
import unicodedata

from grpokit.rewards.answers import split_alternatives, unwrap

STRATEGIES = ("boxed", "answer_tag", "answer_line", "last_number")
"""The extraction strategies, by name."""

DEFAULT_MAX_CHARS = 500
"""Longest candidate kept whole; a longer one is cut to one character over, so it still reads
as too long to the caller."""

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_MARKER = re.compile(r"\b(?:final\s+)?answer[*_]*(?:\s+is\b[*_]*\s*:?|\s*[:=])", re.IGNORECASE)
_HOPE = re.compile(r"\.?\s*I hope it is correct\.?$", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
# Superscripts are exponents and subscripts indices: NFKC alone would turn "3²" into "32".
_SUPER = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱ", "0123456789+-=()ni")
_SUB = str.maketrans("₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎", "0123456789+-=()")
_SUPER_RUN = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱ]+")
_SUB_RUN = re.compile("[₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎]+")
# Symbols written as Unicode that math-verify reads only in their LaTeX spelling.
_SYMBOLS = str.maketrans({
    "−": "-", "–": "-", "×": "\\times ", "÷": "\\div ", "·": "\\cdot ", "⋅": "\\cdot ",
    "≤": "\\le ", "≥": "\\ge ", "≠": "\\ne ", "√": "\\sqrt", "π": "\\pi ", "∞": "\\infty ",
    "°": "^{\\circ}", "⁄": "/",
})


def normalize(text: str) -> str:
    """Superscript runs become `^{...}` and subscript runs `_{...}`, then NFKC (full-width
    digits and signs become ASCII), then the common math symbols their LaTeX spelling; stripped."""
    text = _SUPER_RUN.sub(lambda m: "^{" + m.group(0).translate(_SUPER) + "}", text)
    text = _SUB_RUN.sub(lambda m: "_{" + m.group(0).translate(_SUB) + "}", text)
    return unicodedata.normalize("NFKC", text).translate(_SYMBOLS).strip()


def _closing_braces(text: str) -> dict[int, int]:
    """For each "{" of the text the position of its matching "}" (one pass with a stack)."""
    stack: list[int] = []
    closing: dict[int, int] = {}
    for match in _BRACE.finditer(text):
        if match.group(0) == "{":
            stack.append(match.start())
        elif stack:
            closing[stack.pop()] = match.start()
    return closing


def boxed_contents(text: str, max_chars: int | None = None) -> list[str]:
    """The contents of every complete `\\boxed{...}` / `\\fbox{...}`, nested braces included,
    each cut to `max_chars` + 1 characters when a cap is given.

    A box whose closing brace is missing (a truncated completion) is ignored.
    """
    opens = [m.end() - 1 for m in _BOXED.finditer(text)]
    if not opens:
        return []
    closing = _closing_braces(text)
    found = []
    for start in opens:
        if start in closing:
            stop = closing[start] if max_chars is None else min(closing[start], start + 2 + max_chars)
            found.append(text[start + 1 : stop])
    return found


def answer_tags(text: str, max_chars: int | None = None) -> list[str]:
    """The contents of every `<answer>...</answer>` (the first closing tag after each opening)."""
    found, pos = [], 0
    while (start := text.find("<answer>", pos)) != -1:
        stop = text.find("</answer>", start + 8)
        if stop == -1:
            break
        end = stop if max_chars is None else min(stop, start + 9 + max_chars)
        found.append(text[start + 8 : end])
        pos = stop + 9
    return found


def answer_lines(text: str, max_chars: int | None = None) -> list[str]:
    """The text after the last answer marker ("Answer:", "Final answer:", "the answer is") of
    every line that has one, to the end of that line (or the next non-empty line when the marker
    ends its line); a closing "I hope it is correct." is dropped."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        last = None
        for last in _MARKER.finditer(line):
            pass
        if last is None:
            continue
        rest = line[last.end() :].strip().lstrip("*_ ").strip()
        if not rest:
            rest = next((lines[j].strip() for j in range(i + 1, len(lines)) if lines[j].strip()), "")
        rest = rest[: max_chars + 40] if max_chars is not None else rest
        found.append(_HOPE.sub("", rest).strip())
    return [f for f in found if f]


def _find(text: str, strategy: str, max_chars: int | None) -> list[str]:
    if strategy == "boxed":
        return boxed_contents(text, max_chars)
    if strategy == "answer_tag":
        return answer_tags(text, max_chars)
    if strategy == "answer_line":
        return answer_lines(text, max_chars)
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


def find_answers(text: str, strategies: tuple[str, ...], max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """The raw answers of the first strategy that finds any, in order, each unwrapped (a longer
    one than `max_chars` is cut to max_chars + 1 characters and left as it is)."""
    text = normalize(text)
    for strategy in strategies:
        found = _find(text, strategy, max_chars)
        if found:
            return [a if len(a) > max_chars else unwrap(a) for a in found]
    return []


def extract_answers(text: str, strategies: tuple[str, ...], max_chars: int = DEFAULT_MAX_CHARS) -> list[str]:
    """Candidate final answers of a completion: the raw answers split into their values
    (`3 or 4` → 3, 4; `x = 7 = 8` → 7, 8), deduplicated, in order; [] when none is found."""
    candidates: list[str] = []
    for answer in find_answers(text, strategies, max_chars):
        values = [answer] if len(answer) > max_chars else [a.value for a in split_alternatives(answer)]
        for value in values:
            if value not in candidates:
                candidates.append(value)
    return candidates
