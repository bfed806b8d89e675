"""The configuration tree: dataclasses with a docstring under every field, YAML in and out, dotted
command-line overrides. Errors are raised while the config is built, naming the key and the valid
keys or values. The defaults are the built-in run of `grpokit train` with no arguments: the
embedded SmolLM2-135M-Instruct on one-digit arithmetic, sized to finish in minutes on a 2-core CPU.

- `typed.py`: building typed dataclass trees from YAML and dotted overrides;
- `sections.py`: model (LoRA), data, rollout (its `vllm` section), algo (the preset's knobs), train;
- `run.py`: eval, log, checkpoint, reward_runner;
- `stages.py`: the sft, dpo and ppo sections;  `tools.py`: the tools section;
- `load.py`: `Config`, `validate`, `load_config`, `with_overrides`, `save_config`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each name loads its module on first use, so that `grpokit.config.typed` (the command line's
# override parser) loads without the tree's imports (torch among them): `grpokit --help` stays fast.
_HOME = {
    **dict.fromkeys(["Config", "load_config", "save_config", "to_dict", "validate",
                     "with_overrides"], "load"),
    **dict.fromkeys(["CheckpointConfig", "EvalConfig", "LogConfig", "RewardRunnerConfig"], "run"),
    **dict.fromkeys(["AlgoConfig", "DataConfig", "LoraConfig", "ModelConfig", "RolloutConfig",
                     "TrainConfig", "VLLMConfig"], "sections"),
    **dict.fromkeys(["DPOConfig", "PPOConfig", "SFTConfig"], "stages"),
    "ToolsConfig": "tools",
}
__all__ = sorted([*_HOME, "ConfigError"])


def __getattr__(name: str) -> Any:
    if name == "ConfigError":
        from grpokit.errors import ConfigError
        return ConfigError
    if name not in _HOME:
        raise AttributeError(f"module 'grpokit.config' has no attribute {name!r}")
    return getattr(importlib.import_module(f"grpokit.config.{_HOME[name]}"), name)
