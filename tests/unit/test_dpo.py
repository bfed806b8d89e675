"""DPO: the loss by hand, completion tokens only, micro-batch invariance, row errors, the three
references, exact resume, and the GRPO/DPO gradient at the reference point, on tiny models."""

import json
import math

import pytest
import torch

from grpokit.algo.advantages import compute_advantages
from grpokit.algo.dpo import dpo_loss, preference_metrics, sequence_logprobs
from grpokit.algo.losses import LossKnobs, policy_loss
from grpokit.config import ConfigError, load_config
from grpokit.data.arithmetic import arithmetic_task, wrong_answer
from grpokit.data.preference import PreferencePair, encode_pair, load_pairs, split_pair
from grpokit.errors import DataError
from grpokit.stages import dpo
from grpokit.stages.dpo import Policy, pair_batch, pair_logps, run_dpo, train_step
from grpokit.testing import tiny_llama
from grpokit.training.logprobs import CompletionScorer, completion_logprobs
from grpokit.training.state import new_run_state


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=5)


# ---------------------------------------------------------------- the math


def test_dpo_loss_and_metrics_by_hand():
    # Two pairs, beta 0.5. Pair 1: policy - ref = (+1) chosen, (-1) rejected -> z = 0.5*2 = 1.
    # Pair 2: chosen -0.5, rejected +0.5 -> z = 0.5*(-1) = -0.5.
    chosen, rejected = torch.tensor([-3.0, -2.5]), torch.tensor([-5.0, -1.5])
    ref_c, ref_r = torch.tensor([-4.0, -2.0]), torch.tensor([-4.0, -2.0])
    loss, rc, rr = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.5)
    softplus = lambda x: math.log1p(math.exp(x))  # -log sigmoid(z) = softplus(-z)
    expected = (softplus(-1.0) + softplus(0.5)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(rc, torch.tensor([0.5, -0.25]))
    torch.testing.assert_close(rr, torch.tensor([-0.5, 0.25]))
    m = preference_metrics(rc, rr)
    assert m["reward_accuracy"] == 0.5 and m["reward_margin"] == pytest.approx((1.0 - 0.5) / 2)
    # Label smoothing 0.1: -(0.9) log s(z) - 0.1 log s(-z), per pair; over 4 pairs of a step.
    loss, _, _ = dpo_loss(chosen, rejected, ref_c, ref_r, beta=0.5, label_smoothing=0.1,
                          num_pairs=4)
    per = lambda z: 0.9 * softplus(-z) + 0.1 * softplus(z)
    assert loss.item() == pytest.approx((per(1.0) + per(-0.5)) / 4, rel=1e-6)
    assert sequence_logprobs(torch.tensor([[-1.0, -2.0, -9.0]]),
                             torch.tensor([[True, True, False]])).item() == -3.0


def test_grpo_gradient_at_the_reference_point_is_a_positive_multiple_of_dpos(tiny):
    """Derivation. Let S_i = Σ_t log π(y_i,t) over completion i's L_i tokens; y_1 has reward 1,
    y_0 reward 0, one group of G = 2, mean-only advantages (scale none): A_1 = 1 - 1/2 = +1/2,
    A_0 = -1/2. On-policy (old = logp.detach()), ρ = 1 with gradient ∇ρ = ∇ log π; inside the
    clip range the surrogate -min(ρA, clip(ρ)A) has gradient -A ∇ log π per token. With the
    constant normalizer of seq_sum_norm (2 sequences × L_max), and a k3 KL whose gradient
    -(e^d - 1) ∇logp vanishes at d = ref - logp = 0:
        ∇L_GRPO = -(1 / (2 L_max)) (A_1 ∇S_1 + A_0 ∇S_0) = -(1 / (4 L_max)) ∇(S_1 - S_0).
    DPO with chosen y_1, rejected y_0: z = β((S_1 - S_1^ref) - (S_0 - S_0^ref)) = 0 at the
    reference, and ∇(-log σ(z)) = -σ(-z) β ∇(S_1 - S_0) = -(β / 2) ∇(S_1 - S_0).
    So ∇L_GRPO = ∇L_DPO / (2 β L_max): with β = 0.1 and L_max = 8, a ratio of 0.625."""
    model, tokenizer = tiny
    beta, max_len = 0.1, 8
    pair = PreferencePair(tokenizer("What is 2+3?")["input_ids"], tokenizer("<a>5")["input_ids"],
                          tokenizer("<a>67")["input_ids"])
    batch = pair_batch([pair], tokenizer.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]

    def grad(loss):
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    logprobs, _ = completion_logprobs(model, batch["prompt_ids"], batch["prompt_mask"],
                                      batch["completion_ids"], batch["completion_mask"])
    advantages = compute_advantages(torch.tensor([1.0, 0.0]), 2, scale="none")  # (2,)
    assert advantages.tolist() == [0.5, -0.5]
    knobs = LossKnobs(aggregation="seq_sum_norm", max_completion_length=max_len, beta=0.04)
    grpo, _ = policy_loss(logprobs, logprobs.detach(), advantages, batch["completion_mask"],
                          knobs, ref_logprobs=logprobs.detach())
    g_grpo = grad(grpo)
    chosen, rejected = pair_logps(CompletionScorer(model), batch, 1024)
    dpo, _, _ = dpo_loss(chosen, rejected, chosen.detach(), rejected.detach(), beta=beta)
    g_dpo = grad(dpo)
    cosine = torch.nn.functional.cosine_similarity(g_grpo, g_dpo, dim=0).item()
    assert cosine == pytest.approx(1.0, abs=1e-5)
    ratio = (g_grpo.norm() / g_dpo.norm()).item()
    assert ratio == pytest.approx(1 / (2 * beta * max_len), rel=1e-4)  # 0.625
    torch.testing.assert_close(g_grpo, g_dpo * ratio, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- rows


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q", "rejected": "b"}, "no 'chosen' column"),
    ({"prompt": "q", "chosen": "a"}, "no 'rejected' column"),
    ({"prompt": "q"}, "no 'chosen' and no 'rejected'"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical"),
    ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "'chosen' is empty"),
    ({"prompt": "q", "chosen": "a", "rejected": ""}, "'rejected' is empty"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, "'chosen' must be a string"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
     "role 'assistant'"),
])
def test_bad_rows_name_the_row_and_field(row, message):
    with pytest.raises(DataError, match=message) as info:
        split_pair(row, "data.jsonl: line 7")
    assert "line 7" in str(info.value)


