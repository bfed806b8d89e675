"""Rollout throughput: the shared-prefill HFEngine against plain `model.generate` (GenerateEngine),
in fp32 and under bf16 autocast, on the default model and on the tiny random model.

    python bench/bench_rollout.py                       # default model + tiny model
    python bench/bench_rollout.py --model /path/to/hf   # another local model
    python bench/bench_rollout.py --tiny-only

Tokens/s counts generated completion tokens (EOS included) over wall-clock time of one
`generate` call for B prompts x G samples. bf16 rows force CPU autocast even where the CPU lacks
bf16 matrix units (there grpokit itself would keep fp32: see precision.use_bf16).
"""

from __future__ import annotations

import argparse
import time

import torch

from grpokit.rollout import GenerateEngine, HFEngine, SamplingParams
from grpokit.runtime.models import load_policy, load_tokenizer, resolve_model
from grpokit.runtime.precision import autocast, cpu_has_bf16
from grpokit.testing import tiny_llama

QUESTIONS = [
    "What is 7 + 5?",
    "Name three primary colors.",
    "Write a haiku about autumn.",
    "What is the capital of France? Answer in one word.",
    "Explain what a prime number is in one sentence.",
    "If a train travels 60 km in 1.5 hours, what is its average speed?",
    "List the first five square numbers.",
    "Translate 'good morning' into Spanish.",
]


def prompts_for(tokenizer, batch: int) -> list[list[int]]:
    """Chat-rendered prompt ids for the first `batch` questions (cycled)."""
    out = []
    for i in range(batch):
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def run_once(engine, prompts, group_size: int, params: SamplingParams, bf16: bool) -> tuple[float, int]:
    """Seconds and generated tokens for one generate call."""
    with autocast(bf16):
        start = time.perf_counter()
        batch = engine.generate(prompts, group_size, params, list(range(len(prompts))))
        seconds = time.perf_counter() - start
    return seconds, int(batch.completion_mask.sum())


def bench_model(label: str, model, tokenizer, args: argparse.Namespace) -> None:
    prompts = prompts_for(tokenizer, args.batch)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    for cls in (GenerateEngine, HFEngine):  # warm-up: first calls pay one-time setup costs
        run_once(cls(model, tokenizer), prompts[:1], 1, SamplingParams(max_new_tokens=2), False)
    print(f"\n{label}: B={args.batch} G={args.group_size} max_new_tokens={args.max_new_tokens} "
          f"temperature={args.temperature}, mean prompt length {sum(map(len, prompts)) / len(prompts):.0f}")
    print(f"{'engine':<16}{'dtype':<8}{'seconds':>10}{'tokens':>9}{'tokens/s':>11}")
    rates: dict[tuple[str, str], float] = {}
    for dtype in args.dtypes:
        for name, cls in (("generate", GenerateEngine), ("shared-prefill", HFEngine)):
            best = None
            for _ in range(args.repeats):
                seconds, tokens = run_once(cls(model, tokenizer), prompts, args.group_size, params, dtype == "bf16")
                best = (seconds, tokens) if best is None or seconds < best[0] else best
            seconds, tokens = best
            rates[(name, dtype)] = tokens / seconds
            print(f"{name:<16}{dtype:<8}{seconds:>10.2f}{tokens:>9}{tokens / seconds:>11.1f}")
    for dtype in args.dtypes:
        ratio = rates[("shared-prefill", dtype)] / rates[("generate", dtype)]
        print(f"shared-prefill / generate ({dtype}): {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tiny-only", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16 matrix units: {cpu_has_bf16()}")
    model, tokenizer = tiny_llama(hidden=64, layers=2)
    bench_model("tiny random llama", model, tokenizer, args)
    if not args.tiny_only:
        path = resolve_model(args.model)
        bench_model(f"{args.model} ({path})", load_policy(path), load_tokenizer(path), args)


if __name__ == "__main__":
    main()
