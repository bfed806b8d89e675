"""Config building, overrides, presets and errors."""

import dataclasses

import pytest

from grpokit.config import Config, ConfigError, load_config, save_config
from grpokit.config.typed import parse_overrides


def test_defaults_resolve_the_grpo_preset():
    cfg = load_config()
    assert (cfg.algo.scale, cfg.algo.beta, cfg.algo.aggregation) == ("group", 0.04, "seq_mean_token_mean")


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("dr_grpo", dict(scale="none", aggregation="seq_sum_norm", beta=0.0)),
        ("dapo", dict(clip_high=0.28, aggregation="token_mean", dynamic_sampling=True,
                      overlong_penalty=True, exclude_tied=False, mask_truncated=False)),
        ("gspo", dict(ratio="sequence", clip_low=3e-4, clip_high=4e-4)),
    ],
)
def test_presets_fill_knobs(preset, expected):
    cfg = load_config(overrides=[f"algo.preset={preset}"])
    for key, value in expected.items():
        assert getattr(cfg.algo, key) == value


def test_explicit_knob_beats_preset():
    cfg = load_config(overrides=["algo.preset=dapo", "algo.clip_high=0.3", "algo.beta=0.01"])
    assert (cfg.algo.clip_high, cfg.algo.beta, cfg.algo.aggregation) == (0.3, 0.01, "token_mean")


def test_presets_leave_no_placeholder_in_the_resolved_config():
    from grpokit.config import AlgoConfig

    for preset in ("grpo", "dr_grpo", "dapo", "gspo"):
        algo = load_config(overrides=[f"algo.preset={preset}"]).algo
        assert all(v is not None for k, v in vars(algo).items()
                   if k not in ("dual_clip", "teacher")), preset
    assert AlgoConfig(preset="dapo").dynamic_sampling is True  # resolved when built, also in code
    assert load_config(overrides=["rollout.max_new_tokens=40"]).algo.overlong_buffer == 10


@pytest.mark.parametrize("old, new", [
    ("algo.tied_groups=drop_refill", "algo.dynamic_sampling=true"),
    ("algo.tied_groups=exclude", "algo.exclude_tied=true"),
    ("algo.overlong=shape", "algo.overlong_penalty=true"),
    ("algo.overlong=mask", "algo.mask_truncated=true"),
])
def test_replaced_keys_name_their_new_knobs(old, new):
    with pytest.raises(ConfigError, match=f"{old.split('=')[0]} was replaced by .*{new}"):
        load_config(overrides=[old])


def test_dotted_overrides_parse_yaml_values():
    assert parse_overrides(["a.b=3", "a.c=[1, 2]", "d=null", "e=x"]) == {
        "a": {"b": 3, "c": [1, 2]}, "d": None, "e": "x"}


@pytest.mark.parametrize(
    "override, message",
    [
        ("algo.clip_hihg=0.3", "did you mean 'clip_high'"),
        ("rollout.engine=vllm2", "valid values: 'hf', 'generate'"),
        ("algo.preset=ppo", "valid values: 'grpo', 'dr_grpo', 'dapo', 'gspo'"),
        ("rollout.group_size=1", "group_size must be at least 2"),
        ("rollout.group_size=two", "rollout.group_size: expected int"),
        ("train.minibatches=3", "must divide the rollout batch of 64"),
        ("bogus.x=1", "unknown key 'bogus'"),
        ("algo.dual_clip=0.5", "dual_clip must be > 1"),
        ("novalue", "key.path=value"),
        ("rollout.temperature=0", "temperature must be > 0"),
    ],
)
def test_invalid_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(overrides=[override])


