"""The sampler's kept set (algo/support.py) and its replay in the trainer's log-probs
(algo.sampling_support), with numbers derived by hand."""

import math

import pytest
import torch

from grpokit.algo.selective import logprobs_from_logits, selective_logprobs
from grpokit.algo.support import Truncation, kept_threshold
from grpokit.rollout.sampling import filter_logits

# Probabilities 0.4, 0.3, 0.2, 0.1 at temperature 1.
LOGITS = torch.log(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))


@pytest.mark.parametrize("top_k, top_p, kept", [
    (0, 1.0, 4),   # no truncation
    (0, 0.6, 2),   # mass before each token: 0, 0.4, 0.7, 0.9 -> 0 and 0.4 are < 0.6
    (0, 0.4, 1),   # 0.4 is not < 0.4: the most likely token alone
    (3, 1.0, 3),   # top-3
    (3, 0.8, 3),   # over the top 3 (4/9, 3/9, 2/9): before 0, 0.444, 0.778, all < 0.8
    (3, 0.7, 2),   # 0.778 is not < 0.7
])
def test_kept_set_by_hand(top_k, top_p, kept):
    tau = kept_threshold(LOGITS, Truncation(top_k, top_p))
    assert int((LOGITS >= tau).sum()) == kept
    assert int(torch.isfinite(filter_logits(LOGITS, top_k, top_p)).sum()) == kept


def test_ties_at_the_threshold_are_all_kept():
    """Top-2 of [2, 1, 1, 0]: the two tokens tied at the second logit both stay, whatever
    order a sort gives them, so the sampler and the trainer agree on the set."""
    logits = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, 2, 1.0)).tolist() == [[True, True, True, False]]


def _replayed(logits, labels, temperature, truncation):
    """selective_logprobs with the identity as output projection: hidden = logits."""
    hidden = logits.clone().requires_grad_(True)
    lp, ent = selective_logprobs(hidden, torch.eye(logits.shape[1]), labels,
                                 temperature=temperature, chunk_size=1, with_entropy=True,
                                 truncation=truncation)
    lp.sum().backward()
    return lp, ent, hidden.grad


def test_replayed_logprob_gradient_and_entropy_by_hand():
    """top_p 0.6 keeps tokens 0 and 1 (0.4, 0.3), renormalised to 4/7 and 3/7. Token 1:
    log p = log(3/7) (the whole vocabulary would give log 0.3); d log p / d z =
    onehot − softmax over the kept set = [−4/7, 4/7, 0, 0]; the entropy is that of (4/7, 3/7)."""
    lp, ent, grad = _replayed(LOGITS, torch.tensor([1]), 1.0, Truncation(0, 0.6))
    assert lp.item() == pytest.approx(math.log(3 / 7), abs=1e-6)
    assert grad[0].tolist() == pytest.approx([-4 / 7, 4 / 7, 0.0, 0.0], abs=1e-6)
    h = -(4 / 7) * math.log(4 / 7) - (3 / 7) * math.log(3 / 7)
    assert ent.item() == pytest.approx(h, abs=1e-6)
    full, _, _ = _replayed(LOGITS, torch.tensor([1]), 1.0, None)
    assert full.item() == pytest.approx(math.log(0.3), abs=1e-6)


def test_temperature_scales_before_truncation():
    """At temperature 0.5 the probabilities are ∝ p²: 16, 9, 4, 1 over 30. top_p 0.5 keeps token
    0 alone (the mass before token 1 is 16/30 ≥ 0.5): its log-prob is 0 and its gradient 0."""
    lp, _, grad = _replayed(LOGITS, torch.tensor([0]), 0.5, Truncation(0, 0.5))
    assert lp.item() == pytest.approx(0.0, abs=1e-6)
    assert grad.abs().max().item() == pytest.approx(0.0, abs=1e-6)


