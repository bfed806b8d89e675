"""What GRPO and SFT share: seeding, the optimizer and its schedule, the guarded optimizer step,
the run state saved in checkpoints, and the run folder's lifecycle."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from grpokit import checkpoint as ckpt
from grpokit import distributed as dist
from grpokit.config import Config, ConfigError, TrainConfig, to_dict
from grpokit.data.sampler import PromptSampler
from grpokit.models import save_model


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
    """Sum gradients over ranks, clip, refuse non-finite gradients, step, zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    dist.all_reduce_gradients(params)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if not torch.isfinite(norm):
        bad = [n for n, p in model.named_parameters()
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(f"non-finite gradient (norm {norm.item()}) in {bad[:5]}")
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"optim/grad_norm": norm.item(), "optim/lr": lr}


_KINDS = {"grpo": "a GRPO", "sft": "an SFT"}


@dataclass
class RunState:
    """What changes during a run and is saved in its checkpoints."""

    kind: str
    """"grpo" or "sft": a checkpoint resumes only a run of its own kind."""
    step: int
    sampler: PromptSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator | None = None
    """This rank's sampling generator (GRPO)."""
    reference: torch.nn.Module | None = None
    """A reference model whose weights change during the run (iterative GRPO), saved with it."""

    def state_dict(self) -> dict[str, Any]:
        """Call on every rank: each rank's generator is gathered, in rank order."""
        saved = {"kind": self.kind, "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict()}
        if self.generator is not None:
            saved["rank_generators"] = dist.all_gather_tensor(self.generator.get_state())
        if self.reference is not None:
            saved["reference"] = self.reference.state_dict()
        return saved

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restore optimizer, schedule, row order, RNG streams and step; checks come first, so
        nothing is restored from a checkpoint that cannot be resumed."""
        kind = saved.get("kind")
        if kind != self.kind:
            hint = f"; start GRPO from it with model.path={saved['path'] / 'model'}" \
                if kind == "sft" else ""
            raise ConfigError(f"--resume: {saved['path']} is {_KINDS.get(kind, 'an unknown')} "
                              f"checkpoint, not {_KINDS[self.kind]} one{hint}")
        generators = saved.get("rank_generators")
        if self.generator is not None and len(generators) != dist.world_size():
            raise ValueError(f"the checkpoint was written by {len(generators)} rank(s); resume it "
                             f"with the same number of ranks, not {dist.world_size()}")
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.sampler.load_state_dict(saved["sampler"])
        if self.generator is not None:
            self.generator.set_state(generators[dist.rank()])
        if self.reference is not None:
            self.reference.load_state_dict(saved["reference"])
        ckpt.set_rng_state(saved["rng"])
        self.step = saved["step"]


def new_run_state(kind: str, cfg: Config, model: torch.nn.Module, num_rows: int,
                  total_updates: int, reference: torch.nn.Module | None = None) -> RunState:
    """AdamW over the trainable weights, warm-up + schedule, the seeded row order and, for GRPO,
    this rank's sampling generator."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas),
                                  weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t, total_updates))
    sampler = PromptSampler(num_rows, cfg.rollout.prompts_per_step, seed=cfg.data.seed)
    generator = None
    if kind == "grpo":
        generator = torch.Generator().manual_seed(t.seed + 1_000_003 * dist.rank())
    return RunState(kind, 0, sampler, optimizer, scheduler, generator, reference)


# ---------------------------------------------------------------- the run folder


def load_resume(resume: str | Path | None) -> dict[str, Any] | None:
    """The saved state of the newest checkpoint under `resume` (None for a new run)."""
    return None if resume is None else ckpt.load_state(Path(resume))


def check_output_dir(out: Path, resume: str | Path | None) -> None:
    if resume is None and (out / "config.yaml").exists():
        raise ConfigError(f"log.output_dir: {out} already holds a run; resume it with "
                          f"--resume {out}, or choose another log.output_dir")


def write_config(out: Path, cfg: Config) -> None:
    """The resolved config of the run, on rank 0."""
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def save_run(out: Path, cfg: Config, model: torch.nn.Module, tokenizer: Any,
             state: RunState) -> Path | None:
    """A checkpoint of the run: checkpoints/step-NNNNNN/ with the model in Hugging Face format,
    trainer.pt and config.yaml. Call on every rank; rank 0 writes and returns the path."""
    merge = cfg.model.lora.enabled and cfg.model.lora.save_merged
    saved = state.state_dict()
    if not dist.is_main():
        return None
    return ckpt.save_checkpoint(
        out / "checkpoints", state.step,
        lambda tmp: save_model(model, tokenizer, tmp / "model", merge_lora=merge),
        saved, yaml.safe_dump(to_dict(cfg), sort_keys=False), cfg.checkpoint.keep_last)
