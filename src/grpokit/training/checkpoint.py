"""Checkpoints on disk (DESIGN.md §6): written to a temporary folder, given a manifest of sizes and
checksums written last, fsynced, and renamed into place. Loading verifies the manifest; resuming a
run folder takes the newest checkpoint that verifies and says which ones it skipped and why.

A save killed at any point leaves every checkpoint it touched under a name `recover` knows:
`step-N.tmp` (the new one, complete once its manifest verifies), `step-N.old` (the one a re-save
of step N replaces, kept until the new one has its name) and `NAME.del` (a deletion cut short,
always junk). `recover` puts the newest complete one back in place with renames only; `clean`
deletes the leftovers once a newer checkpoint is in place.

A checkpoint folder holds the model in Hugging Face format (plus the tokenizer), `sharded/` with
the weights and optimizer state (torch.distributed.checkpoint, written by every rank),
`trainer.pt` with the scheduler, RNG streams, sampler position and step, the resolved
`config.yaml`, and `manifest.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

STATE_FILE = "trainer.pt"
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER = re.compile(r"^step-(\d+)\.(tmp|old|(?:tmp\.|old\.)?del)$")
logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete or damaged (its manifest does not verify)."""


def rng_state() -> dict[str, Any]:
    """The global RNG streams of python, numpy and torch."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path) -> None:
    """Fsync every file and folder under `folder`, then write the manifest (sizes and SHA-256 of
    every file) last, so that a manifest exists only over complete, durable files."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size,
                                                      "sha256": _sha256(path)}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))
    _fsync(folder / MANIFEST)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        _fsync(sub)
    _fsync(folder)


def verify(folder: Path) -> None:
    """Raise CheckpointError naming the first missing, resized or changed file."""
    manifest = folder / MANIFEST
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{folder}: no readable {MANIFEST} ({exc})") from None
    for name, want in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: {name} is missing")
        if path.stat().st_size != want["bytes"]:
            raise CheckpointError(f"{folder}: {name} has {path.stat().st_size} bytes, the "
                                  f"manifest says {want['bytes']}")
        if _sha256(path) != want["sha256"]:
            raise CheckpointError(f"{folder}: {name} does not match its checksum")


def write_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a fresh temporary folder beside `final`, add the manifest, fsync, and
    rename it into place (a checkpoint already there stays as `.old` until `clean`)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(final, "tmp")
    if tmp.exists():
        _discard(tmp)  # left by a run that died mid-write
    write(tmp)
    write_manifest(tmp)
    _publish(tmp, final)
    return final


def _beside(final: Path, suffix: str) -> Path:
    return final.with_name(f"{final.name}.{suffix}")


def _publish(tmp: Path, final: Path) -> None:
    """Rename the complete `tmp` to `final`. A checkpoint already there (a re-save of its step)
    is renamed to `.old` first and deleted only by `clean`, after the new one has its name: a
    kill between the two renames leaves both, and `recover` finishes or rolls back."""
    if final.exists():
        old = _beside(final, "old")
        if old.exists():
            _discard(old)  # an older copy of this step, superseded by `final` already
        final.rename(old)
    tmp.rename(final)
    _fsync(final.parent)


def _discard(path: Path) -> None:
    """Delete a folder, renaming it to NAME.del first: a deletion cut short leaves a name that is
    always junk, never a half-deleted folder under a checkpoint's name."""
    trash = path.with_name(path.name + ".del")
    if trash.exists():
        shutil.rmtree(trash)
    path.rename(trash)
    shutil.rmtree(trash)


def checkpoint_dirs(root: Path) -> list[Path]:
    """Checkpoint folders under root that hold a trainer state, oldest first (not verified)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))
             and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def is_checkpoint_name(name: str) -> bool:
    """Whether `name` is a checkpoint folder's name (step-NNNNNN)."""
    return bool(_STEP_DIR.match(name))


