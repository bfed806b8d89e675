"""What GRPO and SFT share: seeding, the optimizer and its schedule, the guarded optimizer step,
the run state saved in checkpoints, and the run folder's lifecycle."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from torch.distributed.tensor import DTensor

from grpokit.config import Config, ConfigError, TrainConfig, to_dict
from grpokit.data.sampler import PromptSampler
from grpokit.errors import load_yaml
from grpokit.runtime import distributed as dist
from grpokit.runtime.models import save_model
from grpokit.runtime.precision import cpu_name
from grpokit.training import checkpoint as ckpt
from grpokit.training.parallel import full_state_dict, is_sharded, load_sharded, save_sharded


class NonFiniteError(RuntimeError):
    """A reward, loss or gradient was NaN or infinite: the step is stopped, never applied."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(t: TrainConfig, total_updates: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimizer step s: linear warm-up, then the schedule."""

    def factor(s: int) -> float:
        if s < t.warmup_steps:
            return (s + 1) / (t.warmup_steps + 1)
        progress = (s - t.warmup_steps) / max(total_updates - t.warmup_steps, 1)
        if t.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if t.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, max_norm: float) -> dict[str, float]:
    """Clip, refuse non-finite gradients, step, zero. Over several ranks the gradients are
    already the sum of the ranks' (DDP or FSDP reduced them in the backward)."""
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if isinstance(norm, DTensor):  # sharded gradients: the norm over every shard
        norm = norm.full_tensor()
    if not torch.isfinite(norm):
        bad = [n for n, p in model.named_parameters()
               if p.grad is not None and not bool(torch.isfinite(_local(p.grad)).all())]
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(f"non-finite gradient (norm {norm.item()}) in {bad[:5]}")
    lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"optim/grad_norm": norm.item(), "optim/lr": lr}


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


SHARDED = "sharded"
"""The checkpoint's torch.distributed.checkpoint folder: weights and optimizer state."""

_KINDS = {"grpo": "a GRPO", "sft": "an SFT", "dpo": "a DPO", "ppo": "a PPO"}


def check_kind(saved: dict[str, Any], kind: str) -> None:
    """A checkpoint resumes only a run of its own kind (GRPO or SFT)."""
    found = saved.get("kind")
    if found != kind:
        hint = f"; start GRPO from it with model.path={saved['path'] / 'model'}" \
            if found == "sft" else ""
        raise ConfigError(f"--resume: {saved['path']} is {_KINDS.get(found, 'an unknown')} "
                          f"checkpoint, not {_KINDS[kind]} one{hint}")


@dataclass
class RunState:
    """What changes during a run and is saved in its checkpoints."""

    kind: str
    """"grpo" or "sft": a checkpoint resumes only a run of its own kind."""
    step: int
    sampler: PromptSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    reference: torch.nn.Module | None = None
    """A reference model whose weights change during the run (iterative GRPO), saved with it."""
    model: torch.nn.Module | None = None
    """The policy: its weights and the optimizer state are saved sharded (`save_sharded`)."""

    def state_dict(self) -> dict[str, Any]:
        """What trainer.pt holds, the same on every rank: sampling randomness is derived from
        (seed, step, prompt), so there is no per-rank stream to save and any number of ranks
        can resume it. Weights and optimizer state go to the sharded folder."""
        return {"kind": self.kind, "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict()}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore optimizer, schedule, row order, RNG streams and step; checks come first, so
        nothing is restored from a checkpoint that cannot be resumed."""
        check_kind(saved, self.kind)
        load_sharded(saved["path"] / SHARDED, self.model, self.optimizer, self.reference)
        self.scheduler.load_state_dict(saved["scheduler"])
        self.sampler.load_state_dict(saved["sampler"])
        ckpt.set_rng_state(saved["rng"])
        self.step = saved["step"]


def new_run_state(kind: str, cfg: Config, model: torch.nn.Module, num_rows: int, batch_size: int,
                  total_updates: int, reference: torch.nn.Module | None = None) -> RunState:
    """AdamW over the trainable weights, warm-up + schedule and the seeded order of `batch_size`
    rows a step."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel: one pass per tensor and no whole-model temporaries (the default
    # multi-tensor step holds several, about 1 GB at peak for the default model). Sharded
    # (DTensor) weights keep the default.
    fused = all(type(p) is torch.nn.Parameter for p in params)
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas),
                                  weight_decay=t.weight_decay, fused=fused or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t, total_updates))
    sampler = PromptSampler(num_rows, batch_size, seed=cfg.data.seed)
    return RunState(kind, 0, sampler, optimizer, scheduler, reference, model)


