"""`grpokit plan`: the peak memory per rank of a run's phases, predicted from the config and the
model's shapes before any weight is loaded (docs/plan.md).

Exact (tests/unit/test_plan.py compares them with real tensors to the byte): the trainer's
weights, LoRA adapters, gradients and AdamW state, the reference's weights, the generation copy
and the engines' weights, the sharding of FSDP2. Estimated: activations (a count of what autograd
keeps per token, checked against measured micro-batches), the KV cache of the sampling batch at
its longest, the log-prob chunks and the working sets of backward and of the prefill.
The model's shapes come from plan_shape.py, the components from plan_parts.py (weights, engine,
sampling) and plan_training.py (the training pass); this module puts them into phases.
"""

from __future__ import annotations

from dataclasses import dataclass

from grpokit.config import Config, ConfigError
from grpokit.runtime import plan_parts as parts
from grpokit.runtime import plan_training as training_side
from grpokit.runtime.plan_shape import DTYPE_BYTES, ModelShape, model_shape

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Row:
    """One component of a phase: its name, its bytes per rank and how they were counted."""

    name: str
    bytes: int
    how: str


@dataclass(frozen=True)
class Phase:
    name: str
    rows: tuple[Row, ...]

    @property
    def total(self) -> int:
        return sum(r.bytes for r in self.rows)


@dataclass(frozen=True)
class Plan:
    """The predicted memory of a run per rank: one Phase each for sampling, the training pass and
    the optimizer step, and the lines that describe the run planned."""

    phases: tuple[Phase, ...]
    notes: tuple[str, ...]
    world_size: int
    device: str
    bf16: bool
    """The run's bf16 autocast decision, as planned."""

    @property
    def peak_bytes(self) -> int:
        return max(p.total for p in self.phases)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda p: p.total).name

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    def row(self, phase: str, name: str) -> int:
        """The bytes of component `name` in `phase` (0 when the phase has no such row)."""
        return sum(r.bytes for r in self.phase(phase).rows if r.name == name)

    def fits(self, memory: int) -> bool:
        """Whether the peak fits `memory` bytes per rank."""
        return self.peak_bytes <= memory

    def table(self) -> str:
        """The plan as text: the run's description, a table per phase, the peak."""
        lines = list(self.notes)
        for phase in self.phases:
            lines += ["", f"{phase.name:<34}{'per rank':>11}  how"]
            lines += [f"  {r.name:<32}{human(r.bytes):>11}  {r.how}" for r in phase.rows
                      if r.bytes]  # (a working set that fits in memory freed before it: 0)
            lines.append(f"  {'total':<32}{human(phase.total):>11}")
        lines += ["", f"peak: {human(self.peak_bytes)} per rank, in the {self.peak_phase} phase"]
        return "\n".join(lines)


def human(n: float) -> str:
    """Bytes in binary units: 512 B, 3.0 KiB, 1.25 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def bf16_on(cfg: Config, device: str) -> tuple[bool, str]:
    """Whether the run would use bf16 autocast on `device` (precision.bf16_decision: `auto` means
    a GPU's bf16 support, or the measured bf16 matmul speed-up of this CPU)."""
    mode = cfg.model.autocast
    if mode != "auto":
        return mode == "bf16", f"model.autocast={mode}"
    if device == "cuda":
        import torch

        on = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True
        return on, "model.autocast=auto on a GPU"
    from grpokit.runtime.precision import bf16_decision

    return bf16_decision("auto", "cpu")[0], "model.autocast=auto: this CPU's matmul probe"


def setup_of(cfg: Config, shape: ModelShape, world: int, device: str, bf16: bool) -> parts.Setup:
    """The layout and precisions the run would choose (training/session.py, parallel.py)."""
    w = DTYPE_BYTES[cfg.model.dtype]
    sharded = cfg.train.parallel == "fsdp" and world > 1
    lora = cfg.model.lora
    c = 2 if bf16 or w == 2 else 4
    return parts.Setup(
        world=world, device=device, sharded=sharded,
        ddp=cfg.train.parallel == "ddp" and world > 1, bf16=bf16, w=w,
        r=2 if w == 2 or (sharded and bf16) else 4,  # FSDP's bf16 params make a bf16 stream
        c=c, a=4 if device == "cpu" and bf16 else c,  # precision.use_fp32_attention
        cast=bf16 and w == 4 and not sharded, lora=lora.enabled,
        # lean.py leaves an MLP whose down projection carries an adapter as it is
        lean=cfg.model.lean_mlp and shape.lean_mlp and not (
            lora.enabled and parts.targets("mlp.down_proj", lora.target_modules)),
        ckpt=cfg.model.gradient_checkpointing,
        shared=cfg.train.shared_prefix and shape.shared_prefix,
        reference=cfg.algo.beta > 0 and not lora.enabled)


def check_world(cfg: Config, world: int) -> None:
    """The checks a run of `world` ranks makes at start: a ConfigError naming the setting."""
    if world < 1:
        raise ConfigError(f"--world-size must be at least 1, got {world}")
    if cfg.rollout.prompts_per_step % world:
        raise ConfigError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be "
                          f"divisible by the world size ({world})")
    if cfg.train.parallel == "fsdp" and world > 1 and cfg.model.lora.enabled:
        raise ConfigError("train.parallel: 'fsdp' does not take LoRA here; use 'ddp' with "
                          "model.lora.enabled")


