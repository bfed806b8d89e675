"""Checkpoint saves killed at every point (docs/runs.md, Checkpoints): the resume continues from
the newest complete checkpoint, bit for bit, and the next save leaves no `.old`, `.tmp` or `.del`
behind.

A kill is `os._exit` in a forked child just before its k-th filesystem call of the save (mkdir,
rename, fsync, unlink, rmdir), for every k: a real death, with no `finally` run and deletions cut
short file by file. The end-to-end tests kill `grpokit train --resume` (and `grpokit sft`, which
saves through the same code) of a finished run in its re-save of the last checkpoint (an
exception raised from the same calls) and check that the run then continues as an uninterrupted
one does."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from grpokit.cli import main
from grpokit.config import ConfigError, load_config
from grpokit.testing import checkpoint_state
from grpokit.training import checkpoint as ckpt
from grpokit.training import state as training

OPS = ("mkdir", "rename", "replace", "fsync", "unlink", "rmdir")
"""The filesystem calls a save is made of; a kill can fall before any one of them."""

KILLED = 137  # the exit status of kill -9


@contextlib.contextmanager
def _filesystem_calls(on_call):
    """Call on_call(name, argument) before each filesystem call in OPS; restored afterwards."""
    real = {name: getattr(os, name) for name in OPS}

    def wrap(name):
        def call(*args, **kwargs):
            on_call(name, _describe(name, args[0]))
            return real[name](*args, **kwargs)
        return call

    for name in OPS:
        setattr(os, name, wrap(name))
    try:
        yield
    finally:
        for name, fn in real.items():
            setattr(os, name, fn)


def _describe(name, arg) -> str:
    """A readable name for a call's target (an fsync names the file its descriptor is open on)."""
    if name == "fsync":
        return os.readlink(f"/proc/self/fd/{arg}")
    return os.fspath(arg) if isinstance(arg, (str, os.PathLike)) else repr(arg)


def _record(save) -> list[tuple[str, str]]:
    """Every filesystem call of an uninterrupted save(), in order."""
    calls = []
    with _filesystem_calls(lambda name, arg: calls.append((name, arg))):
        save()
    return calls


