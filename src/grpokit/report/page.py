"""The report as one self-contained HTML page: tables, inline PNG plots, samples. Opening it
needs no network: images are data URIs and there is no script."""

from __future__ import annotations

import base64
import datetime as _dt
import json
from html import escape
from typing import Any, Iterable

from grpokit.report.load import EvalResult, Run

FINAL_WINDOW = 5
"""Final numbers are means over the last FINAL_WINDOW logged values of each metric."""
FINAL_KEYS = ("reward/mean", "completion/len_mean", "completion/truncated_frac", "loss/kl",
              "loss/entropy", "loss/clip_frac", "groups/tied_frac", "loss/sft", "eval/loss",
              "perf/step_time_s", "perf/gen_tokens_per_s")
SAMPLE_PROMPTS = 4
"""Prompts shown in each samples table."""
TEXT_CAP = 1200
"""Characters of a prompt or completion shown; longer ones are cut with a marker."""
CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; margin: 0; max-width: 60em; font-size: 0.95em; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(620px, 1fr)); gap: 1em; }
figure { margin: 0; } figure img { width: 100%; height: auto; }
.muted { color: #777; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    if value is None:
        return '<td class="muted">–</td>'
    return f"<td>{escape(str(value))}</td>"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _text(value: str) -> str:
    cut = value if len(value) <= TEXT_CAP else value[:TEXT_CAP] + f" … [{len(value)} characters]"
    return f"<pre>{escape(cut)}</pre>"


def prompt_text(row: Any) -> str:
    """What the model was asked: a row's 'prompt', or its chat messages one per line."""
    if isinstance(row, dict):
        if isinstance(row.get("prompt"), str):
            return row["prompt"]
        if isinstance(row.get("messages"), list):
            return "\n".join(f"[{m.get('role', '?')}] {m.get('content', '')}"
                             for m in row["messages"] if isinstance(m, dict))
    return json.dumps(row, default=str)


def _wall_clock(run: Run) -> str:
    times = [m["time"] for m in run.metrics if isinstance(m.get("time"), (int, float))]
    if not times:
        return "–"
    first = next((m.get("perf/step_time_s") for m in run.metrics if "time" in m), 0) or 0
    seconds = max(times) - min(times) + first
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _machine(run: Run) -> str:
    starts = run.info.get("starts") or [{}]
    m = starts[-1].get("machine", {})
    if not m:
        return "–"
    return ", ".join(str(m[k]) for k in ("device", "cpu", "cores", "torch") if m.get(k))


def runs_table(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        steps = max((m["step"] for m in run.metrics), default=0)
        total = run.config.get("train.steps")
        kind = run.info.get("kind", "grpo")  # run.json; runs from before it was recorded: grpo
        method = f"grpo: {run.config.get('algo.preset')}" if kind == "grpo" else kind
        rows.append([run.label, str(run.path), run.config.get("model.path"),
                     run.config.get("data.task"), method,
                     f"{steps} / {total}" if total else str(steps), _wall_clock(run), _machine(run)])
    return _table(["run", "folder", "model", "task", "method", "steps", "training time",
                   "machine"],
                  rows)


def knobs_table(runs: list[Run]) -> str:
    """The resolved settings that differ between the runs (all of them for a single run)."""
    keys = sorted(set().union(*(r.config for r in runs)) - {"log.output_dir"})
    if len(runs) == 1:
        rows = [[k, _show(runs[0].config.get(k))] for k in keys]
        return ("<details><summary>resolved config</summary>"
                + _table(["setting", runs[0].label], rows) + "</details>")
    differ = [k for k in keys if len({_show(r.config.get(k, "–")) for r in runs}) > 1]
    if not differ:
        return "<p>The runs' resolved settings are the same (apart from the output folder).</p>"
    return _table(["setting", *[r.label for r in runs]],
                  [[k, *[_show(r.config.get(k, "–")) for r in runs]] for k in differ])


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def final_table(runs: list[Run]) -> str:
    keys = set().union(*(r.keys() for r in runs))
    wanted = [k for k in FINAL_KEYS if k in keys]
    wanted += sorted(k for k in keys if k.startswith("reward/") and k not in FINAL_KEYS
                     and k not in ("reward/std", "reward/unscorable_frac"))
    rows = []
    for key in wanted:
        cells = []
        for run in runs:
            _, values = run.series(key)
            tail = values[-FINAL_WINDOW:]
            cells.append(sum(tail) / len(tail) if tail else None)
        rows.append([key, *cells])
    for when in ("before", "after"):
        summaries = [r.evals[when].summary if when in r.evals else {} for r in runs]
        for key in sorted({k for s in summaries for k in s if not k.endswith("_ci95")}):
            rows.append([f"held-out {when}: {key}",
                         *[_with_interval(s.get(key), s.get(f"{key}_ci95")) for s in summaries]])
    return _table(["metric", *[r.label for r in runs]], rows)


def eval_table(results: dict[str, EvalResult]) -> str:
    """A row per metric, a column per result (e.g. before / after), and the change."""
    names = list(results)
    keys = sorted({k for r in results.values() for k in r.summary if not k.endswith("_ci95")})
    rows = []
    for key in keys:
        values = [results[n].summary.get(key) for n in names]
        cells = [_with_interval(v, results[n].summary.get(f"{key}_ci95"))
                 for v, n in zip(values, names)]
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        change = values[-1] - values[0] if len(values) > 1 and numbers else None
        rows.append([key, *cells, *([change] if len(names) > 1 else [])])
    return _table(["metric", *names, *(["change"] if len(names) > 1 else [])], rows)


def _with_interval(value: Any, half: Any) -> Any:
    if isinstance(value, float) and isinstance(half, float) and half == half:
        return f"{value:.4g} ± {half:.2g}"
    return value


def plots_section(figures: list[tuple[Any, bytes]]) -> str:
    items = []
    for panel, png in figures:
        data = base64.b64encode(png).decode("ascii")
        items.append(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(panel.title)}">'
                     f"<figcaption class=\"muted\">{escape(panel.slug)}.png</figcaption></figure>")
    return '<div class="plots">' + "".join(items) + "</div>"


def page(title: str, body: list[str]) -> str:
    when = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
            f"<p class=\"muted\">written by grpokit report, {when}</p>{''.join(body)}</body></html>")
