"""GRPO against PPO with a learned critic, at equal config, each side in its own process.

Same model (SmolLM2-135M-Instruct), prompts (sums of two numbers from 1 to 20, last-number math
reward), completions per step (B prompts x G), completion length, learning rate, precision and
KL (beta 0.04 to a frozen reference). GRPO takes its baseline from the group; PPO
(`grpokit ppo`) learns a critic instead, either a copy of the policy's decoder (`separate`,
classic PPO) or a linear head on the policy's hidden states (`head`). Printed per side: peak RSS
(the child's, by os.wait4), median step time over steps 2..N, mean reward of the first and of
the last two steps, and the ratios against GRPO.

    python bench/compare_ppo.py                      # grpo, ppo separate, ppo head; 6 steps
    python bench/compare_ppo.py --steps 4 --sides grpo,separate --bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sides import Spec, grpokit_overrides, rows, spawn  # noqa: E402

SIDES = {"grpo": [], "separate": ["ppo.value_model=separate"], "head": ["ppo.value_model=head"]}


def run_side(side: str, spec: Spec, workdir: Path) -> dict:
    from grpokit.config import load_config

    data_path = workdir / "rows.jsonl"
    data_path.write_text("".join(json.dumps(r) + "\n" for r in rows(spec)))
    out = workdir / "run"
    cfg = load_config(None, grpokit_overrides(spec, data_path, out) + SIDES[side])
    if side == "grpo":
        from grpokit.stages.grpo import train

        train(cfg)
    else:
        from grpokit.stages.ppo import train_ppo

        train_ppo(cfg)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"steps": [{"step_s": m["perf/step_time_s"], "gen_s": m["perf/gen_time_s"],
                       "reward": m["reward/mean"]} for m in lines]}


def summary(result: dict) -> dict[str, float]:
    steps = result["steps"]
    later = steps[1:] or steps
    return {"step_s": statistics.median(s["step_s"] for s in later),
            "gen_s": statistics.median(s["gen_s"] for s in later),
            "reward_first": steps[0]["reward"],
            "reward_last2": statistics.mean(s["reward"] for s in steps[-2:]),
            "peak_rss_gb": result["peak_rss_gb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--sides", default="grpo,separate,head")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (B)")
    parser.add_argument("--group-size", type=int, default=8, help="completions per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    args = parser.parse_args()
    spec = Spec(task="add20", prompts_per_step=args.prompts, group_size=args.group_size,
                max_new_tokens=args.max_new_tokens, lr=args.lr, steps=args.steps, bf16=args.bf16,
                extra=[f"ppo.value_lr={args.lr}"])
    print(f"spec: {json.dumps(dataclasses.asdict(spec))}", flush=True)
    results = {}
    for side in args.sides.split(","):
        results[side] = summary(spawn(side, spec, script=__file__))
        print(f"  {side}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[side].items()),
              flush=True)
    head = (f"{'side':<10}{'peak RSS GB':>12}{'step s':>9}{'gen s':>8}{'reward step 1':>15}"
            f"{'reward last 2':>15}")
    print()
    print(head)
    print("-" * len(head))
    for side, r in results.items():
        print(f"{side:<10}{r['peak_rss_gb']:>12.2f}{r['step_s']:>9.1f}{r['gen_s']:>8.1f}"
              f"{r['reward_first']:>15.3f}{r['reward_last2']:>15.3f}")
    if "grpo" in results:
        g = results["grpo"]
        for side, r in results.items():
            if side != "grpo":
                print(f"ppo {side} / grpo: peak RSS {r['peak_rss_gb'] / g['peak_rss_gb']:.2f}x, "
                      f"step time {r['step_s'] / g['step_s']:.2f}x")


def _child(side: str, spec_file: str, out_file: str) -> None:
    spec = Spec(**json.loads(Path(spec_file).read_text()))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        result = run_side(side, spec, Path(tmp))
    Path(out_file).write_text(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] in SIDES:
        _child(*sys.argv[1:4])
    else:
        main()
