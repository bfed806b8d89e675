import os
import time

import pytest

from grpokit.rewards.workers import WorkerPool


@pytest.fixture(scope="module")
def pool():
    pool = WorkerPool(size=1)
    yield pool
    pool.close()


def test_runs_and_reuses_a_worker(pool):
    first = pool.run(os.getpid, (), 10)
    second = pool.run(os.getpid, (), 10)
    assert first.status == second.status == "ok"
    assert first.value == second.value != os.getpid()


def test_error_is_reported(pool):
    result = pool.run(int, ("not a number",), 10)
    assert result.status == "error"
    assert "ValueError" in result.value


def test_timeout_kills_and_replaces(pool):
    before = pool.run(os.getpid, (), 10).value
    start = time.monotonic()
    assert pool.run(time.sleep, (30,), 0.5).status == "timeout"
    assert time.monotonic() - start < 5
    after = pool.run(os.getpid, (), 10)
    assert after.status == "ok" and after.value != before


def test_closed_pool_refuses():
    pool = WorkerPool(size=1)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.run(os.getpid, (), 1)
