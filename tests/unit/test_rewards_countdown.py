import pytest

from grpokit.rewards import registry
from grpokit.rewards.base import Sample
from grpokit.rewards.countdown import countdown_reward, evaluate, extract_equation, score_equation

ROW = {"numbers": [3, 5, 7, 2], "target": 56}


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>8*7</think><answer>(3 + 5) * 7</answer>", 1.0),
        ("<answer>7 * (5 + 3)</answer>", 1.0),
        ("<answer>(3 + 5) * 7 = 56</answer>", 1.0),
        ("<answer>56 = (3 + 5) * 7</answer>", 1.0),
        ("<answer>(3 + 5) × 7</answer>", 1.0),
        ("<answer>(3 +\n 5) * 7</answer>", 1.0),
        ("<answer>1 + 2</answer><answer>(3 + 5) * 7</answer>", 1.0),  # the last answer counts
        ("<answer>7 * 8</answer>", 0.0),  # 8 is not given
        ("<answer>(3 + 5) * 7 * 1</answer>", 0.0),  # 1 is not given
        ("<answer>(3 + 3 + 2) * 7</answer>", 0.0),  # 3 given once, used twice
        ("<answer>(3 + 5) * 7 + 2</answer>", 0.0),  # wrong value
        ("<answer>7 * (5 + 3 / 3)</answer>", 0.0),
        ("<answer>7 * 2 * (5 - 3) * 2</answer>", 0.0),  # 2 reused
        ("<answer>(3 + 5) * 7 / (2 - 2)</answer>", 0.0),  # division by zero, 2 reused
        ("<answer>7 * (3 - -5)</answer>", 1.0),  # unary minus
        ("<answer>+7 * (3 + 5)</answer>", 0.0),  # unary plus is not an operator here
        ("<answer>7 * 8.0</answer>", 0.0),
        ("<answer></answer>", 0.0),
        ("<answer>the answer is 56</answer>", 0.0),
        ("no equation here", 0.0),
        ("", 0.0),
        ("Let me try.\nSo (3 + 5) * 7 = 56.", 1.0),  # last-line fallback
        ("(3 + 5) * 7\nI am done.", 0.0),  # the last line has no equation
        ("<answer>__import__('os').system('true')</answer>", 0.0),
        ("<answer>9**9**9</answer>", 0.0),
        ("<answer>7 ** 2</answer>", 0.0),
        ("<answer>56 // 1</answer>", 0.0),
        ("<answer>" + "9" * 5000 + "</answer>", 0.0),
        ("<answer>(" * 150 + "56" + ")" * 150 + "</answer>", 0.0),  # over the length cap
        ("<answer>(３ + ５) * ７</answer>", 0.0),  # fullwidth digits are not ASCII digits
        ("<answer>(3 + 5) * ٧</answer>", 0.0),  # Arabic-Indic seven
        ("<answer>1_0 * 7</answer>", 0.0),
        ("<answer>07 * 8</answer>", 0.0),
    ],
)
def test_countdown_reward(completion, expected):
    assert countdown_reward(Sample(completion=completion, row=ROW)) == expected


@pytest.mark.parametrize(
    "equation, numbers, target, expected",
    [
        ("10 / 4 * 2", [10, 4, 2], 5, 1.0),  # exact: 10/4 = 5/2, not 2
        ("1 / 3 + 1 / 3 + 1 / 3", [1, 3, 1, 3, 1, 3], 1, 1.0),
        ("0.1 + 0.2", [1, 2], 0, 0.0),
        ("100 - 25 * 3", [100, 25, 3], 25, 1.0),  # precedence
        ("-(4 - 6)", [4, 6], 2, 1.0),
        ("5 - 5", [5], 0, 0.0),
        ("5 - 5", [5, 5], 0, 1.0),
        ("8 / (3 - 3)", [8, 3, 3], 0, 0.0),
    ],
)
def test_score_equation(equation, numbers, target, expected):
    assert score_equation(equation, numbers, target) == expected


def test_length_cap_is_configurable():
    equation = "(3 + 5) * 7"
    assert score_equation(equation, [3, 5, 7], 56, max_length=len(equation)) == 1.0
    assert score_equation(equation, [3, 5, 7], 56, max_length=len(equation) - 1) == 0.0


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"numbers": [3, 5, 7], "target": 56}, 1.0),
        ({"numbers": ["3", "5", "7"], "target": "56"}, 1.0),  # e.g. read from CSV
        ({"numbers": [3, 5, 7]}, None),
        ({"answer": "56"}, None),
    ],
)
def test_row_forms(row, expected):
    assert countdown_reward(Sample(completion="<answer>(3+5)*7</answer>", row=row)) == expected


@pytest.mark.parametrize(
    "row",
    [
        {"target": 56},
        {"numbers": [3, 5, 7.5], "target": 56},
        {"numbers": [3, 5, 7], "target": "fifty-six"},
        {"numbers": "3 5 7", "target": 56},
    ],
)
def test_malformed_row_raises(row):
    with pytest.raises(ValueError, match="countdown row"):
        countdown_reward(Sample(completion="<answer>(3+5)*7</answer>", row=row))


def test_extract_equation():
    assert extract_equation("<answer> 3 ÷ 3 − 1 </answer>") == "3 / 3 - 1"
    assert extract_equation("text\n\nso 1 + 2 = 3.\n") == "1 + 2 = 3"
    assert extract_equation("no numbers") is None


def test_registered_in_registry():
    # The factory directly: `registry.build` also imports every other built-in reward module.
    fn = registry._FACTORIES["countdown"](max_length=50)
    samples = [Sample("<answer>(3+5)*7</answer>", ROW), Sample("<answer>1</answer>", {})]
    assert fn(samples) == [1.0, None]


@pytest.mark.parametrize("expression, value", [("12+35/7", 17), ("10/4", 2.5), ("-(2-5)*2", 6)])
def test_evaluate(expression, value):
    assert evaluate(expression) == value


@pytest.mark.parametrize("expression", ["2**3", "abs(2)", "1.5", "", "1 +"])
def test_evaluate_rejects(expression):
    with pytest.raises(ValueError, match="not an arithmetic expression"):
        evaluate(expression)
