"""The cost of `algo.sampling_support=replay`: the vocabulary projection's forward + backward
over the whole vocabulary, and over the sampler's kept set at top-k and top-p, side by side.

    python bench/bench_support.py              # the default model's shapes: 512 rows, H 576, V 49152
    python bench/bench_support.py --rows 128

Without top-k / top-p (the default) replay skips the kept set entirely, so the first row is also
what `replay` costs then. Median of --repeats runs, after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from grpokit.algo.selective import selective_logprobs
from grpokit.algo.support import Truncation


def _time(hidden, weight, labels, truncation, repeats: int, chunk: int) -> float:
    times = []
    for _ in range(repeats + 1):
        h = hidden.detach().requires_grad_(True)
        w = weight.detach().requires_grad_(True)
        start = time.perf_counter()
        lp, _ = selective_logprobs(h, w, labels, temperature=0.9, chunk_size=chunk,
                                   truncation=truncation)
        lp.sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.rows, args.hidden, generator=g)
    weight = torch.randn(args.vocab, args.hidden, generator=g) * 0.05
    labels = torch.randint(0, args.vocab, (args.rows,), generator=g)
    cases = [("whole vocabulary (full, or replay without truncation)", None),
             ("replay, top_k 50", Truncation(50, 1.0)),
             ("replay, top_p 0.9", Truncation(0, 0.9)),
             ("replay, top_k 50 and top_p 0.9", Truncation(50, 0.9))]
    base = None
    print(f"{args.rows} rows, H {args.hidden}, V {args.vocab}, chunk {args.chunk}, "
          f"fp32, {torch.get_num_threads()} threads")
    print(f"{'case':<58} {'fwd+bwd s':>10} {'x base':>8}")
    for name, truncation in cases:
        seconds = _time(hidden, weight, labels, truncation, args.repeats, args.chunk)
        base = seconds if base is None else base
        print(f"{name:<58} {seconds:>10.3f} {seconds / base:>8.2f}")


if __name__ == "__main__":
    main()
