"""Many sandboxed executions in parallel: threads, each driving one sandbox process."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from grpokit.sandbox.core import ExecResult, run


class SandboxPool:
    """Runs executions on up to `workers` sandboxes at once; results keep the input order."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="grpokit-sandbox")

    def run_many(self, jobs: list[dict[str, Any]]) -> list[ExecResult]:
        """Each job is the keyword arguments of `grpokit.sandbox.run` (`program` included)."""
        futures = [self._executor.submit(run, **job) for job in jobs]
        return [future.result() for future in futures]

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