def test_chunked_replay_equals_the_full_logits_path():
    """The written-out backward, the no-grad path and the plain logits path agree."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, 8, generator=gen)
    weight = torch.randn(50, 8, generator=gen)
    labels = torch.randint(0, 50, (9,), generator=gen)
    trunc = Truncation(20, 0.7)
    # A label outside the kept set (a rounding difference) stays in it: log-probs stay finite.
    outside = ~torch.isfinite(filter_logits((hidden @ weight.T) / 0.7, 20, 0.7)).gather(
        1, labels[:, None])
    assert outside.any()
    h = hidden.clone().requires_grad_(True)
    lp, _ = selective_logprobs(h, weight, labels, temperature=0.7, chunk_size=4, truncation=trunc)
    lp.sum().backward()
    h2 = hidden.clone().requires_grad_(True)
    ref = logprobs_from_logits(h2 @ weight.T, labels, 0.7, trunc)
    ref.sum().backward()
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(h.grad, h2.grad, rtol=0, atol=1e-5)
    with torch.no_grad():
        nograd, _ = selective_logprobs(hidden, weight, labels, temperature=0.7, chunk_size=4,
                                       truncation=trunc)
    torch.testing.assert_close(nograd, lp.detach(), rtol=0, atol=0)
    assert torch.isfinite(lp).all()


def test_entropy_gradient_path_replays_too():
    """With an entropy bonus the chunks run under activation checkpointing: same log-probs."""
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(6, 8, generator=gen, requires_grad=True)
    weight = torch.randn(30, 8, generator=gen)
    labels = torch.randint(0, 30, (6,), generator=gen)
    trunc = Truncation(0, 0.5)
    lp, ent = selective_logprobs(hidden, weight, labels, chunk_size=4, with_entropy=True,
                                 entropy_grad=True, truncation=trunc)
    with torch.no_grad():
        lp0, ent0 = selective_logprobs(hidden, weight, labels, chunk_size=4, with_entropy=True,
                                       truncation=trunc)
    torch.testing.assert_close(lp.detach(), lp0, rtol=0, atol=1e-6)
    torch.testing.assert_close(ent.detach(), ent0, rtol=0, atol=1e-5)  # two entropy formulas
    (lp.sum() + ent.sum()).backward()
    assert torch.isfinite(hidden.grad).all()


TINY = [
    "train.steps=1", "rollout.prompts_per_step=2", "rollout.group_size=4",
    "rollout.max_new_tokens=10", "eval.before_and_after=false", "data.max_prompt_length=1024",
    "train.micro_batch_size=4", "log.report_to=[]", "model.autocast='off'",
    "rollout.temperature=0.8", "rollout.top_p=0.5", "rollout.top_k=20",
    "train.epochs_per_batch=2",  # μ = 2: the old log-probs come from their own pass
    "algo.rollout_correction=tis", "algo.rollout_correction_level=sequence",
    "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}",
]


@pytest.mark.parametrize("support", ["replay", "full"])
def test_sampler_and_trainer_agree_under_truncation_only_when_replayed(
        tiny_model_dir, tmp_path, support):
    """The HF engine samples at top_p 0.5, top_k 20 from the very weights the trainer scores
    with. Replayed, the sampler/trainer ratio is 1 up to float rounding, every token and every
    sequence; over the whole vocabulary each token's ratio is its kept mass (< 1), and the
    sequence weights of TIS collapse toward 0."""
    import json

    from grpokit.config import load_config
    from grpokit.stages.grpo import train

    out = tmp_path / support
    train(load_config(overrides=[f"model.path={tiny_model_dir}", f"log.output_dir={out}", *TINY,
                                 f"algo.sampling_support={support}"]))
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    if support == "replay":
        assert m["loss/is_ratio_min"] == pytest.approx(1.0, abs=1e-4)
        assert m["loss/is_ratio_max"] == pytest.approx(1.0, abs=1e-4)
        assert abs(m["loss/mismatch_kl"]) < 1e-5
    else:
        assert m["loss/is_ratio_max"] < 0.9
        assert m["loss/mismatch_kl"] > 0.05
