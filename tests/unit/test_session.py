"""Building a run's parts from the config: the one bf16 decision, rewards, reference loading."""

import pytest

from grpokit.config import ConfigError, load_config
from grpokit.runtime import models, precision
from grpokit.training.session import build_session, reward_specs

TASK = ["data.max_prompt_length=1024",
        "data.task_args={digits: 1, ops: '+', train_size: 4, eval_size: 2, style: short}"]


@pytest.mark.parametrize("mode, has_bf16, expected", [
    ("bf16", False, True),  # forced bf16 samples in bf16 too, not only trains in it
    ("auto", False, False), ("auto", True, True), ("off", True, False),
])
def test_sampling_and_training_follow_one_bf16_decision(tiny_model_dir, monkeypatch, mode,
                                                        has_bf16, expected):
    monkeypatch.setattr(precision, "bf16_probe", lambda: {
        "fp32_gflops": 100.0, "bf16_gflops": 500.0 if has_bf16 else 50.0, "key": "x",
        "cached": "yes"})
    session = build_session(load_config(overrides=[f"model.path={tiny_model_dir}", *TASK,
                                                   f"model.autocast='{mode}'", "algo.beta=0"]))
    assert session.bf16 is expected and session.engine.autocast is expected


def test_reference_is_loaded_only_when_the_kl_term_needs_it(tiny_model_dir):
    build = lambda *extra: build_session(load_config(overrides=[
        f"model.path={tiny_model_dir}", *TASK, *extra]))
    assert build("algo.beta=0.04").reference is not None
    assert build("algo.beta=0").reference is None
    assert build("algo.beta=0.04", "model.lora.enabled=true").reference is None  # adapter off


def test_rewards_are_resolved_into_the_config_with_the_overlong_penalty():
    from grpokit.data import load_task

    task = load_task("arithmetic", train_size=4, eval_size=2)
    cfg = load_config(overrides=["algo.preset=dapo", "rollout.max_new_tokens=20"])
    assert [(s.name, s.args) for s in reward_specs(cfg, task)] == [
        ("math", {"extract": ["answer_tag", "last_number"]}), ("overlong", {"cache": 5})]
    cfg = load_config(overrides=["algo.overlong_penalty=true", "algo.overlong_buffer=3"])
    assert reward_specs(cfg, task)[-1].args == {"cache": 3}
    assert [s.name for s in reward_specs(load_config(), task)] == ["math"]


def test_a_dataset_without_rewards_names_the_field(tmp_path):
    from grpokit.data import Task

    cfg = load_config(overrides=[f"data.path={tmp_path / 'rows.jsonl'}"])
    with pytest.raises(ConfigError, match="rewards: a dataset given by data.path needs"):
        reward_specs(cfg, Task("rows", [{"prompt": "p"}], []))
