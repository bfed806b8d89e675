"""The components `grpokit plan` counts (runtime/plan.py puts them into phases). Each function
returns rows: (name, bytes per rank, how they were counted). Shapes in the comments use H hidden,
I intermediate, V vocabulary, nq = heads × head_dim, nk = kv_heads × head_dim, S tokens a
micro-batch runs, M completion positions, L layers; docs/plan.md writes the formulas out."""

from __future__ import annotations

from dataclasses import dataclass

from grpokit.config import Config, ConfigError
from grpokit.runtime.plan_shape import ModelShape, Param

GIB = 2**30
Rows = list[tuple[str, int, str]]


@dataclass(frozen=True)
class Setup:
    """The layout and precision a run would choose (training/session.py, training/parallel.py)."""

    world: int
    device: str
    sharded: bool
    """FSDP2 over more than one rank."""
    ddp: bool
    """DDP over more than one rank."""
    bf16: bool
    """bf16 autocast."""
    w: int
    """Bytes of a weight (model.dtype)."""
    r: int
    """Bytes of the residual stream: the weights' (FSDP's bf16 params make it bf16)."""
    c: int
    """Bytes of a matmul's output: 2 under bf16 autocast or bf16 weights, else 4."""
    a: int
    """Bytes of attention's q, k, v and output: fp32 on the CPU under bf16 (use_fp32_attention)."""
    cast: bool
    """Autocast keeps bf16 copies of fp32 Linear weights (not under FSDP: its params are bf16)."""
    lora: bool
    lean: bool
    ckpt: bool
    shared: bool
    reference: bool

    @property
    def shards(self) -> int:
        return self.world if self.sharded else 1

    @property
    def pd(self) -> int:
        """Bytes of a weight as the training pass sees it: FSDP all-gathers bf16 under bf16."""
        return 2 if self.sharded and self.bf16 else self.w


@dataclass(frozen=True)
class MicroBatch:
    """The largest micro-batch the token budget lets the planner (logprobs.plan_micro_batches)
    make: `rows` sequences of `prompts` distinct prompts, each prompt P and completion T tokens
    long at most."""

    rows: int
    prompts: int
    prompt_len: int
    completion_len: int
    shared: bool

    @property
    def tokens(self) -> int:
        """S: the tokens the decoder runs: U·P + n·T with a shared prefix, else n·(P + T)."""
        n, u, p, t = self.rows, self.prompts, self.prompt_len, self.completion_len
        return u * p + n * t if self.shared else n * (p + t)

    @property
    def keys(self) -> int:
        """The key positions attention keeps: with a shared prefix the prompt pass's U·P plus
        every completion's prompt and its own tokens, n·(P + T)."""
        n, u, p, t = self.rows, self.prompts, self.prompt_len, self.completion_len
        return u * p + n * (p + t) if self.shared else n * (p + t)

    @property
    def positions(self) -> int:
        """M: the positions that go through the vocabulary projection, n·T."""
        return self.rows * self.completion_len

    @property
    def mask_bytes(self) -> int:
        """The boolean attention masks: (U, P, P) and (n, T, P + T), or (n, P + T, P + T)."""
        n, u, p, t = self.rows, self.prompts, self.prompt_len, self.completion_len
        return u * p * p + n * t * (p + t) if self.shared else n * (p + t) ** 2

    def describe(self) -> str:
        rows = f"{self.rows} sequence{'s' if self.rows > 1 else ''}"
        prompts = f"{self.prompts} prompt{'s' if self.prompts > 1 else ''}"
        return (f"{rows} ({prompts}) of up to {self.prompt_len} prompt + {self.completion_len} "
                f"completion tokens: {self.tokens} tokens run"
                + (" (shared prefix)" if self.shared else ""))


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def targets(module: str, target_modules: list[str]) -> bool:
    """peft's match of a module name against a list of target names: the name or its last parts."""
    return any(module == t or module.endswith("." + t) for t in target_modules)


def adapters(shape: ModelShape, cfg: Config) -> list[tuple[Param, int, int]]:
    """(Linear weight, lora_A elements r·in, lora_B elements out·r) of every adapted Linear."""
    lora = cfg.model.lora
    if not lora.enabled:
        return []
    return [(p, lora.rank * p.linear[0], p.linear[1] * lora.rank) for p in shape.linears()
            if targets(p.name.removesuffix(".weight"), lora.target_modules)]


def trainable(shape: ModelShape, cfg: Config, s: Setup,
              layer: int | None | str = "all") -> list[tuple[int, int]]:
    """(elements on this rank, bytes each) of every trainable tensor (of decoder layer `layer`
    only, when given): LoRA's A and B in fp32 (peft keeps adapters in fp32), else every weight,
    sharded under FSDP."""
    if s.lora:
        return [(n, 4) for p, a, b in adapters(shape, cfg) if layer == "all" or p.layer == layer
                for n in (a, b)]
    return [(p.shard_numel(s.shards), s.w) for p in shape.params
            if layer == "all" or p.layer == layer]


def shard_note(s: Setup) -> str:
    return f", the largest 1/{s.world} dim-0 shard (FSDP2)" if s.sharded else ""