def test_chat_completions_and_task_pairs():
    chat = {"prompt": "q", "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}]}
    assert split_pair(chat, "row") == ("yes", "no")
    task = arithmetic_task(train_size=10, eval_size=2)
    row = task.train_rows[0]
    chosen, rejected = task.preference_pair(row)
    assert chosen == f"<answer>{row['answer']}</answer>"
    assert rejected == f"<answer>{wrong_answer(row)}</answer>"
    assert wrong_answer(row) != row["answer"]
    assert wrong_answer(row) == wrong_answer(dict(row))  # the same row, the same wrong answer


def test_dataset_rows_map_columns_and_errors_name_the_file_line(tiny, tmp_path):
    _, tokenizer = tiny
    rows = [{"question": f"{a}+1?", "good": str(a + 1), "bad": str(a + 2)} for a in range(6)]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cols = [f"data.path={path}", "data.prompt_column=question", "data.eval_fraction=0.2",
            "data.columns={good: chosen, bad: rejected}"]
    train, held_out, task = load_pairs(load_config(overrides=cols), tokenizer)
    assert task is None and len(train) == 5 and len(held_out) == 1
    assert train[0].chosen_ids[-1] == tokenizer.eos_token_id
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows[:2], {**rows[2], "bad": "3"}]))
    with pytest.raises(DataError, match="line 3: 'chosen' and 'rejected' are identical"):
        load_pairs(load_config(overrides=cols), tokenizer)
    with pytest.raises(ConfigError, match="no rule that writes preference pairs"):
        load_pairs(load_config(overrides=["data.task=humaneval"]), tokenizer)


