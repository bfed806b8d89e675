"""Clip-Cov, KL-Cov, the unclipped `pg` term and on-policy distillation: the token selection,
the per-token values and gradients worked out by hand (docs/papers.md has the formulas), the
selection's independence of the micro-batch split, the config's checks, and the effect of one
distillation update on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from grpokit.algo import LossKnobs, per_token_loss, policy_loss
from grpokit.algo.advantages import distill_advantages, outcome_advantages
from grpokit.algo.covariance import cov_selection, token_covariance
from grpokit.cli import main
from grpokit.config import ConfigError, load_config

# Four tokens: A = (1, 1, −1, −1), log π = (−1, −3, −1, −3); means 0 and −2, so
# c = A·(log π + 2) = (1·1, 1·(−1), (−1)·1, (−1)·(−1)) = (1, −1, −1, 1).
ADV = torch.tensor([1.0, 1.0, -1.0, -1.0])
LOGP = torch.tensor([-1.0, -3.0, -1.0, -3.0])


def test_token_covariance_is_the_product_of_the_centred_advantage_and_log_prob():
    assert token_covariance(ADV, LOGP).tolist() == [1.0, -1.0, -1.0, 1.0]


@pytest.mark.parametrize("ratio, chosen", [(0.5, [0, 3]), (0.25, [0]), (0.1, [0]), (1.0, [0, 1, 2, 3])])
def test_kl_cov_takes_the_largest_covariances_at_least_one_ties_by_position(ratio, chosen):
    """n = max(⌊ratio·4⌋, 1): 0.5 → 2 (the tied 1s at 0 and 3), 0.25 → 1, 0.1 → ⌊0.4⌋ = 0 → 1."""
    got = cov_selection(ADV, LOGP, mode="kl_cov", ratio=ratio, low=1.0, high=5.0)
    assert torch.nonzero(got).flatten().tolist() == chosen


def test_clip_cov_draws_its_tokens_among_the_candidates_in_the_band():
    """Candidates: 0.5 < c < 5 → tokens 0 and 3. ratio 0.5 → n = 2 = every candidate; ratio
    0.25 → one of them, the same one for the same seed."""
    both = cov_selection(ADV, LOGP, mode="clip_cov", ratio=0.5, low=0.5, high=5.0,
                         generator=torch.Generator().manual_seed(0))
    assert torch.nonzero(both).flatten().tolist() == [0, 3]
    draws = [cov_selection(ADV, LOGP, mode="clip_cov", ratio=0.25, low=0.5, high=5.0,
                           generator=torch.Generator().manual_seed(seed)) for seed in (7, 7)]
    assert int(draws[0].sum()) == 1 and bool(draws[0][[0, 3]].any())
    assert torch.equal(draws[0], draws[1])
    none = cov_selection(ADV, LOGP, mode="clip_cov", ratio=1.0, low=1.0, high=5.0)  # c = 1: out
    assert not none.any()


def _loss_and_grad(knobs, log_ratio, adv, selected, aggregation="token_mean"):
    lp = torch.tensor(log_ratio, requires_grad=True)
    old = torch.zeros_like(lp)
    mask = torch.ones_like(lp, dtype=torch.bool)
    adv, selected = torch.tensor(adv), torch.tensor(selected)
    per_token = per_token_loss(lp, old, adv, mask, knobs, selected=selected)
    loss, metrics = policy_loss(lp, old, adv, mask, knobs, selected=selected)
    loss.backward()
    return per_token.detach(), loss.detach(), lp.grad, metrics


def test_clip_cov_zeroes_the_value_and_gradient_of_the_selected_tokens_only():
    """Clipped surrogate, A = 1, log ρ = (0.1, 0.1): unselected −e^0.1 = −1.105171 with gradient
    −e^0.1/2 (token mean over 2); the selected token is 0 with gradient 0 but still counted."""
    knobs = LossKnobs(cov_control="clip_cov", clip_high=0.28, aggregation="token_mean")
    per_token, loss, grad, metrics = _loss_and_grad(knobs, [[0.1, 0.1]], [1.0], [[False, True]])
    e = math.exp(0.1)
    torch.testing.assert_close(per_token, torch.tensor([[-e, 0.0]]))
    torch.testing.assert_close(loss, torch.tensor(-e / 2))
    torch.testing.assert_close(grad, torch.tensor([[-e / 2, 0.0]]))
    assert metrics["cov_selected_frac"] == 0.5


def test_kl_cov_adds_the_absolute_log_ratio_on_the_selected_tokens_to_the_unclipped_term():
    """pg, A = 1, log ρ = (0.1, 0.5), coef 0.5, token 1 selected: −e^0.1 and −e^0.5 + 0.5·0.5;
    gradients −e^0.1 and −e^0.5 + 0.5 (token sum, no clip at ρ = e^0.5 > 1.2); and at log ρ = 0
    (a step's first update) the penalty is 0 with gradient 0."""
    knobs = LossKnobs(loss="pg", cov_control="kl_cov", kl_cov_coef=0.5, aggregation="token_mean")
    per_token, _, grad, _ = _loss_and_grad(knobs, [[0.1, 0.5]], [1.0], [[False, True]])
    a, b = math.exp(0.1), math.exp(0.5)
    torch.testing.assert_close(per_token, torch.tensor([[-a, -b + 0.25]]))
    torch.testing.assert_close(grad, torch.tensor([[-a / 2, (-b + 0.5) / 2]]))
    per_token, _, grad, _ = _loss_and_grad(knobs, [[0.0, 0.0]], [1.0], [[True, True]])
    torch.testing.assert_close(per_token, torch.tensor([[-1.0, -1.0]]))
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -0.5]]))


