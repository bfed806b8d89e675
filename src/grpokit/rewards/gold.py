"""The gold answers the `math` reward cannot use, found before any completion is scored.

docs/rewards.md (math, step 6): a gold answer that is empty, not a finite number (the JSON
literal NaN) or that math-verify cannot read as mathematics (`\\frac{`, `???`) makes its row
unscorable. The runner gives the row's completions None without scoring them and warns once per
row (grpokit.rewards.runner). Without this check such a row scored 0.0: a completion with no
extractable answer, or one decided in this process, was "wrong" against a gold that nothing
could ever match. The gold is read as the verifier reads it (`read_gold`, `_parse`); SymPy runs
in the verifier's worker processes, and each gold text is read once per run.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from grpokit.rewards.answers import GoldPart
from grpokit.rewards.math import _parse, read_gold
from grpokit.rewards.registry import row_check
from grpokit.rewards.workers import Lease, shared_pool

_CACHE_SIZE = 65536
# Problem (or None) by gold text as math-verify reads it, in this process.
_READ: "OrderedDict[str, str | None]" = OrderedDict()


def gold_parses(latex: str) -> bool:
    """Worker side: whether math-verify reads `latex` as mathematics. A text it cannot read
    comes back as the text alone, which only an identical text would match."""
    import math_verify.parser

    # The worker's deadline is the parent's (see grpokit.rewards.math.verify_pairs).
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    return any(not isinstance(x, str) for x in _parse(latex))


def _texts(part: GoldPart) -> list[str]:
    """The texts of a gold part that math-verify reads (numbers and words are compared here)."""
    if part.kind == "system":
        return [binding.value for binding in part.bindings]
    return [part.value] if part.kind in ("math", "equation") else []


def _in_process(answer: Any) -> tuple[str | None, list[str]]:
    """A problem found without SymPy, else the texts a worker must read."""
    if answer is None:  # no gold: the reward gives None itself, and a dataset without any
        return None, []  # gold at all is refused before the first step
    if isinstance(answer, float) and not math.isfinite(answer):
        return f"the gold answer is {answer!r}, not a finite number", []
    gold = read_gold(str(answer))
    if gold.problem:
        return gold.problem, []
    return None, [text for part in gold.parts for text in _texts(part)]


def _read(lease: Lease, latex: str, timeout: float) -> str | None:
    """Worker side reading of one text, cached; a worker that fails decides nothing."""
    if latex in _READ:
        _READ.move_to_end(latex)
        return _READ[latex]
    result = lease.run(gold_parses, (latex,), timeout)
    if result.status == "ok":
        problem = None if result.value else f"math-verify cannot read {latex[:200]!r} as mathematics"
    elif result.status == "timeout":
        problem = f"reading {latex[:200]!r} took more than {timeout:g}s"
    else:  # the worker died or raised: the verifier meets (and reports) the same failure
        return None
    _READ[latex] = problem
    if len(_READ) > _CACHE_SIZE:
        _READ.popitem(last=False)
    return problem


@row_check("math")
def math_gold_problems(fn: Any, rows: list[dict[str, Any]]) -> list[str | None]:
    """Why each row's gold cannot be used (None where it can). A lease starts no worker until a
    text is not in the cache yet."""
    pool = getattr(fn, "pool", None) or shared_pool(preload=("math_verify",))
    timeout = float(getattr(fn, "timeout", 5.0))
    problems: list[str | None] = []
    with pool.lease() as lease:
        for row in rows:
            problem, texts = _in_process(row.get("answer"))
            for latex in texts:
                problem = problem or _read(lease, latex, timeout)
            problems.append(problem)
    return problems