def test_yaml_round_trip(tmp_path):
    cfg = load_config(overrides=["rewards=[{name: math, weight: 0.5, args: {timeout: 2}}]",
                                 "model.lora.enabled=true", "train.lr=3e-6"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert again.rewards[0].weight == 0.5 and again.model.lora.enabled


def test_every_field_has_a_docstring():
    import ast
    import inspect

    import grpokit.config as module

    tree = ast.parse(inspect.getsource(module))
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Config")):
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                nxt = body[i + 1] if i + 1 < len(body) else None
                assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), (
                    f"{cls.name}.{node.target.id} has no docstring")
    assert Config  # the tree is importable


@pytest.mark.parametrize("name", ["dapo_countdown", "r1_arithmetic", "humaneval_lora"])
def test_example_configs_load(name):
    from pathlib import Path

    from grpokit.data.base import load_task

    path = Path(__file__).parents[2] / "configs" / f"{name}.yaml"
    cfg = load_config(path)
    from grpokit.rewards.registry import build

    task = load_task(cfg.data.task, **cfg.data.task_args)  # the task args are valid too
    assert all(build(spec) for spec in cfg.rewards or task.rewards)  # and the reward args
    assert task.train_rows and cfg.log.output_dir.startswith("runs/")


UTILIZATION = "rollout.vllm.gpu_memory_utilization must be in (0, 1]"


@pytest.mark.parametrize("override, message", [
    ("rollout.vllm.gpu_memory_utilization=0", UTILIZATION),
    ("rollout.vllm.gpu_memory_utilization=1.5", UTILIZATION),
    ("rollout.vllm.kv_cache_gib=.nan", "rollout.vllm.kv_cache_gib: expected a finite number"),
    ("rollout.vllm.block_size=24", "rollout.vllm.block_size must be a positive multiple of 16"),
    ("rollout.vllm.block_size=0", "rollout.vllm.block_size must be a positive multiple of 16"),
    ("rollout.vllm.kv_cache_gib=0", "rollout.vllm.kv_cache_gib must be > 0 or null"),
    ("rollout.vllm.max_model_len=0", "rollout.vllm.max_model_len must be >= 1 or null"),
    ("rollout.vllm.probe_every=-1", "rollout.vllm.probe_every must be >= 0"),
    ("rollout.vllm.probe_tolerance=0", "rollout.vllm.probe_tolerance must be > 0 or null"),
    ("rollout.vllm.block_size=big", "rollout.vllm.block_size: expected int"),
])
def test_vllm_settings_are_checked_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(overrides=[override])


def test_vllm_settings_accept_null_and_reach_the_engine_arguments():
    from grpokit.rollout import vllm_options

    cfg = load_config(overrides=[
        "rollout.vllm.block_size=16", "rollout.vllm.max_model_len=2048",
        "rollout.vllm.probe_every=0", "rollout.vllm.gpu_memory_utilization=1",
        "rollout.vllm.kv_cache_gib=2"])
    assert vllm_options(cfg.rollout) == dict(
        kv_cache_gib=2, gpu_memory_utilization=1, block_size=16, max_model_len=2048,
        enforce_eager=True, probe_tolerance=None, probe_every=0)
    unset = load_config(overrides=["rollout.vllm.kv_cache_gib=null"]).rollout
    assert unset.vllm.kv_cache_gib is None
    assert vllm_options(None) == {}


@pytest.mark.parametrize("field", ["kv_cache_gib", "gpu_memory_utilization", "block_size",
                                   "max_model_len", "enforce_eager", "probe_tolerance",
                                   "probe_every"])
def test_the_flat_vllm_keys_of_earlier_releases_name_their_nested_key(field, tmp_path):
    with pytest.raises(ConfigError, match=rf"rollout.vllm_{field} was replaced by "
                                          rf"rollout.vllm.{field}"):
        load_config(overrides=[f"rollout.vllm_{field}=1"])
    path = tmp_path / "old.yaml"
    path.write_text(f"rollout:\n  engine: hf\n  vllm_{field}: 1\n")
    with pytest.raises(ConfigError, match=rf"rollout.vllm.{field}"):
        load_config(path)


@pytest.mark.parametrize("preset", ["grpo", "dr_grpo", "dapo", "gspo"])
def test_a_built_algo_section_holds_concrete_values_only(preset):
    """Only dual_clip and teacher may be null, and there null is a value: off."""
    algo = load_config(overrides=[f"algo.preset={preset}"]).algo
    left = [f.name for f in dataclasses.fields(algo)
            if getattr(algo, f.name) is None and f.name not in ("dual_clip", "teacher")]
    assert not left and algo.dual_clip is None and algo.teacher is None
    assert load_config(overrides=["rollout.max_new_tokens=40"]).algo.overlong_buffer == 10


@pytest.mark.parametrize("knob", ["estimator", "clip_low", "beta", "dynamic_sampling",
                                  "overlong_buffer"])
def test_null_is_not_a_value_of_a_preset_knob(knob):
    with pytest.raises(ConfigError, match=rf"algo.{knob}: expected \w+, got None"):
        load_config(overrides=[f"algo.{knob}=null"])


def test_sft_and_dpo_have_their_own_batch_size_and_length_fields(tiny_model_dir):
    from grpokit.runtime.models import load_policy
    from grpokit.stages.sft import make_state

    cfg = load_config(overrides=["sft.batch_size=3", "rollout.prompts_per_step=5",
                                 "dpo.batch_size=6"])
    assert make_state(cfg, load_policy(tiny_model_dir), 10).sampler.batch_size == 3
    from grpokit.stages.dpo import _start

    dpo = load_config(overrides=[f"model.path={tiny_model_dir}", "dpo.batch_size=6",
                                 "rollout.prompts_per_step=5", "eval.num_prompts=0",
                                 "data.max_prompt_length=1024"])
    assert _start(dpo, None).state.sampler.batch_size == 6
    for bad in ("sft.batch_size=0", "sft.max_target_length=0", "dpo.batch_size=0",
                "dpo.max_completion_length=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0] + ".* must be >= 1"):
            load_config(overrides=[bad])
