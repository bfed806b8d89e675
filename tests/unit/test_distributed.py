"""Rank-split invariance through the real code path, and the world-size checks.

Two gloo processes on 127.0.0.1 each run one `update_policy` on their contiguous half of a fixed
scored batch; the summed gradients (read off the parameters after one plain SGD step) must equal
the single-process update on the whole batch.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

from grpokit.config import load_config
from grpokit.rl import update
from grpokit.runtime import distributed as dist
from grpokit.stages import grpo as trainer
from grpokit.training.batch import ScoredBatch, TrainingBatch, select_groups
from grpokit.training.groups import check_world
from grpokit.training.parallel import full_state_dict

B, G, P, T = 4, 2, 5, 6
PROMPT_LENGTHS = [5, 5, 3, 3, 4, 4, 2, 2]
COMPLETION_LENGTHS = [6, 2, 4, 1, 6, 3, 5, 5]
REWARDS = [1.0, 0.0, 0.5, 0.5, 0.2, 0.9, 1.0, 0.0]  # group 1 ties: excluded from the normalizer
LR = 0.1


def _config(model_dir, *extra):
    return load_config(overrides=[
        f"model.path={model_dir}", "model.autocast='off'", f"rollout.prompts_per_step={B}",
        f"rollout.group_size={G}", f"rollout.max_new_tokens={T}", "train.micro_batch_size=3",
        "train.max_grad_norm=0", "algo.beta=0.04", "algo.exclude_tied=true", f"train.lr={LR}",
        *extra])


def _scored_batch(cfg, groups: list[int]) -> TrainingBatch:
    """A fixed batch of B groups (random token ids, uneven lengths), cut to `groups`."""
    from grpokit.rollout.base import RolloutBatch

    gen = torch.Generator().manual_seed(0)
    n = B * G
    prompt_mask = torch.tensor([[j >= P - k for j in range(P)] for k in PROMPT_LENGTHS])
    completion_mask = torch.tensor([[j < k for j in range(T)] for k in COMPLETION_LENGTHS])
    rollout = RolloutBatch(
        prompt_ids=torch.where(prompt_mask, torch.randint(10, 90, (n, P), generator=gen), 0),
        prompt_mask=prompt_mask,
        completion_ids=torch.where(completion_mask, torch.randint(10, 90, (n, T), generator=gen), 0),
        completion_mask=completion_mask,
        finish_reason=["length" if k == T else "stop" for k in COMPLETION_LENGTHS],
        group_index=torch.arange(B).repeat_interleave(G), completions=[""] * n,
        rows=[{"id": g} for g in range(B)])
    reward = torch.tensor(REWARDS)
    full = ScoredBatch(rollout, reward.unsqueeze(1), reward)
    part = select_groups(full, groups)
    included, mask = trainer.loss_mask_of(part, cfg)
    assert included.tolist() == [REWARDS[g * G] != REWARDS[g * G + 1] for g in groups for _ in "ab"]
    return TrainingBatch(part, trainer.advantages_of(part, cfg), mask, included)


def _one_update(model_dir, groups: list[int], parallel: str = "ddp", *extra: str
                ) -> dict[str, torch.Tensor]:
    """One update_policy on `groups` with SGD at train.lr; returns the updated parameters, the
    step's token count and how many optimizer steps it ran."""
    from grpokit.data.sampler import PromptSampler
    from grpokit.runtime import models
    from grpokit.training.session import Session
    from grpokit.training.state import RunState

    from grpokit.rl.stage import register_user_algo

    cfg = _config(model_dir, f"train.parallel={parallel}", *extra)
    register_user_algo(cfg)  # a loss or estimator given by import path, in this process too
    torch.manual_seed(0)
    model = models.load_policy(model_dir, dtype="float32")
    reference = models.load_reference(model_dir, dtype="float32")
    teacher = None if cfg.algo.teacher is None else models.load_reference(cfg.algo.teacher)
    session = Session(cfg, model, None, reference, None, [], None, teacher=teacher)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                                lr=cfg.train.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    state = RunState("grpo", 0, PromptSampler(B, B), optimizer, scheduler)
    metrics = trainer.update_policy(session, state, _scored_batch(cfg, groups))
    params = {k: v.detach().clone() for k, v in full_state_dict(model).items()}
    params["__tokens"] = torch.tensor(metrics["train/tokens"])
    for key in ("loss/policy", "loss/kl", "loss/clip_frac", "loss/advantage_mean",
                "distill/reverse_kl", "loss/cov_selected_frac"):
        if key in metrics:  # loss/kl only with β > 0
            params[f"__{key}"] = torch.tensor(metrics[key], dtype=torch.float64)
    params["__optimizer_steps"] = torch.tensor(scheduler.last_epoch)
    return params


