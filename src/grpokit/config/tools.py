"""The `tools` section of the config tree: multi-turn episodes with tools (docs/tools.md);
`grpokit.config` assembles the tree and re-exports it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ToolsConfig:
    environment: str | None = None
    """Run multi-turn episodes with this environment: `tags` (the built-in one, tool calls
    written as <name>…</name> tag pairs) or a name given to grpokit.tools.register_environment;
    null: single-turn completions."""
    names: list[str] = field(default_factory=lambda: ["python"])
    """Tools the `tags` environment offers: python (sandboxed), calculator, or names given to
    grpokit.tools.register_tool."""
    max_turns: int = 4
    """Most model turns per episode (a turn ending with a tool call at the limit is cut there);
    rollout.max_new_tokens is the episode's token budget, tool output included."""
    timeout: float | None = None
    """Deadline in seconds of every tool call (null: each tool's own: python 5, calculator 1,
    a registered tool its registered one)."""
    max_output_chars: int = 512
    """A tool result longer than this is cut to it, with a note saying so."""
    result_template: str = "<output>\n{result}\n</output>\n"
    """The text inserted after a tool call; {result} is the tool's result text."""
    sandbox_backend: str = "auto"
    """Sandbox backend of the python tool (`grpokit sandbox doctor` lists what works here)."""
    memory_mb: int = 256
    """Memory limit of one python call, in MiB."""


def tool_checks(t: ToolsConfig, engine: str) -> list[tuple[bool, str]]:
    """The tools fields (checked whether or not an environment is on, so that a config stays
    valid when only tools.environment changes), and the engine an environment needs."""
    return [
        (t.environment is None or engine == "hf",
         f"tools.environment={t.environment!r} needs rollout.engine=hf (the engine that runs "
         f"multi-turn episodes on its KV cache), got rollout.engine={engine!r}"),
        (t.environment is None or bool(t.environment.strip()),
         "tools.environment must be an environment name (tags) or null"),
        (bool(t.names) and len(set(t.names)) == len(t.names),
         f"tools.names must list at least one tool, each once, got {t.names}"),
        (t.max_turns >= 1, f"tools.max_turns must be >= 1, got {t.max_turns}"),
        (t.timeout is None or 0 < t.timeout < float("inf"),
         f"tools.timeout must be a positive number of seconds or null, got {t.timeout}"),
        (t.max_output_chars >= 1, f"tools.max_output_chars must be >= 1, got "
                                  f"{t.max_output_chars}"),
        ("{result}" in t.result_template,
         f"tools.result_template must contain {{result}} (where the result goes), got "
         f"{t.result_template!r}"),
        (t.memory_mb >= 16, f"tools.memory_mb must be >= 16, got {t.memory_mb}"),
    ]