def _killed_at(k: int, save) -> int:
    """Run save() in a forked child that dies before its k-th filesystem call; its exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            count = iter(range(k))

            def maybe_die(name, arg):
                if next(count, None) is None:
                    os._exit(KILLED)

            with _filesystem_calls(maybe_die):
                save()
            os._exit(0)
        finally:
            os._exit(1)  # an exception: never return into pytest
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


# ---------------------------------------------------------------- the checkpoint protocol


def _save(root: Path, step: int, version: str, keep_last: int) -> Path:
    """A small checkpoint whose every byte depends on (step, version) alone."""

    def write(tmp: Path) -> None:
        (tmp / "model").mkdir()
        (tmp / "model" / "weights.bin").write_bytes(f"{step} {version} ".encode() * 1000)
        (tmp / "sharded").mkdir()
        (tmp / "sharded" / "shard-0").write_bytes(f"optimizer {step} {version}".encode())

    random.seed(step)  # the RNG streams saved in trainer.pt, the same on every copy
    np.random.seed(step)
    torch.manual_seed(step)
    return ckpt.save_checkpoint(root, step, write, {"kind": "grpo", "version": version},
                                f"step: {step}\n", keep_last)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _start(root: Path, keep_last: int) -> None:
    """A run folder that saved steps 1 to 5, every step."""
    for step in range(1, 6):
        _save(root, step, "first", keep_last)


SCENARIOS = {
    # A re-save of the newest checkpoint (a resume of a finished run writes it again).
    "re-save": (5, "again"),
    # The save of the next step, which also prunes.
    "save": (6, "first"),
}


def _expected_after_kill(calls, k, step, version):
    """(step, version) the resume must find when killed before call k: the new save's once its
    manifest is written (just before its fsync, the first call that names it) and no older copy
    of its step holds the name (in a re-save, until that is renamed to .old); else step 5 as
    the run saved it first."""
    name = f"step-{step:06d}"
    written = next(i for i, (op, arg) in enumerate(calls)
                   if op == "fsync" and arg.endswith(f"{name}.tmp/{ckpt.MANIFEST}"))
    moved = next((i for i, (op, arg) in enumerate(calls)
                  if op == "rename" and arg.endswith(f"/{name}")), -1)
    return (step, version) if k >= written and k > moved else (5, "first")


def _restart_refused(run: Path) -> bool:
    """Whether the plain restart of the run's command is refused (docs/runs.md: a folder that
    holds checkpoints belongs to its run), rather than training from step 0 over it."""
    try:
        with training.claimed(run, None):
            return False
    except ConfigError as exc:
        return "already holds a run" in str(exc)


def _load_resume(run: Path) -> dict:
    """What `--resume run` loads (after finishing or rolling back an interrupted save)."""
    return training.load_resume(run, load_config(overrides=[f"log.output_dir={run}"]), "grpo")


def _check_recovery(run: Path, want: tuple[int, str], reference: dict, keep_last: int,
                    point: str) -> None:
    """What a plain restart and a resume do after the kill, then the next save; the checks."""
    root = run / "checkpoints"
    assert _restart_refused(run), point
    state = _load_resume(run)
    assert (state["step"], state["version"]) == want, point
    assert _files(state["path"]) == reference[want], point  # bit for bit
    for path in ckpt.checkpoint_dirs(root):
        ckpt.verify(path)
    _save(root, want[0] + 1, "next", keep_last)
    names = sorted(p.name for p in root.iterdir())
    steps = [want[0], want[0] + 1][-keep_last:]
    assert names == [f"step-{s:06d}" for s in steps], point  # no .old, .tmp or .del
    if keep_last == 2:
        assert _files(root / f"step-{want[0]:06d}") == reference[want], point


def _references(tmp_path: Path, keep_last: int, step: int, version: str) -> dict:
    """The files of each checkpoint an uninterrupted run writes, by (step, version)."""
    root = tmp_path / "reference"
    _start(root, keep_last)
    out = {(5, "first"): _files(root / "step-000005")}
    _save(root, step, version, keep_last=0)
    out[(step, version)] = _files(root / f"step-{step:06d}")
    shutil.rmtree(root)
    return out


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("keep_last", [1, 2])
def test_a_save_killed_at_every_point_resumes_from_the_newest_complete_checkpoint(
        tmp_path, keep_last, scenario):
    step, version = SCENARIOS[scenario]
    reference = _references(tmp_path, keep_last, step, version)
    start = tmp_path / "start" / "checkpoints"
    _start(start, keep_last)
    scratch = tmp_path / "scratch" / "checkpoints"
    shutil.copytree(start, scratch)
    calls = _record(lambda: _save(scratch, step, version, keep_last))
    assert any(name == "rename" for name, _ in calls) and len(calls) > 20
    for k in range(len(calls) + 1):
        point = f"killed before call {k} of {len(calls)}: " + \
            (" ".join(calls[k]) if k < len(calls) else "after the save")
        run = tmp_path / f"run-{k}"
        shutil.copytree(start, run / "checkpoints")
        status = _killed_at(k, lambda: _save(run / "checkpoints", step, version, keep_last))
        assert status == (KILLED if k < len(calls) else 0), point
        want = _expected_after_kill(calls, k, step, version)
        _check_recovery(run, want, reference, keep_last, point)
        shutil.rmtree(run)


def test_a_re_save_after_a_completed_one_killed_before_its_cleanup(tmp_path):
    """The `.old` a killed re-save left beside its finished checkpoint does not block the next
    re-save of the same step (a rename onto it would fail)."""
    root = tmp_path / "checkpoints"
    _start(root, keep_last=1)
    (root / "step-000005").rename(root / "step-000005.old")
    shutil.copytree(root / "step-000005.old", root / "step-000005")
    _save(root, 5, "again", keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["step-000005"]
    assert _load_resume(tmp_path)["version"] == "again"


def test_a_killed_re_save_of_a_damaged_checkpoint_resumes_from_the_one_before(tmp_path):
    """A re-save of a damaged checkpoint killed between its renames: the damaged one is put back
    and skipped, and the resume takes the checkpoint before it."""
    root = tmp_path / "checkpoints"
    _start(root, keep_last=2)
    (root / "step-000005" / ckpt.STATE_FILE).write_bytes(b"")
    (root / "step-000005").rename(root / "step-000005.old")
    (root / "step-000005.tmp").mkdir()  # the re-save's, without its manifest
    assert _load_resume(tmp_path)["step"] == 4
    assert (root / "step-000005.old").exists() is False  # put back as step-000005, skipped
    _save(root, 5, "again", keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-000004", "step-000005"]


# ---------------------------------------------------------------- end to end: train and sft

TASK = "data.task_args={digits: 1, ops: '+', train_size: 12, eval_size: 2, style: short}"
COMMANDS = {  # the command, the module whose save_run its loop calls, and a tiny run of it
    "train": ("grpokit.training.loop", [
        "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=6",
        "data.max_prompt_length=1024", "train.micro_batch_size=4", "log.samples_every=1",
        "train.lr=1e-3", "rollout.temperature=1.0",
        "algo.entropy_coef=0.01"]),  # a gradient even when every reward ties
    "sft": ("grpokit.training.loop", [
        "rollout.prompts_per_step=4", "train.micro_batch_size=2", "train.lr=3e-3",
        "rollout.max_new_tokens=24", "data.max_prompt_length=256"]),
}
COMMON = ["eval.before_and_after=false", "log.report_to=[]", "log.report=false",
          "checkpoint.every=1", TASK]


class _Killed(BaseException):
    """kill -9 in-process: raised from the k-th filesystem call of a save and from every later
    one, so that the save's files stay as the kill left them."""