# ---------------------------------------------------------------- the run folder

# What a resume may change: settings that leave the run's exactness and meaning intact. Every
# other key (model, data, seeds, batch shape, sampling, algorithm knobs) is frozen by the first
# start, and a resume that changes one is refused.
RESUME_MAY_CHANGE = ("train.steps", "train.lr", "train.micro_batch_size",
                     "train.max_tokens_per_micro_batch", "train.shared_prefix",
                     "train.keep_freed_memory",
                     "train.logprob_chunk_size", "train.parallel", "model.gradient_checkpointing",
                     "model.lean_mlp", "log.", "checkpoint.", "eval.", "reward_runner.")


def run_folder_of(resume: str | Path) -> Path:
    """The run folder of `--resume`: the folder itself, or the run a checkpoint folder is in."""
    path = Path(resume)
    # By name too: a killed re-save may have left this checkpoint as `.old` for `recover`.
    if path.parent.name == "checkpoints" and ((path / ckpt.STATE_FILE).is_file()
                                              or ckpt.is_checkpoint_name(path.name)):
        return path.parent.parent
    return path


def load_resume(resume: str | Path | None, cfg: Config, kind: str) -> dict[str, Any] | None:
    """The saved state of the newest verified checkpoint under `resume` (None for a new run), of
    a run of this `kind`. A resumed run continues in its own folder: another `log.output_dir` is
    an error."""
    if resume is None:
        return None
    run = run_folder_of(resume)
    if Path(cfg.log.output_dir).resolve() != run.resolve():
        raise ConfigError(f"log.output_dir={cfg.log.output_dir} differs from --resume {resume}: "
                          f"a resumed run continues in its own folder ({run})")
    recover_checkpoints(run)
    try:
        saved = ckpt.load_state(Path(resume))
    except (FileNotFoundError, ckpt.CheckpointError) as exc:
        raise ConfigError(f"--resume: {exc}") from None
    check_kind(saved, kind)
    return saved


def recover_checkpoints(run: Path) -> None:
    """Finish or roll back a checkpoint save that a killed run left half done (checkpoint.recover)
    before the resume looks for its checkpoint: on rank 0, under the run folder's lock, so that a
    live run's save is never touched (that run's pid is named instead); the other ranks wait."""
    if dist.is_main() and (run / "checkpoints").is_dir():
        folder = RunFolder(run)
        try:
            ckpt.recover(run / "checkpoints")
        finally:
            folder.abandon()  # released again (and no new .lock left) until the run claims it
    dist.barrier()


def resume_changes(saved: dict[str, Any], cfg: Config) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved value, new value)} of the keys a resume may change; a ConfigError
    listing every frozen key that differs from the checkpoint's config."""
    old = _flat(load_yaml((saved["path"] / "config.yaml").read_text()))
    new = _flat(to_dict(cfg))
    changed = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
    frozen = sorted(k for k in changed if not k.startswith(RESUME_MAY_CHANGE))
    if frozen:
        listed = ", ".join(f"{k} ({changed[k][0]!r} -> {changed[k][1]!r})" for k in frozen)
        raise ConfigError(f"--resume: these settings cannot change in a resumed run without "
                          f"breaking it: {listed}; start a new run for them")
    return changed


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}."))
    return out


