"""Isolated execution of untrusted code (model completions); see docs/sandbox.md."""

from grpokit.sandbox.backends import BACKENDS, Limits
from grpokit.sandbox.core import ExecResult, SandboxUnavailable, detect, doctor, resolve, run
from grpokit.sandbox.pool import SandboxPool

__all__ = [
    "BACKENDS", "ExecResult", "Limits", "SandboxPool", "SandboxUnavailable", "detect", "doctor",
    "resolve", "run",
]
