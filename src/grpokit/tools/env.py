"""Environments by name, and the built-in one, `tags`: tool calls written as tag pairs.

In a `tags` episode the model calls tool `name` by writing `<name>argument</name>`; its turn ends
at the closing tag, the tool runs, and `tools.result_template` (by default
`<output>\\n{result}\\n</output>\\n`) is inserted before the model's next turn. A turn holds one
call: the first closing tag ends it, and the argument is what stands after the last matching
opening tag before it (a Markdown code fence around it is dropped).
"""

from __future__ import annotations

import difflib
import re
import textwrap
from typing import Any, Callable

from grpokit.config.tools import ToolsConfig
from grpokit.data.render import prompt_messages
from grpokit.rewards.user import is_import_path, load_object
from grpokit.rollout.base import Environment, EnvReply, ModelTurn
from grpokit.tools.builtin import calculator_tool, python_tool
from grpokit.tools.registry import Tool, ToolResult, call_tools, registered_tool

_FENCE = re.compile(r"^```[\w+-]*\n(.*?)\n?```$", re.DOTALL)


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with a note of how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n... ({len(text) - limit} more characters cut)"


def build_tools(cfg: ToolsConfig) -> dict[str, Tool]:
    """The tools `tools.names` lists: the built-ins from the config, the others as registered
    (`tools.timeout`, when set, replaces every deadline)."""
    tools = {}
    for name in cfg.names:
        if name == "python":
            tool = python_tool(cfg.timeout, cfg.memory_mb, cfg.sandbox_backend,
                               cfg.max_output_chars)
        elif name == "calculator":
            tool = calculator_tool(cfg.timeout)
        else:
            tool = registered_tool(name)
            if cfg.timeout is not None:
                tool = Tool(tool.name, tool.fn, cfg.timeout)
        tools[tool.name] = tool  # an import path's tool goes by its function's name
    return tools


class TagEnvironment:
    """The `tags` environment (see the module docstring)."""

    def __init__(self, tools: dict[str, Tool], system_prompt: str | None = None,
                 result_template: str = "<output>\n{result}\n</output>\n",
                 max_output_chars: int = 512):
        if not tools:
            raise ValueError("TagEnvironment needs at least one tool")
        self.tools, self.system_prompt = tools, system_prompt
        self.result_template, self.max_output_chars = result_template, max_output_chars
        self.stop_strings = tuple(f"</{name}>" for name in tools)

    def first_messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """The row's messages with the run's system prompt (which tells the model the tags)."""
        return prompt_messages(row, self.system_prompt)

    def parse(self, text: str) -> tuple[Tool, str] | str:
        """(tool, argument) of the call a turn ends with, or why it is malformed."""
        ends = [(text.find(f"</{name}>"), name) for name in self.tools]
        found = [(i, n) for i, n in ends if i >= 0]
        if not found:
            return "malformed call: no closing tag"
        end, name = min(found)
        start = text.rfind(f"<{name}>", 0, end)
        if start < 0:
            return f"malformed call: </{name}> without <{name}> before it"
        argument = text[start + len(name) + 2:end].strip("\n")
        fenced = _FENCE.match(argument.strip())
        return self.tools[name], textwrap.dedent(fenced.group(1) if fenced else argument)

    def respond(self, turns: list[ModelTurn]) -> list[EnvReply]:
        """Run the turns' calls together; every reply is the rendered result of one call."""
        parsed = [self.parse(turn.text) for turn in turns]
        calls = [p for p in parsed if not isinstance(p, str)]
        results = iter(call_tools(calls))
        replies = []
        for p in parsed:
            result = ToolResult(p, "error") if isinstance(p, str) else next(results)
            text = self.result_template.replace(
                "{result}", clip(result.text.rstrip("\n"), self.max_output_chars))
            replies.append(EnvReply(text, tool_calls=1,
                                    tool_errors=int(result.status == "error"),
                                    tool_timeouts=int(result.status == "timeout")))
        return replies


EnvironmentFactory = Callable[[ToolsConfig, "str | None"], Environment]
"""factory(tools config, the run's system prompt) -> Environment."""

_ENVIRONMENTS: dict[str, EnvironmentFactory] = {}


def register_environment(name: str, factory: EnvironmentFactory,
                         replace: bool = False) -> EnvironmentFactory:
    """Name an environment factory, so that `tools.environment: name` runs episodes with it;
    `replace` lets a name be given to another factory (the Python API's objects)."""
    if name == "tags" or (name in _ENVIRONMENTS and _ENVIRONMENTS[name] is not factory
                          and not replace):
        raise ValueError(f"environment {name!r} is already registered")
    _ENVIRONMENTS[name] = factory
    return factory


def _tags(cfg: ToolsConfig, system_prompt: str | None) -> Environment:
    return TagEnvironment(build_tools(cfg), system_prompt, cfg.result_template,
                          cfg.max_output_chars)


def make_environment(cfg: ToolsConfig, system_prompt: str | None) -> Environment:
    """The environment `tools.environment` names: a registered name, or an import path
    (`module:attr`, `file.py:attr`) to an environment object or a factory
    `f(tools config, system prompt) -> Environment`; an unknown name is an error listing them."""
    if is_import_path(str(cfg.environment)):
        found = load_object(cfg.environment, "environment")
        return found if hasattr(found, "respond") and not isinstance(found, type) \
            else found(cfg, system_prompt)
    factories = {"tags": _tags, **_ENVIRONMENTS}
    if cfg.environment not in factories:
        close = difflib.get_close_matches(str(cfg.environment), factories, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown environment {cfg.environment!r}{hint}; known: "
                         f"{', '.join(sorted(factories))} (others are named with "
                         "grpokit.tools.register_environment)")
    return factories[cfg.environment](cfg, system_prompt)
