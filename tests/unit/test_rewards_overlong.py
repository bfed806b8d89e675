import pytest

from grpokit.rewards.base import Sample
from grpokit.rewards.overlong import build_overlong, overlong_penalty


# L_max = 20, L_cache = 4: free up to 16 tokens, then -1/4 per token, -1 beyond 20.
@pytest.mark.parametrize(
    "length, expected",
    [(0, 0.0), (16, 0.0), (17, -0.25), (18, -0.5), (20, -1.0), (21, -1.0), (10_000, -1.0)],
)
def test_overlong_penalty(length, expected):
    assert overlong_penalty(length, 20, 4) == expected


def test_uses_sample_max_tokens_by_default():
    fn = build_overlong(cache=2)
    samples = [
        Sample("", {}, num_tokens=9, max_tokens=10),  # threshold 8: (8 - 9) / 2
        Sample("", {}, num_tokens=5, max_tokens=0),  # no known limit
    ]
    assert fn(samples) == [-0.5, None]


def test_explicit_max_length_wins():
    assert build_overlong(cache=4, max_length=20)([Sample("", {}, num_tokens=18, max_tokens=100)]) == [-0.5]


@pytest.mark.parametrize("args", [{"cache": 0}, {"cache": -1}, {"cache": 1.5}, {"cache": 8, "max_length": 4}])
def test_bad_args(args):
    with pytest.raises(ValueError):
        build_overlong(**args)


def test_cache_above_sample_limit():
    with pytest.raises(ValueError, match="below cache"):
        build_overlong(cache=8)([Sample("", {}, num_tokens=1, max_tokens=4)])