def test_completion_over_the_cap_is_an_error(tiny):
    _, tokenizer = tiny
    with pytest.raises(ValueError, match="'rejected' is 9 tokens with EOS"):
        encode_pair({"prompt": "q", "chosen": "a", "rejected": "abcdefgh"}, tokenizer,
                    where="row 0", system_prompt=None, max_prompt_length=64,
                    max_completion_length=4)


def test_config_errors_name_valid_values():
    with pytest.raises(ConfigError, match="adapter_off needs model.lora.enabled"):
        load_config(overrides=["dpo.reference=adapter_off"])
    with pytest.raises(ConfigError, match="label_smoothing must be in"):
        load_config(overrides=["dpo.label_smoothing=0.5"])
    assert load_config().dpo.reference == "copy"
    assert load_config(overrides=["model.lora.enabled=true"]).dpo.reference == "adapter_off"


# ---------------------------------------------------------------- steps and runs


def test_micro_batch_split_and_prompt_sharing_leave_the_step_gradient_unchanged(tiny):
    model, tokenizer = tiny
    pairs = [PreferencePair(tokenizer(p)["input_ids"], tokenizer(c)["input_ids"],
                            tokenizer(r)["input_ids"], (-20.0, -21.0))
             for p, c, r in [("Hi", "ok", "no way"), ("2+2?", "4", "5"), ("Say a", "a", "bb")]]
    grads = []
    for size, share in [(6, False), (2, False), (2, True)]:
        cfg = load_config(overrides=[f"train.micro_batch_size={size}", "train.max_grad_norm=0",
                                     "dpo.reference=precomputed"])
        state = new_run_state("dpo", cfg, model, 3, cfg.dpo.batch_size, 1)
        state.optimizer.step = lambda: None  # keep the gradient for comparison
        state.optimizer.zero_grad = lambda set_to_none=True: None
        policy = Policy(model, CompletionScorer(model, share), "precomputed")
        train_step(policy, pairs, state, cfg, tokenizer.pad_token_id)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-4, atol=1e-6)


DPO = ["dpo.batch_size=4", "train.micro_batch_size=4", "train.lr=1e-3",
       "dpo.max_completion_length=24", "data.max_prompt_length=256", "log.report_to=[]",
       "checkpoint.keep_last=0", "eval.num_prompts=2", "rollout.engine=generate",
       "data.task_args={digits: 1, ops: '+', train_size: 8, eval_size: 2, style: short}"]


def test_dpo_run_logs_metrics_evaluates_before_and_after_and_refuses_other_kinds(
        tiny_model_dir, tmp_path):
    from grpokit.stages.sft import run_sft

    out = tmp_path / "dpo"
    base = [f"model.path={tiny_model_dir}", *DPO, "train.steps=3", "dpo.reference=precomputed"]
    results = run_dpo(load_config(overrides=[*base, f"log.output_dir={out}"]))
    for when in ("before", "after"):
        assert {"pair_loss", "reward_accuracy", "reward_margin", "pass@1"} <= set(results[when])
    assert results["before"]["pair_loss"] == pytest.approx(math.log(2), rel=1e-5)  # z = 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/dpo", "dpo/reward_accuracy", "dpo/reward_margin", "dpo/rewards_chosen",
            "dpo/rewards_rejected", "optim/grad_norm"} <= set(lines[0])
    assert (out / "ref_logprobs.pt").is_file() and (out / "eval_after.jsonl").is_file()
    assert (out / "final" / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="a DPO checkpoint, not an SFT one"):
        run_sft(load_config(overrides=[*base, f"log.output_dir={out}"]), resume=out)


@pytest.mark.parametrize("reference, lora", [("copy", False), ("precomputed", False),
                                             ("adapter_off", True)])
