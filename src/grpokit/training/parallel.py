"""How the policy trains over ranks (`train.parallel`, DESIGN.md §5).

- One process: the plain module.
- `ddp`: torch's DistributedDataParallel; every rank holds the whole model.
- `fsdp`: FSDP2 (`fully_shard`) over a 1-D device mesh, each decoder layer its own unit and the
  whole training pass (backbone and output projection) the root; the frozen reference is sharded
  the same way; bf16 compute with fp32 gradient reduction when bf16 is on.

No gradient collective is written here. The losses are normalized by global counts, so the
gradient wanted is the *sum* over ranks: FSDP is told to divide by 1, and under DDP (which
averages) each micro-batch loss is multiplied by the world size (`loss_scale`).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from grpokit.runtime import distributed as dist
from grpokit.training.logprobs import CompletionScorer

PARALLEL = ("ddp", "fsdp")


@dataclass
class Layout:
    """The modules the training pass calls, laid out over the ranks."""

    kind: str
    """"single" (one process), "ddp" or "fsdp"."""
    scorer: torch.nn.Module
    """The policy's training pass: (prompt ids, masks, completion ids) -> log-probs, entropies."""
    reference: torch.nn.Module | None
    """The frozen reference's pass, laid out like the policy; None without a reference model."""
    teacher: torch.nn.Module | None = None
    """The frozen teacher's pass (algo.teacher), laid out like the reference; None without one."""

    @property
    def loss_scale(self) -> float:
        """DDP averages gradients over ranks; the global normalizers want their sum."""
        return float(dist.world_size()) if self.kind == "ddp" else 1.0

    @property
    def sharded(self) -> bool:
        return self.kind == "fsdp"

    @contextlib.contextmanager
    def accumulating(self, last: bool) -> Iterator[None]:
        """A micro-batch's backward: DDP reduces only on the optimizer step's last one. FSDP
        reduce-scatters every micro-batch (sharded gradients accumulate; none is held whole)."""
        if self.kind == "ddp" and not last:
            with self.scorer.no_sync():
                yield
        else:
            yield


def lay_out(model: torch.nn.Module, reference: torch.nn.Module | None, parallel: str,
            bf16: bool, share_prefix: bool = False,
            teacher: torch.nn.Module | None = None) -> Layout:
    """Wrap the policy (and the frozen reference and teacher) for this world size; call before
    building the optimizer. `share_prefix`: every pass runs each distinct prompt once
    (logprobs.py)."""
    if parallel not in PARALLEL:
        raise ValueError(f"train.parallel must be one of {PARALLEL}, got {parallel!r}")
    ref, tea = (None if m is None else CompletionScorer(m, share_prefix)
                for m in (reference, teacher))
    if dist.world_size() == 1:
        return Layout("single", CompletionScorer(model, share_prefix), ref, tea)
    if parallel == "ddp":
        device = _device_ids(model)
        scorer = DistributedDataParallel(CompletionScorer(model, share_prefix), device_ids=device,
                                         broadcast_buffers=False)
        return Layout("ddp", scorer, ref, tea)
    mesh = init_device_mesh(_device_type(model), (dist.world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if bf16 else MixedPrecisionPolicy()
    scorer = _shard(CompletionScorer(model, share_prefix), mesh, policy)
    for module in scorer.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # a sum over ranks (see the module docstring)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    return Layout("fsdp", scorer, *(None if m is None else _shard(m, mesh, policy)
                                    for m in (ref, tea)))


def _shard(scorer: CompletionScorer, mesh, policy: MixedPrecisionPolicy) -> CompletionScorer:
    for layer in scorer.model.get_decoder().layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(scorer, mesh=mesh, mp_policy=policy)
    return scorer


def _device_type(model: torch.nn.Module) -> str:
    return next(model.parameters()).device.type


def _device_ids(model: torch.nn.Module) -> list[int] | None:
    device = next(model.parameters()).device
    return [device.index] if device.type == "cuda" else None


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole weights on every rank (sharded ones gathered), detached, on the CPU
    only when they are sharded. Call on every rank: gathering is collective."""
    return {name: (value.full_tensor() if isinstance(value, DTensor) else value).detach()
            for name, value in model.state_dict().items()}


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def _sharded_state(model, optimizer, reference) -> dict[str, Any]:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optimizer": optim_sd}
    if reference is not None:
        state["reference"] = get_model_state_dict(reference)
    return state


@contextlib.contextmanager
def _one_process_quiet() -> Iterator[None]:
    """Without a process group DCP warns, at every checkpoint, that it assumes one process:
    that is how grpokit runs one, so the warning says nothing."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 reference: torch.nn.Module | None = None) -> None:
    """Weights and optimizer state (and a changing reference) with torch.distributed.checkpoint:
    each rank writes its own shards, keyed by parameter name and global shape, so any number of
    ranks, sharded or not, can load them. Call on every rank."""
    with _one_process_quiet():
        dcp.save(_sharded_state(model, optimizer, reference), checkpoint_id=str(path))


def load_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 reference: torch.nn.Module | None = None) -> None:
    """Load what `save_sharded` wrote, resharded onto this run's layout. Call on every rank."""
    state = _sharded_state(model, optimizer, reference)
    with _one_process_quiet():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])
    if reference is not None:
        set_model_state_dict(reference, state["reference"])


class GenerationCopy:
    """A whole, unsharded copy of a sharded policy for an in-process engine to sample from
    (a sharded module's forward is collective, which decoding of uneven lengths cannot keep in
    step). `refresh()` copies the gathered weights in after every optimizer step."""

    def __init__(self, model: torch.nn.Module):
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)

    def refresh(self, model: torch.nn.Module) -> None:
        self.module.load_state_dict(full_state_dict(model))


class SyncedEngine:
    """An engine over a GenerationCopy: a weight sync first refreshes the copy from the sharded
    policy, then lets the engine sync from the copy (vLLM pushes it on; in-process engines
    sample from it directly). Everything else is the engine's own."""

    def __init__(self, engine, copy: GenerationCopy, model: torch.nn.Module):
        self.engine, self.copy, self.model = engine, copy, model

    def generate(self, *args, **kwargs):
        return self.engine.generate(*args, **kwargs)

    def sync_weights(self) -> None:
        self.copy.refresh(self.model)
        self.engine.sync_weights()

    def __getattr__(self, name: str):
        return getattr(self.engine, name)
