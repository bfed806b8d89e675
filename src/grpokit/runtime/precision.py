"""Precision: the one bf16 decision (measured, cached per machine), autocast, and the ops kept in
fp32 because they are slower in bf16 here. Log-probs, ratios, KL and losses are fp32 whatever
the model runs in (algo/losses.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Iterator

import torch

from grpokit.runtime.models import cache_root

AUTOCAST_MODES = ("auto", "bf16", "off")
BF16_MIN_SPEEDUP = 1.2
"""`auto` turns bf16 on where the probe's bf16 matmul is at least this much faster than fp32."""
PROBE_SHAPE = (1024, 576, 1536)
"""The probe's (M, K, N): a micro-batch of tokens through a small model's MLP projection."""


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has bf16 matrix units (AMX or AVX512-BF16), from /proc/cpuinfo flags."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_matmul(dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOP/s of the probe's matmul in `dtype` on this CPU (best of `repeats`)."""
    m, k, n = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(k, n, generator=gen).to(dtype)
    a @ b  # warm-up: kernels chosen, memory touched
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def bf16_probe() -> dict[str, float | str]:
    """fp32 and bf16 matmul GFLOP/s on this machine: measured once (well under a second) and
    cached in the grpokit cache, keyed by CPU model, torch version and thread count."""
    key = f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    path = cache_root() / "bf16-probe.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached.get(key), dict):
        return {**cached[key], "key": key, "cached": "yes"}
    result = {"fp32_gflops": measure_matmul(torch.float32),
              "bf16_gflops": measure_matmul(torch.bfloat16)}
    cached[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: measure again next time
    return {**result, "key": key, "cached": "no"}


def bf16_decision(mode: str, device: str | torch.device = "cpu") -> tuple[bool, str]:
    """The one bf16 decision, for sampling, training and SFT alike, and a line saying why.
    `model.autocast` is "off", "bf16" (forced), or "auto": on a CUDA GPU where it supports bf16;
    on a CPU where the measured bf16 matmul is at least BF16_MIN_SPEEDUP times faster than fp32
    (bf16 without matrix units is slower than fp32)."""
    if mode not in AUTOCAST_MODES:
        raise ValueError(f"autocast mode must be one of {AUTOCAST_MODES}, got {mode!r}")
    if mode != "auto":
        return mode == "bf16", f"precision: {'bf16 autocast' if mode == 'bf16' else 'fp32'} " \
                               f"(model.autocast={mode})"
    if torch.device(device).type == "cuda":
        on = torch.cuda.is_bf16_supported()
        return on, f"precision: {'bf16 autocast' if on else 'fp32'} (CUDA bf16 support: {on})"
    probe = bf16_probe()
    fp32, bf16 = float(probe["fp32_gflops"]), float(probe["bf16_gflops"])
    on = bf16 >= BF16_MIN_SPEEDUP * fp32
    how = "cached" if probe["cached"] == "yes" else "measured now"
    return on, (f"precision: {'bf16 autocast' if on else 'fp32'} (model.autocast=auto; matmul "
                f"{bf16:.0f} GFLOP/s in bf16 vs {fp32:.0f} in fp32, {how}, {probe['key']})")


def use_bf16(mode: str, device: str | torch.device = "cpu") -> bool:
    """`bf16_decision` without its explanation."""
    return bf16_decision(mode, device)[0]


def autocast(enabled: bool, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager:
    """bf16 autocast over fp32 master weights when `enabled` (see use_bf16), else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def autocast_paused(device: str | torch.device) -> contextlib.AbstractContextManager:
    """Autocast off inside an autocast region without ending it: its cache of bf16 weight casts
    survives (a backward between two micro-batches' forwards)."""
    return torch.autocast(torch.device(device).type, enabled=False)


def bf16_linear_weights(model: torch.nn.Module) -> int:
    """Store a frozen model's Linear weights in bf16 (not the embeddings, norms or a tied output
    projection). Under bf16 autocast its forward is unchanged to the bit, since autocast casts
    fp32 weights to bf16 the same way, and it takes half the memory and no cast per pass.
    Returns the number of weights cast."""
    tied = model.get_output_embeddings()
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not tied:
            if module.weight.requires_grad:
                raise ValueError("bf16_linear_weights is for frozen models (the reference)")
            module.weight.data = module.weight.data.to(torch.bfloat16)
            count += 1
    return count


# ---------------------------------------------------------------- attention kept in fp32

FP32_ATTENTION = "grpokit_sdpa_fp32"
"""The attention implementation of the training passes on bf16 CPUs (see use_fp32_attention)."""
_FP32_ATTENTION_ON = threading.local()


def _sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, run in fp32 inside `fp32_attention()` on the CPU under bf16
    autocast (which would run it in bf16), else as it is."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not (getattr(_FP32_ATTENTION_ON, "on", False) and query.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                              attention_mask, **kwargs)
    return out.to(torch.bfloat16), weights  # what autocast's SDPA would have returned


def use_fp32_attention(model: torch.nn.Module) -> bool:
    """Let the training passes of `model` run attention in fp32 under bf16 autocast on the CPU:
    PyTorch's CPU flash-attention backward in bf16 measured 3.6x slower than in fp32 (31.6 vs
    8.7 ms a call, default model, 2-core Xeon with AMX), while the rest of the pass is faster in
    bf16. Every training-side pass (policy, old and reference log-probs) does the same, so the
    policy equals the reference at the start; sampling keeps bf16 attention. Only for models on
    transformers' "sdpa" attention; returns whether it applied."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(FP32_ATTENTION, _sdpa_fp32)
    AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)
    base.set_attn_implementation(FP32_ATTENTION)
    return True


@contextlib.contextmanager
def fp32_attention() -> Iterator[None]:
    """Inside: models set up by use_fp32_attention run attention in fp32 (bf16 CPU inputs)."""
    before = getattr(_FP32_ATTENTION_ON, "on", False)
    _FP32_ATTENTION_ON.on = True
    try:
        yield
    finally:
        _FP32_ATTENTION_ON.on = before
