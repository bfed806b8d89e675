"""The `grpokit score` report: per reward function, how many completions scored 1, 0, another
value, None (not applicable) or failed (an error), the mean of the scored ones, and the slowest
items, so a verifier can be audited on one's own data before it trains anything."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

from grpokit.rewards.runner import RewardResult


@dataclass
class _Tally:
    one: int = 0
    zero: int = 0
    other: int = 0
    none: int = 0
    error: int = 0
    total: float = 0.0
    slowest: list[tuple[float, int, str]] = field(default_factory=list)
    """A min-heap of (seconds, line, what it gave) holding the slowest items."""


class ScoreReport:
    """Accumulates the results of the batches of one `grpokit score` run."""

    def __init__(self, names: list[str], slowest: int = 5):
        self.names = list(names)
        self.keep = slowest
        self.total = 0
        self._tallies = {name: _Tally() for name in names}

    def add(self, result: RewardResult, lines: list[int]) -> None:
        """Count one scored batch; `lines` are the input line numbers of its samples."""
        self.total += len(lines)
        for k, name in enumerate(result.names):
            tally = self._tallies[name]
            for i, line in enumerate(lines):
                what = self._count(tally, result, i, k)
                seconds = result.seconds_of(i, k)
                if self.keep and not math.isnan(seconds):
                    item = (seconds, line, what)
                    if len(tally.slowest) < self.keep:
                        heapq.heappush(tally.slowest, item)
                    else:
                        heapq.heappushpop(tally.slowest, item)

    @staticmethod
    def _count(tally: _Tally, result: RewardResult, i: int, k: int) -> str:
        if result.failed(i, k):
            tally.error += 1
            return "error"
        steps = (result.step_rewards or {}).get(result.names[k])
        value = result.value(i, k)
        if math.isnan(value):
            if steps is not None and steps[i] is not None:
                tally.other += 1
                return "steps"
            tally.none += 1
            return "None"
        tally.total += value
        if value == 1.0:
            tally.one += 1
        elif value == 0.0:
            tally.zero += 1
        else:
            tally.other += 1
        return f"{value:g}"

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data (what `--report` writes)."""
        out: dict[str, Any] = {"completions": self.total, "functions": {}}
        for name, t in self._tallies.items():
            scored = t.one + t.zero + t.other
            out["functions"][name] = {
                "1": t.one, "0": t.zero, "other": t.other, "None": t.none, "error": t.error,
                "mean": t.total / scored if scored else None,
                "slowest": [{"line": line, "seconds": round(s, 6), "value": what}
                            for s, line, what in sorted(t.slowest, reverse=True)],
            }
        return out

    def table(self) -> str:
        """A plain-text table, one row per function, the slowest items after it."""
        data = self.as_dict()["functions"]
        rows = [f"{'reward':<16}{'1':>7}{'0':>7}{'other':>7}{'None':>7}{'error':>7}{'mean':>9}  slowest (line: s)"]
        for name, d in data.items():
            mean = "-" if d["mean"] is None else f"{d['mean']:.4f}"
            slow = ", ".join(f"{s['line']}: {s['seconds']:.3f}" for s in d["slowest"])
            rows.append(f"{name:<16}{d['1']:>7}{d['0']:>7}{d['other']:>7}{d['None']:>7}{d['error']:>7}"
                        f"{mean:>9}  {slow}")
        return f"grpokit score: {self.total} completions\n" + "\n".join(rows)
