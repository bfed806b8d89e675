"""Keep freed memory in the process for reuse (`train.keep_freed_memory`; glibc on Linux).

A training step allocates and frees the same large tensors over and over: activations, the
chunk logits, tensors of the vocabulary weight's size. glibc serves every block over its mmap
threshold (at most 32 MB) with a fresh mapping and returns it on free, so the next step's
tensor of that size is faulted in and zero-filled by the kernel again, page by page; smaller
blocks freed at the top of the heap are returned too, beyond the trim threshold. Keeping them
(no mmap for blocks, no trimming) lets later allocations reuse resident pages, much as PyTorch's
GPU caching allocator does on a GPU. Reuse is glibc's choice of free block, not guaranteed per
allocation (an aligned request may not fit the block just freed); on the benchmark a
micro-batch's page faults fell from about 200k to 0 by the third step. The cost is that memory
freed after a peak stays with the process until it exits, and blocks that fit nothing later
raise the peak.
"""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> str | None:
    """Ask glibc to keep freed memory for reuse; the reason when it cannot (not glibc), else
    None. Applies to allocations made after the call."""
    if platform.system() != "Linux":
        return f"not on {platform.system()} (glibc only)"
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return "the C library is not glibc"
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. The trim threshold is an int here: 2**31 - 1 bytes.
    if not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)):
        return "glibc refused the settings"
    return None
