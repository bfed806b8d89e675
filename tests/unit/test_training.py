"""The run folder around the training loop (docs/runs.md): the lock, checks before the first write,
resume semantics, checkpoint integrity, logs without duplicate steps, and errors that exit 2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from grpokit.cli import main
from grpokit.config import ConfigError, load_config
from grpokit.training import checkpoint as ckpt
from grpokit.training.state import RunFolder

TINY = [
    "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=6",
    "eval.before_and_after=false", "data.max_prompt_length=1024", "train.micro_batch_size=4",
    "log.samples_every=1", "log.report_to=[]", "checkpoint.keep_last=0", "train.lr=1e-3",
    "data.task_args={digits: 1, ops: '+', train_size: 12, eval_size: 2, style: short}",
]


def _args(model_dir, out, *extra):
    return [f"model.path={model_dir}", f"log.output_dir={out}", *TINY, *extra]


def _steps(path):
    return [json.loads(x)["step"] for x in path.read_text().splitlines()]


def _cli(*argv) -> subprocess.CompletedProcess:
    """`grpokit ...` as a user runs it, in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "grpokit", *argv], capture_output=True,
                          text=True, timeout=300)


# ---------------------------------------------------------------- the lock


def test_a_claimed_folder_refuses_a_second_run_naming_the_holder(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    holder = RunFolder(out)
    try:
        done = _cli("train", *_args(tiny_model_dir, out, "train.steps=1"))
        assert done.returncode == 2, done.stderr
        assert f"in use by another grpokit run (pid {os.getpid()})" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        holder.release()
    assert main(["train", *_args(tiny_model_dir, out, "train.steps=1")]) == 0


def test_a_killed_holder_never_blocks_its_own_resume(tmp_path):
    out = tmp_path / "run"
    code = (f"from grpokit.training.state import RunFolder; held = RunFolder({str(out)!r}); "
            "import time; print('held', flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match="in use"):
        RunFolder(out)
    child.kill()  # kill -9: the OS drops the lock with the process
    child.wait()
    RunFolder(out).release()


# ---------------------------------------------------------------- checks before the first write


@pytest.mark.parametrize("extra, message", [
    (["rewards=[{name: mathh}]"], "rewards: .*mathh"),
    (["data.max_prompt_length=5"], "longer than max_prompt_length"),
    (["train.adam_betas=[2.0, 0.9]"], "train.adam_betas must be two numbers"),
    (["train.lr=.inf"], "train.lr: expected a finite number"),
])
def test_a_failed_start_leaves_no_folder_and_exits_2(tiny_model_dir, tmp_path, extra, message):
    out = tmp_path / "run"
    done = _cli("train", *_args(tiny_model_dir, out, "train.steps=1", *extra))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert re.search(message, done.stderr), done.stderr
    assert not out.exists()
    assert main(["train", *_args(tiny_model_dir, out, "train.steps=1")]) == 0  # the fixed command


def test_a_run_killed_before_its_first_checkpoint_is_restarted_by_a_plain_rerun(tiny_model_dir,
                                                                                tmp_path):
    out = tmp_path / "run"
    assert main(["train", *_args(tiny_model_dir, out, "train.steps=2")]) == 0
    shutil.rmtree(out / "checkpoints")  # as if killed before the first checkpoint was written
    assert main(["train", *_args(tiny_model_dir, out, "train.steps=2")]) == 0
    assert _steps(out / "metrics.jsonl") == [1, 2] and set(_steps(out / "samples.jsonl")) == {1, 2}


# ---------------------------------------------------------------- resume semantics


def test_resume_continues_in_its_own_folder_even_when_copied(tiny_model_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *_args(tiny_model_dir, a, "train.steps=2")]) == 0
    shutil.copytree(a, b)
    assert main(["train", "--resume", str(b), "train.steps=3"]) == 0
    assert _steps(a / "metrics.jsonl") == [1, 2] and _steps(b / "metrics.jsonl") == [1, 2, 3]
    assert (b / "checkpoints" / "step-000003").is_dir()
    assert not (a / "checkpoints" / "step-000003").exists()
    assert load_config(b / "config.yaml").log.output_dir == str(b)
    assert main(["train", "--resume", str(b), f"log.output_dir={a}"]) == 2


def test_frozen_settings_are_refused_and_the_saved_config_is_kept(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_args(tiny_model_dir, out, "train.steps=1")]) == 0
    before = (out / "config.yaml").read_text()
    assert main(["train", "--resume", str(out), "rollout.group_size=4", "data.seed=3",
                 "train.steps=2"]) == 2
    err = capsys.readouterr().err
    assert "cannot change in a resumed run" in err
    assert "rollout.group_size (2 -> 4)" in err and "data.seed (0 -> 3)" in err
    assert (out / "config.yaml").read_text() == before


def test_a_new_learning_rate_on_resume_reaches_the_optimizer(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *_args(tiny_model_dir, out, "train.steps=1")]) == 0
    assert main(["train", "--resume", str(out), "train.steps=2", "train.lr=5e-3"]) == 0
    from grpokit.testing import checkpoint_state

    state = checkpoint_state(out / "checkpoints" / "step-000002", tmp_path / "state.pt")
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == [5e-3]
    assert state["scheduler"]["base_lrs"] == [5e-3]
    lr = [json.loads(x)["optim/lr"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lr == [1e-3, 5e-3]
    assert load_config(out / "config.yaml").train.lr == 5e-3


# ---------------------------------------------------------------- checkpoint integrity


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tiny_model_dir, tmp_path,
                                                                    caplog):
    out = tmp_path / "run"
    assert main(["train", *_args(tiny_model_dir, out, "train.steps=4",
                                 "checkpoint.every=2")]) == 0
    weights = out / "checkpoints" / "step-000004" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors has 100 bytes"):
        ckpt.verify(weights.parents[1])
    assert ckpt.load_state(out)["step"] == 2
    assert "skipping checkpoint step-000004" in caplog.text
    assert main(["train", "--resume", str(out), "train.steps=4"]) == 0
    assert _steps(out / "metrics.jsonl") == [1, 2, 3, 4]  # steps 3 and 4 logged once
    ckpt.verify(out / "checkpoints" / "step-000004")


def test_resuming_a_folder_whose_checkpoints_are_all_damaged_is_a_clear_error(tiny_model_dir,
                                                                             tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_args(tiny_model_dir, out, "train.steps=1")]) == 0
    (out / "checkpoints" / "step-000001" / ckpt.STATE_FILE).write_bytes(b"")
    assert main(["train", "--resume", str(out), "train.steps=2"]) == 2
    assert "no checkpoint verifies" in capsys.readouterr().err


# ---------------------------------------------------------------- errors users can act on


def test_documented_values_are_accepted_however_the_command_line_spells_them(tiny_model_dir):
    assert load_config(overrides=["model.autocast=off"]).model.autocast == "off"
    with pytest.raises(ConfigError, match="valid values: 'auto', 'bf16', 'off'"):
        load_config(overrides=["model.autocast=false"])


def test_eval_of_a_model_with_nan_weights_exits_2(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) for k, v in weights.items()},
              broken / "model.safetensors", metadata={"format": "pt"})
    done = _cli("eval", f"model.path={broken}", "eval.num_prompts=2", *TINY)
    assert done.returncode == 2 and "NaN or infinite values" in done.stderr, done.stderr
