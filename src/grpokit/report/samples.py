"""The report's samples: what the model wrote, with each reward function's score.

Training samples come from samples.jsonl at the first and the last logged step, grouped by
prompt (the prompt shown once). Held-out samples show the same prompt before and after training.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from grpokit.report.load import EvalResult, Run
from grpokit.report.page import SAMPLE_PROMPTS, _cell, _text, prompt_text


def _score_cells(rewards: dict[str, Any], names: list[str]) -> str:
    return "".join(_cell(rewards.get(n)) for n in names)


def training_samples(run: Run) -> str:
    """A table per logged step (first and last): prompt, completion, scores, advantage."""
    steps = sorted({s["step"] for s in run.samples})
    if not steps:
        return "<p class=\"muted\">No samples logged (log.samples_every).</p>"
    names = sorted({n for s in run.samples for n in (s.get("rewards") or {})})
    head = ("<tr><th>prompt</th><th>step</th><th>completion</th>"
            + "".join(f"<th>{escape(n)}</th>" for n in names)
            + "<th>reward</th><th>advantage</th><th>finish</th></tr>")
    parts = []
    for step in dict.fromkeys([steps[0], steps[-1]]):
        by_prompt: dict[str, list[dict[str, Any]]] = {}
        for s in run.samples:
            if s["step"] == step:
                by_prompt.setdefault(prompt_text(s.get("row")), []).append(s)
        body = []
        for prompt, records in list(by_prompt.items())[:SAMPLE_PROMPTS]:
            for i, s in enumerate(records):
                first = f'<td rowspan="{len(records)}">{_text(prompt)}</td>' if i == 0 else ""
                body.append(f"<tr>{first}{_cell(step)}<td>{_text(str(s.get('completion', '')))}"
                            f"</td>{_score_cells(s.get('rewards') or {}, names)}"
                            f"{_cell(s.get('reward'))}{_cell(s.get('advantage'))}"
                            f"{_cell(s.get('finish_reason'))}</tr>")
        parts.append(f"<h3>step {step}</h3><table class=\"samples\"><thead>{head}</thead>"
                     f"<tbody>{''.join(body)}</tbody></table>")
    return "".join(parts)


def held_out_samples(results: dict[str, EvalResult]) -> str:
    """The same held-out prompts under each result (before / after): first completion of each."""
    named = {n: r for n, r in results.items() if r.prompts}
    if not named:
        return ""
    names = sorted({k for r in named.values() for p in r.prompts for k in p.get("rewards", {})})
    head = ("<tr><th>prompt</th><th>when</th><th>completion</th>"
            + "".join(f"<th>{escape(n)}</th>" for n in names) + "<th>correct</th></tr>")
    first = next(iter(named.values()))
    body = []
    for index, record in enumerate(first.prompts[:SAMPLE_PROMPTS]):
        rows = []
        for name, result in named.items():
            match = [p for p in result.prompts if p.get("index") == record.get("index")]
            if not match or not match[0].get("completions"):
                continue
            p = match[0]
            scores = {n: (p["rewards"].get(n) or [None])[0] for n in names}
            correct = p.get("correct") or [None]
            rows.append(f"{_cell(name)}<td>{_text(p['completions'][0])}</td>"
                        f"{_score_cells(scores, names)}{_cell(correct[0])}")
        for i, row in enumerate(rows):
            lead = (f'<td rowspan="{len(rows)}">{_text(prompt_text(record.get("row")))}</td>'
                    if i == 0 else "")
            body.append(f"<tr>{lead}{row}</tr>")
    return (f"<table class=\"samples\"><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
            f"<p class=\"muted\">The first of each prompt's samples; scores as "
            f"{escape(json.dumps(names))}.</p>")
