"""Process groups through torch.distributed: one rank per process, launched with torchrun.

Each rank generates and scores its share of the step's prompts; loss normalizers are global
counts (summed over ranks) so that summing the ranks' gradients gives the single-process gradient.
Without an initialized process group every function here is the identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def init_from_env() -> bool:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        tdist.init_process_group(backend)
    return is_distributed()


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input is left as it is)."""
    out = tensor.clone()
    if is_distributed():
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks (a copy)."""
    out = tensor.clone()
    if is_distributed():
        tdist.all_reduce(out, op=tdist.ReduceOp.MAX)
    return out


def all_gather_tensor(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor, in rank order ([tensor] in a single process)."""
    if not is_distributed():
        return [tensor.clone()]
    out = [torch.empty_like(tensor) for _ in range(world_size())]
    tdist.all_gather(out, tensor.contiguous())
    return out


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        tdist.barrier()


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks in one flat buffer: the losses already use global normalizers."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def shard(items: list, *, of_rank: int | None = None) -> list:
    """This rank's contiguous share of a list whose length the world size divides."""
    n, w = len(items), world_size()
    if n % w:
        raise ValueError(f"{n} items do not split evenly over {w} ranks")
    r = rank() if of_rank is None else of_rank
    return items[r * n // w : (r + 1) * n // w]
