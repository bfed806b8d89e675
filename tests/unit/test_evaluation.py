"""pass@k and maj@k against hand-computed values."""

import math

import pytest

from grpokit.evaluation import maj_at_k, pass_at_k, summarize


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (10, 3, 1, 0.3),  # pass@1 = c / n
        (5, 2, 2, 1 - math.comb(3, 2) / math.comb(5, 2)),  # 1 - 3/10 = 0.7
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 0, 2, 0.0),  # c = 0: never passes
        (4, 0, 4, 0.0),  # k = n with c = 0
        (4, 1, 4, 1.0),  # k = n with one correct: always passes
        (3, 3, 1, 1.0),
        (200, 1, 100, 0.5),  # large n stays finite: 1 - C(199,100)/C(200,100) = 100/200
    ],
)
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)


def test_maj_at_k():
    # answers 5, 7, 5, None: 5 wins 2-1 and its samples are correct
    assert maj_at_k(["5", "7", "5", None], [True, False, True, False], 4) == 1.0
    # first 2 samples only: tie 5 vs 7 goes to the first seen (5)
    assert maj_at_k(["5", "7", "7", "7"], [True, False, False, False], 2) == 1.0
    assert maj_at_k(["5", "7", "7", "7"], [True, False, False, False], 4) == 0.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0


def test_summarize():
    rewards = {"math": [[1.0, 0.0], [None, 1.0]]}
    correct = [[True, False], [False, True]]
    out = summarize(rewards, correct, [1, 2], answers=[["4", "5"], [None, "9"]])
    assert out["reward/math"] == pytest.approx(2 / 3)
    assert out["scored_frac/math"] == pytest.approx(3 / 4)
    assert out["pass@1"] == pytest.approx(0.5)
    assert out["pass@2"] == pytest.approx(1.0)
    assert out["maj@2"] == pytest.approx(1.0)  # prompt 0: "4" first among ties, correct; prompt 1: "9"
