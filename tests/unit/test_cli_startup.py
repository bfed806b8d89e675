"""`grpokit --help`, `sandbox`, `score --help` and `report` start without torch or transformers:
each command runs in a fresh interpreter that prints, at exit, which heavy libraries it loaded.
(How long start-up takes is a benchmark, docs/benchmarks.md "CLI start-up", not a test.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers")

# At exit (after --help's SystemExit too), print the heavy modules loaded as stderr's last line;
# then run `grpokit ARGS...` as the console script does, or as `python -m grpokit` does.
WRAPPER = f"""
import atexit, json, sys
atexit.register(lambda: print(
    "LOADED " + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr))
"""
AS_SCRIPT = "from grpokit.cli import main\nsys.exit(main(sys.argv[1:]))\n"
AS_MODULE = ("import runpy\nsys.argv[0] = 'grpokit'\n"
             "runpy.run_module('grpokit', run_name='__main__')\n")


def loaded(args: list[str], cwd: Path | None = None, module: bool = False) -> tuple[list[str], str]:
    """The heavy modules `grpokit ARGS` loads (with `module`, `python -m grpokit ARGS`), and its
    stdout; the command must succeed."""
    code = WRAPPER + (AS_MODULE if module else AS_SCRIPT)
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("LOADED "), proc.stderr
    return json.loads(last.removeprefix("LOADED ")), proc.stdout


@pytest.mark.parametrize("args", [
    ["--help"], ["sandbox", "--help"], ["sandbox", "run", "--help"], ["score", "--help"],
    ["report", "--help"], ["train", "--help"], ["eval", "--help"],
])
def test_help_loads_no_model_library(args):
    modules, out = loaded(args)
    assert modules == [], f"grpokit {' '.join(args)} imported {modules}"
    assert "usage: grpokit" in out


def test_top_level_help_still_lists_every_command():
    _, out = loaded(["--help"])
    for command in ("train", "eval", "sft", "dpo", "ppo", "conformance", "sandbox", "score",
                    "report"):
        assert command in out, command


def test_python_dash_m_grpokit_help_loads_no_model_library():
    modules, out = loaded(["--help"], module=True)
    assert modules == [] and "usage: grpokit" in out


def test_conformance_help_still_shows_its_arguments():
    """conformance needs torch to declare its arguments: they are declared when it is named."""
    _, out = loaded(["conformance", "--help"])
    assert "PATH" in out and "conformance vectors" in out


def test_sandbox_run_loads_no_model_library(tmp_path):
    program = tmp_path / "hello.py"
    program.write_text("print('hi')\n")
    try:
        modules, out = loaded(["sandbox", "run", str(program), "--backend", "unsafe"])
    except AssertionError:  # a machine where even the unsafe backend cannot start
        pytest.skip("the sandbox cannot run here")
    assert modules == [] and json.loads(out)["stdout"] == "hi\n"


def test_report_of_a_run_folder_loads_no_model_library(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("algo:\n  preset: grpo\n")
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "reward/mean": s / 4, "loss/kl": s / 100}) + "\n"
        for s in (1, 2, 3)))
    (run / "samples.jsonl").write_text(json.dumps(
        {"step": 1, "prompt": "1+1=", "completion": "<answer>2</answer>", "reward": 1.0}) + "\n")
    modules, _ = loaded(["report", str(run)])
    assert modules == []
    assert (run / "report.html").is_file() and (run / "report" / "reward.png").is_file()


def test_score_with_built_in_rewards_loads_no_model_library(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "rewards:\n  - {name: format, weight: 0.5}\n"
        "  - {name: math, weight: 1.0, args: {extract: [answer_tag, boxed]}}\n")
    (tmp_path / "in.jsonl").write_text(
        json.dumps({"completion": "<think>a</think><answer>4</answer>", "answer": "4"}) + "\n" +
        json.dumps({"completion": "<answer>5</answer>", "answer": "4"}) + "\n")
    modules, out = loaded(["score", "-c", "c.yaml", "--input", "in.jsonl"], cwd=tmp_path)
    assert [json.loads(line)["reward"] for line in out.splitlines()] == [1.5, 0.0]
    assert modules == [], f"grpokit score imported {modules}"
