"""The user's own reward functions: by import path from the CLI, TRL's batch signature and
grpokit's per-sample form, async, isolate: true, register_callable, and every bad entry an exit-2
error naming it before anything is written."""

import asyncio
import json
import textwrap

import pytest

from grpokit.cli import main
from grpokit.config import load_config
from grpokit.rewards import registry, user
from grpokit.rewards.base import RewardSpec, Sample
from grpokit.rewards.runner import RewardError, RewardRunner

TINY = [
    "train.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2",
    "rollout.max_new_tokens=6", "eval.num_prompts=0", "eval.before_and_after=false",
    "data.max_prompt_length=1024", "train.micro_batch_size=4", "log.samples_every=1",
    "log.report_to=[]", "log.num_samples=4",
    "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}",
]

MY_REWARDS = '''
import json

def reward_len(completions, log=None, **kwargs):
    values = [-abs(20 - len(c)) for c in completions]
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({"completions": completions, "values": values}) + "\\n")
    return values
'''

BAD = '''
import time

def wrong_signature(x, y):
    return 1.0

def one_short(completions, **kwargs):
    return [1.0] * (len(completions) - 1)

def a_string(completions, **kwargs):
    return "1.0"

def raises(completions, **kwargs):
    raise ValueError("no luck")

def hangs(completions, **kwargs):
    time.sleep(60)
    return [1.0] * len(completions)
'''


def _write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def _train(model_dir, out, entry, *extra):
    return main(["train", f"model.path={model_dir}", f"log.output_dir={out}", *TINY, *extra,
                 f"rewards=[{entry}]"])


def test_a_trl_reward_in_a_user_file_trains_from_the_cli(tiny_model_dir, tmp_path):
    path = _write(tmp_path, "my_rewards.py", MY_REWARDS)
    log, out, name = tmp_path / "calls.jsonl", tmp_path / "run", f"{path}:reward_len"
    assert _train(tiny_model_dir, out, f"{{name: '{name}', args: {{log: '{log}'}}}}") == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 3  # the probe before training, then one batch per step
    returned = {c: v for call in calls[1:] for c, v in zip(call["completions"], call["values"])}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for step, call in zip(metrics, calls[1:]):
        assert step[f"reward/{name}"] == pytest.approx(sum(call["values"]) / len(call["values"]))
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["rewards"][name] == returned[s["completion"]] for s in samples)


