"""Multi-turn episodes on a tiny model: the engine continues from its KV cache after inserted
tool output, the training pass recomputes the sampled log-probs exactly, inserted tokens carry
no gradient, truncated episodes meet the overlong knobs, and `train` runs a scripted environment."""

import dataclasses
import json

import pytest
import torch

from grpokit.algo.losses import LossKnobs, policy_loss
from grpokit.config import ConfigError, load_config
from grpokit.rewards.overlong import overlong_penalty
from grpokit.rl.metrics import tool_metrics
from grpokit.rollout import HFEngine, SamplingParams
from grpokit.rollout.base import EnvReply, EpisodeCounts, Episodes
from grpokit.testing import tiny_llama
from grpokit.tools import register_environment
from grpokit.training.batch import ScoredBatch, TrainingBatch, concat, loss_mask_of, select_groups
from grpokit.training.groups import make_samples
from grpokit.training.logprobs import completion_logprobs

PROMPTS = ["hello", "a longer prompt", "q"]
ROWS = [{"prompt": p, "answer": "1"} for p in PROMPTS]
G = 4


class Scripted:
    """Hands the turn over at any of a few common characters; answers with a text that names
    the turn (or ends the episode once `end_after` turns were answered)."""

    def __init__(self, stops=tuple("abcde"), end_after=None):
        self.stop_strings, self.end_after, self.seen = stops, end_after, []

    def first_messages(self, row):
        return [{"role": "user", "content": row["prompt"]}]

    def respond(self, turns):
        self.seen += turns
        return [EnvReply(None if self.end_after and t.turn > self.end_after else
                         f"<o>{t.turn}{'x' * 3 * t.turn}</o>", tool_calls=1, tool_errors=t.turn % 2)
                for t in turns]


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_llama(seed=0, eos_rate=0.01)
    return model.float(), tok


def _episodes(tiny, env=None, max_turns=4, budget=60, seeds=(1, 2, 3)):
    model, tok = tiny
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    return HFEngine(model, tok).generate(ids, G, SamplingParams(max_new_tokens=budget), seeds,
                                         Episodes(env or Scripted(), ROWS, max_turns))


def _inserted(batch):
    return batch.completion_mask & ~batch.generated_mask  # (N, T)


@pytest.mark.parametrize("share_prefix", [False, True])
def test_the_training_pass_recomputes_the_sampled_logprobs_over_tool_turns(tiny, share_prefix):
    model, _ = tiny
    batch = _episodes(tiny)
    assert max(e.turns for e in batch.episodes) >= 3  # several tool turns in some episodes
    assert _inserted(batch).sum() > 50
    logprobs, _ = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask,
                                      batch.completion_ids, batch.completion_mask,
                                      share_prefix=share_prefix)
    gen = batch.generated_mask
    assert (logprobs - batch.sampling_logprobs)[gen].abs().max() < 1e-5
    assert torch.all(batch.sampling_logprobs[~gen] == 0)


def test_inserted_text_sits_between_turns_out_of_the_generated_mask(tiny):
    _, tok = tiny
    env = Scripted()
    batch = _episodes(tiny, env)
    for i, counts in enumerate(batch.episodes):
        n = int(batch.completion_mask[i].sum())
        ids, gen = batch.completion_ids[i, :n], batch.generated_mask[i, :n]
        inserted = tok.decode(ids[~gen])
        replies = "".join(f"<o>{k}{'x' * 3 * k}</o>" for k in range(1, counts.tool_calls + 1))
        assert inserted == replies[:len(inserted)]  # the last one may be cut by the budget
        assert counts.tool_calls == counts.turns - 1 or batch.finish_reason[i] == "length"
        assert batch.completions[i] == tok.decode(ids, skip_special_tokens=True)
    assert all(turn.text[-1] in "abcde" for turn in env.seen)  # a turn ends at its stop string
    assert all(turn.transcript.endswith(turn.text) for turn in env.seen)


def test_an_episode_without_tool_calls_is_the_single_turn_completion(tiny):
    model, tok = tiny
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    params = SamplingParams(max_new_tokens=40)
    single = HFEngine(model, tok).generate(ids, G, params, [1, 2, 3])
    episodes = _episodes(tiny, Scripted(stops=("never-written",)), budget=40)
    assert torch.equal(single.completion_ids, episodes.completion_ids)
    assert torch.equal(single.generated_mask, episodes.generated_mask)
    assert torch.allclose(single.sampling_logprobs, episodes.sampling_logprobs, atol=1e-6)
    assert single.finish_reason == episodes.finish_reason
    assert episodes.episodes == [EpisodeCounts()] * len(episodes.episodes)