def _run_cli(command: str, argv: list[str], kill_at: int | None = None,
             calls: list | None = None) -> int | None:
    """`grpokit COMMAND argv`: its exit status, with the filesystem calls of its checkpoint saves
    recorded in `calls`; or (None) killed before their kill_at-th."""
    seen = [] if calls is None else calls
    killed = []

    def on_call(name, arg):
        if len(seen) == kill_at:
            killed.append((name, arg))
            raise _Killed(f"{name} {arg}")
        seen.append((name, arg))

    real = training.save_run  # the original, also when another test patched the loop's

    def save_run(*args, **kwargs):
        with _filesystem_calls(on_call):
            return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(f"{COMMANDS[command][0]}.save_run", save_run)  # the name the loop calls
        if kill_at is None:
            return main([command, *argv])
        with pytest.raises(BaseException) as died:  # torch.distributed.checkpoint wraps _Killed
            main([command, *argv])
    assert killed, f"not killed: {died.value!r}"
    return None


def _start_command(command: str, run: Path) -> list[str]:
    model = load_config(run / "config.yaml").model.path
    return [f"model.path={model}", f"log.output_dir={run}", *COMMANDS[command][1], *COMMON,
            "train.steps=3"]


def _resume(command: str, run: Path, keep_last: int, *extra: str, **kill) -> int | None:
    return _run_cli(command, ["--resume", str(run), f"checkpoint.keep_last={keep_last}", *extra],
                    **kill)


def _outcome(run: Path) -> tuple[list[dict], dict[str, bytes], dict]:
    """The metrics (less timings), the files of the newest checkpoint (less those that name its
    folder: its config, the manifest, and the sharded folder's metadata) and its whole state."""
    rows = [{k: v for k, v in json.loads(x).items() if k != "time" and not k.startswith("perf/")}
            for x in (run / "metrics.jsonl").read_text().splitlines()]
    newest = ckpt.checkpoint_dirs(run / "checkpoints")[-1]
    files = {k: v for k, v in _files(newest).items()
             if k not in ("config.yaml", ckpt.MANIFEST, "sharded/.metadata")}
    return rows, files, checkpoint_state(newest, run / "state.pt")


