"""The report's curves, one matplotlib figure per panel, every run overlaid in its own colour."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

from grpokit.report.load import Run

STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Panel:
    slug: str  # the PNG's file name
    title: str
    ylabel: str
    series: Callable[[set[str]], list[tuple[str, str]]]  # the keys logged -> [(key, label)]


def _fixed(*pairs: tuple[str, str]) -> Callable[[set[str]], list[tuple[str, str]]]:
    return lambda keys: [p for p in pairs if p[0] in keys]


def _rewards(keys: set[str]) -> list[tuple[str, str]]:
    skip = ("reward/std", "reward/unscorable_frac")
    per_fn = sorted(k for k in keys if k.startswith("reward/") and k not in skip
                    and k != "reward/mean")
    return _fixed(("reward/mean", "mean"))(keys) + [(k, k.removeprefix("reward/")) for k in per_fn]


def _held_out(keys: set[str]) -> list[tuple[str, str]]:
    wanted = ("eval/reward/", "eval/pass@", "eval/maj@")
    return [(k, k.removeprefix("eval/")) for k in sorted(keys)
            if k.startswith(wanted) and not k.endswith("_ci95")]


def _step_time(keys: set[str]) -> list[tuple[str, str]]:
    return _fixed(("perf/step_time_s", "step"), ("perf/gen_time_s", "generation"),
                  ("perf/train_time_s", "training"))(keys)


PANELS = (
    Panel("reward", "Training reward", "mean reward", _rewards),
    Panel("held_out", "Held-out evaluation", "value", _held_out),
    Panel("length", "Completion length", "tokens",
          _fixed(("completion/len_mean", "mean"), ("completion/len_max", "max"))),
    Panel("truncated", "Truncated completions", "share",
          _fixed(("completion/truncated_frac", "truncated"))),
    Panel("kl", "KL to the reference", "KL", _fixed(("loss/kl", "KL"))),
    Panel("entropy", "Entropy", "nats / token", _fixed(("loss/entropy", "entropy"))),
    Panel("clip", "Clip fractions", "share of tokens",
          _fixed(("loss/clip_frac_low", "low"), ("loss/clip_frac_high", "high"))),
    Panel("tied", "Tied groups (all rewards equal)", "share of groups",
          _fixed(("groups/tied_frac", "tied"))),
    Panel("refill", "Dynamic-sampling refill rounds", "rounds",
          _fixed(("groups/refill_rounds", "refill rounds"))),
    Panel("loss", "Loss", "loss", _fixed(("loss/policy", "policy"), ("loss/sft", "SFT"),
                                          ("eval/loss", "held-out"))),
    Panel("grad_norm", "Gradient norm", "L2 norm", _fixed(("optim/grad_norm", "grad norm"))),
    Panel("lr", "Learning rate", "lr", _fixed(("optim/lr", "lr"))),
    Panel("step_time", "Step time", "seconds", _step_time),
    Panel("throughput", "Throughput", "tokens / s",
          _fixed(("perf/gen_tokens_per_s", "generation"), ("perf/train_tokens_per_s", "training"))),
)


def derive(run: Run) -> None:
    """Series computed from logged ones: training time = step time − generation time, and the
    held-out evaluation before training (at step 0) and after it (at the last step)."""
    if "before" in run.evals and not any(m.get("step") == 0 for m in run.metrics):
        run.metrics.insert(0, {"step": 0})
    for when, record in (("before", run.metrics[:1]), ("after", run.metrics[-1:])):
        if when in run.evals and record:
            for key, value in run.evals[when].summary.items():
                record[0].setdefault(f"eval/{key}", value)
    for m in run.metrics:
        step, gen = m.get("perf/step_time_s"), m.get("perf/gen_time_s")
        if isinstance(step, (int, float)) and isinstance(gen, (int, float)):
            m.setdefault("perf/train_time_s", step - gen)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def figure(panel: Panel, runs: list[Run], series: list[tuple[str, str]]):
    """The panel's matplotlib figure, or None when no run logged any of its series. One run:
    a colour per series; several: a colour per run and a line style per series."""
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    drawn = 0
    for i, run in enumerate(runs):
        for j, (key, label) in enumerate(series):
            steps, values = run.series(key)
            if not steps:
                continue
            if len(runs) == 1:
                colour, style, name = colours[j % len(colours)], "-", label
            else:
                colour, style = colours[i % len(colours)], STYLES[j % len(STYLES)]
                name = run.label if len(series) == 1 else f"{run.label} · {label}"
            ax.plot(steps, values, style, color=colour, label=name, linewidth=1.6,
                    marker="o" if len(steps) <= 12 else None, markersize=4)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def render(runs: list[Run]) -> list[tuple[Panel, bytes]]:
    """The PNG of every panel that some run has data for, in PANELS order."""
    plt = _pyplot()
    keys = set().union(*(r.keys() for r in runs))
    figures = []
    for panel in PANELS:
        series = panel.series(keys)
        fig = figure(panel, runs, series) if series else None
        if fig is None:
            continue
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        figures.append((panel, buffer.getvalue()))
    return figures
