import threading
import time

import pytest

from grpokit.rewards.base import Sample
from grpokit.rewards.math import MathReward, build_math, gold_answer, plan, read_gold

TOWER = r"\boxed{9^{9^{9^{9^{9}}}}}"


@pytest.fixture(scope="module")
def math_reward():
    return MathReward(timeout=5.0)


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        (r"so \boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
        ("The answer is 1/2", "0.5", 1.0),
        ("<answer>12</answer>", "12", 1.0),
        ("<answer>12</answer>", 12, 1.0),
        (r"\boxed{x^2+1}", "1+x^2", 1.0),
        (r"\boxed{x = 5}", "5", 1.0),
        (r"\boxed{5}", "x = 5", 1.0),
        ("I computed 3, then 1,000", "1000", 1.0),
        ("#### 7 apples? no: Answer: 7", "7", 1.0),
        ("\\boxed{４２}", "42", 1.0),
        (r"\boxed{41}", "42", 0.0),
        (r"\boxed{x = 7 = 8 = 42}", "42", 0.0),
        ("Answer: x = 7 = 8 = 42", "42", 0.0),
        (r"\boxed{3} \boxed{4}", "3", 0.0),
        (r"\boxed{3} \boxed{3}", "3", 1.0),
        ("the answer is 3 or 4", "3", 0.0),
        ("So the answer is 3 or 4.", "4", 0.0),
        (r"\boxed{\frac{1}{2} \text{ or } \frac{1}{3}}", r"\frac{1}{2}", 0.0),
        (r"\boxed{" + "1" * 600 + "}", "1", 0.0),
        ("", "3", 0.0),
        ("   \n ", "3", 0.0),
        (r"truncated \boxed{\frac{1}{", "0.5", 0.0),
        ("no number at all", "3", 0.0),
        (r"\boxed{5}", None, None),
    ],
)
def test_math_table(math_reward, completion, answer, expected):
    row = {} if answer is None else {"answer": answer}
    assert math_reward([Sample(completion, row)]) == [expected]


def test_batch_keeps_order(math_reward):
    samples = [Sample(r"\boxed{1/2}", {"answer": "0.5"}), Sample("7", {"answer": "8"}), Sample("8", {"answer": "8"})]
    assert math_reward(samples) == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "gold, raw, expected",
    [("42", ["42.0"], 1.0), ("42", ["41"], 0.0), ("0.5", ["1/2"], [("0.5", "1/2")]), ("42", [], 0.0),
     ("x", ["x"], [("x", "x")]), ("Yes", ["yes"], 1.0), ("Yes", ["no"], 0.0), ("42", ["4" * 501], 0.0)],
)
def test_plan_decides_numbers_and_text_in_process(gold, raw, expected):
    assert plan(read_gold(gold), raw, 500) == expected


@pytest.mark.parametrize(
    "answer, expected", [("#### 1,234", "1,234"), (r"\boxed{\frac12}", r"\frac12"), ("x = 3", "3"), (7, "7")]
)
def test_gold_answer(answer, expected):
    assert gold_answer(answer) == expected


def test_tower_of_exponents_is_none_within_deadline_from_a_thread():
    reward = MathReward(timeout=1.0)
    samples = [Sample(TOWER, {"answer": "5"}), Sample(r"\boxed{\frac{1}{2}}", {"answer": "0.5"})]
    out = []
    start = time.monotonic()
    thread = threading.Thread(target=lambda: out.append(reward(samples)))
    thread.start()
    thread.join(30)
    assert out == [[None, 1.0]]
    assert time.monotonic() - start < 10
    # The hung worker was replaced: the pool still answers.
    assert reward([Sample(r"\boxed{\sqrt{4}}", {"answer": "2"})]) == [1.0]


def test_factory_passes_args():
    fn = build_math(extract=["boxed"], timeout=2)
    assert fn([Sample("Answer: 5", {"answer": "5"})]) == [0.0]


@pytest.mark.parametrize("args", [{"extract": ["nope"]}, {"timeout": 0}, {"max_answer_chars": -1}])
def test_bad_args(args):
    with pytest.raises(ValueError):
        MathReward(**args)
