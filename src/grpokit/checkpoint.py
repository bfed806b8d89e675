"""Checkpoints on disk: written to a temporary folder and renamed into place (DESIGN.md §5).

A checkpoint folder holds the model in Hugging Face format (plus the tokenizer), `trainer.pt` with
the optimizer, scheduler, RNG streams, sampler position and step, and the resolved `config.yaml`.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

STATE_FILE = "trainer.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    """The global RNG streams of python, numpy and torch."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def write_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a fresh temporary folder beside `final`, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a run that died mid-write
    write(tmp)
    if final.exists():
        old = final.with_name(final.name + ".old")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    return final


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))
             and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest keep_last checkpoints (0 keeps all)."""
    if keep_last > 0:
        for path in checkpoint_dirs(root)[:-keep_last]:
            shutil.rmtree(path)


def save_checkpoint(root: Path, step: int, save_model: Callable[[Path], None],
                    state: dict[str, Any], config_yaml: str, keep_last: int) -> Path:
    """Write step-NNNNNN under root atomically and prune old ones."""

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_model(tmp)
        torch.save({**state, "rng": rng_state(), "step": step}, tmp / STATE_FILE)
        (tmp / "config.yaml").write_text(config_yaml)

    path = write_atomically(root / f"step-{step:06d}", write)
    prune(root, keep_last)
    return path


def load_state(path: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint folder (or of the newest one under a run folder)."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        found = checkpoint_dirs(path / "checkpoints") or checkpoint_dirs(path)
        if not found:
            raise FileNotFoundError(f"{path} is neither a checkpoint nor a run folder with checkpoints")
        path = found[-1]
    state = torch.load(path / STATE_FILE, weights_only=False)
    state["path"] = path
    return state
