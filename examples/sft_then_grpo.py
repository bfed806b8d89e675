"""Supervised fine-tuning, then GRPO from the fine-tuned model, from Python.

Needs: the embedded default model (SmolLM2-135M-Instruct) on the built-in arithmetic task and a
CPU; SFT steps take seconds, GRPO steps about 40 s on 2 cores. Shows: the held-out loss falling
in SFT, then the held-out accuracy before and after GRPO.

    python examples/sft_then_grpo.py [key=value ...]   (overrides apply to both stages)
"""

import sys

import grpokit


def main(overrides: list[str]) -> grpokit.RunResult:
    warm = grpokit.sft(None, "train.steps=30", "log.output_dir=runs/sft_then_grpo/sft",
                       *overrides)
    result = grpokit.train(None, "train.steps=20", "log.output_dir=runs/sft_then_grpo/grpo",
                           *overrides, f"model.path={warm.final_model}")
    print(f"held-out before {result.before}, after {result.after}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