def test_episodes_are_seeded(tiny):
    a, b = _episodes(tiny), _episodes(tiny)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.episodes == b.episodes
    c = _episodes(tiny, seeds=(4, 5, 6))
    assert not torch.equal(a.completion_ids[:, :5], c.completion_ids[:, :5])


def test_max_turns_and_the_token_budget_truncate(tiny):
    batch = _episodes(tiny, max_turns=2, budget=40)
    reasons = set(batch.finish_reason)
    assert {"max_turns", "length"} <= reasons
    for reason, counts, length in zip(batch.finish_reason, batch.episodes,
                                      batch.completion_mask.sum(dim=1).tolist()):
        if reason == "max_turns":
            assert counts.turns == 2 and counts.tool_calls == 1 and length <= 40
        if reason == "length":
            assert length == 40  # the budget counts inserted tokens too


def test_the_environment_can_end_an_episode(tiny):
    batch = _episodes(tiny, Scripted(end_after=1), max_turns=5, budget=80)
    ended = [i for i, e in enumerate(batch.episodes) if e.tool_calls == 2]
    assert ended and all(batch.finish_reason[i] == "stop" for i in ended)
    assert all(e.turns <= 2 for e in batch.episodes)


def _scored(batch):
    reward = torch.arange(len(batch.completions), dtype=torch.float32) % 3  # (N,)
    return ScoredBatch(batch, reward[:, None], reward)


def test_truncated_episodes_leave_the_loss_with_mask_truncated(tiny):
    scored = _scored(_episodes(tiny, max_turns=2, budget=40))
    r = scored.rollout
    cut = torch.tensor([f in ("length", "max_turns") for f in r.finish_reason])
    cfg = load_config(overrides=["algo.mask_truncated=true"])
    included, mask = loss_mask_of(scored, cfg)
    assert torch.equal(included, ~cut)
    assert torch.equal(mask, r.generated_mask & ~cut[:, None])
    included, mask = loss_mask_of(scored, load_config())
    assert included.all() and torch.equal(mask, r.generated_mask)  # never an inserted token


def test_the_overlong_penalty_counts_the_whole_episode(tiny):
    r = _episodes(tiny, max_turns=2, budget=40)
    samples = make_samples(r, PROMPTS, 40)
    for sample, length, reason in zip(samples, r.completion_mask.sum(dim=1).tolist(),
                                      r.finish_reason):
        assert sample.num_tokens == length and sample.max_tokens == 40
        if reason == "length":
            assert overlong_penalty(sample.num_tokens, 40, 10) == -1.0


def _loss_gradient(model, batch, advantages, old, sampler, ref, knobs, mask):
    model.zero_grad()
    logprobs, _ = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask,
                                      batch.completion_ids, batch.completion_mask)
    loss, _ = policy_loss(logprobs, old, advantages, mask, knobs, ref_logprobs=ref,
                          sampler_logprobs=sampler)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("knobs", [
    LossKnobs(beta=0.1, aggregation="seq_mean_token_mean", rollout_correction="tis"),
    LossKnobs(ratio="sequence", aggregation="token_mean", rollout_correction="mis",
              rollout_correction_level="sequence"),
    LossKnobs(aggregation="seq_sum_norm", max_completion_length=60, entropy_coef=0.0),
])
def test_inserted_tokens_carry_exactly_zero_gradient(tiny, knobs):
    model, _ = tiny
    batch = _episodes(tiny)
    _, mask = loss_mask_of(_scored(batch), load_config())
    inserted = _inserted(batch)
    n, t = batch.completion_ids.shape
    torch.manual_seed(0)
    advantages = torch.randn(n, t)  # (N, T): per-token, as process supervision gives
    with torch.no_grad():
        old = completion_logprobs(model, batch.prompt_ids, batch.prompt_mask,
                                  batch.completion_ids, batch.completion_mask)[0] - 0.01
    ref, sampler = old - 0.02, batch.sampling_logprobs
    base = _loss_gradient(model, batch, advantages, old, sampler, ref, knobs, mask)
    noise = torch.randn(n, t) * 5 * inserted  # changes only the inserted positions
    moved = _loss_gradient(model, batch, advantages + noise, old + noise, sampler - noise,
                           ref + noise, knobs, mask)
    assert any(g.abs().sum() > 0 for g in base)
    for a, b in zip(base, moved):
        assert torch.equal(a, b)

    # And through the log-probs themselves: d loss / d logp is 0 at every inserted token.
    logprobs = old.clone().requires_grad_(True)
    loss, _ = policy_loss(logprobs, old, advantages, mask, knobs, ref_logprobs=ref,
                          sampler_logprobs=sampler)
    (grad,) = torch.autograd.grad(loss, logprobs)
    assert torch.all(grad[inserted] == 0) and grad[mask].abs().sum() > 0


