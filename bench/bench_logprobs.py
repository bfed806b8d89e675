"""Training-pass log-probs: grpokit's path against the plain full-logits path, side by side.

    python bench/bench_logprobs.py                 # the default model, N=32 sequences
    python bench/bench_logprobs.py --tiny          # the tiny random model (seconds)

Both paths run forward + backward for the same batch of left-padded prompts and right-padded
completions and produce identical log-probs. "full logits" is what a straightforward
implementation does: model(...).logits over every position, log_softmax over the vocabulary,
gather. grpokit (`policy.completion_logprobs`) trims padding, projects only the positions that
predict completion tokens, in chunks that are recomputed in backward. The table reports wall time
and the peak size of the largest logits-like tensor each path holds.
"""

from __future__ import annotations

import argparse
import time

import torch

from grpokit.runtime.models import load_policy, resolve_model
from grpokit.testing import tiny_llama
from grpokit.training.logprobs import completion_logprobs, position_ids


def make_batch(vocab: int, n: int, prompt_len: int, completion_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    p_ids = torch.randint(3, vocab, (n, prompt_len), generator=g)
    c_ids = torch.randint(3, vocab, (n, completion_len), generator=g)
    p_lens = torch.randint(prompt_len // 2, prompt_len + 1, (n,), generator=g)
    c_lens = torch.randint(1, completion_len + 1, (n,), generator=g)
    p_mask = torch.arange(prompt_len)[None, :] >= (prompt_len - p_lens)[:, None]
    c_mask = torch.arange(completion_len)[None, :] < c_lens[:, None]
    return p_ids, p_mask, c_ids, c_mask


def full_logits_path(model, p_ids, p_mask, c_ids, c_mask):
    ids = torch.cat([p_ids, c_ids], 1)
    att = torch.cat([p_mask, c_mask], 1).long()
    logits = model(input_ids=ids, attention_mask=att, position_ids=position_ids(att)).logits
    p = p_ids.shape[1]
    logp = torch.log_softmax(logits[:, p - 1 : -1].float(), dim=-1)  # (N, T, V)
    return logp.gather(-1, c_ids.unsqueeze(-1)).squeeze(-1) * c_mask, logp.numel() * 4


def grpokit_path(model, p_ids, p_mask, c_ids, c_mask):
    lp, _ = completion_logprobs(model, p_ids, p_mask, c_ids, c_mask, chunk_size=1024)
    vocab = model.get_output_embeddings().weight.shape[0]
    return lp, min(int(c_mask.sum()), 1024) * vocab * 4


def run(name, fn, model, batch, repeats):
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        lp, peak = fn(model, *batch)
        lp.sum().backward()
        times.append(time.perf_counter() - start)
    return name, min(times), peak, lp.detach()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--completion-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.tiny:
        model, _ = tiny_llama()
    else:
        model = load_policy(resolve_model("smollm2-135m-instruct"))
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = make_batch(vocab, args.n, args.prompt_len, args.completion_len)
    tokens = int(batch[3].sum())
    print(f"N={args.n} prompt<={args.prompt_len} completion<={args.completion_len} "
          f"({tokens} completion tokens), vocab {vocab}, forward + backward, best of {args.repeats}")
    rows = [run("full logits", full_logits_path, model, batch, args.repeats),
            run("grpokit", grpokit_path, model, batch, args.repeats)]
    print(f"{'path':<12} {'time (s)':>9} {'largest logits tensor (MB)':>27}")
    for name, seconds, peak, _ in rows:
        print(f"{name:<12} {seconds:>9.2f} {peak / 2**20:>27.1f}")
    a, b = rows[0][3], rows[1][3]
    diff = ((a - b).abs() / a.abs().clamp(min=1.0)).max().item()
    print(f"speed-up {rows[0][1] / rows[1][1]:.2f}x, max relative log-prob difference {diff:.1e}")


if __name__ == "__main__":
    main()
