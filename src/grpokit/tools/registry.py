"""Tools by name, and running a decode step's tool calls concurrently, each under its deadline.

A tool is a plain callable `fn(argument: str) -> str`: the argument is the text the model wrote
between the tool's tags, the return value is the result the model reads. `register_tool` names
user tools; `python` and `calculator` are built in (tools/builtin.py).

Each call runs in a thread of its own, started at once. A call that has not returned when its
deadline passes is cut: its result is a timeout, the episode goes on. A Python thread cannot be
stopped from outside, so the thread of an in-process tool that hangs is abandoned (a daemon, it
holds no lock of ours); a tool that may hang for real should do its work in a process it can kill,
as the built-in python tool does (its sandbox kills the program at the same deadline).
"""

from __future__ import annotations

import difflib
import threading
import time
from dataclasses import dataclass
from typing import Callable

from grpokit.rewards.user import is_import_path, load_object

DEFAULT_DEADLINE_S = 5.0
"""Deadline of a registered tool that names none."""


class ToolError(Exception):
    """A failed call whose message is the result text the model reads (e.g. a traceback)."""


class ToolTimeout(Exception):
    """A tool that enforces its own deadline (a killed sandbox) and ran past it."""


@dataclass(frozen=True)
class Tool:
    """A named callable with a deadline."""

    name: str
    fn: Callable[[str], str]
    """fn(argument) -> result text; raising ToolError, the message is the result."""
    deadline: float = DEFAULT_DEADLINE_S
    """Seconds a call may take; past them it is cut and reported as a timeout."""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"tool name {self.name!r} must be an identifier (it names the tag "
                             "pair <name>…</name>)")
        if not callable(self.fn):
            raise ValueError(f"tool {self.name!r}: fn must be callable, got {self.fn!r}")
        if not 0 < self.deadline < float("inf"):
            raise ValueError(f"tool {self.name!r}: deadline must be a positive number of "
                             f"seconds, got {self.deadline!r}")


@dataclass(frozen=True)
class ToolResult:
    """What one call gave."""

    text: str
    """The result text (the return value, the error or the timeout note)."""
    status: str
    """ok, error (an exception, a malformed call) or timeout."""


_TOOLS: dict[str, Tool] = {}
BUILTIN_NAMES = ("python", "calculator")
"""The built-in tools, built from the config's tools section (tools/builtin.py)."""


def register_tool(name: str, fn: Callable[[str], str] | None = None, *,
                  deadline: float = DEFAULT_DEADLINE_S):
    """Register `fn(argument: str) -> str` as the tool `name` (tools.names in the config picks
    it); without `fn`, a decorator. Registering another function under a taken name is an
    error."""
    if fn is None:
        def decorator(f: Callable[[str], str]) -> Callable[[str], str]:
            register_tool(name, f, deadline=deadline)
            return f
        return decorator
    tool = Tool(name, fn, deadline)
    if name in BUILTIN_NAMES or (name in _TOOLS and _TOOLS[name].fn is not fn):
        raise ValueError(f"tool {name!r} is already registered")
    _TOOLS[name] = tool
    return tool


def registered_tool(name: str) -> Tool:
    """The user tool registered as `name`, or the function `fn(argument: str) -> str` an import
    path names (`module:attr`, `file.py:attr`), called by the function's own name (the tag the
    model writes); an unknown name is an error listing the known ones."""
    if is_import_path(name):
        fn = load_object(name, "tool")
        if not callable(fn):
            raise ValueError(f"tool {name!r} is a {type(fn).__name__}, not a function")
        return Tool(name.rpartition(":")[2].split(".")[-1], fn, DEFAULT_DEADLINE_S)
    if name not in _TOOLS:
        known = sorted([*BUILTIN_NAMES, *_TOOLS])
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown tool {name!r}{hint}; known tools: {', '.join(known)} (user "
                         "tools are named with grpokit.tools.register_tool)")
    return _TOOLS[name]


def _run(tool: Tool, argument: str, out: list[ToolResult]) -> None:
    try:
        text = tool.fn(argument)
        if not isinstance(text, str):
            raise TypeError(f"tool {tool.name!r} returned {type(text).__name__}, expected str")
        out.append(ToolResult(text, "ok"))
    except ToolTimeout:
        out.append(ToolResult(f"timed out after {tool.deadline:g} s", "timeout"))
    except ToolError as exc:
        out.append(ToolResult(str(exc), "error"))
    except Exception as exc:  # noqa: BLE001 - a failing tool is a result the model reads
        out.append(ToolResult(f"{type(exc).__name__}: {exc}", "error"))


def call_tools(calls: list[tuple[Tool, str]]) -> list[ToolResult]:
    """Run every (tool, argument) call at once, each in its own thread, and wait for each until
    its deadline; the results keep the calls' order."""
    started = []
    for tool, argument in calls:
        out: list[ToolResult] = []
        thread = threading.Thread(target=_run, args=(tool, argument, out), daemon=True,
                                  name=f"grpokit-tool-{tool.name}")
        thread.start()
        started.append((thread, out, time.monotonic() + tool.deadline))
    results = []
    for (tool, _), (thread, out, deadline) in zip(calls, started):
        thread.join(max(deadline - time.monotonic(), 0.0))
        results.append(out[0] if out else ToolResult(f"timed out after {tool.deadline:g} s",
                                                     "timeout"))
    return results