def apply_learning_rate(state: RunState, lr: float) -> None:
    """A new peak learning rate on resume reaches the scheduler and the optimizer for real."""
    state.scheduler.base_lrs = [lr for _ in state.scheduler.base_lrs]
    for group, factor in zip(state.optimizer.param_groups, state.scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(state.scheduler.last_epoch)


class RunFolder:
    """A run folder claimed for the whole run with an exclusive lock on `.lock` (released by the
    OS when the process dies, so a killed run never blocks its own resume)."""

    LOCK = ".lock"

    def __init__(self, out: str | Path):
        self.out = out = Path(out)
        self.started = False
        """Set once the run has written its config: from then on the folder is the run's."""
        self._created = not out.exists()
        self._lock_existed = (out / self.LOCK).exists()
        out.mkdir(parents=True, exist_ok=True)
        self._file = open(out / self.LOCK, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise ConfigError(f"log.output_dir: {out} is in use by another grpokit run "
                              f"(pid {holder}); wait for it or choose another folder") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def abandon(self) -> None:
        """A start that failed before training: leave the folder as it was (or no folder)."""
        self.release()
        if not self._lock_existed:
            (self.out / self.LOCK).unlink(missing_ok=True)
        if self._created and not any(self.out.iterdir()):
            self.out.rmdir()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


@contextlib.contextmanager
def claimed(out: Path, resume: str | Path | None) -> Iterator[RunFolder | None]:
    """Claim `out` on rank 0 for the body; if the body fails before `started()` is called on the
    folder, the folder is left as it was. A new run refuses a folder that holds checkpoints."""
    folder = RunFolder(out) if dist.is_main() else None
    try:
        if resume is None and ckpt.holds_checkpoint(out / "checkpoints"):
            raise ConfigError(f"log.output_dir: {out} already holds a run; resume it with "
                              f"--resume {out}, or choose another log.output_dir")
        yield folder
    except BaseException:
        if folder is not None and not folder.started:
            folder.abandon()
        raise
    finally:
        if folder is not None:
            folder.release()


def write_config(out: Path, cfg: Config, folder: RunFolder | None, kind: str = "grpo") -> None:
    """The resolved config of the run, on rank 0, once every check before training has passed:
    from here on a failure leaves a run that `--resume` (or, with no checkpoint yet, a plain
    re-run) continues."""
    if dist.is_main():
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        _record_start(out, kind)
        folder.started = True


def _record_start(out: Path, kind: str) -> None:
    """run.json: the run's kind (grpo, ppo, sft, dpo) and one entry per start or resume, with
    when and on what machine (the report's header)."""
    path = out / "run.json"
    try:
        info = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        info = {}
    device = (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    machine = {"device": device, "cpu": cpu_name(), "cores": os.cpu_count(),
               "world_size": dist.world_size(), "torch": torch.__version__,
               "python": platform.python_version(), "host": platform.node()}
    info["kind"] = kind
    info.setdefault("starts", []).append({"time": time.time(), "machine": machine})
    path.write_text(json.dumps(info, indent=1))


def save_run(out: Path, cfg: Config, model: torch.nn.Module, tokenizer: Any,
             state: RunState) -> Path | None:
    """A checkpoint of the run: checkpoints/step-NNNNNN/ with the model in Hugging Face format,
    the sharded weights and optimizer state (`sharded/`), trainer.pt and config.yaml. Call on
    every rank: each writes its shards into a staging folder, which rank 0 moves into the
    checkpoint before it is published; rank 0 returns the path."""
    merge = cfg.model.lora.enabled and cfg.model.lora.save_merged
    weights = full_state_dict(model) if is_sharded(model) else None  # gathered on every rank
    staging = out / "checkpoints" / f".sharded-{state.step:06d}"
    if dist.is_main() and staging.exists():
        shutil.rmtree(staging)  # left by a run that died mid-write
    dist.barrier()
    save_sharded(staging, model, state.optimizer, state.reference)
    dist.barrier()
    if not dist.is_main():
        return None

    def write_model(tmp: Path) -> None:
        save_model(model, tokenizer, tmp / "model", merge_lora=merge, state_dict=weights)
        staging.rename(tmp / SHARDED)

    path = ckpt.save_checkpoint(
        out / "checkpoints", state.step, write_model, state.state_dict(),
        yaml.safe_dump(to_dict(cfg), sort_keys=False), cfg.checkpoint.keep_last)
    for stale in (out / "checkpoints").glob(".sharded-*"):
        shutil.rmtree(stale)  # staged by a save that was killed; this save's is in `path`
    return path
