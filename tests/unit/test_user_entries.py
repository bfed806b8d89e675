"""Tasks and metric sinks of one's own named by import path in the config, like reward
functions (docs/rewards.md), environments and tools (docs/tools.md); a bad path exits 2 naming it
before anything is written."""

from __future__ import annotations

import json

from grpokit.cli import main

USER = '''
import json

from grpokit.data.base import Task


def tiny_task(n=6):
    rows = [{"prompt": f"{i}+{i}=", "answer": str(2 * i)} for i in range(n)]
    return Task("tiny", rows[2:], rows[:2], rewards=[])


class Recorder:
    """A metric sink: every step's metrics, one JSON line each, to its own file."""

    def __init__(self, cfg, out, start_step):
        self.path = out / "recorded.jsonl"

    def log(self, step, metrics):
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "reward": metrics.get("reward/mean")}) + "\\n")

    def log_samples(self, step, records):
        pass

    def close(self):
        pass
'''
TINY = ["train.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2",
        "rollout.max_new_tokens=6", "log.report=false", "eval.before_and_after=false",
        "data.max_prompt_length=256", "rewards=[{name: math}]"]


def test_a_task_and_a_sink_by_import_path(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "mine.py").write_text(USER)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={out}", *TINY,
                 "data.task=mine.py:tiny_task", "data.task_args={n: 8}",
                 "log.report_to=[mine.py:Recorder]"]) == 0
    lines = [json.loads(x) for x in (out / "recorded.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["reward"] for x in lines] == [x["reward/mean"] for x in logged]


def test_bad_task_and_sink_paths_exit_2_before_the_run_folder(tiny_model_dir, tmp_path,
                                                               monkeypatch, capsys):
    (tmp_path / "mine.py").write_text(USER)
    monkeypatch.chdir(tmp_path)
    for extra, named in [("data.task=mine.py:no_task", "task 'mine.py:no_task'"),
                         ("log.report_to=[mine.py:NoSink]", "metric sink 'mine.py:NoSink'"),
                         ("log.report_to=[nowhere.py:Sink]", "no file nowhere.py")]:
        out = tmp_path / "run"
        assert main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={out}", *TINY,
                     extra]) == 2, extra
        assert named in capsys.readouterr().err, extra
        assert not out.exists()
