"""The Countdown reward: does the completion's equation reach the target from the given numbers?

The equation is taken from the last <answer>...</answer> of the completion, or, when there is no
answer tag, from the longest arithmetic-looking run of characters on the last non-empty line.
It is evaluated safely: parsed with `ast`, only integer literals, + - * /, parentheses and unary
minus are allowed, arithmetic is exact (`fractions.Fraction`), nothing is ever `eval`-ed.

Score: 1.0 when every number in the equation is one of the row's `numbers` (each used at most
once; using a subset is fine) and the value equals `target`; otherwise 0.0 (no equation, a
forbidden construct, a number not given or reused, division by zero, a wrong value).
A row without `target` is not a Countdown row: None.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction
from typing import Any

from grpokit.rewards.base import Sample
from grpokit.rewards.extract import answer_tags
from grpokit.rewards.registry import per_item

DEFAULT_MAX_LENGTH = 200
"""Longest equation (in characters) that is evaluated; anything longer scores 0.0."""

# [0-9], not \d: \d also matches non-ASCII digits, which are refused.
_EQUATION_CHARS = re.compile(r"^[0-9+\-*/() =]*$")
_EQUATION_RUN = re.compile(r"[0-9+\-*/() \t=]+")
_NUMBER_RE = re.compile(r"[0-9]+")
# Symbols models often write for the ASCII operators.
_SYMBOLS = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-", "·": "*"})


class _Rejected(Exception):
    """The equation uses something other than integers, + - * /, parentheses and unary minus."""


def extract_equation(completion: str) -> str | None:
    """The equation text of a completion (see the module docstring), or None when there is none."""
    # A linear scan: a regex would retry from every unclosed <answer> (quadratic on tag soup).
    answers = answer_tags(completion)
    if answers:
        text = " ".join(answers[-1].translate(_SYMBOLS).split())
        return text if text and _EQUATION_CHARS.match(text) else None
    lines = [line for line in completion.translate(_SYMBOLS).splitlines() if line.strip()]
    if not lines:
        return None
    runs = [run.strip() for run in _EQUATION_RUN.findall(lines[-1]) if _NUMBER_RE.search(run)]
    return max(runs, key=len) if runs else None


def _pick_side(equation: str) -> str:
    """`3 + 5 = 8` or `8 = 3 + 5`: the side with the most numbers is the expression."""
    sides = [side.strip() for side in equation.split("=")]
    return max(sides, key=lambda side: len(_NUMBER_RE.findall(side)))


_BINARY_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def _evaluate(node: ast.AST) -> Fraction:
    """Exact value of an allowed expression tree; ZeroDivisionError on division by zero."""
    # Node and operator types are checked before recursing, so `9**9**9` is refused unevaluated.
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        return _BINARY_OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise _Rejected(type(node).__name__)


def evaluate(expression: str) -> Fraction:
    """Exact value of an arithmetic expression of integers, + - * /, parentheses and unary minus.

    Raises ValueError for anything else and ZeroDivisionError on division by zero.
    """
    try:
        return _evaluate(ast.parse(expression, mode="eval"))
    except (SyntaxError, _Rejected) as exc:
        raise ValueError(f"not an arithmetic expression of integers: {expression!r}") from exc


def _literals(node: ast.AST) -> list[int]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and type(n.value) is int]


def _as_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise ValueError(f"countdown row: {field} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"countdown row: {field} must be an integer, got {value!r}") from None
    if number != value and str(number) != str(value).strip():
        raise ValueError(f"countdown row: {field} must be an integer, got {value!r}")
    return number


def score_equation(
    equation: str, numbers: list[int], target: int, max_length: int = DEFAULT_MAX_LENGTH
) -> float:
    """1.0 when `equation` uses only `numbers` (each at most once) and equals `target`, else 0.0."""
    if len(equation) > max_length:
        return 0.0
    expression = _pick_side(equation)
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return 0.0
    # Checked before evaluating, so the value is bounded by the given numbers.
    if Counter(_literals(tree)) - Counter(numbers):
        return 0.0
    try:
        value = _evaluate(tree)
    except (_Rejected, ZeroDivisionError):
        return 0.0
    return 1.0 if value == target else 0.0


@per_item("countdown")
def countdown_reward(sample: Sample, max_length: int = DEFAULT_MAX_LENGTH) -> float | None:
    """Countdown score of one completion (see the module docstring); None for non-Countdown rows."""
    row = sample.row
    if row.get("target") is None:
        return None
    if not isinstance(row.get("numbers"), (list, tuple)):
        raise ValueError(
            f"countdown row: numbers must be a list of integers, got {row.get('numbers')!r}"
        )
    numbers = [_as_int(n, "numbers") for n in row["numbers"]]
    target = _as_int(row["target"], "target")
    equation = extract_equation(sample.completion)
    if equation is None:
        return 0.0
    return score_equation(equation, numbers, target, max_length)