def test_select_concat_and_to_carry_the_masks_and_counts(tiny):
    scored = _scored(_episodes(tiny))
    r = scored.rollout
    part = select_groups(scored, [2, 0])
    rows = list(range(2 * G, 3 * G)) + list(range(G))
    assert torch.equal(part.rollout.generated_mask, r.generated_mask[rows])
    assert part.rollout.episodes == [r.episodes[i] for i in rows]
    joined = concat([select_groups(scored, [0]), select_groups(scored, [1])], pad_token_id=0)
    width = joined.rollout.completion_ids.shape[1]
    assert torch.equal(joined.rollout.generated_mask[:G, :width],
                       torch.nn.functional.pad(r.generated_mask[:G], (0, width - r.generated_mask.shape[1]))[:, :width])
    assert joined.rollout.episodes == r.episodes[:2 * G]
    moved = scored.to("cpu")
    assert torch.equal(moved.rollout.generated_mask, r.generated_mask)
    assert moved.rollout.episodes == r.episodes


def test_tool_metrics_by_hand():
    completion = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    generated = torch.tensor([[1, 0, 0, 1], [1, 1, 0, 0]], dtype=torch.bool)
    from grpokit.rollout.base import RolloutBatch
    r = RolloutBatch(prompt_ids=torch.ones(2, 1, dtype=torch.long),
                     prompt_mask=torch.ones(2, 1, dtype=torch.bool),
                     completion_ids=torch.ones(2, 4, dtype=torch.long),
                     completion_mask=completion, finish_reason=["max_turns", "stop"],
                     group_index=torch.zeros(2, dtype=torch.long), completions=["", ""],
                     generated_mask=generated,
                     episodes=[EpisodeCounts(3, 2, 1, 1), EpisodeCounts(1, 0, 0, 0)])
    assert tool_metrics(r) == {
        "tools/turns_mean": 2.0, "tools/calls_mean": 1.0, "tools/use_frac": 0.5,
        "tools/calls": 2.0, "tools/errors": 1.0, "tools/timeouts": 1.0,
        "tools/error_frac": 0.5, "tools/timeout_frac": 0.5,
        "tools/output_token_frac": 2 / 6, "tools/max_turns_frac": 0.5}


def test_a_single_turn_batch_has_its_completion_mask_as_generated_mask(tiny):
    model, tok = tiny
    r = HFEngine(model, tok).generate([tok("hi")["input_ids"]], 2, SamplingParams(8), [0])
    assert r.generated_mask is r.completion_mask and r.episodes is None


def test_the_environment_must_answer_every_turn(tiny):
    class Silent(Scripted):
        def respond(self, turns):
            return []

    with pytest.raises(ValueError, match="answered 0 turns, expected"):
        _episodes(tiny, Silent())


def _scripted_factory(cfg, system_prompt):
    return Scripted(stops=tuple("abc"))


register_environment("scripted_test", _scripted_factory)


def test_train_runs_a_scripted_environment(tiny_model_dir, tmp_path):
    from grpokit.stages.grpo import train

    out = tmp_path / "run"
    cfg = load_config(overrides=[
        f"model.path={tiny_model_dir}", f"log.output_dir={out}", "train.steps=2",
        "rollout.prompts_per_step=2", "rollout.group_size=4", "rollout.max_new_tokens=24",
        "eval.num_prompts=2", "train.micro_batch_size=3", "train.lr=1e-3",
        "data.task_args={digits: 1, ops: '+', train_size: 20, eval_size: 8, style: short}",
        "tools.environment=scripted_test", "tools.max_turns=3", "algo.mask_truncated=true",
        "log.report=false", "log.report_to=[]", "log.samples_every=1"])
    results = train(cfg)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for key in ("tools/turns_mean", "tools/calls_mean", "tools/error_frac",
                "tools/output_token_frac", "tools/max_turns_frac", "loss/policy"):
        assert key in lines[0], key
    assert sum(m["tools/calls"] for m in lines) > 0
    assert "pass@1" in results["after"]
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert any("<o>1xxx</o>" in s["completion"] for s in samples)


def test_ppo_refuses_tool_episodes():
    from grpokit.stages.ppo import train_ppo

    with pytest.raises(ConfigError, match="grpokit ppo samples single-turn"):
        train_ppo(load_config(overrides=["tools.environment=tags"]))
