"""`grpokit report`: one self-contained HTML page of one or more runs (curves overlaid, the
settings that differ, final numbers, held-out results, samples), with its plots also written
as PNG files beside it."""

from __future__ import annotations

from pathlib import Path

from grpokit.errors import UserError
from grpokit.report.load import label_runs, load_eval_jsonl, load_run
from grpokit.report.page import (
    eval_table,
    final_table,
    knobs_table,
    page,
    plots_section,
    runs_table,
)
from grpokit.report.plots import derive, render
from grpokit.report.samples import held_out_samples, training_samples

__all__ = ["write_report", "default_output", "add_commands"]


def default_output(paths: list[Path]) -> Path:
    """RUN/report.html for one run folder, report.html here otherwise."""
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0] / "report.html"
    return Path("report.html")


def write_report(paths: list[str | Path], output: str | Path | None = None) -> Path:
    """Build the report of run folders and `grpokit eval --jsonl` files; returns the HTML path.
    The PNGs go into the folder named like the page without .html (report.html -> report/)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise UserError("grpokit report: name at least one run folder or eval JSONL file")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"grpokit report: no such run folder or file: {', '.join(missing)}")
    runs = [load_run(p) for p in paths if p.is_dir()]
    evals = [load_eval_jsonl(p) for p in paths if not p.is_dir()]
    label_runs(runs)
    for run in runs:
        derive(run)
    out = Path(output) if output is not None else default_output(paths)
    figures = render(runs) if runs else []
    body = []
    if runs:
        body += ["<h2>Runs</h2>", runs_table(runs),
                 "<h2>Settings</h2>" if len(runs) == 1 else "<h2>Settings that differ</h2>",
                 knobs_table(runs), "<h2>Final numbers</h2>",
                 "<p class=\"muted\">means over the last 5 logged steps</p>", final_table(runs),
                 "<h2>Curves</h2>", plots_section(figures)]
    for run in runs:
        if run.evals:
            body += [f"<h2>Held-out evaluation: {run.label}</h2>", eval_table(run.evals),
                     held_out_samples(run.evals)]
        body += [f"<h2>Samples: {run.label}</h2>", training_samples(run)]
    for result in evals:
        body += [f"<h2>Evaluation: {result.label}</h2>", eval_table({result.label: result}),
                 held_out_samples({result.label: result})]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page("grpokit report: " + ", ".join(r.label for r in runs) if runs else
                        "grpokit report: " + ", ".join(e.label for e in evals), body),
                   encoding="utf-8")
    png_dir = out.with_suffix("")
    png_dir.mkdir(exist_ok=True)
    for panel, png in figures:
        (png_dir / f"{panel.slug}.png").write_bytes(png)
    return out


def cmd_report(args) -> int:
    path = write_report(args.runs, args.output)
    print(f"report: {path} (plots in {path.with_suffix('')}/)")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("report", help="an HTML report (curves, settings, samples) of one or more runs")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folders of grpokit train/sft, or eval results of grpokit eval --jsonl")
    p.add_argument("-o", "--output", help="the HTML file (default: RUN/report.html for one run, "
                                          "else ./report.html); PNGs go into its name without .html")
    p.set_defaults(func=cmd_report)
