"""Atomic checkpoint folders, pruning and RNG state."""

import random

import pytest
import torch

from grpokit import checkpoint as ckpt


def _save(root, step, keep):
    return ckpt.save_checkpoint(root, step, lambda tmp: (tmp / "model").mkdir(),
                                {"sampler": {"position": step}}, "x: 1\n", keep)


def test_save_prune_and_load_newest(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path / "checkpoints", step, keep=2)
    names = [p.name for p in ckpt.checkpoint_dirs(tmp_path / "checkpoints")]
    assert names == ["step-000002", "step-000003"]
    state = ckpt.load_state(tmp_path)  # a run folder resolves to its newest checkpoint
    assert state["step"] == 3 and state["sampler"] == {"position": 3}
    assert state["path"].name == "step-000003"


def test_a_failed_write_leaves_no_checkpoint(tmp_path):
    def boom(tmp):
        (tmp / "model").mkdir()
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ckpt.save_checkpoint(tmp_path, 5, boom, {}, "", keep_last=0)
    assert ckpt.checkpoint_dirs(tmp_path) == []
    _save(tmp_path, 5, keep=0)  # the leftover temporary folder does not block the next save
    assert [p.name for p in ckpt.checkpoint_dirs(tmp_path)] == ["step-000005"]


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    a = (random.random(), torch.rand(1).item())
    ckpt.set_rng_state(state)
    assert (random.random(), torch.rand(1).item()) == a


def test_load_state_of_a_folder_without_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        ckpt.load_state(tmp_path)
