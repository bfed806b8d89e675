"""Reading a final answer: unwrapping, splitting into its values, and the gold answer's form.

Everything here works on one extracted answer, already cut to the reward's `max_answer_chars`,
so no function sees more than a few hundred characters. The rules are those of docs/rewards.md
(math): an `=` splits only at the top level (outside every bracket, so `\\sum_{k=1}^{10}` stays
whole), a left-hand side is dropped only when it is a name (`x`, `x_1`, `f(x)`, `AB`), an
equation whose left-hand side is not a name (`3x+2y=6`) is kept whole when the gold answer is
an equation, and a gold answer made only of words is compared as text, never as a product of
letters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))
_BOX_PREFIX = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "=" that is not part of "<=", ">=", "!=", "==", ":=" or the escaped "\=".
_EQUALS = re.compile(r"(?<![<>!=:\\])=(?!=)")
# The words "or"/"and" between spaces, "\text{ or }" and the logical-or commands. The word is
# matched alone (its spaces are looked at, not consumed), so a long run of spaces costs one pass.
_ALTERNATIVE = re.compile(
    r"(?<=\s)(?:or|and)(?=\s)|\\text\{\s*(?:or|and)\s*\}|\\(?:lor|vee)(?![A-Za-z])", re.IGNORECASE
)
_LIST = re.compile(r"[,;]")
_NAME = re.compile(
    r"(?:[A-Za-z]{1,3}|\\[A-Za-z]+|\\text\{[A-Za-z ]+\})(?:_\{?[A-Za-z0-9]+\}?)?'*(?:\([^()=]*\))?"
)
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:,\d{3})*(?:\.\d*)?|\.\d+)")
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_WORDS = re.compile(r"[^\W\d_]+(?:[\s'’.,&!?()/-]+[^\W\d_]+)*[.!?]?")
# A squared or cubed length unit after a number ("25 m^{2}"): math-verify would read it as a
# product with the variable m. Other units ("5 cm", "5\text{ apples}") it removes itself.
_AREA_UNIT = re.compile(
    r"(?<=\d)(?:\s|\\[ ,;!]|~)+(?:\\(?:text|mathrm)\{\s*)?(?:mm|cm|dm|km|m|in|ft|yd|mi)\s*\}?"
    r"\s*\^\s*\{?\s*[23]\s*\}?$"
)


@dataclass(frozen=True)
class Answer:
    """One value of an answer, with the name it was given (`x` in `x = 5`), if any."""

    value: str
    name: str | None = None


@dataclass(frozen=True)
class GoldPart:
    """One part of a gold answer (a gold with several `\\boxed{}` has several parts)."""

    value: str
    """What a candidate is compared with (for text: the normalised text)."""
    kind: str
    """"number" (exact in-process comparison), "text" (normalised text), "equation" (a whole
    equation, compared as such), "system" (bindings of different names, compared by name) or
    "math" (math-verify decides)."""
    name: str | None = None
    """The name bound in the gold (`x` of `x = 5`); a candidate that names another is wrong."""
    items: int = 1
    """How many values the part lists (`-1, 15/8` lists two): a candidate's values are joined."""
    bindings: tuple[Answer, ...] = ()
    """For "system": one named value per name."""


def unwrap(answer: str) -> str:
    """Strip math delimiters, emphasis, a trailing full stop and a whole-answer `\\boxed{}`."""
    answer = answer.strip()
    changed = True
    while changed and answer:
        changed = False
        for left, right in _WRAPPERS:
            if len(answer) > len(left) + len(right) and answer.startswith(left) and answer.endswith(right):
                answer, changed = answer[len(left) : -len(right)].strip(), True
        box = _BOX_PREFIX.match(answer)
        if box and answer.endswith("}") and _balanced(answer[box.end() : -1]):
            answer, changed = answer[box.end() : -1].strip(), True
        if answer.endswith("."):
            answer, changed = answer[:-1].rstrip(), True
    return answer


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += (char == "{") - (char == "}")
        if depth < 0:
            return False
    return depth == 0


def top_level_split(text: str, separator: re.Pattern) -> list[str]:
    """Split `text` at the matches of `separator` that lie outside every (), [] and {} pair."""
    depth, depths = 0, []
    for char in text:
        depths.append(depth)
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(depth - 1, 0)
    parts, start = [], 0
    for match in separator.finditer(text):
        if depths[match.start()] == 0:
            parts.append(text[start : match.start()].strip())
            start = match.end()
    parts.append(text[start:].strip())
    return parts


