"""Train on a reward function of your own, from Python.

Needs: the embedded default model (SmolLM2-135M-Instruct) on the built-in arithmetic prompts and
a CPU; about 40 s a step on 2 cores. Shows: `reward/reward_len` (and `reward/mean`) rising in the console and in
runs/custom_reward/metrics.jsonl as completions move toward 20 characters.

    python examples/custom_reward.py [key=value ...]
"""

import sys

import grpokit


def reward_len(completions, **kwargs):
    """Completions of about 20 characters score highest (0), longer or shorter ones less."""
    return [-abs(20 - len(c)) for c in completions]


def main(overrides: list[str]) -> grpokit.RunResult:
    result = grpokit.train(None, "train.steps=20", "log.output_dir=runs/custom_reward",
                           *overrides, rewards=[reward_len])
    print(f"run folder {result.run_dir}; last step's reward {result.metrics['reward/mean']:.2f}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
