"""Next-token sampling: temperature, top-k, top-p, greedy, with the sampler's own log-probs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grpokit.algo.support import Truncation, kept_threshold, restrict_
from grpokit.rollout.base import SamplingParams


def check_params(params: SamplingParams) -> None:
    """Raise a clear error for sampling parameters out of range."""
    if params.max_new_tokens < 1:
        raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {params.max_new_tokens}")
    if params.temperature < 0:
        raise ValueError(f"SamplingParams.temperature must be >= 0 (0 = greedy), got {params.temperature}")
    if not 0.0 < params.top_p <= 1.0:
        raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {params.top_p}")
    if params.top_k < 0:
        raise ValueError(f"SamplingParams.top_k must be >= 0 (0 = off), got {params.top_k}")


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / top-p nucleus to -inf (the most likely token always stays):
    the kept set of `algo.support`, the one the trainer replays (algo.sampling_support)."""
    truncation = Truncation(top_k, top_p)
    if not truncation.active(logits.shape[-1]):
        return logits
    return restrict_(logits.clone(), kept_threshold(logits, truncation), float("-inf"))


def prompt_uniforms(seeds: Sequence[int], group_size: int, steps: int,
                    device: torch.device) -> torch.Tensor:
    """(N, steps) uniforms in (0, 1], G rows per prompt, each prompt's from its own seed: the
    randomness of one sampled token, fixed before decoding starts."""
    rows = [1.0 - torch.rand((group_size, steps), dtype=torch.float64,
                             generator=torch.Generator().manual_seed(int(seed)))
            for seed in seeds]
    return torch.cat(rows).to(device)


def sample_next(
    logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row of `logits` (N, V) by inverting its CDF at `uniforms` (N,) in
    (0, 1]; return the tokens (N,) and their log-probs (N,).

    The log-prob is taken under the distribution the sampler drew from: temperature-scaled,
    top-k/top-p truncated and renormalized (equal to the policy's temperature-scaled log-prob when
    top_p = 1 and top_k = 0). Greedy decoding (temperature 0) reports the unscaled log-prob.
    """
    logits = logits.float()
    greedy = params.temperature == 0
    if not greedy:
        logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    logprobs = logits.log_softmax(-1)  # (N, V)
    # One NaN logit makes its whole row NaN after log_softmax: column 0 tells, without a scan
    # of the (N, V) matrix.
    if torch.isnan(logprobs[:, 0]).any():
        raise FloatingPointError("the model produced NaN logits: its weights or inputs are not "
                                 "finite")
    if greedy:
        tokens = logits.argmax(-1)  # (N,)
    else:
        cdf = logprobs.double().exp().cumsum(-1)  # (N, V)
        # u > 0 picks the first token whose CDF reaches u·total: always one of positive mass.
        target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)  # (N, 1)
        tokens = torch.searchsorted(cdf, target).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
