"""The stages, one file per method: `grpo` (with its presets), `ppo`, `sft` and `dpo`. Each
supplies its start, its step and its evaluation to the one run loop (grpokit/training/loop.py)."""
