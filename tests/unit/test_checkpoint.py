"""Atomic checkpoint folders, pruning and RNG state."""

import random

import pytest
import torch

from grpokit.training import checkpoint as ckpt


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



def _version(root, name):
    return ckpt.load_state(root / name)["sampler"]


def _leave(root, step, suffix, version, complete=True):
    """What a killed save leaves: a checkpoint of `step` (its sampler state set to `version`) as
    step-N.<suffix>, with its manifest or without."""
    folder = _save(root.parent / "scratch", step, keep=0)  # not in root: the save would clean it
    torch.save({**ckpt.load_state(folder), "sampler": version}, folder / ckpt.STATE_FILE)
    (folder / ckpt.MANIFEST).unlink()
    if complete:
        ckpt.write_manifest(folder)
    root.mkdir(exist_ok=True)
    folder.rename(root / f"{folder.name}.{suffix}")
    folder.parent.rmdir()


@pytest.mark.parametrize("tmp_complete, expected", [(True, "new"), (False, "old")])
def test_recover_finishes_a_complete_re_save_and_rolls_back_an_incomplete_one(
        tmp_path, tmp_complete, expected):
    root = tmp_path / "checkpoints"
    _leave(root, 5, "old", "old")
    _leave(root, 5, "tmp", "new", complete=tmp_complete)
    assert ckpt.recover(root) and ckpt.recover(root) == []  # renames once, then nothing to do
    assert _version(root, "step-000005") == expected
    _save(root, 6, keep=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-000006"]


def test_what_counts_as_a_checkpoint_that_a_plain_restart_must_not_start_over(tmp_path):
    root = tmp_path / "checkpoints"
    _leave(root, 1, "tmp", "partial", complete=False)  # killed in its first save: started over
    (root / "step-000002.del").mkdir()  # a deletion cut short
    assert not ckpt.holds_checkpoint(root) and ckpt.recover(root) == []
    _leave(root, 3, "tmp", "complete")  # killed just before its rename
    assert ckpt.holds_checkpoint(root)
    assert ckpt.recover(root) == ["step-000003: finished the interrupted save"]


def test_clean_keeps_a_later_step_that_recover_would_restore(tmp_path):
    root = tmp_path / "checkpoints"
    _leave(root, 5, "old", "kept")
    _leave(root, 6, "tmp", "partial", complete=False)
    _leave(root, 2, "old", "superseded")
    (root / "step-000001.old.del").mkdir()
    _save(root, 3, keep=0)
    assert sorted(p.name for p in root.iterdir()) == ["step-000003", "step-000005.old"]
