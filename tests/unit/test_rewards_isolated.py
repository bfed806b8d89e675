"""Functions registered with isolate=True run in a killable worker process: a function stuck in
C code that holds the interpreter lock misses its deadline by well under a second, nothing it
started survives, and twenty steps with a hanging reward leave no thread or process behind."""

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from grpokit.rewards.base import RewardSpec, Sample
from grpokit.rewards.isolated import IsolatedReward
from grpokit.rewards.registry import per_item, register
from grpokit.rewards.runner import RewardError, RewardRunner


@per_item("test_isolated_gil_hang", isolate=True)
def gil_hang(sample, spawn=False):
    """Starts a grandchild (when asked), then backtracks a regex forever: the `re` engine holds the
    interpreter lock, so no thread of this process could ever run again."""
    if spawn:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path(sample.row["pidfile"]).write_text(str(child.pid))
    return 1.0 if re.match(r"(a|aa)*c", "a" * 200) else 0.0


@per_item("test_isolated_echo", isolate=True)
def echo(sample, bad_id=None):
    """The sample's id as its reward (a failing id raises), and the pid of the process it ran in."""
    if sample.row["id"] == bad_id:
        raise KeyError("no such thing")
    return float(sample.row["id"])


@per_item("test_isolated_pid", isolate=True)
def worker_pid(sample):
    return float(os.getpid())


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and _alive(child):
                found.add(child)
                todo.append(child)
    return found


def _threads() -> tuple[int, int]:
    return threading.active_count(), len(os.listdir("/proc/self/task"))


SAMPLES = [Sample(str(i), {"id": i}) for i in range(4)]


def test_values_come_back_from_the_worker_and_a_failing_sample_is_an_error():
    runner = RewardRunner([RewardSpec("test_isolated_echo", args={"bad_id": 2})], max_error_rate=0.5)
    try:
        result = runner.score(SAMPLES)
        assert result.rewards[:, 0].tolist()[:2] == [0.0, 1.0] and result.rewards[3, 0] == 3.0
        assert result.error_mask[:, 0].tolist() == [False, False, True, False]
        assert "sample 2 (row id=2)" in result.error_examples["test_isolated_echo"][0]
        assert "KeyError" in result.error_examples["test_isolated_echo"][0]
    finally:
        runner.close()


def test_it_runs_in_another_process():
    runner = RewardRunner([RewardSpec("test_isolated_pid")])
    try:
        pid = runner.score(SAMPLES[:1]).rewards[0, 0].item()
        assert pid != os.getpid() and pid in _descendants(os.getpid())
    finally:
        runner.close()


def test_bad_args_are_an_error_when_the_runner_is_built():
    with pytest.raises(ValueError, match="test_isolated_echo.*isolated.*unexpected keyword"):
        RewardRunner([RewardSpec("test_isolated_echo", args={"nope": 1})])


def test_a_script_cannot_register_an_isolated_function():
    def fn(samples):
        return [None] * len(samples)

    fn.__module__ = "__main__"
    with pytest.raises(ValueError, match="importable module"):
        register("test_isolated_from_main", isolate=True)(fn)


def test_a_gil_holding_hang_misses_its_deadline_by_under_a_second_and_leaves_nothing(tmp_path):
    pidfile = tmp_path / "child.pid"
    spec = RewardSpec("test_isolated_gil_hang", args={"spawn": True})
    runner = RewardRunner([spec], timeout=1.0, max_error_rate=1.0)
    try:
        start = time.monotonic()
        result = runner.score([Sample("x", {"id": 0, "pidfile": str(pidfile)})])
        overrun = time.monotonic() - start - 1.0
        assert overrun < 1.0, f"missed the deadline by {overrun:.2f}s"
        assert result.error_mask.all() and result.rewards.isnan().all()
        assert "missed its deadline" in result.error_examples["test_isolated_gil_hang"][0]
        child = int(pidfile.read_text())
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the reward's own child process outlived the deadline"
    finally:
        runner.close()


def test_twenty_steps_with_a_hanging_reward_leave_no_thread_or_process_behind():
    runner = RewardRunner([RewardSpec("test_isolated_gil_hang")], timeout=0.2, max_error_rate=1.0)
    try:
        runner.score(SAMPLES[:2])  # the first step starts what the process keeps (torch's threads)
        threads, processes = _threads(), _descendants(os.getpid())
        for _ in range(20):
            result = runner.score(SAMPLES[:2])
            assert result.errors == {"test_isolated_gil_hang": 2}
        python_threads, native_threads = _threads()
        # A joined thread may take a moment to leave /proc: native threads get a second to settle.
        settle = time.monotonic() + 1.0
        while native_threads > threads[1] and time.monotonic() < settle:
            time.sleep(0.05)
            native_threads = _threads()[1]
        assert python_threads == threads[0] and native_threads <= threads[1]
        # Each step's hung worker was killed; what is left is one fresh spare for the next step.
        after = _descendants(os.getpid())
        assert len(after) <= len(processes)
    finally:
        runner.close()


def test_the_error_rate_stops_the_run_with_the_last_error():
    runner = RewardRunner([RewardSpec("test_isolated_gil_hang")], timeout=0.2, max_error_rate=0.5)
    try:
        with pytest.raises(RewardError, match="'test_isolated_gil_hang' failed on 2 of 2.*last error: "
                                              "sample 1 .*missed its deadline"):
            runner.score(SAMPLES[:2])
    finally:
        runner.close()


def test_an_in_process_function_that_hangs_is_not_started_again_while_it_runs():
    release = threading.Event()

    def stuck(samples):
        release.wait(30)
        return [1.0] * len(samples)

    stuck.name = "stuck"
    runner = RewardRunner([RewardSpec("stuck")], functions=[stuck], timeout=0.1, max_error_rate=1.0)
    threads = _threads()[0]
    try:
        for _ in range(20):
            assert runner.score(SAMPLES).errors == {"stuck": 4}
        assert _threads()[0] <= threads + 1
    finally:
        release.set()