def resident_rows(shape: ModelShape, cfg: Config, s: Setup, memory: int | None) -> Rows:
    """What every phase holds: weights, adapters, AdamW state (from the first step on), the
    reference, DDP's buckets, the engine's weights and KV cache."""
    rows: Rows = [("trainer weights", sum(p.shard_numel(s.shards) for p in shape.params) * s.w,
                   f"{shape.numel:,} parameters × {s.w} B{shard_note(s)}")]
    if s.lora:
        found = adapters(shape, cfg)
        rows.append(("LoRA adapters", sum(a + b for _, a, b in found) * 4,
                     f"rank {cfg.model.lora.rank} × (in + out) of {len(found)} Linear weights "
                     f"× 4 B"))
    tensors = trainable(shape, cfg, s)
    grads = sum(n * b for n, b in tensors)
    rows.append(("AdamW moments", 2 * grads + 4 * len(tensors),
                 f"exp_avg + exp_avg_sq of the trainable weights, + a 4 B step per tensor "
                 f"({len(tensors)}){shard_note(s)}"))
    if s.reference:
        rows.append(reference_row(shape, s))
    if s.ddp:
        rows.append(("DDP gradient buckets", grads, "a gradient-sized bucket copy, kept by DDP"))
    return rows + engine_rows(shape, cfg, s, memory)


def reference_row(shape: ModelShape, s: Setup) -> tuple[str, int, str]:
    """The frozen reference: sharded under FSDP; else under bf16 autocast an fp32 model keeps its
    Linear weights (not the output projection) in bf16 (session._bf16_training_side)."""
    if s.sharded:
        return ("reference weights", sum(p.shard_numel(s.shards) for p in shape.params) * s.w,
                f"{shape.numel:,} × {s.w} B{shard_note(s)}")
    if s.bf16 and s.w == 4:
        linear = sum(p.numel for p in shape.linears())
        return ("reference weights", linear * 2 + (shape.numel - linear) * 4,
                f"{linear:,} Linear weights × 2 B (bf16) + {shape.numel - linear:,} others × 4 B")
    return ("reference weights", shape.numel * s.w, f"{shape.numel:,} × {s.w} B")


def engine_rows(shape: ModelShape, cfg: Config, s: Setup, memory: int | None) -> Rows:
    """The sampler's own memory that stays through every phase: the whole generation copy of a
    sharded policy (training/parallel.py GenerationCopy) and vLLM's weights and KV cache (vLLM's
    sleep mode is not used: both stay resident)."""
    rows: Rows = []
    if s.sharded:
        rows.append(("generation copy", shape.numel * s.w,
                     f"the whole policy per rank for the engine, {shape.numel:,} × {s.w} B"))
    if cfg.rollout.engine != "vllm":
        return rows
    v = cfg.rollout.vllm
    eb = 2 if s.bf16 else s.w
    weights = shape.numel * eb
    rows.append(("vLLM weights", weights, f"{shape.numel:,} × {eb} B"))
    if v.kv_cache_gib is not None:
        rows.append(("vLLM KV cache", int(v.kv_cache_gib * GIB),
                     f"rollout.vllm.kv_cache_gib={v.kv_cache_gib}"))
    elif memory is None:
        raise ConfigError("rollout.vllm.kv_cache_gib is null, so vLLM's KV cache is a share of "
                          "the device memory: give --device-memory")
    else:
        rows.append(("vLLM KV cache", max(0, int(v.gpu_memory_utilization * memory) - weights),
                     f"rollout.vllm.gpu_memory_utilization={v.gpu_memory_utilization} × memory "
                     f"− vLLM weights"))
    if s.device == "cpu":
        rows.append(("vLLM weight file", weights, "the pushed weights in /dev/shm (RAM)"))
    return rows


def sampling_rows(shape: ModelShape, cfg: Config, s: Setup) -> Rows:
    """An in-process engine's sampling batch (hf, generate): this rank's B/W prompts × G rows,
    each up to P + T tokens, in a KV cache that grows by torch.cat one layer at a time."""
    if cfg.rollout.engine == "vllm":
        return []
    r = cfg.rollout
    prompts = ceil_div(r.prompts_per_step, s.world)
    rows, length = prompts * r.group_size, cfg.data.max_prompt_length + r.max_new_tokens
    # Keys leave RoPE in the dtype of its cos/sin tables, the weights' (w); values come out of
    # v_proj in the matmul dtype (c): fp32 keys and bf16 values under autocast on fp32 weights.
    kv_bytes = s.w + s.c
    layer = rows * length * shape.kv_heads * shape.head_dim * kv_bytes  # K and V of a layer
    return [
        ("KV cache", layer * (shape.layers + 1),
         f"{rows} rows × {length} tokens × ({shape.layers} layers + 1 growing) × "
         f"{shape.kv_heads} kv heads × {shape.head_dim} × ({s.w} + {s.c}) B"),
        ("sampling logits", 2 * rows * shape.vocab * 4, f"2 × {rows} rows × V × 4 B"),
        ("prefill working set", prompts * cfg.data.max_prompt_length *
         (3 * shape.intermediate * s.c + 8 * shape.hidden),
         f"{prompts} prompts × P × (3·I·{s.c} B + 8·H B), one layer at a time"),
    ]


def micro_batch(cfg: Config, s: Setup) -> MicroBatch:
    """The largest micro-batch of this rank's share of a minibatch: n ≤ micro_batch_size rows
    whose cost (MicroBatch.tokens) fits max_tokens_per_micro_batch; at least one row."""
    r, t = cfg.rollout, cfg.train
    p, length, g = cfg.data.max_prompt_length, r.max_new_tokens, r.group_size
    share = ceil_div(ceil_div(r.prompts_per_step, s.world) * g, t.minibatches)
    fitting = [n for n in range(1, min(t.micro_batch_size, share) + 1)
               if MicroBatch(n, ceil_div(n, g), p, length, s.shared).tokens
               <= t.max_tokens_per_micro_batch]
    n = max(fitting, default=1)
    return MicroBatch(n, ceil_div(n, g), p, length, s.shared)
