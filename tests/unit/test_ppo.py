"""`grpokit ppo`: which hidden state gives each completion token's value (a stub decoder whose
hidden state is the token id and position), returns taken before whitening (by hand), the skipped
update of an all-tied dynamic-sampling step, and on a tiny random model: both critics run, log the
value loss, resume exactly."""

import contextlib
import json
from types import SimpleNamespace

import pytest
import torch

from grpokit.stages import ppo
from grpokit.config import ConfigError, load_config
from grpokit.stages.ppo import Critic, advantages_and_returns, train_ppo
from grpokit.rewards.registry import per_item


@per_item("ppo_const")
def _const(sample, **_):
    return 1.0

PPO = ["rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=6",
       "train.micro_batch_size=2", "log.report_to=[]", "log.report=false",
       "eval.before_and_after=false", "checkpoint.keep_last=0", "ppo.value_lr=1e-3",
       "train.lr=1e-3", "data.max_prompt_length=256",
       "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}"]


@pytest.mark.parametrize("value_model", ["separate", "head"])
def test_ppo_runs_and_resumes_exactly(tiny_model_dir, tmp_path, value_model):
    from safetensors.torch import load_file

    base = [f"model.path={tiny_model_dir}", *PPO, f"ppo.value_model={value_model}"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_ppo(load_config(overrides=[*base, f"log.output_dir={straight}", "train.steps=2"]))
    train_ppo(load_config(overrides=[*base, f"log.output_dir={split}", "train.steps=1"]))
    train_ppo(load_config(overrides=[*base, f"log.output_dir={split}", "train.steps=2"]),
              resume=split)
    lines = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/value", "loss/value_clip_frac", "loss/policy", "reward/mean"} <= set(lines[0])
    assert lines[0]["train/skipped"] == 0.0
    final = lambda out: load_file(sorted((out / "checkpoints").iterdir())[-1] / "model"
                                  / "model.safetensors")
    w1, w2 = final(straight), final(split)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    critic = lambda out: torch.load(sorted((out / "checkpoints").iterdir())[-1] / "trainer.pt",
                                    weights_only=False)["critic"]
    c1, c2 = critic(straight), critic(split)
    assert c1.keys() == c2.keys() and all(torch.equal(c1[k], c2[k]) for k in c1)
    assert "head.weight" in c1
    assert any(k.startswith("decoder.") for k in c1) == (value_model == "separate")


def test_ppo_refuses_lora(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="model.lora.enabled"):
        train_ppo(load_config(overrides=[f"model.path={tiny_model_dir}", *PPO,
                                         "model.lora.enabled=true",
                                         f"log.output_dir={tmp_path / 'x'}"]))


# ---------------------------------------------------------------- the critic's positions


class _IdsAndPositions(torch.nn.Module):
    """A decoder stand-in whose hidden state at each position is (token id, position id)."""

    def forward(self, input_ids, attention_mask, position_ids, use_cache):
        hidden = torch.stack([input_ids.float(), position_ids.float()], dim=-1)  # (n, L, 2)
        return SimpleNamespace(last_hidden_state=hidden)


class _StubPolicy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = _IdsAndPositions()
        self.config = SimpleNamespace(hidden_size=2)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the device the head is put on

    def get_decoder(self):
        return self.decoder


# Two rows, prompts left-padded (pad id 0) with a padding column no row needs, completions
# right-padded with one padding column no row needs:
#   row 0: prompt 11 12 13,  completion 31 32 33
#   row 1: prompt 21 22,     completion 41
PROMPT_IDS = torch.tensor([[0, 11, 12, 13], [0, 0, 21, 22]])
PROMPT_MASK = PROMPT_IDS > 0
COMPLETION_IDS = torch.tensor([[31, 32, 33, 0], [41, 0, 0, 0]])
COMPLETION_MASK = COMPLETION_IDS > 0


@pytest.mark.parametrize("value_model", ["separate", "head"])
def test_critic_values_come_from_the_state_before_each_completion_token(value_model):
    # V_t is read at the last position before completion token t: the last prompt token for
    # t = 0, completion token t − 1 after that. With the head reading the token id:
    #   row 0: V = (13, 31, 32) and 0 on the padding column
    #   row 1: V = (22) and 0 on padding
    # and reading the position (counted from each row's first real token, left padding 0):
    #   row 0: prompt at 0 1 2, completion at 3 4 5: V = (2, 3, 4)
    #   row 1: prompt at 0 1, completion at 2:       V = (1)
    # Off by one either way reads 12/31 or 31/32 for row 0's first two tokens.
    critic = Critic(_StubPolicy(), value_model)
    batch = (PROMPT_IDS, PROMPT_MASK, COMPLETION_IDS, COMPLETION_MASK)
    with torch.no_grad():
        critic.head.weight.copy_(torch.tensor([[1.0, 0.0]]))
        assert critic(*batch).tolist() == [[13.0, 31.0, 32.0, 0.0], [22.0, 0.0, 0.0, 0.0]]
        critic.head.weight.copy_(torch.tensor([[0.0, 1.0]]))
        assert critic(*batch).tolist() == [[2.0, 3.0, 4.0, 0.0], [1.0, 0.0, 0.0, 0.0]]


def test_the_value_head_runs_in_fp32_under_bf16_autocast():
    # The runs wrap the critic in bf16 autocast (session.autocast). The head is fp32 on purpose:
    # with the hidden state 13 (row 0's last prompt token) and a weight fl32(1/3) = 0.33333334,
    # fp32 gives 13 · 0.33333334 = 4.3333335, while a bf16 head rounds the weight to 0.333984375
    # and its output to 8 significant bits: 4.34375, off by 0.01, a resolution of 2⁻⁸ near 1 that
    # the value targets (returns in [0, 1]) cannot be learned below.
    critic = Critic(_StubPolicy(), "head")
    with torch.no_grad():
        critic.head.weight.copy_(torch.tensor([[1 / 3, 0.0]]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            values = critic(PROMPT_IDS, PROMPT_MASK, COMPLETION_IDS, COMPLETION_MASK)
    assert values.dtype == torch.float32
    assert values[0, 0].item() == (torch.tensor(13.0) * torch.tensor(1 / 3)).item()


# ---------------------------------------------------------------- returns before whitening


class _TableCritic(torch.nn.Module):
    """Values looked up by row: each row's prompt holds its own index."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, prompt_ids, prompt_mask, completion_ids, completion_mask):
        return self.table[prompt_ids[:, 0]]  # (n, T)


def _gae_inputs(whiten):
    cfg = SimpleNamespace(ppo=SimpleNamespace(gamma=0.9, gae_lambda=0.8, whiten_advantages=whiten),
                          train=SimpleNamespace(micro_batch_size=1))  # one row per value pass
    session = SimpleNamespace(cfg=cfg, autocast=contextlib.nullcontext)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    rollout = SimpleNamespace(prompt_ids=torch.tensor([[0], [1]]), prompt_mask=torch.ones(2, 1),
                              completion_ids=mask.long(), completion_mask=mask)
    scored = SimpleNamespace(rollout=rollout, reward=torch.tensor([1.0, 0.0]))
    critic = _TableCritic(torch.tensor([[0.5, 0.2, 0.4], [0.3, 0.1, 9.0]]))  # 9.0: padding
    return session, critic, scored, mask


def test_returns_are_taken_before_the_advantages_are_whitened():
    # γ = 0.9, λ = 0.8 (γλ = 0.72), values and rewards of test_gae.test_gae_by_hand:
    #   row 0 (R = 1): A2 = 1 − 0.4 = 0.6, A1 = 0.9·0.4 − 0.2 + 0.72·0.6 = 0.592,
    #                  A0 = 0.9·0.2 − 0.5 + 0.72·0.592 = 0.10624
    #   row 1 (R = 0): A1 = −0.1, A0 = 0.9·0.1 − 0.3 + 0.72·(−0.1) = −0.282
    # Returns G = A + V with the raw A: (0.60624, 0.792, 1.0) and (0.018, 0.0).
    # Whitening: mean of the 5 advantages 0.91624 / 5 = 0.183248; deviations −0.077008,
    # 0.408752, 0.416752, −0.465248, −0.283248, squares summing to 0.643376, population variance
    # 0.643376 / 5 = 0.128675: σ ≈ 0.358713. Were the returns taken after it, the last token of
    # row 0 would get (0.6 − 0.183248) / 0.358713 + 0.4 ≈ 1.5618, not 1.0.
    raw = torch.tensor([[0.10624, 0.592, 0.6], [-0.282, -0.1, 0.0]])
    returns = torch.tensor([[0.60624, 0.792, 1.0], [0.018, 0.0, 0.0]])
    mean = 0.91624 / 5
    sigma = (sum((a - mean) ** 2 for a in [0.10624, 0.592, 0.6, -0.282, -0.1]) / 5) ** 0.5
    assert sigma == pytest.approx(0.358713, abs=1e-6)
    whitened = torch.where(_gae_inputs(True)[3], (raw - mean) / sigma, 0.0)
    for whiten, advantages in [(False, raw), (True, whitened)]:
        session, critic, scored, mask = _gae_inputs(whiten)
        old, adv, ret = advantages_and_returns(session, critic, scored, mask)
        torch.testing.assert_close(old, critic.table)
        torch.testing.assert_close(adv, advantages)
        torch.testing.assert_close(ret, returns)  # the same with and without whitening


# ---------------------------------------------------------------- dynamic sampling, no signal


def test_an_all_tied_dynamic_sampling_step_skips_both_updates(tiny_model_dir, tmp_path):
    # Every completion scores 1.0: every group ties in every round, so dynamic sampling keeps
    # nothing and flags no_signal. The step logs train/skipped = 1 and leaves the policy, the
    # critic and both AdamW states untouched (docs/ppo.md says why PPO honours the flag).
    cfg = load_config(overrides=[f"model.path={tiny_model_dir}", *PPO,
                                 "rewards=[{name: ppo_const}]", "algo.dynamic_sampling=true",
                                 "algo.max_refill_rounds=1", f"log.output_dir={tmp_path}"])
    stage = ppo._start(cfg, None)
    session, groups, state = stage.session, stage.groups, stage.state
    policy = [p.detach().clone() for p in session.model.parameters()]
    critic = [p.detach().clone() for p in state.critic.parameters()]
    _, metrics = ppo.ppo_step(session, groups, state)
    assert metrics["groups/informative"] == 0 and metrics["groups/dropped_frac"] == 1.0
    assert metrics["train/skipped"] == 1.0 and metrics["train/tokens"] == 0.0
    assert "loss/value" not in metrics and "loss/policy" not in metrics
    assert all(torch.equal(b, p) for b, p in zip(policy, session.model.parameters()))
    assert all(torch.equal(b, p) for b, p in zip(critic, state.critic.parameters()))
    assert state.optimizer.state == {} and state.critic_optimizer.state == {}
