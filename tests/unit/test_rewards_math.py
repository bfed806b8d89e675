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


def test_gold_is_read_once_per_row_and_parsed_once_per_worker():
    from grpokit.rewards.math import parsed_gold_count
    from grpokit.rewards.workers import WorkerPool

    pool = WorkerPool(size=1, preload=("math_verify",))
    try:
        reward = MathReward(pool=pool)
        read_gold.cache_clear()
        rows = [{"id": 1, "answer": r"\frac{1}{2}"}, {"id": 2, "answer": r"\sqrt{2}"}]
        samples = [Sample(rf"\boxed{{{c}}}", row) for row in rows for c in (r"\frac{2}{4}", "0.5", r"\sqrt{4}/2")]
        assert reward(samples) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        assert reward(samples) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        assert read_gold.cache_info().misses == 2  # one per distinct gold, across both batches
        assert pool.run(parsed_gold_count, (), 10).value == 2
    finally:
        pool.close()


def test_a_gold_that_is_not_mathematics_is_none_with_one_warning_naming_the_row(math_reward, caplog):
    samples = [Sample(r"\boxed{5}", {"id": "row-7", "answer": "}{"}) for _ in range(3)]
    with caplog.at_level("WARNING", logger="grpokit.rewards.math"):
        assert math_reward(samples) == [None, None, None]
    warnings = [r.getMessage() for r in caplog.records if "row id='row-7'" in r.getMessage()]
    assert len(warnings) == 1 and "cannot parse the gold answer" in warnings[0]


def test_text_gold_is_never_a_letter_product():
    gold = read_gold("on")
    assert gold.parts[0].kind == "text"
    assert plan(gold, ["no"], 500) == 0.0 and plan(gold, ["On"], 500) == 1.0
