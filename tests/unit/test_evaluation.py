"""pass@k and maj@k against hand-computed values."""

import math

import pytest

from grpokit.training.evaluation import maj_at_k, pass_at_k, summarize


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


# ---------------------------------------------------------------- `grpokit eval` end to end

EVAL = ["eval.num_prompts=5", "rollout.max_new_tokens=6", "data.max_prompt_length=1024",
        "data.task_args={digits: 1, ops: '+', train_size: 4, eval_size: 5, style: short}"]


def test_cli_eval_on_a_tiny_model_writes_pass_at_k_and_is_reproducible(tiny_model_dir, tmp_path):
    import json

    from grpokit.cli import main

    args = ["eval", f"model.path={tiny_model_dir}", *EVAL, "eval.samples_per_prompt=4",
            "eval.temperature=1.0", "eval.k=[1,4]"]
    assert main([*args, "--output", str(tmp_path / "a.json")]) == 0
    assert main([*args, "--output", str(tmp_path / "b.json")]) == 0
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    assert a == b  # sampling draws only from the seeded generator
    assert a["num_prompts"] == 5 and a["samples_per_prompt"] == 4
    assert {"pass@1", "pass@4", "maj@1", "maj@4", "reward/math", "scored_frac/math"} <= set(a)
    assert 0 <= a["pass@1"] <= a["pass@4"] <= 1


def test_eval_loads_the_model_as_it_is_without_reference_or_adapter(tiny_model_dir):
    from grpokit.config import load_config
    from grpokit.runtime.models import is_lora
    from grpokit.training.evaluation import run_eval
    from grpokit.training.session import build_session

    cfg = load_config(overrides=[f"model.path={tiny_model_dir}", *EVAL, "algo.beta=0.04",
                                 "model.lora.enabled=true"])
    session = build_session(cfg, training=False)
    assert session.reference is None and not is_lora(session.model)
    greedy = run_eval(cfg)  # one greedy sample per prompt: maj@1 is pass@1
    assert greedy["maj@1"] == greedy["pass@1"] and greedy["num_prompts"] == 5


def test_eval_without_held_out_rows_is_an_error(tiny_model_dir):
    from grpokit.config import load_config
    from grpokit.errors import UserError
    from grpokit.training.evaluation import run_eval

    cfg = load_config(overrides=[f"model.path={tiny_model_dir}", *EVAL, "eval.num_prompts=0"])
    with pytest.raises(UserError, match="no held-out rows"):  # exit 2, not a traceback
        run_eval(cfg)


def test_ci95_is_the_normal_interval_of_the_mean_over_prompts():
    from grpokit.training.evaluation import ci95

    # mean 0.75; sample variance ((3 * 0.25**2) + 0.75**2) / 3 = 0.25, s = 0.5; 1.96 * 0.5 / 2
    assert ci95([1.0, 0.0, 1.0, 1.0]) == pytest.approx(0.49)
    assert ci95([0.5, 0.5]) == 0.0
    assert math.isnan(ci95([1.0]))


# ---------------------------------------------------------------- the eval section's choices


class _Scored:
    """Two prompts × two samples with hand-picked completions and rewards (math, format)."""

    names = ["math", "format"]
    rows = [{"q": 0}, {"q": 1}]
    completions = [["<answer>3</answer>", "\\boxed{4}"], ["7", "answer: 7"]]
    rewards = [[[0.5, 1.0], [1.0, 0.0]], [[float("nan"), 1.0], [0.0, 1.0]]]  # [prompt][sample]

    def __init__(self):
        from grpokit.rollout.base import SamplingParams

        self.params = SamplingParams(max_new_tokens=4)
        self.calls: list[int] = []

    def score(self, sub, n, seeds, params):
        from types import SimpleNamespace

        import torch

        self.calls.append(len(sub))
        rows = [pair for i in sub for pair in self.rewards[i]]
        texts = [t for i in sub for t in self.completions[i]]
        return SimpleNamespace(rewards=torch.tensor(rows), rollout=SimpleNamespace(completions=texts))


def _evaluate(*overrides):
    from types import SimpleNamespace

    from grpokit.config import load_config
    from grpokit.training.evaluation import evaluate

    cfg = load_config(overrides=["eval.samples_per_prompt=2", "eval.temperature=1.0",
                                 "eval.k=[1,2]", *overrides])
    held_out, records = _Scored(), []
    results = evaluate(SimpleNamespace(cfg=cfg), held_out, 0, records)
    return results, records, held_out.calls


def test_the_first_reward_decides_correctness_by_default_at_threshold_one():
    results, records, _ = _evaluate()
    # math: prompt 0 [0.5, 1.0] -> [F, T]; prompt 1 [None, 0.0] -> [F, F]
    assert [r["correct"] for r in records] == [[False, True], [False, False]]
    assert results["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert results["pass@2"] == pytest.approx((1.0 + 0.0) / 2)


def test_eval_correct_reward_and_threshold_choose_what_counts_as_correct():
    results, records, _ = _evaluate("eval.correct_reward=format")
    assert [r["correct"] for r in records] == [[True, False], [True, True]]
    assert results["pass@1"] == pytest.approx((0.5 + 1.0) / 2)
    results, records, _ = _evaluate("eval.correct_threshold=0.5")
    assert [r["correct"] for r in records] == [[True, True], [False, False]]  # None never counts
    assert results["pass@1"] == pytest.approx(0.5)


def test_eval_answer_extractors_choose_the_answers_maj_at_k_votes_on():
    results, records, _ = _evaluate("eval.correct_reward=format")
    assert [r["answers"] for r in records] == [["3", "4"], ["7", "7"]]
    # prompt 0: "3" and "4" tie, the first seen ("3", correct) wins; prompt 1: "7", correct
    assert results["maj@2"] == pytest.approx(1.0)
    results, records, _ = _evaluate("eval.correct_reward=format", "eval.answer_extractors=[boxed]")
    assert [r["answers"] for r in records] == [[None, "4"], [None, None]]
    # prompt 0: only "4" votes and it is not correct; prompt 1: no votes at all
    assert results["maj@2"] == pytest.approx(0.0)


def test_eval_batch_size_sets_the_generation_calls_and_leaves_the_results_unchanged():
    big, big_records, big_calls = _evaluate("eval.batch_size=64")
    small, small_records, small_calls = _evaluate("eval.batch_size=2")
    assert big_calls == [2] and small_calls == [1, 1]  # completions per call / 2 samples a prompt
    assert _nan_equal(big, small) and big_records == small_records


def _nan_equal(a: dict, b: dict) -> bool:
    import math

    return a.keys() == b.keys() and all(
        a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_an_unknown_eval_correct_reward_is_refused_naming_the_run_rewards():
    from grpokit.config import ConfigError

    with pytest.raises(ConfigError, match=r"eval.correct_reward='accuracy' is not one of the "
                                          r"run's reward functions: math, format"):
        _evaluate("eval.correct_reward=accuracy")
