"""`overlong`: DAPO's soft overlong punishment (Yu et al. 2025, eq. 13).

With L = sample.num_tokens, L_max = `max_length` (default: the sample's max_tokens) and
L_cache = `cache`:
    R = 0                              if L <= L_max - L_cache
    R = ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
    R = -1                             if L > L_max
A sample with no known L_max (max_length unset and max_tokens 0) gets None.
"""

from __future__ import annotations

from grpokit.rewards.base import Sample
from grpokit.rewards.item import ItemReward, describe_row
from grpokit.rewards.registry import register


def overlong_penalty(length: int, max_length: int, cache: int) -> float:
    """DAPO eq. 13 for a completion of `length` tokens."""
    if cache > max_length:
        raise ValueError(f"overlong: cache ({cache}) must not exceed max_length ({max_length})")
    threshold = max_length - cache
    if length <= threshold:
        return 0.0
    if length <= max_length:
        return (threshold - length) / cache
    return -1.0


@register("overlong")
def build_overlong(cache: int, max_length: int | None = None) -> ItemReward:
    """Factory for `overlong` (args cache, required; max_length, default the sample's max_tokens)."""
    if not isinstance(cache, int) or cache <= 0:
        raise ValueError(f"overlong: cache must be a positive number of tokens, got {cache!r}")
    if max_length is not None and (not isinstance(max_length, int) or max_length < cache):
        raise ValueError(f"overlong: max_length must be an integer >= cache, got {max_length!r}")

    def score(sample: Sample) -> float | None:
        limit = max_length or sample.max_tokens
        if not limit:
            return None
        if limit < cache:
            raise ValueError(
                f"overlong: {describe_row(sample.row)}: max_tokens {limit} is below cache {cache}"
            )
        return overlong_penalty(sample.num_tokens, limit, cache)

    return ItemReward("overlong", score)
