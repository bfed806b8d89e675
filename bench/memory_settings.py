"""Peak RSS and step time of `grpokit train` under its memory settings, one process per setting.

The benchmark config of bench/compare_trl.py (4 prompts x 8 completions, <= 64 new tokens,
beta 0.04, the default model), one row per setting: the micro-batch token budget and activation
checkpointing (`model.gradient_checkpointing`). Step time is the
median of steps 2..N. Run it alone: on 2 cores a second busy process slows torch by up to 10x.

    python bench/memory_settings.py                       # fp32
    python bench/memory_settings.py --precision bf16 --steps 3 --settings 1024,512
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_trl import machine  # noqa: E402
from sides import Spec, spawn, summary  # noqa: E402

# name: the micro-batch token budget (train.max_tokens_per_micro_batch; 512 is the default)
SETTINGS = {
    "1024": ["train.max_tokens_per_micro_batch=1024"],
    "512": ["train.max_tokens_per_micro_batch=512"],
    "256": ["train.max_tokens_per_micro_batch=256"],
    "512 checkpointing": ["train.max_tokens_per_micro_batch=512", "model.gradient_checkpointing=true"],
    "1024 checkpointing": ["train.max_tokens_per_micro_batch=1024",
                           "model.gradient_checkpointing=true"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="comma-separated names among: " + ", ".join(SETTINGS))
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    rows = []
    for name in args.settings.split(","):
        spec = Spec(bf16=args.precision == "bf16", steps=args.steps, extra=SETTINGS[name])
        result = summary(spawn("grpokit", spec))
        rows.append((name, result))
        print(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()), flush=True)
    print(f"\n| setting ({args.precision}) | step s | generation s | training s | peak RSS GB |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['step_s']:.1f} | {r['gen_s']:.1f} | {r['train_s']:.1f} | "
              f"{r['peak_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
