"""What `grpokit plan` prints around a Plan (runtime/plan.py): the memory per rank (given as
--device-memory, or detected), whether the run fits, and when it does not, the knobs that would
lower its peak, each with the peak predicted with that change alone."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from grpokit.config import Config, ConfigError
from grpokit.runtime.plan import DEVICES, Plan, check_world, human, plan, replanned
from grpokit.runtime.plan_shape import ModelShape, model_shape

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str) -> int:
    """Bytes of a memory size such as 80GB (powers of 1000) or 24GiB (powers of 1024); a bare
    number is bytes. Anything else is a ConfigError naming --device-memory."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if unit not in UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"--device-memory: {text!r} is not a memory size; expected a positive "
                          f"number and a unit, e.g. 80GB or 24GiB (B, KB, MB, GB, TB count "
                          f"powers of 1000; KiB, MiB, GiB, TiB powers of 1024)")
    return int(float(match.group(1)) * UNITS[unit])


def default_device() -> str:
    """cuda where a GPU is present, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def detect_memory(device: str, world: int) -> tuple[int, str]:
    """The memory per rank of this machine, and where it comes from: the CUDA device's total, or
    the machine's RAM shared by the `world` ranks a CPU run starts on it."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: there is no CUDA device here to read the memory "
                              "of; give --device-memory (e.g. 80GB)")
        props = torch.cuda.get_device_properties(0)
        return props.total_memory, f"{props.name}'s {human(props.total_memory)}"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    shared = f" shared by {world} ranks" if world > 1 else ""
    return total // world, f"this machine's RAM, {human(total)}{shared}"


@dataclass(frozen=True)
class Knob:
    """A change to the run, as it would be typed, and the peak predicted with it alone."""

    setting: str
    overrides: tuple[str, ...]
    world_size: int
    peak: int


def _candidates(cfg: Config, world: int, excess: int) -> list[tuple[str, list[str], int]]:
    """(setting, overrides, world size) of the single-knob changes worth trying."""
    out: list[tuple[str, list[str], int]] = []
    if not cfg.model.gradient_checkpointing:
        out.append(("model.gradient_checkpointing=true", ["model.gradient_checkpointing=true"],
                    world))
    if not cfg.model.lora.enabled:
        out.append(("model.lora.enabled=true", ["model.lora.enabled=true"], world))
    if cfg.algo.beta > 0 and not cfg.model.lora.enabled:
        out.append(("algo.beta=0 (no reference model)", ["algo.beta=0"], world))
    if cfg.model.dtype == "float32":
        out.append(("model.dtype=bfloat16 (bf16 master weights)", ["model.dtype=bfloat16"], world))
    chunk = cfg.train.logprob_chunk_size
    if chunk >= 64:
        out.append((f"train.logprob_chunk_size={chunk // 4}",
                    [f"train.logprob_chunk_size={chunk // 4}"], world))
    kv = cfg.rollout.vllm.kv_cache_gib
    if cfg.rollout.engine == "vllm" and kv is not None and kv * 2**30 > excess:
        smaller = int((kv * 2**30 - excess) / 2**30 * 100) / 100
        if smaller > 0:
            out.append((f"rollout.vllm.kv_cache_gib={smaller}",
                        [f"rollout.vllm.kv_cache_gib={smaller}"], world))
    return out


def _smallest_fitting(tries: list[tuple[str, list[str], int]], cfg: Config, base: Plan,
                      memory: int, shape: ModelShape) -> Knob | None:
    """The first of `tries` (ordered from the mildest change) whose plan fits, else the last
    that lowered the peak; None when none did."""
    best = None
    for setting, overrides, world in tries:
        try:
            p = replanned(cfg, overrides, world, base.device, memory, shape, base.bf16)
        except ConfigError:
            continue
        if p.peak_bytes < (best.peak if best else base.peak_bytes):
            best = Knob(setting, tuple(overrides), world, p.peak_bytes)
            if p.fits(memory):
                return best
    return best