def _worker(rank: int, world: int, port: int, model_dir, out_dir, parallel: str,
            groups: int = B, *extra: str) -> None:
    import torch.distributed as tdist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # This rank's contiguous groups, as sample_groups (and dynamic sampling's rebalance)
        # takes them: with an odd count the shares differ by one group.
        start, stop = dist.share(groups)
        share = list(range(start, stop))
        torch.save(_one_update(model_dir, share, parallel, *extra), f"{out_dir}/rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_update_equals_the_single_process_update(tiny_model_dir, tmp_path, parallel):
    import torch.multiprocessing as mp

    single = _one_update(tiny_model_dir, list(range(B)))
    mp.spawn(_worker, args=(2, _free_port(), tiny_model_dir, str(tmp_path), parallel), nprocs=2,
             join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    before = {k: v for k, v in _fresh_params(tiny_model_dir).items()}
    for key, value in single.items():
        if key.startswith("__") or key == "lm_head.weight":  # counts; tied to the embedding
            continue
        assert not torch.equal(value, before[key]) or key.endswith("norm.weight"), key
        for r in ranks:  # every rank applied the same summed gradient
            torch.testing.assert_close(r[key], value, rtol=0, atol=1e-6, msg=key)
    assert ranks[0]["__tokens"] == ranks[1]["__tokens"] == single["__tokens"] == sum(
        k for i, k in enumerate(COMPLETION_LENGTHS) if i // G != 1)
    for key in ("__loss/policy", "__loss/kl", "__loss/clip_frac", "__loss/advantage_mean"):
        for r in ranks:  # the step's metrics, not one rank's share of them
            torch.testing.assert_close(r[key], single[key], rtol=1e-5, atol=1e-7, msg=key)


USER_LOSS = """
import torch


def squared_loss(logprobs, old_logprobs, advantages, mask, knobs, sequence_mask=None):
    adv = advantages.unsqueeze(1) if advantages.ndim == 1 else advantages
    return -adv * torch.exp(logprobs - old_logprobs) + 0.5 * (logprobs - old_logprobs) ** 2
"""


def test_a_user_loss_over_two_ranks_equals_the_single_process_update(tiny_model_dir, tmp_path):
    """A user's policy term returns per-token values and never normalizes: the step's global
    counts do, so two gloo ranks apply the one process's update."""
    import torch.multiprocessing as mp

    path = tmp_path / "user_loss.py"
    path.write_text(USER_LOSS)
    extra = [f"algo.loss={path}:squared_loss", "algo.beta=0"]
    single = _one_update(tiny_model_dir, list(range(B)), "ddp", *extra)
    mp.spawn(_worker, args=(2, _free_port(), tiny_model_dir, str(tmp_path), "ddp", B, *extra),
             nprocs=2, join=True)
    before = _fresh_params(tiny_model_dir)
    for r in [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]:
        for key, value in single.items():
            if key.startswith("__") or key == "lm_head.weight":
                continue
            assert not torch.equal(value, before[key]) or key.endswith("norm.weight"), key
            torch.testing.assert_close(r[key], value, rtol=0, atol=1e-6, msg=key)


STEP_INPUTS = {
    "clip_cov": ["algo.cov_control=clip_cov", "algo.cov_ratio=0.2", "algo.clip_cov_low=-100",
                 "algo.clip_cov_high=100", "algo.beta=0"],
    # SGD at lr 0.1 moves log π by hundreds, where |log ρ|'s gradient saturates the softmax
    "kl_cov": ["algo.loss=pg", "algo.cov_control=kl_cov", "algo.cov_ratio=0.2",
               "train.minibatches=2", "algo.beta=0", "train.lr=0.002"],
    "distill": ["algo.teacher={teacher}", "algo.beta=0.04"],
    "kl_in_reward": ["algo.estimator=reinforce_pp", "algo.scale=batch", "algo.kl_in_reward=true",
                     "algo.kl=k1", "algo.beta=0.5"],
}
"""Inputs a step fixes over the whole batch before its updates: the Clip-Cov / KL-Cov tokens
(drawn or ranked over every rank's tokens), the teacher's per-token advantages, and REINFORCE++'s
KL-in-reward returns whitened over every rank's tokens."""
WITHOUT = {"clip_cov": "algo.cov_control=none", "kl_cov": "algo.cov_control=none",
           "distill": "algo.teacher=null", "kl_in_reward": "algo.kl_in_reward=false"}


@pytest.mark.parametrize("method", sorted(STEP_INPUTS))
def test_cov_control_and_distillation_are_exact_over_uneven_ranks_and_micro_batches(
        method, tiny_model_dir, tiny_teacher_dir, tmp_path):
    """3 kept groups over 2 ranks (2 and 4 rows) apply the one process's update, as one process
    does with one sequence per micro-batch; and the method changes that update."""
    import torch.multiprocessing as mp

    extra = [x.format(teacher=tiny_teacher_dir) for x in STEP_INPUTS[method]]
    single = _one_update(tiny_model_dir, [0, 1, 2], "ddp", *extra)
    small = _one_update(tiny_model_dir, [0, 1, 2], "ddp", *extra, "train.micro_batch_size=1")
    plain = _one_update(tiny_model_dir, [0, 1, 2], "ddp", *extra, WITHOUT[method])
    weights = [k for k in single if not k.startswith("__") and k != "lm_head.weight"]
    assert any(not torch.allclose(single[k], plain[k], atol=1e-5) for k in weights)
    mp.spawn(_worker, args=(2, _free_port(), tiny_model_dir, str(tmp_path), "ddp", 3, *extra),
             nprocs=2, join=True)
    for r in [small] + [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]:
        for key in weights:
            torch.testing.assert_close(r[key], single[key], rtol=0, atol=1e-6, msg=key)
        for key in ("__distill/reverse_kl", "__loss/cov_selected_frac"):
            if key in single:
                torch.testing.assert_close(r[key], single[key], rtol=1e-5, atol=1e-7, msg=key)


@pytest.mark.parametrize("minibatches", [2, 4, 8])
def test_uneven_rank_shares_split_minibatches_as_one_process(tiny_model_dir, tmp_path,
                                                               minibatches):
    """3 kept groups over 2 ranks (1 and 2 groups, 2 and 4 rows): the two ranks' minibatches
    are exactly the one process's, so the weights agree and every rank runs exactly
    `minibatches` optimizer steps. 6 rows into 4 parts is 2+2+1+1 (not 3 parts of 2); into 8
    parts, two are empty everywhere (the schedule still steps, the weights do not move)."""
    import torch.multiprocessing as mp

    extra = [f"train.minibatches={minibatches}", "algo.beta=0"]  # SGD at lr 0.1: k3 would overflow
    single = _one_update(tiny_model_dir, [0, 1, 2], "ddp", *extra)
    mp.spawn(_worker, args=(2, _free_port(), tiny_model_dir, str(tmp_path), "ddp", 3, *extra),
             nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert int(single["__optimizer_steps"]) == minibatches
    for r in ranks:
        assert int(r["__optimizer_steps"]) == minibatches
        for key, value in single.items():
            if key != "lm_head.weight":  # tied to the embedding
                torch.testing.assert_close(r[key], value, rtol=0, atol=1e-6, msg=key)


def test_minibatches_are_exactly_count_parts_of_the_whole_batch():
    """One process, 6 rows into 4 minibatches: exactly 4 parts (2, 2, 1, 1 rows), together
    every row once."""
    parts = update._minibatches(6, 4, (0, 0, 0))
    assert [len(p) for p in parts] == [2, 2, 1, 1]
    assert sorted(torch.cat(parts).tolist()) == list(range(6))


def _fresh_params(model_dir) -> dict[str, torch.Tensor]:
    from grpokit.runtime import models

    return dict(models.load_policy(model_dir, dtype="float32").named_parameters())


def test_shares_are_contiguous_and_differ_by_at_most_one(monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 3)
    assert [dist.share(7, of_rank=r) for r in range(3)] == [(0, 2), (2, 4), (4, 7)]
    assert [dist.share(6, of_rank=r) for r in range(3)] == [(0, 2), (2, 4), (4, 6)]


def test_world_check_names_the_field(tiny_model_dir):
    cfg = _config(tiny_model_dir, "rollout.prompts_per_step=3")
    check_world(cfg, 1)  # one process: anything goes
    check_world(_config(tiny_model_dir, "algo.scale=batch", "algo.dynamic_sampling=true"), 2)
    with pytest.raises(ValueError, match="prompts_per_step=3 must be divisible by the world size 2"):
        check_world(cfg, 2)


def test_single_process_helpers_are_identities():
    x = torch.tensor([1.0, -2.0])
    assert torch.equal(dist.all_reduce_sum(x), x) and torch.equal(dist.all_reduce_max(x), x)
    assert torch.equal(dist.gather_shares(x, 2), x) and dist.all_gather_object({"a": 1}) == [{"a": 1}]
    dist.barrier()
    assert dist.rank() == 0 and dist.world_size() == 1 and dist.is_main()
