"""Rollout throughput of the engines side by side: the shared-prefill HF engine against the vLLM
engine, in fp32 and bf16, on the default model, measured in one run.

    .venv-vllm/bin/python bench/bench_engines.py            # both engines (needs make setup-vllm)
    .venv-vllm/bin/python bench/bench_engines.py --dtypes fp32 --repeats 2
    .venv/bin/python bench/bench_engines.py                 # no vllm there: hf rows only

Tokens/s counts generated completion tokens (EOS included) over the wall-clock time of one
`generate` call for B prompts x G samples; "first" is the first call on a fresh engine, "best"
the fastest of the later ones. For vLLM the table also gives the engine's start-up time, one
weight push (`sync_weights` without the probe) and the probe's engine-vs-policy deviation.
Other processes on the machine change these numbers: run it on an idle machine and say what
else was running.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch

# The same prompts as the rollout benchmark (run as `python bench/bench_engines.py`, so the
# bench folder is on the path).
from bench_rollout import prompts_for

from grpokit.rollout import HFEngine, SamplingParams
from grpokit.runtime.models import load_policy, load_tokenizer, resolve_model
from grpokit.runtime.precision import autocast


def rates(engine, prompts, args: argparse.Namespace, bf16: bool) -> tuple[float, float]:
    """Tokens/s of the first call and the best of `args.repeats` later calls."""
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    measured = []
    for call in range(1 + args.repeats):
        with autocast(bf16):
            start = time.perf_counter()
            batch = engine.generate(prompts, args.group_size, params,
                                    [call * len(prompts) + i for i in range(len(prompts))])
            seconds = time.perf_counter() - start
        measured.append(int(batch.completion_mask.sum()) / seconds)
    return measured[0], max(measured[1:]) if args.repeats else measured[0]


def bench_vllm(model, tokenizer, prompts, args, bf16: bool) -> tuple[float, float, str]:
    """Tokens/s of the vLLM engine, and its start-up, push and probe numbers."""
    from grpokit.rollout.vllm import VLLMEngine

    start = time.perf_counter()
    engine = VLLMEngine(model, tokenizer, autocast=bf16)
    load_s = time.perf_counter() - start
    try:
        first, best = rates(engine, prompts, args, bf16)
        engine.sync_weights()
        extra = (f"start {load_s:.1f}s, push {engine.last_sync_s:.2f}s, probe "
                 f"{engine.last_probe_s:.2f}s, probe max |Δ| {engine.last_probe_max_abs:.2g}")
    finally:
        engine.close()
    return first, best, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=8, help="B prompts")
    parser.add_argument("--group-size", type=int, default=8, help="G samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="calls after the first")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = parser.parse_args()
    path = resolve_model(args.model)
    model, tokenizer = load_policy(path).eval(), load_tokenizer(path)
    prompts = prompts_for(tokenizer, args.batch)
    has_vllm = importlib.util.find_spec("vllm") is not None
    print(f"{args.model}: B={args.batch} G={args.group_size} max_new_tokens={args.max_new_tokens} "
          f"temperature={args.temperature}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{'engine':<8}{'dtype':<6}{'first tok/s':>12}{'best tok/s':>12}  notes")
    for dtype in args.dtypes:
        bf16 = dtype == "bf16"
        first, best = rates(HFEngine(model, tokenizer, autocast=bf16), prompts, args, bf16)
        print(f"{'hf':<8}{dtype:<6}{first:>12.1f}{best:>12.1f}")
        if has_vllm:
            v_first, v_best, extra = bench_vllm(model, tokenizer, prompts, args, bf16)
            print(f"{'vllm':<8}{dtype:<6}{v_first:>12.1f}{v_best:>12.1f}  {extra}; "
                  f"best vllm / hf {v_best / best:.2f}x")
    if not has_vllm:
        print("vllm is not installed here: run it with .venv-vllm/bin/python (make setup-vllm)")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