def _same(a, b) -> bool:
    """Equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def _copy(finished: Path, to: Path, keep_last: int) -> Path:
    shutil.copytree(finished, to)
    if keep_last == 1:
        shutil.rmtree(to / "checkpoints" / "step-000002")
    return to


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """runs(command): a finished 3-step run that kept its last two checkpoints; the outcome of an
    uninterrupted resume of it (which saves step 3 again) continued to step 4; and the filesystem
    calls of that re-save. Built on first use."""
    made = {}

    def get(command: str):
        if command not in made:
            finished = tmp_path_factory.mktemp(command) / "finished"
            assert main([command, f"model.path={tiny_model_dir}", f"log.output_dir={finished}",
                         *COMMANDS[command][1], *COMMON, "train.steps=3",
                         "checkpoint.keep_last=2"]) == 0
            run = _copy(finished, finished.with_name("uninterrupted"), keep_last=2)
            calls: list = []
            assert _resume(command, run, 2, calls=calls) == 0
            assert _resume(command, run, 2, "train.steps=4") == 0
            outcome = _outcome(run)
            assert all(row["optim/grad_norm"] > 0 for row in outcome[0])  # the weights change
            made[command] = finished, outcome, calls
        return made[command]

    return get


def _kill_resume_and_continue(command, runs, run, keep_last, kill_at):
    """Kill the resume of the finished run in its re-save; then the plain restart is refused,
    and the resume continues to step 4 exactly as the uninterrupted one did."""
    finished, (want_rows, want_files, want_state), _ = runs(command)
    _copy(finished, run, keep_last)
    _resume(command, run, keep_last, kill_at=kill_at)
    assert _run_cli(command, _start_command(command, run)) == 2  # never starts over
    assert _resume(command, run, keep_last, "train.steps=4") == 0
    rows, files, state = _outcome(run)
    assert rows == want_rows
    assert not sorted(k for k in files.keys() | want_files.keys()
                      if files.get(k) != want_files.get(k))
    assert _same(state, want_state)  # bit for bit: weights, optimizer, RNG streams, sampler
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-000003", "step-000004"][-keep_last:]  # no .old, .tmp or staging


def _index(calls, name, suffix):
    return next(i for i, (n, arg) in enumerate(calls) if n == name and arg.endswith(suffix))


@pytest.mark.parametrize("keep_last", [1, 2])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_re_save_killed_between_its_renames_resumes_exactly(runs, tmp_path, command,
                                                                keep_last, capsys):
    """The reported case: step-000003 renamed to .old, the .tmp not yet renamed to its place."""
    calls = runs(command)[2]
    between = _index(calls, "rename", "step-000003.tmp")
    assert calls[between - 1][0] == "rename" and calls[between - 1][1].endswith("step-000003")
    _kill_resume_and_continue(command, runs, tmp_path / "run", keep_last, between)
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("keep_last", [1, 2])
def test_a_re_save_killed_before_its_cleanup_leaves_nothing_behind(runs, tmp_path, keep_last):
    """Killed after the new checkpoint took its name, before the .old was deleted."""
    after = _index(runs("train")[2], "rename", "step-000003.tmp") + 1
    _kill_resume_and_continue("train", runs, tmp_path / "run", keep_last, after)


@pytest.mark.slow
@pytest.mark.parametrize("keep_last", [1, 2])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_re_save_killed_at_every_point_resumes_exactly(runs, tmp_path, command, keep_last):
    calls = runs(command)[2]
    for k in range(len(calls)):
        run = tmp_path / f"run-{k}"
        try:
            _kill_resume_and_continue(command, runs, run, keep_last, k)
        except AssertionError as exc:
            raise AssertionError(f"killed before call {k} of {len(calls)}: {calls[k]}") from exc
        shutil.rmtree(run)