def test_a_relative_file_is_found_from_the_config_folder_first(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cwd").mkdir()
    _write(tmp_path / "cfg", "rewards.py", "def f(completions, **kw):\n    return [1.0] * len(completions)\n")
    _write(tmp_path / "cwd", "rewards.py", "def f(completions, **kw):\n    return [2.0] * len(completions)\n")
    config = _write(tmp_path / "cfg", "run.yaml", "rewards: [{name: './rewards.py:f'}]\n")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(user, "_CONFIG_DIRS", [])  # no folder of a config an earlier test loaded
    cfg = load_config(config)
    assert user.search_dirs()[:2] == [tmp_path / "cfg", tmp_path / "cwd"]
    assert registry.build(cfg.rewards[0])([Sample("a", {})]) == [1.0]
    monkeypatch.setattr(user, "_CONFIG_DIRS", [])
    assert registry.build(RewardSpec("./rewards.py:f"))([Sample("a", {})]) == [2.0]


def _not_importable(completions, **kwargs):
    return [1.0] * len(completions)


BAD_ENTRIES = {
    "missing module": ("{name: 'no_such_module_xyz:f'}", "no module named 'no_such_module_xyz'"),
    "missing function": ("{name: 'BAD:nope'}", "has no attribute 'nope'"),
    "syntax error": ("{name: 'SYNTAX:f'}", "syntax error in"),
    "import raises": ("{name: 'RAISES:f'}", "raised RuntimeError: cannot import me"),
    "wrong signature": ("{name: 'BAD:wrong_signature'}", "cannot take the batch"),
    "wrong output count": ("{name: 'BAD:one_short'}", "returned 1 values for 2 samples"),
    "a string returned": ("{name: 'BAD:a_string'}", "returned str '1.0', expected a list"),
    "exception on every item": ("{name: 'BAD:raises'}", "ValueError: no luck"),
    "hang under isolate": ("{name: 'BAD:hangs', isolate: true}", "missed its deadline"),
    "not importable under isolate": ("{name: 'CALLABLE', isolate: true}", "cannot import it"),
}


@pytest.mark.parametrize("case", list(BAD_ENTRIES))
def test_a_bad_entry_exits_2_naming_it_and_leaves_no_run_folder(case, tiny_model_dir, tmp_path, capsys):
    paths = {"BAD": _write(tmp_path, "bad.py", BAD),
             "SYNTAX": _write(tmp_path, "syntax.py", "def f(:\n    pass\n"),
             "RAISES": _write(tmp_path, "raises.py", "raise RuntimeError('cannot import me')\n")}
    entry, message = BAD_ENTRIES[case]
    for key, path in paths.items():
        entry = entry.replace(key, str(path))
    entry = entry.replace("CALLABLE", registry.register_callable(_local()))
    name = entry.split("'")[1]
    assert _train(tiny_model_dir, tmp_path / "run", entry, "reward_runner.timeout=2") == 2
    err = capsys.readouterr().err
    assert repr(name) in err and message in err, err
    assert not (tmp_path / "run").exists()


def _local():
    def local_reward(completions, **kwargs):  # defined inside a function: no import path finds it
        return [1.0] * len(completions)
    return local_reward


ROWS = [{"prompt": "2+2?", "answer": "4"}, {"prompt": "1+2?", "answer": "3"}]
SAMPLES = [Sample("4", ROWS[0]), Sample("5", ROWS[0]), Sample("3", ROWS[1])]


def _score(fn, rows=ROWS, samples=SAMPLES, **args):
    name = registry.register_callable(fn)
    runner = RewardRunner([RewardSpec(name, 1.0, args)])
    runner.check_fields(rows, "the rows")
    return runner.score(samples).rewards[:, 0].tolist()


def test_trl_inputs_columns_and_chat_completions():
    seen = {}

    def trl(completions, prompts=None, completion_ids=None, answer=None, **kwargs):
        seen.update(completions=completions, prompts=prompts, answer=answer, kwargs=kwargs)
        return [float(c == a) for c, a in zip(completions, answer)]

    assert _score(trl) == [1.0, 0.0, 1.0]
    assert seen["prompts"] == ["2+2?", "2+2?", "1+2?"] and seen["answer"] == ["4", "4", "3"]
    chat = [{"messages": [{"role": "user", "content": "hi"}], "answer": "4"}]

    def by_chat(completions, prompts, **kwargs):
        seen.update(completions=completions, prompts=prompts)
        return [None] * len(completions)

    assert _score(by_chat, chat, [Sample("4", chat[0])]) != [0.0]  # None: NaN, never 0
    assert seen["completions"] == [[{"role": "assistant", "content": "4"}]]
    assert seen["prompts"] == [chat[0]["messages"]]


def test_a_required_argument_that_is_no_column_is_an_error():
    def needs(completions, solution):
        return [0.0] * len(completions)

    with pytest.raises(RewardError, match=r"'needs' takes the argument 'solution'"):
        _score(needs)


def test_per_sample_and_async_forms():
    def per(sample: Sample, bonus=0.0):
        return float(sample.completion == sample.row["answer"]) + bonus

    async def per_async(sample):
        await asyncio.sleep(0)
        return float(sample.completion == sample.row["answer"])

    async def batch_async(completions, answer, **kwargs):
        await asyncio.sleep(0)
        return [float(c == a) for c, a in zip(completions, answer)]

    assert user.form_of(per, "per") == "sample" and user.form_of(batch_async, "b") == "batch"
    assert _score(per, bonus=0.5) == [1.5, 0.5, 1.5]
    assert _score(per_async) == [1.0, 0.0, 1.0]
    assert _score(batch_async) == [1.0, 0.0, 1.0]


def test_register_callable_names():
    def reward_len(completions, **kwargs):
        return [float(len(c)) for c in completions]

    def other(completions, **kwargs):
        return [0.0] * len(completions)

    other.__name__ = "reward_len"
    first = registry.register_callable(reward_len)
    assert registry.register_callable(reward_len) == first  # the same function, the same name
    second = registry.register_callable(other)
    assert second != first and second.startswith("reward_len")
    assert registry.register_callable(lambda sample: 1.0, name="my_fixed") == "my_fixed"
    again = lambda sample: 2.0  # noqa: E731 - an explicit name moves to the latest definition
    assert registry.register_callable(again, name="my_fixed") == "my_fixed"
    assert registry.build(RewardSpec("my_fixed"))([Sample("a", {})]) == [2.0]
    with pytest.raises(ValueError, match="already registered"):
        registry.register_callable(lambda sample: 2.0, name="math")
    format_like = lambda completions: [0.0] * len(completions)  # noqa: E731
    format_like.__name__ = "format"
    assert registry.register_callable(format_like) == "format_2"  # a built-in keeps its name
    with pytest.raises(ValueError, match="cannot take the batch"):
        registry.register_callable(lambda x, y: 0.0)
    assert _score(reward_len) == [1.0, 1.0, 1.0]


def test_a_registered_callable_from_a_module_runs_isolated():
    name = registry.register_callable(_not_importable)
    runner = RewardRunner([RewardSpec(name, 1.0, {}, isolate=True)], timeout=30)
    try:
        assert runner.score(SAMPLES).rewards[:, 0].tolist() == [1.0, 1.0, 1.0]
    finally:
        runner.close()


def test_unknown_names_hint_at_import_paths():
    with pytest.raises(ValueError, match=r"or your own function by its import path"):
        registry.build(RewardSpec("nothing_like_this"))
    with pytest.raises(ValueError, match="an import path is module:function"):
        registry.build(RewardSpec("module_only:"))


def test_grpokit_score_takes_import_paths_from_the_config_folder(tmp_path, monkeypatch):
    from grpokit.rewards.cli import load_specs

    (tmp_path / "cfg").mkdir()
    _write(tmp_path / "cfg", "r.py", "def f(completions, answer, **kw):\n"
                                      "    return [float(c == a) for c, a in zip(completions, answer)]\n")
    config = _write(tmp_path / "cfg", "rewards.yaml", "rewards: [{name: './r.py:f'}]\n")
    lines = [{"completion": "4", "answer": "4"}, {"completion": "5", "answer": "4"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    monkeypatch.chdir(tmp_path)
    assert main(["score", "-c", str(config), "--input", "in.jsonl", "--output", "out.jsonl"]) == 0
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [s["rewards"]["./r.py:f"] for s in scored] == [1.0, 0.0]
    _write(tmp_path / "cfg", "rewards.yaml", "rewards: [{name: './r.py:f', isolate: true}]\n")
    assert load_specs(str(config))[0].isolate is True
