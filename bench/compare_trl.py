"""A GRPO step of TRL's GRPOTrainer and of `grpokit train`, one after the other, side by side.

Same model (SmolLM2-135M-Instruct), same data (512 two-digit additions, answer in \\boxed{},
grpokit's math reward on both sides), 4 prompts x 8 completions, temperature 1, beta 0.04 (k3),
mu = 1, lr 1e-6, per-sequence token mean, AdamW (0.9, 0.999), constant learning rate. Each run is
its own process, so its peak RSS is its own. The same precision on both sides of a row: fp32, or
bf16 autocast over fp32 weights (TRL `bf16=True`, grpokit `model.autocast=bf16`).

    pip install -e .[bench]              # TRL: an optional extra, never a runtime dependency
    python bench/compare_trl.py                          # <= 64 and <= 256 new tokens, fp32 and bf16
    python bench/compare_trl.py --configs short --precisions bf16 --steps 3

Step time and generation time are medians over steps 2..N (step 1 warms up); training time is
step minus generation (rewards, reference and policy passes, optimizer); tokens/s counts completion
tokens per second of step. "floor s" is the step's unavoidable matmul work (`sides.step_flops`:
each prompt once, every completion token, generation + reference + forward and backward) at the
machine's measured matmul rate of that precision (the bf16 probe), so "x floor" is how far each
side is from what this CPU can do at all. Run it on an idle machine: on 2 cores a second busy process slows
torch by up to 10x.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sides import Spec, default_model, prompt_tokens, spawn, step_flops, summary  # noqa: E402

CONFIGS = {"short": 64, "long": 256}


def machine() -> str:
    from grpokit.runtime.precision import bf16_probe, cpu_name

    probe = bf16_probe()
    return (f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, matmul "
            f"{probe['fp32_gflops']:.0f} GFLOP/s fp32 / {probe['bf16_gflops']:.0f} bf16; "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="short,long", help="short (<= 64 tokens), long (<= 256)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    from grpokit.runtime.precision import bf16_probe

    probe, model = bf16_probe(), default_model()
    prompt_len = prompt_tokens(Spec(), model)
    rows = []
    for config in args.configs.split(","):
        for precision in args.precisions.split(","):
            spec = Spec(max_new_tokens=CONFIGS[config], bf16=precision == "bf16", steps=args.steps)
            for side in ("trl", "grpokit"):
                result = summary(spawn(side, spec))
                rate = probe["bf16_gflops" if spec.bf16 else "fp32_gflops"] * 1e9
                result["floor_s"] = step_flops(spec, model, prompt_len, result["tokens"]) / rate
                rows.append((config, precision, side, result))
                print(f"  {config} {precision} {side}: " + ", ".join(
                    f"{k} {v:.2f}" for k, v in result.items()), flush=True)
    print()
    head = (f"{'config':<14}{'precision':<10}{'side':<9}{'step s':>8}{'gen s':>8}{'train s':>9}"
            f"{'tok/s':>8}{'peak RSS GB':>13}{'floor s':>9}{'x floor':>9}")
    print(head)
    print("-" * len(head))
    for config, precision, side, r in rows:
        print(f"{f'<= {CONFIGS[config]} tokens':<14}{precision:<10}{side:<9}{r['step_s']:>8.1f}"
              f"{r['gen_s']:>8.1f}{r['train_s']:>9.1f}{r['tokens_per_s']:>8.1f}"
              f"{r['peak_rss_gb']:>13.2f}{r['floor_s']:>9.1f}{r['step_s'] / r['floor_s']:>9.2f}")
    print()
    for config in args.configs.split(","):
        for precision in args.precisions.split(","):
            pair = {side: r for c, p, side, r in rows if (c, p) == (config, precision)}
            trl, ours = pair["trl"], pair["grpokit"]
            print(f"<= {CONFIGS[config]} tokens, {precision}: grpokit / TRL step time "
                  f"{ours['step_s'] / trl['step_s']:.2f}x, peak RSS "
                  f"{ours['peak_rss_gb'] / trl['peak_rss_gb']:.2f}x, generation "
                  f"{ours['gen_s'] / trl['gen_s']:.2f}x, training "
                  f"{ours['train_s'] / trl['train_s']:.2f}x")


if __name__ == "__main__":
    main()