def knobs(cfg: Config, base: Plan, memory: int, shape: ModelShape) -> list[Knob]:
    """The changes that lower the peak of `base`, each alone, lowest peak first: the switches of
    _candidates; the largest token budget (and, where sampling peaks, the longest prompt) that
    fits, halving them; the fewest FSDP ranks that fit, doubling them (rollout.prompts_per_step
    must stay divisible)."""
    world, found = base.world_size, []
    for setting, overrides, w in _candidates(cfg, world, base.peak_bytes - memory):
        try:
            p = replanned(cfg, overrides, w, base.device, memory, shape, base.bf16)
        except ConfigError:
            continue
        if p.peak_bytes < base.peak_bytes:
            found.append(Knob(setting, tuple(overrides), w, p.peak_bytes))
    halving = [("train.max_tokens_per_micro_batch", "")]
    if base.peak_phase == "sampling":  # the KV cache of prompts as long as the data allows
        halving.append(("data.max_prompt_length", " (where the data's prompts fit)"))
    for key, note in halving:
        value = getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1])
        halved = [value >> k for k in range(1, 12) if value >> k >= 16]
        found.append(_smallest_fitting([(f"{key}={v}{note}", [f"{key}={v}"], world)
                                        for v in halved], cfg, base, memory, shape))
    ranks = [world * 2**k for k in range(1, 11)
             if cfg.rollout.prompts_per_step % (world * 2**k) == 0]
    fsdp = "" if cfg.train.parallel == "fsdp" else "train.parallel=fsdp "
    found.append(_smallest_fitting(
        [(f"{fsdp}--world-size {k}", ["train.parallel=fsdp"], k) for k in ranks],
        cfg, base, memory, shape))
    return sorted((k for k in found if k is not None), key=lambda k: k.peak)


def together(cfg: Config, base: Plan, memory: int, shape: ModelShape,
             found: list[Knob]) -> int | None:
    """The peak with every knob of `found` applied at once, or without the extra FSDP ranks where
    they do not combine (LoRA); None when neither plans."""
    for kept in (found, [k for k in found if k.world_size == base.world_size]):
        overrides = [o for k in kept for o in k.overrides]
        world = max([base.world_size] + [k.world_size for k in kept])
        try:
            return replanned(cfg, overrides, world, base.device, memory, shape,
                             base.bf16).peak_bytes
        except ConfigError:  # LoRA and FSDP do not combine: without the extra ranks
            continue
    return None


def report(cfg: Config, world: int = 1, device: str | None = None,
           device_memory: str | int | None = None) -> tuple[str, bool]:
    """`grpokit plan`'s output for a config, and whether the run fits. `device_memory`: bytes per
    rank, or a size such as "80GB"; None: detected (detect_memory)."""
    memory, where = None, "--device-memory"
    if device_memory is not None:
        memory = parse_memory(device_memory) if isinstance(device_memory, str) else device_memory
    device = device or default_device()
    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    check_world(cfg, world)
    if memory is None:
        memory, where = detect_memory(device, world)
    shape = model_shape(cfg.model.path)
    base = plan(cfg, world, device, memory, shape)
    lines = [base.table(), "", f"memory: {human(memory)} per rank ({where})"]
    if base.fits(memory):
        lines.append(f"fits: peak {human(base.peak_bytes)} of {human(memory)} per rank, "
                     f"{human(memory - base.peak_bytes)} to spare")
        return "\n".join(lines), True
    found = knobs(cfg, base, memory, shape)
    lines.append(f"does not fit: peak {human(base.peak_bytes)} > {human(memory)} per rank"
                 + ("; each of these lowers the peak (alone):" if found else
                    "; no knob grpokit knows of lowers it"))
    rows = [(k.setting, k.peak) for k in found]
    if len(found) > 1:
        peak = together(cfg, base, memory, shape, found)
        rows += [("all of these together", peak)] if peak is not None else []
    width = max((len(name) for name, _ in rows), default=0) + 2
    lines += [f"  {name:<{width}}{human(peak):>11}  {'fits' if peak <= memory else 'does not fit'}"
              for name, peak in rows]
    return "\n".join(lines), False
