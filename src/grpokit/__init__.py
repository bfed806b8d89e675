"""grpokit: GRPO and its descendants against verifiable rewards (docs/api.md).

The public API is the names in `__all__`; everything else is internal. They load on first use, so
`import grpokit` (and `grpokit --help`) starts without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "train": "grpokit.api", "ppo": "grpokit.api", "sft": "grpokit.api", "dpo": "grpokit.api",
    "evaluate": "grpokit.api", "load_config": "grpokit.api", "RunResult": "grpokit.api",
    "reward": "grpokit.api", "plan": "grpokit.api", "Config": "grpokit.config",
    "per_item": "grpokit.rewards.registry", "Sample": "grpokit.rewards.base",
    "RewardFailure": "grpokit.rewards.base",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'grpokit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