def _leftovers(root: Path) -> list[tuple[Path, int, str]]:
    """(folder, step, "tmp" | "old" | "del") of what interrupted saves left under root, by step."""
    if not root.is_dir():
        return []
    found = [(p, int(m.group(1)), m.group(2).rpartition(".")[2]) for p in root.iterdir()
             if (m := _LEFTOVER.match(p.name))]
    return sorted(found, key=lambda f: (f[1], f[0].name))


def _verifies(folder: Path) -> bool:
    try:
        verify(folder)
    except CheckpointError:
        return False
    return True


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last checkpoints (0 keeps all)."""
    if keep_last > 0:
        for path in checkpoint_dirs(root)[:-keep_last]:
            _discard(path)


def recover(root: Path) -> list[str]:
    """Finish or roll back the saves a killed run left half done, so that no complete checkpoint
    is lost. For a step whose folder is missing, a `.tmp` that verifies (the save was complete)
    is renamed into place, else the `.old` a re-save was replacing is renamed back. Renames only:
    this is safe to repeat, and the leftovers go in `clean` once a newer checkpoint is saved.
    Call only while holding the run folder's lock. Returns one line per folder restored."""
    done = []
    # The `.tmp` of a step first: when it verifies it is newer than the `.old` it was replacing.
    for path, step, kind in sorted(_leftovers(root), key=lambda f: (f[1], f[2] != "tmp")):
        final = root / f"step-{step:06d}"
        if final.exists() or kind == "del" or (kind == "tmp" and not _verifies(path)):
            continue
        path.rename(final)
        done.append(f"{final.name}: " + ("finished the interrupted save" if kind == "tmp" else
                                         "rolled back the interrupted re-save"))
        logger.warning("checkpoint %s", done[-1])
    if done:
        _fsync(root)
    return done


def holds_checkpoint(root: Path) -> bool:
    """Whether root holds a checkpoint, counting those a killed save left as `.old`, or as a
    `.tmp` that verifies (both of which `recover` puts back)."""
    return bool(checkpoint_dirs(root)) or any(
        (kind == "old" and (path / STATE_FILE).is_file()) or (kind == "tmp" and _verifies(path))
        for path, _, kind in _leftovers(root))


def clean(root: Path, step: int) -> None:
    """Delete the leftovers of killed saves once the checkpoint of `step` is in place: every
    `.del`, and the `.old` and `.tmp` folders of `step` and earlier steps (superseded). A later
    step's `.old`, or `.tmp` that verifies, is a checkpoint `recover` restores, and stays."""
    for path, n, kind in _leftovers(root):
        if kind == "del":
            shutil.rmtree(path)
        elif n <= step or (kind == "tmp" and not _verifies(path)):
            _discard(path)


def save_checkpoint(root: Path, step: int, save_model: Callable[[Path], None],
                    state: dict[str, Any], config_yaml: str, keep_last: int) -> Path:
    """Write step-NNNNNN under root atomically, delete the leftovers of killed saves and prune
    old checkpoints."""

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_model(tmp)
        torch.save({**state, "rng": rng_state(), "step": step}, tmp / STATE_FILE)
        (tmp / "config.yaml").write_text(config_yaml)

    path = write_atomically(root / f"step-{step:06d}", write)
    clean(root, step)
    prune(root, keep_last)
    return path


def newest_valid(run: Path) -> Path:
    """The newest checkpoint under a run folder whose manifest verifies; each one skipped is
    logged with the reason."""
    found = checkpoint_dirs(run / "checkpoints") or checkpoint_dirs(run)
    if not found:
        raise FileNotFoundError(f"{run} is neither a checkpoint nor a run folder with checkpoints")
    reasons = []
    for path in reversed(found):
        try:
            verify(path)
        except CheckpointError as exc:
            logger.warning("skipping checkpoint %s: %s", path.name, exc)
            reasons.append(str(exc))
            continue
        return path
    raise CheckpointError(f"{run}: no checkpoint verifies: " + "; ".join(reasons))


def load_state(path: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint folder (verified), or of the newest checkpoint under a
    run folder that verifies."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        verify(path)
    else:
        path = newest_valid(path)
    state = torch.load(path / STATE_FILE, weights_only=False)
    state["path"] = path
    return state