def test_resume_two_plus_two_equals_four_steps(tiny_model_dir, tmp_path, reference, lora):
    from safetensors.torch import load_file

    base = [f"model.path={tiny_model_dir}", *DPO, "eval.before_and_after=false",
            f"dpo.reference={reference}", "dpo.label_smoothing=0.1"]
    if lora:
        base += ["model.lora.enabled=true", "model.lora.rank=4"]
    weights = "adapter_model.safetensors" if lora else "model.safetensors"

    def final(out):
        ckpts = sorted((out / "checkpoints").iterdir())
        return load_file(ckpts[-1] / "model" / weights), \
            (out / "metrics.jsonl").read_text().splitlines()

    straight, split = tmp_path / "straight", tmp_path / "split"
    run_dpo(load_config(overrides=[*base, f"log.output_dir={straight}", "train.steps=4"]))
    run_dpo(load_config(overrides=[*base, f"log.output_dir={split}", "train.steps=2"]))
    run_dpo(load_config(overrides=[*base, f"log.output_dir={split}", "train.steps=4"]),
            resume=split)
    (w1, m1), (w2, m2) = final(straight), final(split)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    strip = lambda lines: [{k: v for k, v in json.loads(x).items()
                            if not k.startswith("perf/") and k != "time"} for x in lines]
    assert strip(m1) == strip(m2)


@pytest.mark.parametrize("reference, lora", [("copy", False), ("adapter_off", True),
                                             ("precomputed", False)])
def test_reference_stays_frozen_while_the_policy_moves(tiny_model_dir, tmp_path, reference, lora):
    """The run's own policy and reference (dpo._start, as `grpokit dpo` builds them), three
    optimizer steps at lr 1e-3. At the start the reference is the start model, so its summed
    log-probs of four fixed pairs equal the policy's; after the steps the reference's are the
    same bits as before (and the weights it reads: the copy's, LoRA's base), while the policy's
    have moved."""
    overrides = [f"model.path={tiny_model_dir}", *DPO, "eval.before_and_after=false",
                 f"dpo.reference={reference}", f"log.output_dir={tmp_path}"]
    if lora:
        overrides += ["model.lora.enabled=true", "model.lora.rank=4"]
    cfg = load_config(overrides=overrides)
    run = dpo._start(cfg, None)
    policy, pad, chunk = run.policy, run.tokenizer.pad_token_id, cfg.train.logprob_chunk_size
    if reference == "precomputed":
        dpo.precompute_reference(policy, {"train": run.train_pairs, "eval": run.eval_pairs}, cfg,
                                 pad, tmp_path, False, run.autocast)
        cache = (tmp_path / dpo.REF_CACHE).read_bytes()
    probe = run.train_pairs[:4]
    batch = pair_batch(probe, pad)

    def logps():  # under the run's autocast, as the loss pass and the precomputation run
        with torch.no_grad(), run.autocast():
            return torch.stack(policy.ref_logps(probe, batch, chunk)), \
                torch.stack(pair_logps(policy.scorer, batch, chunk))  # (2, 4) each

    frozen = {name: w.detach().clone() for name, w in _reference_weights(policy).items()}
    ref_before, policy_before = logps()
    torch.testing.assert_close(ref_before, policy_before, rtol=1e-5, atol=1e-5)
    for _ in range(3):
        pairs = [run.train_pairs[i] for i in run.state.sampler.next_batch()]
        train_step(policy, pairs, run.state, cfg, pad, run.autocast)
        run.state.step += 1
    ref_after, policy_after = logps()
    assert torch.equal(ref_after, ref_before)
    assert (policy_after - policy_before).abs().max() > 1e-3
    assert all(torch.equal(w, frozen[name]) for name, w in _reference_weights(policy).items())
    if reference == "precomputed":
        assert (tmp_path / dpo.REF_CACHE).read_bytes() == cache


def _reference_weights(policy: Policy) -> dict[str, torch.Tensor]:
    """The weights the reference reads: the copy's, LoRA's base (everything but the adapter),
    none for precomputed log-probs (their cache file is compared instead)."""
    if policy.reference == "copy":
        assert not any(w.requires_grad for w in policy.ref_scorer.parameters())
        return dict(policy.ref_scorer.named_parameters())
    if policy.reference == "adapter_off":
        base = {n: w for n, w in policy.model.named_parameters() if "lora_" not in n}
        assert base and not any(w.requires_grad for w in base.values())
        return base
    return {}
