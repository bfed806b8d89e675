"""The `reasoning_gym` task: rows from a procedural generator of the `reasoning-gym` package (over
a hundred reasoning tasks with their own scorers, nothing downloaded), scored by that generator's
scorer (rewards/reasoning_gym.py). docs/data.md.

    data:
      task: reasoning_gym
      task_args: {dataset: basic_arithmetic, train_size: 2000, eval_size: 200, seed: 0,
                  config: {min_terms: 2, max_terms: 3}}

`config` goes to the generator as it is (its difficulty knobs). The held-out problems are drawn
first, from `seed`, so they do not change with train_size; the training problems come from
seed + 1, distinct, and any whose question is also a held-out question is left out (and
replaced by the next draw).
"""

from __future__ import annotations

from typing import Any

from grpokit.data.base import Task, register_task
from grpokit.data.generate import Row, check_size
from grpokit.errors import DataError
from grpokit.rewards.base import RewardSpec

SYSTEM_PROMPT = (
    "You are a helpful assistant. You first think about the reasoning process inside "
    "<think> </think> tags, then give only the final answer inside <answer> </answer> tags."
)
"""Default system prompt of the `reasoning_gym` task."""

_EXTRA_DRAWS = 4
"""The training draw asks for this many times train_size + eval_size problems at most, to
replace the ones that repeat a held-out question."""


def generator(dataset: str, size: int, seed: int, config: dict[str, Any]) -> Any:
    """reasoning_gym.create_dataset, with the package's absence and a bad name or config turned
    into errors naming the task args."""
    try:
        import reasoning_gym
    except ImportError:
        raise DataError("data.task=reasoning_gym needs the reasoning-gym package: "
                        "pip install 'grpokit[reasoning-gym]'") from None
    try:
        return reasoning_gym.create_dataset(dataset, size=size, seed=seed, **config)
    except Exception as exc:  # noqa: BLE001 - the generator's own checks raise several types
        raise DataError(f"task 'reasoning_gym': dataset {dataset!r} with config {config!r}: "
                        f"{type(exc).__name__}: {exc}") from exc


def make_row(entry: dict[str, Any], dataset: str) -> Row:
    """A task row from a generator entry {question, answer, metadata}."""
    return {"prompt": entry["question"], "question": entry["question"],
            "answer": entry["answer"], "metadata": entry["metadata"], "rg_dataset": dataset}


def _problems(dataset: str, size: int, seed: int, config: dict[str, Any]) -> list[Row]:
    source = generator(dataset, size, seed, config)
    return [make_row(source[i], dataset) for i in range(size)]


@register_task("reasoning_gym")
def reasoning_gym_task(dataset: str | None = None, train_size: int = 2000, eval_size: int = 200,
                       seed: int = 0, config: dict[str, Any] | None = None) -> Task:
    """The generator `dataset`'s problems; the training questions are distinct and none is also a
    held-out one."""
    if not isinstance(dataset, str) or not dataset:
        raise DataError("task 'reasoning_gym': data.task_args.dataset must name a generator "
                        "(e.g. basic_arithmetic; reasoning_gym.factory.DATASETS lists them)")
    if config is not None and not isinstance(config, dict):
        raise DataError(f"task 'reasoning_gym': data.task_args.config must be a mapping of the "
                        f"generator's settings, got {config!r}")
    for name, value, low in (("train_size", train_size, 1), ("eval_size", eval_size, 0),
                             ("seed", seed, 0)):
        try:
            check_size(name, value, low)
        except ValueError as exc:
            raise DataError(f"task 'reasoning_gym': data.task_args.{exc}") from None
    config = dict(config or {})
    held_out = _problems(dataset, eval_size, seed, config) if eval_size else []
    seen = {row["question"] for row in held_out}
    drawn = _problems(dataset, _EXTRA_DRAWS * (train_size + eval_size), seed + 1, config)
    train = []
    for row in drawn:  # distinct questions, none of them held out
        if row["question"] not in seen and len(train) < train_size:
            seen.add(row["question"])
            train.append(row)
    if len(train) < train_size:
        raise DataError(f"task 'reasoning_gym': dataset {dataset!r} gave only {len(train)} "
                        f"training problems apart from the {eval_size} held-out ones; lower "
                        f"train_size or widen its config")
    return Task(name="reasoning_gym", train_rows=train, eval_rows=held_out,
                rewards=[RewardSpec("reasoning_gym", 1.0), RewardSpec("format", 0.2)],
                system_prompt=SYSTEM_PROMPT, sft_target=sft_target)


def sft_target(row: Row) -> str:
    """The reference completion of a row: its answer in answer tags."""
    return f"<answer>{row['answer']}</answer>"
