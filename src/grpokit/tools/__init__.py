"""Tools for multi-turn episodes (docs/tools.md): the registry and deadlines, the built-in
`python` and `calculator` tools, and the environments that run them."""

from grpokit.tools.builtin import calculate, print_last_expression
from grpokit.tools.env import (
    TagEnvironment, build_tools, make_environment, register_environment,
)
from grpokit.tools.registry import (
    Tool, ToolError, ToolResult, ToolTimeout, call_tools, register_tool, registered_tool,
)

__all__ = [
    "TagEnvironment", "Tool", "ToolError", "ToolResult", "ToolTimeout", "build_tools",
    "calculate", "call_tools", "make_environment", "print_last_expression",
    "register_environment", "register_tool", "registered_tool",
]
