import logging
import math
import threading
import time

import pytest
import torch

from grpokit.rewards.base import RewardSpec, Sample, StepRewards
from grpokit.rewards.item import ItemReward
from grpokit.rewards.registry import per_item
from grpokit.rewards.runner import RewardError, RewardRunner


class Batch:
    """A batch reward function returning fixed values."""

    def __init__(self, name, values, delay=0.0):
        self.name, self.values, self.delay = name, values, delay

    def __call__(self, samples):
        time.sleep(self.delay)
        return list(self.values)


def runner(*fns, **kwargs):
    specs = [RewardSpec(fn.name, weight=float(i + 1)) for i, fn in enumerate(fns)]
    return RewardRunner(specs, functions=list(fns), **kwargs)


SAMPLES = [Sample(str(i), {"id": i}) for i in range(4)]


def test_matrix_names_weights_and_none_as_nan():
    result = runner(Batch("a", [1.0, 0.0, None, 0.5]), Batch("b", [2, 3, 4, 5])).score(SAMPLES)
    expected = torch.tensor([[1.0, 2.0], [0.0, 3.0], [math.nan, 4.0], [0.5, 5.0]])
    assert torch.equal(result.rewards.isnan(), expected.isnan())
    assert torch.allclose(result.rewards.nan_to_num(), expected.nan_to_num())
    assert result.names == ["a", "b"] and result.weights == [1.0, 2.0]
    assert result.errors == {"a": 0, "b": 0} and result.step_rewards is None


def test_step_rewards_are_carried_separately():
    steps = StepRewards((0.5, 1.0), (3, 7))
    result = runner(Batch("p", [steps, None, 1.0, None])).score(SAMPLES)
    assert result.step_rewards == {"p": [steps, None, None, None]}
    assert math.isnan(result.rewards[0, 0]) and result.rewards[2, 0] == 1.0


@pytest.mark.parametrize(
    "values, message",
    [
        ([1.0, 2.0, 3.0], "returned 3 values for 4 samples"),
        ([1.0, float("nan"), 0.0, 0.0], "sample 1: non-finite"),
        ([1.0, 0.0, float("inf"), 0.0], "sample 2: non-finite"),
        ([1.0, 0.0, 0.0, "1"], "sample 3: expected a float"),
        ([StepRewards((float("nan"),), (1,)), 0.0, 0.0, 0.0], "sample 0: non-finite step"),
    ],
)
def test_malformed_outputs_are_errors(values, message):
    with pytest.raises(RewardError, match=f"'bad'.*{message}"):
        runner(Batch("bad", values)).score(SAMPLES)


class Returns:
    """A batch reward function returning one object as it is (not a list)."""

    def __init__(self, name, value):
        self.name, self.value, self.calls = name, value, 0

    def __call__(self, samples):
        self.calls += 1
        return self.value


@pytest.mark.parametrize("value", ["1.0", b"1", {"a": 1.0}, 1.0, None])
def test_an_output_that_is_no_list_stops_the_run_without_a_retry(value):
    fn = Returns("bad", value)
    with pytest.raises(RewardError, match="'bad' returned .* expected a list of one value per"):
        runner(fn).score(SAMPLES)
    assert fn.calls == 1  # a malformed output is not retried sample by sample


def test_an_array_output_is_a_list():
    result = runner(Returns("arr", torch.tensor([1.0, 0.0, 0.5, 2.0]))).score(SAMPLES)
    assert result.rewards[:, 0].tolist() == [1.0, 0.0, 0.5, 2.0]


def _flaky(sample):
    if sample.row["id"] == 2:
        raise KeyError("answer")
    return 1.0


def test_per_sample_exception_becomes_none_and_is_counted():
    result = runner(ItemReward("flaky", _flaky), max_error_rate=0.5).score(SAMPLES)
    assert result.rewards[:, 0].isnan().tolist() == [False, False, True, False]
    assert result.errors == {"flaky": 1}
    assert "sample 2 (row id=2): KeyError" in result.error_examples["flaky"][0]


def test_batch_function_without_score_one_is_retried_per_sample():
    def fn(samples):
        if any(s.row["id"] == 1 for s in samples):
            raise ValueError("boom")
        return [0.5] * len(samples)

    fn.name = "batchy"
    result = runner(fn, max_error_rate=0.25).score(SAMPLES)
    assert result.rewards[:, 0].isnan().tolist() == [False, True, False, False]


def test_error_rate_above_limit_stops_the_run():
    with pytest.raises(RewardError, match="(?s)'flaky' failed on 1 of 4 samples.*id=2"):
        runner(ItemReward("flaky", _flaky), max_error_rate=0.1).score(SAMPLES)


def test_functions_run_concurrently_and_deadline_applies():
    start = time.monotonic()
    result = runner(Batch("a", [1.0] * 4, 0.5), Batch("b", [1.0] * 4, 0.5)).score(SAMPLES)
    assert time.monotonic() - start < 0.9
    assert result.errors == {"a": 0, "b": 0}

    hang = threading.Event()
    stuck = ItemReward("stuck", lambda s: hang.wait(5))
    fast = Batch("fast", [1.0] * 4)
    start = time.monotonic()
    result = runner(fast, stuck, timeout=0.2, max_error_rate=1.0).score(SAMPLES)
    hang.set()
    assert time.monotonic() - start < 1.0
    assert result.errors == {"fast": 0, "stuck": 4}
    assert result.rewards[:, 1].isnan().all() and (result.rewards[:, 0] == 1.0).all()


def test_config_errors():
    with pytest.raises(ValueError, match="at least one"):
        RewardRunner([])
    with pytest.raises(ValueError, match="repeated"):
        RewardRunner([RewardSpec("a"), RewardSpec("a")], functions=[Batch("a", []), Batch("a", [])])
    with pytest.raises(ValueError, match="max_error_rate"):
        RewardRunner([RewardSpec("a")], functions=[Batch("a", [])], max_error_rate=2)


def test_empty_batch():
    result = runner(Batch("a", [])).score([])
    assert result.rewards.shape == (0, 1)


@per_item("test_runner_user_function")
def user_function(sample):
    """A user's function, run in this process (not isolated)."""
    return 1.0


def test_in_process_user_functions_are_named_once_at_start_with_the_isolate_remedy(caplog):
    specs = [RewardSpec("test_runner_user_function"), RewardSpec("format")]
    with caplog.at_level(logging.WARNING, logger="grpokit.rewards.runner"):
        runner_ = RewardRunner(specs, timeout=2.0)
        runner_.score(SAMPLES)
        runner_.score(SAMPLES)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"'test_runner_user_function' ({__name__})" in warning and "'format'" not in warning
    assert "timeout=2.0s" in warning and "isolate=True" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="grpokit.rewards.runner"):
        RewardRunner([RewardSpec("format"), RewardSpec("overlong", 1.0, {"cache": 4})])
    assert not caplog.records  # built-in functions bound their own work


def test_an_isolated_function_whose_module_fails_to_import_stops_before_anything_is_written(
        tiny_model_dir, tmp_path, capsys):
    from grpokit.cli import main
    from grpokit.rewards.registry import register

    register("test_runner_unimportable", isolate=True, module="grpokit_test_no_such_module")(
        lambda **args: None)
    out = tmp_path / "run"
    assert main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={out}",
                 "rewards=[{name: test_runner_unimportable}]", "train.steps=1",
                 "eval.num_prompts=0", "log.report_to=[]"]) == 2
    err = capsys.readouterr().err
    assert "'test_runner_unimportable' (isolated)" in err
    assert "importing grpokit_test_no_such_module exited while importing them" in err
    assert not out.exists()
