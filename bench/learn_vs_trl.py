"""Learning, not only speed: TRL's GRPOTrainer and `grpokit train` on the same task, one after
the other, their training-reward curves and wall-clock side by side.

Task: sums of two numbers from 1 to 20 (512 prompts), reward 1 when the last number of the
completion is the sum (grpokit's `math` reward with extract [last_number], on both sides);
4 prompts x 8 completions per step, <= 48 new tokens, temperature 1, beta = 0, lr 1e-5, AdamW
(0.9, 0.999), constant learning rate, 25 steps, bf16 autocast on both sides (fp32 with
--precision fp32).

    pip install -e .[bench]
    python bench/learn_vs_trl.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_trl import machine  # noqa: E402
from sides import Spec, spawn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    spec = Spec(task="add20", max_new_tokens=48, beta=0.0, lr=1e-5, steps=args.steps,
                bf16=args.precision == "bf16")
    runs = {}
    for side in ("trl", "grpokit"):
        runs[side] = spawn(side, spec)
        print(f"  {side}: {runs[side]['wall_s']:.0f} s", flush=True)
    print()
    print(f"{'step':>4}  {'TRL reward':>10}  {'grpokit reward':>14}")
    for k in range(args.steps):
        trl, ours = (runs[s]["steps"][k] if k < len(runs[s]["steps"]) else {} for s in runs)
        print(f"{k + 1:>4}  {trl.get('reward', float('nan')):>10.3f}  "
              f"{ours.get('reward', float('nan')):>14.3f}")
    last = max(args.steps - 5, 0)
    print()
    for side, run in runs.items():
        rewards = [s["reward"] for s in run["steps"]]
        train_s = sum(s["step_s"] for s in run["steps"])
        print(f"{side:<8} reward steps 1-5 {sum(rewards[:5]) / 5:.3f}, steps {last + 1}-"
              f"{args.steps} {sum(rewards[last:]) / len(rewards[last:]):.3f}; "
              f"wall-clock {run['wall_s']:.0f} s (steps {train_s:.0f} s), peak RSS "
              f"{run['peak_rss_gb']:.2f} GB")
    ratio = runs["grpokit"]["wall_s"] / runs["trl"]["wall_s"]
    print(f"grpokit / TRL wall-clock: {ratio:.2f}x")


if __name__ == "__main__":
    main()
