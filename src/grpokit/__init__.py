"""grpokit: GRPO and its descendants against verifiable rewards."""

__version__ = "0.1.0"