def test_pg_is_the_ratio_times_the_advantage_without_a_clip():
    """log ρ = log 1.5: pg −1.5·A with gradient −1.5·A per token; clip at 1.2 would hold
    −1.2 with gradient 0 for A = 1."""
    knobs = LossKnobs(loss="pg", aggregation="token_mean")
    per_token, _, grad, _ = _loss_and_grad(knobs, [[math.log(1.5)], [math.log(1.5)]],
                                           [1.0, -2.0], [[False], [False]])
    torch.testing.assert_close(per_token, torch.tensor([[-1.5], [3.0]]))
    torch.testing.assert_close(grad, torch.tensor([[-1.5 / 2], [3.0 / 2]]))
    clipped, _, clip_grad, _ = _loss_and_grad(LossKnobs(aggregation="token_mean"),
                                              [[math.log(1.5)]], [1.0], [[False]])
    torch.testing.assert_close(clipped, torch.tensor([[-1.2]]))
    assert clip_grad.item() == 0.0


def test_distill_advantages_add_the_teacher_gap_on_the_loss_tokens():
    """A = (0.5, −0.5), coef 2: row 0: 0.5 + 2·(−1 + 1.5) = 1.5, 0.5 + 2·(−2 + 1) = −1.5;
    row 1: −0.5 + 2·0 = −0.5, then a masked token: 0."""
    teacher = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    student = torch.tensor([[-1.5, -1.0], [-0.5, -2.0]])
    mask = torch.tensor([[True, True], [True, False]])
    got = distill_advantages(torch.tensor([0.5, -0.5]), teacher, student, mask, 2.0)
    assert got.tolist() == [[1.5, -1.5], [-0.5, 0.0]]


def test_estimator_none_gives_zero_advantages_whatever_the_rewards():
    rewards = torch.tensor([[1.0], [0.0], [0.5], [float("nan")]], dtype=torch.float64)
    got = outcome_advantages(rewards, [1.0], 2, estimator="none", scale="group", eps=1e-6)
    assert got.tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("overrides, message", [
    (["algo.preset=distill"], "algo.estimator=none trains on nothing without algo.teacher"),
    (["algo.teacher=x", "algo.loss=gmpo"], "algo.loss=gmpo takes one advantage per completion"),
    (["algo.teacher=x", "algo.teacher_coef=0"], "algo.teacher_coef must be > 0"),
    (["algo.cov_control=clip_cov", "algo.cov_ratio=0"], "algo.cov_ratio must be in (0, 1]"),
    (["algo.clip_cov_low=5", "algo.clip_cov_high=1"], "algo.clip_cov_low < algo.clip_cov_high"),
    (["algo.cov_control=kl"], "algo.cov_control"),
])
def test_bad_distillation_and_covariance_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides=overrides)


