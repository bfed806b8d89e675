"""Killable worker processes with hard per-task deadlines, for verifiers that can hang (SymPy)
and reward functions that opt in to run isolated.

A `WorkerPool` keeps a few long-lived processes (fresh interpreters, never forked, so it is safe
with threads) and reuses them. `run(fn, args, timeout)` sends one task to an idle worker and waits at most
`timeout` seconds for its answer; a worker that misses its deadline is killed together with every
process it started (each worker leads its own process group) and a fresh one takes its place on
the next task. `lease()` keeps one worker for a series of tasks, so that what a worker caches
(a parsed gold answer) serves all of them. Signals are never used in the parent, so `run` works
from any thread.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Iterator
from multiprocessing.connection import Connection
from typing import Any, Callable

# Start-up of a worker (interpreter + imports) is not part of any task's deadline.
_STARTUP_TIMEOUT = 120.0


@dataclass
class TaskResult:
    """What happened to one task."""

    status: str
    """"ok" (value is the function's return value), "error" (value is the exception text),
    "died" (value says how the worker went away) or "timeout" (value is None: the worker was
    killed)."""
    value: Any = None
    """The return value, or the error message."""


def serve(fd: int, preload: tuple[str, ...]) -> None:
    """Worker side: import `preload`, then answer tasks from the parent until it hangs up."""
    conn = Connection(fd)
    for module in preload:
        importlib.import_module(module)
    try:
        conn.send("ready")
    except OSError:  # the parent closed the pool while this spare was starting: nothing to do
        return
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        fn, args = task
        try:
            conn.send(("ok", fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - the parent decides what a failure means
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:2000]))


class _Worker:
    # A fresh interpreter started with subprocess (never fork): safe with threads, and unlike
    # multiprocessing's spawn it does not re-run the user's __main__ script. Starting it does not
    # wait for it: `wait_ready` does, so a replacement can start up while nothing waits on it.
    def __init__(self, preload: tuple[str, ...]):
        parent, child = socket.socketpair()
        code = f"from grpokit.rewards.workers import serve; serve({child.fileno()}, {preload!r})"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        # Its own session and process group: a kill reaches whatever the task started, too.
        self.process = subprocess.Popen([sys.executable, "-c", code], pass_fds=[child.fileno()],
                                        env=env, start_new_session=True)
        child.close()
        self.conn = Connection(parent.detach())
        self.preload = preload
        self.started = time.monotonic()
        self.ready = False

    def wait_ready(self, timeout: float) -> bool:
        """True once it has started; False while it is still starting after `timeout` seconds.
        Raises when it died or took longer than the start-up limit (it is then killed)."""
        if self.ready:
            return True
        limit = self.started + _STARTUP_TIMEOUT - time.monotonic()
        why = f"did not start within {_STARTUP_TIMEOUT:.0f}s"
        try:
            if not self.conn.poll(max(min(timeout, limit), 0.0)):
                if limit > timeout:
                    return False
                raise EOFError("start-up limit")
            # An answer that is not "ready" is the worker going away: its import failed.
            why = "exited while importing them (its error is printed above)"
            self.ready = self.conn.recv() == "ready"
        except (EOFError, OSError):
            self.ready = False
        if not self.ready:
            self.kill()
            raise RuntimeError(f"reward worker importing {', '.join(self.preload) or 'nothing'} {why}")
        return True

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.process.kill()
        self.process.wait(5)
        self.conn.close()

    def run(self, fn: Callable[..., Any], args: tuple, timeout: float) -> TaskResult:
        """One task on this worker; on a missed deadline or a dead worker it is killed."""
        try:
            self.conn.send((fn, args))
            if not self.conn.poll(timeout):
                self.kill()
                return TaskResult("timeout")
            status, value = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            return TaskResult("died", f"worker died: {exc!r}")
        return TaskResult(status, value)


class Lease:
    """One worker kept for a series of tasks; a killed worker is replaced on the next task."""

    def __init__(self, pool: "WorkerPool"):
        self._pool = pool
        self._worker: _Worker | None = None

    def run(self, fn: Callable[..., Any], args: tuple, timeout: float,
            deadline: float | None = None) -> TaskResult:
        """Run `fn(*args)` (a module-level, picklable function) within `timeout` seconds, or, with
        an absolute `deadline` (time.monotonic()), before it, start-up of a fresh worker included."""
        if self._worker is None or not self._worker.alive():
            self._worker = self._pool._take()
        wait = _STARTUP_TIMEOUT if deadline is None else deadline - time.monotonic()
        if not self._worker.wait_ready(wait):
            return TaskResult("timeout")  # still starting: it stays in the pool for the next task
        left = timeout if deadline is None else max(deadline - time.monotonic(), 0.0)
        result = self._worker.run(fn, args, left)
        if not self._worker.alive():
            self._worker = None
            self._pool._start_spare()
        return result

    def release(self) -> None:
        if self._worker is not None:
            self._pool._give_back(self._worker)
            self._worker = None


class WorkerPool:
    """At most `size` worker processes, reused across tasks, each task with a hard deadline."""

    def __init__(self, size: int | None = None, preload: tuple[str, ...] = ()):
        self.size = max(1, size or os.cpu_count() or 1)
        self._preload = preload
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._closed = False
        _pools.add(self)

    def run(self, fn: Callable[..., Any], args: tuple, timeout: float,
            deadline: float | None = None) -> TaskResult:
        """Run `fn(*args)` (a module-level, picklable function) in a worker within `timeout` s
        (or before the absolute `deadline`, see Lease.run)."""
        with self.lease() as lease:
            return lease.run(fn, args, timeout, deadline)

    @contextlib.contextmanager
    def lease(self) -> Iterator[Lease]:
        """One worker slot for a series of tasks (see Lease)."""
        with self._slots:
            lease = Lease(self)
            try:
                yield lease
            finally:
                lease.release()

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            while self._idle:
                worker = self._idle.pop(0)
                if worker.alive():
                    return worker
                worker.kill()
        return _Worker(self._preload)

    def _start_spare(self) -> None:
        """Start a replacement for a killed worker now, so it is ready by the next task."""
        with self._lock:
            if not self._closed and len(self._idle) < self.size:
                self._idle.append(_Worker(self._preload))

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if self._closed:
                worker.kill()
            else:
                self._idle.append(worker)

    def close(self) -> None:
        """Stop every idle worker; tasks still running finish and their workers are then stopped."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            try:
                worker.conn.send(None)
            except OSError:
                pass
            worker.kill()


_shared: dict[tuple[str, ...], WorkerPool] = {}
_shared_lock = threading.Lock()
# Every pool, so that none leaves a worker behind at exit.
_pools: "weakref.WeakSet[WorkerPool]" = weakref.WeakSet()


def shared_pool(preload: tuple[str, ...] = ()) -> WorkerPool:
    """The process-wide pool (one worker per CPU core) for tasks that preload these modules."""
    with _shared_lock:
        if preload not in _shared:
            _shared[preload] = WorkerPool(preload=preload)
        return _shared[preload]


@atexit.register
def _close_all() -> None:
    for pool in list(_pools):
        pool.close()
