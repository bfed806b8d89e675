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
# A number standing as a token: nothing glued to it that would make it part of a word, an index
# or a longer number (a letter, digit or "_" on either side; "." or "/" before it; ".5", ",5" or
# "/5" after it). "AZYUK2A", "x2", "x_2", "2x" and "3rd" hold none; "x=2", "2.", "$2$", "-3",
# "1,000", "3/4" and "answer:2" hold one. The group is atomic so that a number refused whole
# ("2.5x") is not taken in part ("2"), and no match starts at a thousands group of a longer
# number: the scan stays linear (",111" repeated 8k times, then "1", is one failed attempt).
_NUMBER = re.compile(
    r"(?<![\w./])(?!(?<=\d,)\d{3}(?!\d))-?(?>\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?)(?!\w|[.,/]\d)"
)
# Inline math in an answer sentence ("$n$", "\(x\)"); an escaped "\$" is a dollar sign.
_MATH_SPAN = r"(?<!\\)\$\$.+?(?<!\\)\$\$|(?<!\\)\$[^$]+?(?<!\\)\$|\\\(.+?\\\)|\\\[.+?\\\]"
# The values of an answer sentence, in order: its math spans and the numbers of its prose.
_VALUE = re.compile(_MATH_SPAN + "|" + _NUMBER.pattern)
_SPAN = re.compile(_MATH_SPAN)
_COMMAND = re.compile(r"\\[A-Za-z]+")
# A word of prose: two letters or more, between spaces or punctuation (not "2x", "x^2", "{cm}").
_WORD = re.compile(r"(?<![^\s(\"'])[^\W\d_]{2,}(?=[\s,.;:!?)\"']|$)")
_CONNECTORS = ("and", "or")
# Words that make the last value of a sentence something other than its answer ("either 3 or 4",
# "is 33, not 34").
_HEDGES = ("or", "not")
# What may stand between the last two values of a list ("3 and 4", "$3$, $4$").
_LIST_GAP = re.compile(r"[\s,;&]*(?:and|or)?[\s,;&]*", re.IGNORECASE)
# Signs of an expression around a number written without delimiters ("x^2 + 1").
_OPERATOR_BEFORE = re.compile(r"[-+*/^=<>_{}\\]\s*$")
_OPERATOR_AFTER = re.compile(r"[+*/^=<>_{}\\]")
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
    ends its line); a closing "I hope it is correct." is dropped, and an answer sentence gives
    its final value (see sentence_value)."""
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
        rest = _HOPE.sub("", rest).strip()
        # An answer over the cap stays as it is, to be refused as too long, not read in part.
        found.append(rest if max_chars is not None and len(rest) > max_chars else sentence_value(rest))
    return [f for f in found if f]


def sentence_value(answer: str) -> str:
    """The final value of an answer written as a sentence ("The largest $n$ is 34." → 34): the
    last number of its prose or its last math span, whichever comes later. Anything else is kept
    whole: an answer that is mathematics rather than a sentence (`$x^2+1$`, `2x+3`, `x = 5`,
    `5 apples`: fewer than two words outside its math), a hedge or a negation ("either 3 or 4",
    "33, not 34"), a list ending the sentence ("3 and 4"), and a number that is part of an
    expression ("is x^2 + 1")."""
    values = list(_VALUE.finditer(answer))
    if not values or not _is_prose(answer):
        return answer
    last = values[-1]
    gap = answer[values[-2].end() if len(values) > 1 else 0 : last.start()]
    if len(values) > 1 and _LIST_GAP.fullmatch(gap):
        return answer
    if _OPERATOR_AFTER.search(answer, last.end()):
        return answer
    if not last.group(0).startswith(("$", "\\")) and _OPERATOR_BEFORE.search(gap):
        return answer
    return last.group(0)


def _is_prose(answer: str) -> bool:
    """Two words or more outside the answer's math and LaTeX commands, "and"/"or" not counted,
    and no "or" or "not" among them (a sentence that hedges or negates is not read as its last
    value)."""
    prose = _COMMAND.sub(" ", _SPAN.sub(" ", answer))
    words = [w.casefold() for w in _WORD.findall(prose)]
    return not set(_HEDGES) & set(words) and sum(w not in _CONNECTORS for w in words) >= 2


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