def test_a_teacher_with_another_vocabulary_exits_2_naming_it(tiny_model_dir, tmp_path, capsys):
    from grpokit.testing import save_tiny_llama

    other = save_tiny_llama(tmp_path / "wide", vocab_size=120)
    code = main(["train", f"model.path={tiny_model_dir}", f"algo.teacher={other}",
                 "algo.preset=distill", f"log.output_dir={tmp_path / 'run'}", "train.steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "algo.teacher" in err and "tokenizer differs" in err, err
    missing = main(["train", f"model.path={tiny_model_dir}", "algo.teacher=/no/such/folder",
                    "algo.preset=distill", f"log.output_dir={tmp_path / 'run2'}"])
    assert missing == 2 and "algo.teacher:" in capsys.readouterr().err


def test_kl_cov_with_one_update_per_step_says_it_does_not_act():
    from grpokit.stages.grpo import kl_cov_note

    assert "acts only from a step's second update" in kl_cov_note(
        load_config(overrides=["algo.preset=kl_cov"]))
    assert kl_cov_note(load_config(overrides=["algo.preset=kl_cov", "train.minibatches=2",
                                              "rollout.prompts_per_step=4"])) is None


def _completion_logprobs(model, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    from grpokit.algo import logprobs_from_logits

    logits = model(ids).logits[:, prompt - 1:-1]  # (N, T, V): the positions that predict
    return logprobs_from_logits(logits, ids[:, prompt:])  # (N, T)


def test_one_distillation_update_moves_the_student_toward_the_teacher(tiny_model_dir,
                                                                      tiny_teacher_dir):
    """With A_t = log π_T − log π (fixed), the gradient of −A_t·log π is that of
    ½(log π − log π_T)² at each token: a small step must shrink the squared gap on the batch."""
    from grpokit.runtime import models

    student = models.load_policy(tiny_model_dir)
    teacher = models.load_reference(tiny_teacher_dir)
    ids = torch.randint(10, 90, (6, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(6, 8, dtype=torch.bool)
    with torch.no_grad():
        target = _completion_logprobs(teacher, ids, 4)

    def gap() -> float:
        with torch.no_grad():
            return float(((_completion_logprobs(student, ids, 4) - target) ** 2).sum())

    before = gap()
    lp = _completion_logprobs(student, ids, 4)
    adv = distill_advantages(torch.zeros(6), target, lp.detach(), mask, 1.0)
    loss, _ = policy_loss(lp, lp.detach(), adv, mask, LossKnobs(aggregation="token_mean"))
    loss.backward()
    with torch.no_grad():
        for p in student.parameters():
            p -= 1e-3 * p.grad
    assert gap() < before * 0.99, (before, gap())


def test_distillation_lowers_the_reverse_kl_to_the_teacher_over_a_run(tiny_model_dir,
                                                                      tiny_teacher_dir, tmp_path):
    """The preset end to end: 8 steps of 32 of the student's own samples; the logged reverse KL
    (k1 on the step's tokens) falls by about a third (seeds 0–3: last two steps 0.63–0.72 of
    the first two)."""
    import json

    out = tmp_path / "run"
    assert main(["train", f"model.path={tiny_model_dir}", f"algo.teacher={tiny_teacher_dir}",
                 "algo.preset=distill", f"log.output_dir={out}", "train.steps=8",
                 "rollout.prompts_per_step=4", "rollout.group_size=8", "rollout.max_new_tokens=8",
                 "eval.num_prompts=0", "data.max_prompt_length=1024", "train.micro_batch_size=32",
                 "train.lr=3e-3", "log.report_to=[]", "log.report=false",
                 "data.task_args={digits: 1, ops: '+', train_size: 20, eval_size: 4, "
                 "style: short}"]) == 0
    kl = [json.loads(x)["distill/reverse_kl"] for x in (out / "metrics.jsonl").open()]
    assert sum(kl[-2:]) / 2 < 0.8 * sum(kl[:2]) / 2, kl


def test_kl_in_reward_returns_are_whitened_over_the_tokens():
    """β = 0.5, k = [[0.2, 0.1, ·], [0.0, 0.3, −0.1]], r = (1, 0), row 0's last token off the
    mask and row 2 unscorable. Returns G_t = r − β·Σ_{s≥t} k_s: row 0: 1 − 0.5·0.3 = 0.85,
    1 − 0.5·0.1 = 0.95; row 1: −0.1, −0.1, 0.05. Mean 1.65/5 = 0.33, deviations 0.52, 0.62,
    −0.43, −0.43, −0.28, Σ² = 1.103, Bessel std √(1.103/4) = √0.27575."""
    from grpokit.algo.advantages import kl_reward_advantages

    reward = torch.tensor([1.0, 0.0, float("nan")])
    kl = torch.tensor([[0.2, 0.1, 9.0], [0.0, 0.3, -0.1], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True], [True, True, True]])
    got = kl_reward_advantages(reward, kl, mask, beta=0.5, eps=0.0)
    std = math.sqrt(0.27575)
    want = torch.tensor([[0.52, 0.62, 0.0], [-0.43, -0.43, -0.28], [0.0, 0.0, 0.0]]) / std
    want[0, 2] = want[2] = 0.0
    torch.testing.assert_close(got, want)


def test_kl_in_reward_takes_the_kl_out_of_the_loss():
    """With kl_in_reward the per-token loss has no β·KL term, whatever β."""
    lp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    adv = torch.tensor([1.0])
    with_kl = per_token_loss(lp, lp, adv, mask, LossKnobs(beta=0.5), ref_logprobs=ref)
    folded = per_token_loss(lp, lp, adv, mask, LossKnobs(beta=0.5, kl_in_reward=True),
                            ref_logprobs=ref)
    torch.testing.assert_close(folded, torch.tensor([[-1.0, -1.0]]))
    assert not torch.allclose(with_kl, folded)


def test_kl_in_reward_needs_reinforce_pp_and_a_beta():
    with pytest.raises(ConfigError, match="algo.kl_in_reward folds"):
        load_config(overrides=["algo.kl_in_reward=true", "algo.beta=0.01"])
    with pytest.raises(ConfigError, match="algo.kl_in_reward folds"):
        load_config(overrides=["algo.preset=reinforce_pp", "algo.beta=0"])
    assert load_config(overrides=["algo.preset=reinforce_pp"]).algo.kl_in_reward is True


@pytest.mark.parametrize("loss, clip_low, clip_high, frac", [
    ("clip", 0.2, 0.2, 0.5),   # ρ = 1.3 with A > 0 is outside 1.2; ρ = 0.85 with A < 0 inside 0.8
    ("gmpo", 0.2, 0.2, 0.5),   # log-space band (e^−0.2, e^0.2) = (0.819, 1.221): the same here
    ("gmpo", 0.2, 0.3, 0.0),   # e^0.3 = 1.35 > 1.3: nothing clipped
    ("pg", 0.2, 0.2, 0.0),     # no clip at all
    ("sapo", 0.2, 0.2, 0.0),
])
def test_clip_fraction_follows_each_losses_own_band(loss, clip_low, clip_high, frac):
    lp = torch.log(torch.tensor([[1.3], [0.85]]))
    knobs = LossKnobs(loss=loss, clip_low=clip_low, clip_high=clip_high)
    _, metrics = policy_loss(lp, torch.zeros(2, 1), torch.tensor([1.0, -1.0]),
                             torch.ones(2, 1, dtype=torch.bool), knobs)
    assert metrics["clip_frac"] == pytest.approx(frac)
