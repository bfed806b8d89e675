"""Metric sinks: the JSONL file, TensorBoard events, the console line, and the run's set."""

import io
import json
import math

import pytest
from rich.console import Console

from grpokit.config import load_config
from grpokit.training.sinks import ConsoleSink, JsonlSink, TensorBoardSink, format_line, make_sinks


def test_jsonl_sink_appends_one_object_per_step(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    sink = JsonlSink(path)
    sink.log(1, {"reward/mean": 0.5})
    sink.close()
    again = JsonlSink(path, start_step=1)  # a run resumed at step 1 appends
    again.log(2, {"reward/mean": float("nan")})
    again.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and lines[0]["reward/mean"] == 0.5
    assert math.isnan(lines[1]["reward/mean"]) and lines[0]["time"] <= lines[1]["time"]


def test_steps_past_the_resumed_step_are_dropped_once(tmp_path):
    from grpokit.training.sinks import drop_after

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in (1, 2, 3, 4)))
    sink = JsonlSink(path, start_step=2)  # the run died after step 4, its checkpoint is step 2
    sink.log(3, {"x": 30})
    sink.close()
    assert [(r["step"], r["x"]) for r in map(json.loads, path.read_text().splitlines())] == [
        (1, 1), (2, 2), (3, 30)]
    drop_after(tmp_path / "absent.jsonl", 0)  # nothing to do
    assert not (tmp_path / "absent.jsonl").exists()


def test_tensorboard_sink_writes_finite_scalars_only(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = TensorBoardSink(tmp_path / "tb")
    sink.log(1, {"loss/kl": 0.25, "reward/mean": float("inf")})
    sink.log(2, {"loss/kl": 0.5, "reward/mean": 1.0})
    sink.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss/kl")] == [(1, 0.25), (2, 0.5)]
    assert [e.step for e in events.Scalars("reward/mean")] == [2]


def test_console_line_shows_the_known_metrics_in_order():
    line = format_line(3, 12, {"reward/mean": 0.25, "reward/std": 0.5, "loss/kl": 0.0123,
                               "unknown": 7.0})
    assert line == "step 3/12  reward 0.25±0.5  kl 0.0123"
    out = io.StringIO()
    sink = ConsoleSink(12, Console(file=out, width=200))
    sink.log(3, {"reward/mean": 0.25})
    sink.close()
    assert "step 3/12  reward 0.25" in out.getvalue()


def test_make_sinks_follows_the_log_config(tmp_path):
    cfg = load_config(overrides=["log.report_to=[]"])
    sinks = make_sinks(cfg, tmp_path, None)
    assert [type(s).__name__ for s in sinks.sinks] == ["JsonlSink"]
    sinks.close()
    cfg = load_config()
    sinks = make_sinks(cfg, tmp_path, Console(file=io.StringIO()))
    assert [type(s).__name__ for s in sinks.sinks] == ["JsonlSink", "TensorBoardSink", "ConsoleSink"]
    sinks.close()


@pytest.mark.parametrize("tail, steps", [('{"step": 2}', [1, 2, 3]), ('{"step": 2, "x', [1, 3])])
def test_a_last_line_without_newline_is_never_glued_to_the_next(tmp_path, tail, steps):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n' + tail)  # complete, or torn by a kill mid-write
    sink = JsonlSink(path, start_step=2)
    sink.log(3, {})
    sink.close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == steps