def name_key(name: str) -> str:
    """A name as compared: without spaces, braces and `\\text`."""
    return re.sub(r"\\text|[\s{}]", "", name)


def split_chain(answer: str, keep_equations: bool) -> list[Answer]:
    """`x = 7 = 8` → 7 and 8 named x; `2+3 = 5` → 2+3 and 5; with keep_equations, an equation
    whose left-hand side is not a name (`3x+2y=6`) stays whole."""
    sides = top_level_split(answer, _EQUALS)
    if len(sides) == 1:
        return [Answer(unwrap(answer))]
    if _NAME.fullmatch(sides[0]):
        return [Answer(unwrap(side), sides[0]) for side in sides[1:]]
    if keep_equations:
        return [Answer(answer)]
    return [Answer(unwrap(side)) for side in sides]


def split_alternatives(answer: str, keep_equations: bool = False) -> list[Answer]:
    """The values of one answer: split at top-level "or"/"and", commas and semicolons (a plain
    number such as 1,000 stays whole), then at "=" (see split_chain)."""
    values: list[Answer] = []
    for alternative in top_level_split(answer, _ALTERNATIVE):
        items = [alternative] if is_plain_number(alternative) else top_level_split(alternative, _LIST)
        for item in items:
            values.extend(split_chain(unwrap(item), keep_equations))
    return values


def is_plain_number(text: str) -> bool:
    """An integer or decimal, thousands separators allowed: compared exactly in-process."""
    return _PLAIN_NUMBER.fullmatch(text) is not None


def plain_value(text: str) -> Fraction | None:
    """The exact value of a plain number, else None."""
    return Fraction(text.replace(",", "")) if is_plain_number(text) else None


def clean(answer: str) -> str:
    """Drop a squared or cubed length unit after a number (`25 m^{2}` → 25)."""
    return _AREA_UNIT.sub("", answer).strip()


def text_key(answer: str) -> str:
    """An answer as text is compared: wrappers off, case-folded, without spaces, without a final
    full stop; a lone choice letter in parentheses, `(C)`, is the letter."""
    text = _TEXT_WRAP.sub(lambda m: m.group(1), unwrap(answer))
    text = "".join(text.replace("\\ ", " ").replace("~", " ").split()).casefold().rstrip(".")
    if len(text) == 3 and text[0] == "(" and text[2] == ")":
        text = text[1]
    return text


def is_text(answer: str) -> bool:
    """Words and nothing else: at least two letters in a row, or one capital letter (a choice)."""
    text = _TEXT_WRAP.sub(lambda m: m.group(1), answer).replace("\\ ", " ").strip()
    if "\\" in text or not _WORDS.fullmatch(text):
        return False
    letters = re.sub(r"[^\w]", "", text)
    return re.search(r"[^\W\d_]{2}", text) is not None or (len(letters) == 1 and letters.isupper())


def gold_part(raw: str) -> GoldPart:
    """The form of one gold part (see GoldPart)."""
    text = clean(unwrap(raw))
    if is_text(text):
        return GoldPart(text_key(text), "text")
    if is_plain_number(text):
        return GoldPart(text, "number")
    items = top_level_split(text, _LIST)
    if len(items) > 1:
        return _gold_list(text, items)
    sides = top_level_split(text, _EQUALS)
    if len(sides) > 1 and not _NAME.fullmatch(sides[0]):
        return GoldPart(text, "equation")
    value = split_chain(text, keep_equations=False)[-1]
    kind = "number" if is_plain_number(value.value) else "math"
    return GoldPart(value.value, kind, name=value.name)


def _gold_list(text: str, items: list[str]) -> GoldPart:
    """A gold that lists values: a solution set (`p=-1, p=15/8`, `-1, 15/8`) or a system of
    bindings of different names (`x=1, y=2`), which is compared name by name."""
    values = [split_chain(item, keep_equations=False) for item in items]
    if any(len(v) != 1 for v in values):
        return GoldPart(text, "math", items=len(items))
    names = {name_key(v[0].name) for v in values if v[0].name}
    named = all(v[0].name for v in values)
    if named and len(names) == len(values):
        return GoldPart(text, "system", items=len(items), bindings=tuple(v[0] for v in values))
    name = values[0][0].name if named and len(names) == 1 else None
    return GoldPart(", ".join(v[0].value for v in values), "math", name=name, items=len(items))
