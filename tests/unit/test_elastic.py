"""Elastic exact resume (DESIGN.md §5): a run's steps do not depend on how many ranks ran them.

Sampling randomness comes from (seed, step, prompt index), minibatches are split over the whole
step's batch, dynamic sampling decides over every rank's groups, and checkpoints are written with
torch.distributed.checkpoint. So 2 ranks for 2 steps then 1 rank for 2 more must end where 1 rank
for 4 steps ends (weights and Adam moments), and the other way round, with DDP and with FSDP2.
Ranks are gloo processes on 127.0.0.1 running the real `train()`.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
from safetensors.torch import load_file

from grpokit.config import load_config
from grpokit.rewards.registry import per_item

RUN = [
    "rollout.prompts_per_step=4", "rollout.group_size=2", "rollout.max_new_tokens=6",
    "eval.before_and_after=false", "data.max_prompt_length=1024", "train.micro_batch_size=3",
    "log.report_to=[]", "checkpoint.keep_last=0", "train.lr=1e-3", "model.autocast='off'",
    "algo.beta=0.04", "rewards=[{name: elastic_first_token}]", "train.minibatches=2",
    "data.task_args={digits: 1, ops: '+', train_size: 24, eval_size: 2, style: short}",
]
# Global decisions over ranks: refills of tied groups and the batch-level std.
GLOBAL = ["algo.dynamic_sampling=true", "algo.max_refill_rounds=2", "algo.scale=batch"]


@per_item("elastic_first_token")
def _first_token(sample, **_):
    """0, 0.5 or 1 from the first completion token: some groups tie, most do not."""
    return (sample.completion_ids[0] % 3) / 2 if sample.completion_ids else 0.0


def _train(model_dir, out, steps: int, resume: bool, extra: list[str]) -> None:
    from grpokit.stages.grpo import train

    cfg = load_config(overrides=[f"model.path={model_dir}", f"log.output_dir={out}", *RUN,
                                 f"train.steps={steps}", *extra])
    train(cfg, resume=out if resume else None)


def _rank(rank: int, world: int, port: int, model_dir, out, steps, resume, extra) -> None:
    import torch.distributed as tdist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    try:
        _train(model_dir, out, steps, resume, extra)
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(world: int, model_dir, out, steps: int, resume: bool, extra: list[str]) -> None:
    if world == 1:
        _train(model_dir, out, steps, resume, extra)
        return
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(world, _free_port(), model_dir, str(out), steps, resume, extra),
             nprocs=world, join=True)


def _final(out, tmp_path) -> tuple[dict[str, torch.Tensor], dict]:
    from grpokit.testing import checkpoint_state

    step = out / "checkpoints" / "step-000004"
    optimizer = checkpoint_state(step, tmp_path / f"{out.name}.pt")["optimizer"]
    return load_file(step / "model" / "model.safetensors"), optimizer["state"]


def _assert_same_run(a, b) -> None:
    (weights_a, moments_a), (weights_b, moments_b) = a, b
    assert weights_a.keys() == weights_b.keys() and moments_a.keys() == moments_b.keys()
    for key in weights_a:
        # lr 1e-3: an Adam step moves a weight by about 1e-3, so a lost or doubled gradient
        # contribution shows at that scale; rounding in another summation order, amplified by
        # m / sqrt(v) where v is tiny, stays below 1e-5.
        diff = (weights_a[key] - weights_b[key]).abs().max().item()
        assert diff <= 1e-5, f"{key}: max difference {diff:.3g}"
    for name in moments_a:
        for moment in ("exp_avg", "exp_avg_sq", "step"):
            # Micro-batches (and so the prompts a shared-prefix pass runs once) differ with the
            # rank count: sums are rounded in another order. 1e-5 of a moment's scale is float
            # rounding; a lost or doubled gradient contribution would be of the scale itself.
            b = moments_b[name][moment]
            torch.testing.assert_close(moments_a[name][moment], b, rtol=1e-4,
                                       atol=1e-5 * float(b.abs().max()), msg=f"{name} {moment}")


@pytest.fixture(scope="module")
def straight(tiny_model_dir, tmp_path_factory):
    """1 rank, 4 steps: the run every split must reproduce."""
    tmp = tmp_path_factory.mktemp("straight")
    _run(1, tiny_model_dir, tmp / "straight", 4, False, GLOBAL)
    return _final(tmp / "straight", tmp)


@pytest.mark.parametrize("first,second,parallel", [
    (2, 1, "ddp"), (1, 2, "ddp"), (2, 1, "fsdp"), (1, 2, "fsdp"),
])
def test_resume_on_another_number_of_ranks_is_exact(tiny_model_dir, tmp_path, straight, first,
                                                    second, parallel):
    out = tmp_path / f"{first}to{second}"
    extra = [*GLOBAL, f"train.parallel={parallel}"]
    _run(first, tiny_model_dir, out, 2, False, extra)
    _run(second, tiny_model_dir, out, 4, True, extra)
    _assert_same_run(_final(out, tmp_path), straight)
