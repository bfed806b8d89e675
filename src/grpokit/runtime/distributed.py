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
    """Join the process group that torchrun describes in the environment (WORLD_SIZE > 1); on a
    GPU machine each rank takes the GPU of its LOCAL_RANK."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        tdist.init_process_group(backend)
    return is_distributed()


def device() -> torch.device:
    """Where this rank trains: its GPU (LOCAL_RANK) when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _on_comm_device(tensor: torch.Tensor) -> torch.Tensor:
    """NCCL reduces only GPU tensors: a CPU tensor travels through this rank's GPU."""
    if tdist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return tensor.to(device())
    return tensor.clone()


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
    if not is_distributed():
        return tensor.clone()
    out = _on_comm_device(tensor)
    tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out.to(tensor.device)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks (a copy)."""
    if not is_distributed():
        return tensor.clone()
    out = _on_comm_device(tensor)
    tdist.all_reduce(out, op=tdist.ReduceOp.MAX)
    return out.to(tensor.device)


def all_gather_tensor(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor, in rank order ([tensor] in a single process)."""
    if not is_distributed():
        return [tensor.clone()]
    sent = _on_comm_device(tensor.contiguous())
    out = [torch.empty_like(sent) for _ in range(world_size())]
    tdist.all_gather(out, sent)
    return [part.to(tensor.device) for part in out]


def all_gather_rows(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's tensor, in rank order, where the ranks' first dimensions may differ."""
    if not is_distributed():
        return [tensor.clone()]
    sizes = all_gather_tensor(torch.tensor([tensor.shape[0]], device=tensor.device))
    width = int(max(int(s) for s in sizes))
    padded = torch.zeros((width, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    return [part[: int(n)] for part, n in zip(all_gather_tensor(padded), sizes)]


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        tdist.barrier()


def all_gather_object(obj):
    """Every rank's picklable object, in rank order ([obj] in a single process). Tensors inside
    should be on the CPU: a CUDA tensor would come back on the sender's device index."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def share(n: int, *, of_rank: int | None = None) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of n items (sizes differ by at most one)."""
    r, w = rank() if of_rank is None else of_rank, world_size()
    return r * n // w, (r + 1) * n // w


def gather_shares(local: torch.Tensor, total: int) -> torch.Tensor:
    """The (total, ...) tensor whose rows the ranks hold as their `share`s, on every rank."""
    if not is_distributed():
        return local.clone()
    width = -(-total // world_size())  # the largest share
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = all_gather_tensor(padded)
    return torch.cat([part[: stop - start] for part, (start, stop) in
                      zip(parts, (share(total, of_rank=r) for r in range(world_size())))])
