import time

import pytest

from grpokit.rewards.answers import Answer
from grpokit.rewards.extract import (
    boxed_contents,
    check_strategies,
    extract_answers,
    sentence_value,
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
        ("Final Answer: The largest $n$ is 34.", ALL, ["34"]),
        ("Final Answer: The volume of $ABCDEFGH$ is 120. I hope it is correct.", ALL, ["120"]),
        ("Final Answer: The final answer is $x^2+1$.", ALL, ["x^2+1"]),
        ("Final Answer: It is either 3 or 4.", ALL, ["It is either 3", "4"]),  # a hedge: two values
    ],
)
def test_extract_answers(text, strategies, expected):
    assert extract_answers(text, strategies) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("AZYUK2A", []),  # a digit inside a word
        ("x2 and x_2", []),  # indices
        ("2x", []),  # a coefficient
        ("2.5x", []),  # not cut down to 2
        ("3/4x", []),
        ("we get 12 in the 3rd step", ["12"]),
        ("x=2", ["2"]),
        ("so 2.", ["2"]),
        ("so $2$", ["2"]),
        ("so -3", ["-3"]),
        ("x-3", ["3"]),  # a minus glued to a letter is an operator
        ("so 1,000", ["1,000"]),
        ("so 3/4", ["3/4"]),
        ("so (7)", ["7"]),
        ("answer:2", ["2"]),  # found by answer_line; last_number agrees
        ("1,2,3", ["3"]),
        ("a 1.5 b", ["1.5"]),
        ("2^{10}", ["10"]),
    ],
)
def test_last_number_takes_only_numbers_standing_as_tokens(text, expected):
    assert extract_answers(text, ("last_number",)) == expected


def test_an_answer_sentence_over_the_cap_is_not_read_in_part():
    (answer,) = extract_answers("Answer: The largest $n$ is " + "9" * 600, ALL)
    assert answer.startswith("The largest") and len(answer) > 500  # refused as too long


def test_last_number_is_linear_on_thousands_groups():
    soup = "1" + ",111" * 8000 + "1"  # every group a possible start of a failed number
    start = time.monotonic()
    extract_answers(soup, ("last_number",))
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("The largest $n$ is 34.", "34"),
        ("The volume of $ABCDEFGH$ is 120", "120"),
        ("There are 12 ways.", "12"),
        ("The sum of 3 and 4 is 7.", "7"),
        ("The probability is $\\frac{3}{4}$.", "$\\frac{3}{4}$"),
        ("so the largest \\(n\\) is \\(34\\)", "\\(34\\)"),
        ("The minimum is -3.", "-3"),
        ("It costs \\$18.90 in all", "18.90"),  # an escaped dollar is no math span
        # Kept whole: mathematics, not a sentence.
        ("$x^2+1$", "$x^2+1$"),
        ("2x+3", "2x+3"),
        ("x = 5", "x = 5"),
        ("AB = 5", "AB = 5"),
        ("\\frac{3}{4}", "\\frac{3}{4}"),
        ("5 apples", "5 apples"),
        ("3 or 4", "3 or 4"),
        ("sin x + cos x = 1", "sin x + cos x = 1"),
        # Kept whole: a hedge, a list, an expression after the prose, no value at all.
        ("It is either 3 or 4.", "It is either 3 or 4."),
        ("The largest $n$ is 33, not 34.", "The largest $n$ is 33, not 34."),
        ("The roots are 3 and 4.", "The roots are 3 and 4."),
        ("The roots are $3$, $4$", "The roots are $3$, $4$"),
        ("The polynomial is x^2 + 1", "The polynomial is x^2 + 1"),
        ("The value is 3 + x here", "The value is 3 + x here"),
        ("Yes, it is possible.", "Yes, it is possible."),
    ],
)
def test_an_answer_sentence_gives_its_final_value(answer, expected):
    assert sentence_value(answer) == expected


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