def plan(cfg: Config, world_size: int = 1, device: str = "cpu", memory: int | None = None,
         shape: ModelShape | None = None, bf16: bool | None = None) -> Plan:
    """The Plan of `cfg` on `world_size` ranks of `device` ("cpu" or "cuda"). `memory` (bytes per
    rank) sizes vLLM's KV cache when rollout.vllm.kv_cache_gib is null; `shape` and `bf16` spare
    reading the model's config and deciding bf16 again (the knob search re-plans many times)."""
    if device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    check_world(cfg, world_size)
    shape = shape if shape is not None else model_shape(cfg.model.path)
    why = ""
    if bf16 is None:
        bf16, why = bf16_on(cfg, device)
    s = setup_of(cfg, shape, world_size, device, bf16)
    if s.lora and not parts.adapters(shape, cfg):
        raise ConfigError(f"model.lora.target_modules: none of {cfg.model.lora.target_modules} "
                          f"names a Linear layer of {shape.path}")
    mb = parts.micro_batch(cfg, s)
    resident = parts.resident_rows(shape, cfg, s, memory)
    sampling = parts.sampling_rows(shape, cfg, s)
    training = training_side.training_rows(shape, cfg, s, mb)
    step = training_side.optimizer_rows(shape, cfg, s)
    phases = (Phase("sampling", tuple(Row(*r) for r in resident + sampling)),
              Phase("training pass", tuple(Row(*r) for r in resident + training)),
              Phase("optimizer step", tuple(Row(*r) for r in resident + step)))
    return Plan(phases, _notes(shape, cfg, s, mb, why), world_size, device, bf16)


def _notes(shape: ModelShape, cfg: Config, s: parts.Setup, mb: parts.MicroBatch,
           why: str) -> tuple[str, ...]:
    """The lines above the tables: the model, the layout, the precision, the micro-batch."""
    layout = f"{s.world} rank{'s' if s.world > 1 else ''} ({s.device})"
    if s.world > 1:
        layout += f", train.parallel={cfg.train.parallel}"
    tuning = f"LoRA rank {cfg.model.lora.rank}" if s.lora else "full fine-tuning"
    precision = f"bf16 autocast ({why})" if s.bf16 and why else \
        ("bf16 autocast" if s.bf16 else "no autocast")
    extras = [k for k, on in (("gradient checkpointing", s.ckpt), ("lean MLP", s.lean),
                              ("shared prefix", s.shared)) if on]
    return (
        f"model: {shape.path} ({shape.model_type}, {shape.numel / 1e6:.1f}M parameters, "
        f"{shape.layers} layers, H={shape.hidden}, V={shape.vocab}), weights {cfg.model.dtype}",
        f"run: {layout}, {precision}, {tuning}, engine {cfg.rollout.engine}, reference "
        + ("loaded" if s.reference else "none") + (f"; {', '.join(extras)}" if extras else ""),
        f"micro-batch: {mb.describe()} (train.max_tokens_per_micro_batch="
        f"{cfg.train.max_tokens_per_micro_batch}, micro_batch_size={cfg.train.micro_batch_size})",
    )


def replanned(cfg: Config, overrides: list[str], world_size: int, device: str,
              memory: int | None, shape: ModelShape, bf16: bool) -> Plan:
    """The plan of `cfg` with dotted overrides applied; the model's shape is read again only when
    an override changes model.path (its bytes follow model.dtype)."""
    from grpokit.config import with_overrides

    new = with_overrides(cfg, overrides)
    if new.model.path != cfg.model.path:
        shape = model_shape(new.model.path)
    if new.model.autocast != cfg.model.autocast:
        bf16 = bf16_on(new, device)[0]
    return plan(new, world_size, device, memory, shape, bf16)
