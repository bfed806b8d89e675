import pytest

from grpokit.rewards.base import Sample
from grpokit.rewards.format import build_format, build_format_partial

GOOD = "<think>\nreason\n</think>\n<answer>\n5\n</answer>"


@pytest.mark.parametrize(
    "completion, expected",
    [
        (GOOD, 1.0),
        ("  " + GOOD + "\n\n", 1.0),
        ("<think></think><answer></answer>", 1.0),
        ("hi " + GOOD, 0.0),
        (GOOD + " bye", 0.0),
        ("<answer>5</answer><think>x</think>", 0.0),
        ("<think>a</think><think>b</think><answer>5</answer>", 0.0),
        ("<think>a</think><answer>5</answer><answer>6</answer>", 0.0),
        ("<think>a</think><answer>5", 0.0),
        ("<think>a <answer>5</answer></think>", 0.0),
        ("", 0.0),
        ("   ", 0.0),
        ("<think>" + "x" * 100_000 + "</think><answer>1</answer>", 1.0),
    ],
)
def test_format(completion, expected):
    assert build_format()([Sample(completion, {})]) == [expected]


def test_format_custom_tags_and_prefilled_think():
    fn = build_format(think_tag="reasoning", answer_tag="final", prefilled_think=True)
    assert fn([Sample("r</reasoning><final>5</final>", {})]) == [1.0]
    assert fn([Sample("<reasoning>r</reasoning><final>5</final>", {})]) == [0.0]


@pytest.mark.parametrize(
    "completion, expected",
    [
        (GOOD, 1.0),
        ("<think>a</think>", 0.5),
        ("<think>a</think><think>b</think><answer>5</answer>", 0.5),
        ("<answer>5", 0.25),
        ("", 0.0),
    ],
)
def test_format_partial(completion, expected):
    assert build_format_partial()([Sample(completion, {})]) == [expected]


@pytest.mark.parametrize("tag", ["", "a b", "<think>", 3])
def test_bad_tags(tag):
    with pytest.raises(ValueError, match="think_tag"):
        build_format(think_tag=tag)
