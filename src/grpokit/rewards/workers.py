"""Killable worker processes with hard per-task deadlines, for verifiers that can hang (SymPy).

A `WorkerPool` keeps a few long-lived processes (fresh interpreters, never forked, so it is safe
with threads) and reuses them. `run(fn, args, timeout)` sends one task to an idle worker and waits at most
`timeout` seconds for its answer; a worker that misses its deadline is killed and a fresh one takes
its place on the next task. Signals are never used, so `run` works from any thread.
"""

from __future__ import annotations

import atexit
import importlib
import os
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Callable

# Start-up of a worker (interpreter + imports) is not part of any task's deadline.
_STARTUP_TIMEOUT = 120.0


@dataclass
class TaskResult:
    """What happened to one task."""

    status: str
    """"ok" (value is the function's return value), "error" (value is the exception text) or
    "timeout" (value is None: the worker was killed)."""
    value: Any = None
    """The return value, or the error message."""


def serve(fd: int, preload: tuple[str, ...]) -> None:
    """Worker side: import `preload`, then answer tasks from the parent until it hangs up."""
    conn = Connection(fd)
    for module in preload:
        importlib.import_module(module)
    conn.send("ready")
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
    # multiprocessing's spawn it does not re-run the user's __main__ script.
    def __init__(self, preload: tuple[str, ...]):
        parent, child = socket.socketpair()
        code = f"from grpokit.rewards.workers import serve; serve({child.fileno()}, {preload!r})"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen([sys.executable, "-c", code], pass_fds=[child.fileno()], env=env)
        child.close()
        self.conn = Connection(parent.detach())
        if not self.conn.poll(_STARTUP_TIMEOUT) or self.conn.recv() != "ready":
            self.kill()
            raise RuntimeError(f"reward worker did not start within {_STARTUP_TIMEOUT:.0f}s")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5)
        self.conn.close()


class WorkerPool:
    """At most `size` worker processes, reused across tasks, each task with a hard deadline."""

    def __init__(self, size: int | None = None, preload: tuple[str, ...] = ()):
        self.size = max(1, size or os.cpu_count() or 1)
        self._preload = preload
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._closed = False

    def run(self, fn: Callable[..., Any], args: tuple, timeout: float) -> TaskResult:
        """Run `fn(*args)` (a module-level, picklable function) in a worker within `timeout` s."""
        with self._slots:
            worker = self._take()
            try:
                worker.conn.send((fn, args))
                if not worker.conn.poll(timeout):
                    worker.kill()
                    return TaskResult("timeout")
                status, value = worker.conn.recv()
            except (EOFError, OSError) as exc:
                worker.kill()
                return TaskResult("error", f"worker died: {exc!r}")
            self._give_back(worker)
            return TaskResult(status, value)

    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                worker.kill()
        return _Worker(self._preload)

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


def shared_pool(preload: tuple[str, ...] = ()) -> WorkerPool:
    """The process-wide pool (one worker per CPU core) for tasks that preload these modules."""
    with _shared_lock:
        if preload not in _shared:
            _shared[preload] = WorkerPool(preload=preload)
        return _shared[preload]


@atexit.register
def _close_shared() -> None:
    for pool in _shared.values():
        pool.close()
