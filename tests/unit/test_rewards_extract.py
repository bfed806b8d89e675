import pytest

from grpokit.rewards.answers import Answer
from grpokit.rewards.extract import (
    boxed_contents,
    check_strategies,
    extract_answers,
    split_alternatives,
    unwrap,
)

ALL = ("boxed", "answer_tag", "answer_line", "last_number")


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{\frac{1}{2}}.", [r"\frac{1}{2}"]),
        (r"\boxed{a{b{c}}d} and \fbox{7}", ["a{b{c}}d", "7"]),
        (r"truncated \boxed{\frac{1}{2}", []),
        ("", []),
    ],
)
def test_boxed_contents(text, expected):
    assert boxed_contents(text) == expected


@pytest.mark.parametrize(
    "text, strategies, expected",
    [
        (r"<answer>5</answer> \boxed{6}", ALL, ["6"]),
        (r"<answer>5</answer> \boxed{6}", ("answer_tag", "boxed"), ["5"]),
        ("work...\nAnswer: 12\n", ALL, ["12"]),
        ("**Final answer:** $12$.", ALL, ["12"]),
        ("The answer is 3 or 4", ALL, ["3", "4"]),
        ("So, the answer is 3 or 4.", ALL, ["3", "4"]),
        ("First answer: 2\nFinal Answer: 2", ALL, ["2"]),
        ("we get 3, then 17 apples", ALL, ["17"]),
        ("no numbers here", ALL, []),
        (r"\boxed{x = 7 = 8 = 42}", ALL, ["7", "8", "42"]),
        (r"\boxed{x = 42}", ALL, ["42"]),
        (r"\boxed{2x = 6}", ALL, ["2x", "6"]),
        (r"\boxed{3} \boxed{3}", ALL, ["3"]),
        (r"\boxed{x \leq 3}", ALL, [r"x \leq 3"]),
        ("\\boxed{４２}", ALL, ["42"]),
        ("   \n\t ", ALL, []),
        (r"\boxed{5}", ("last_number",), ["5"]),
    ],
)
def test_extract_answers(text, strategies, expected):
    assert extract_answers(text, strategies) == expected


@pytest.mark.parametrize(
    "answer, expected",
    [("$\\frac{1}{2}$", "\\frac{1}{2}"), ("\\(5\\).", "5"), ("\\boxed{7}", "7"), ("**9**", "9"), ("", "")],
)
def test_unwrap(answer, expected):
    assert unwrap(answer) == expected


def test_split_keeps_comparisons_and_names_the_left_hand_side():
    assert split_alternatives("x <= 3") == [Answer("x <= 3")]
    assert split_alternatives("f(x) = x+1") == [Answer("x+1", "f(x)")]
    assert split_alternatives(r"\sum_{k=1}^{10} k") == [Answer(r"\sum_{k=1}^{10} k")]
    assert split_alternatives("3x+2y=6") == [Answer("3x+2y"), Answer("6")]
    assert split_alternatives("3x+2y=6", keep_equations=True) == [Answer("3x+2y=6")]
    assert split_alternatives("p=-1, p=15/8") == [Answer("-1", "p"), Answer("15/8", "p")]
    assert split_alternatives("1,000") == [Answer("1,000")]


@pytest.mark.parametrize("bad", [[], ["boxed", "nope"], "nope"])
def test_check_strategies_rejects(bad):
    with pytest.raises(ValueError, match="boxed, answer_tag"):
        check_strategies(bad)
