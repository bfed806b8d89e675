"""The training side of `grpokit plan`: what a micro-batch's forward keeps for backward, the
working sets of the log-prob chunks and of backward, and the optimizer step. The activation
count follows a Llama-family decoder layer (Llama, Mistral, Qwen2/3, SmolLM: q, k, v, o, gate,
up, down) as autograd keeps it; tests/unit/test_plan.py measures real micro-batches against it
and docs/plan.md gives the measured error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from grpokit.config import Config
from grpokit.runtime.plan_parts import (
    MicroBatch,
    Rows,
    Setup,
    adapters,
    shard_note,
    trainable,
)
from grpokit.runtime.plan_shape import ModelShape


def _keeps_input(shape: ModelShape, cfg: Config, s: Setup) -> Callable[[str], bool]:
    """Whether the Linear named (q_proj, ..., down_proj) keeps its input for its weight's
    gradient: every one in full fine-tuning, only the adapted ones under LoRA (a frozen weight's
    gradient is not computed, and its input is not kept for it)."""
    adapted = {p.name.removesuffix(".weight").rsplit(".", 1)[-1]
               for p, _, _ in adapters(shape, cfg) if p.layer == 0}
    return lambda name: not s.lora or name in adapted


def per_token_layer(shape: ModelShape, cfg: Config, s: Setup) -> tuple[int, int]:
    """Bytes one decoder layer keeps for backward per query token, and per key position.

    per token:
      2 RMSNorms       2 × (4·H + 4) fp32 input and 1/rms, + r·H the normalized input where
                       the norm's weight trains (not under LoRA)
      Linear inputs    under autocast each Linear whose weight trains saves its own bf16 cast of
                       the fp32 normed input (q, k, v, gate, up: 2·H each); without, the two
                       norms' outputs (r·H each) where a Linear reading them trains
      attention        2·a·nq + 4·heads      q and output, logsumexp (+ c·nq: o_proj's bf16
                       input where attention ran in fp32 and o_proj trains)
      MLP              lean: gate(x), up(x) = 2·c·I; plain: + silu(gate) = 3·c·I, + the
                       product (down's input) where down trains = 4·c·I
      LoRA             A's output, r·c per adapted Linear
    per key position:  2·a·nq                K and V, repeated to the query heads (a padded
                       micro-batch gives sdpa a mask, and transformers repeats them)
    """
    h, i, nq = shape.hidden, shape.intermediate, shape.heads * shape.head_dim
    keeps = _keeps_input(shape, cfg, s)
    norms = 2 * ((4 + (0 if s.lora else s.r)) * h + 4)
    readers = [[n for n in names if keeps(n)] for names in (("q_proj", "k_proj", "v_proj"),
                                                            ("gate_proj", "up_proj"))]
    inputs = sum(2 * h * len(r) if s.cast else s.r * h * bool(r) for r in readers)
    attention = 2 * s.a * nq + 4 * shape.heads + \
        (s.c * nq if s.a != s.c and keeps("o_proj") else 0)
    mlp = (2 if s.lean else 3 + keeps("down_proj")) * s.c * i
    lora = cfg.model.lora.rank * s.c * sum(1 for p, _, _ in adapters(shape, cfg) if p.layer == 0)
    return norms + inputs + attention + mlp + lora, 2 * s.a * nq


@dataclass(frozen=True)
class Activations:
    kept: int
    """What a micro-batch's forward keeps until backward."""
    layer: int
    """One layer's activations in its largest pass (with a shared prefix, the completions')."""
    tokens: int
    """The query tokens of that pass: n·T with a shared prefix, else S."""


def activations(shape: ModelShape, cfg: Config, s: Setup, mb: MicroBatch) -> Activations:
    """What a micro-batch's forward keeps for backward.

    outside the layers: S × (2·head_dim·r [cos, sin] + 16 [ids, positions] + the final norm
    as a layer's) + M × (r·H + 12) [hidden states and labels of the log-prob pass] + the
    attention masks (bool).
    layers: L × (S × per token + keys × per key); with gradient checkpointing only each layer's
    input, L × S × r·H, plus with a shared prefix the prompts' K and V each layer keeps in its
    cache for the replay, L × (U·P + n·P) × (r + c)·nk (keys in the stream's dtype, as RoPE's
    tables, values in the matmul's).
    """
    token, key = per_token_layer(shape, cfg, s)
    norm = (4 + (0 if s.lora else s.r)) * shape.hidden + 4
    outside = (mb.tokens * (2 * shape.head_dim * s.r + 16 + norm)
               + mb.positions * (s.r * shape.hidden + 12) + mb.mask_bytes)
    n, p, t = mb.rows, mb.prompt_len, mb.completion_len
    tokens = n * t if mb.shared else mb.tokens  # the completions' pass on the prompts' keys
    largest = tokens * token + n * (p + t) * key
    if not s.ckpt:
        return Activations(shape.layers * (mb.tokens * token + mb.keys * key) + outside,
                           largest, tokens)
    kept = mb.tokens * s.r * shape.hidden
    if mb.shared:
        kept += (mb.prompts + n) * p * (s.r + s.c) * shape.kv_heads * shape.head_dim
    return Activations(shape.layers * kept + outside, largest, tokens)


def pending_row(shape: ModelShape, cfg: Config, s: Setup, mb: MicroBatch, act: Activations,
                work: int, before: int) -> tuple[str, int, str]:
    """A shared prefix's backward: each layer's weights and the prompts' K and V get gradients from
    the completions' pass first, which autograd holds until the prompts' pass adds its own. When
    the completions' backward reaches the first layer, L − 1 layers' pending gradients are alive
    (their completion activations freed): a second peak, counted beyond the first (`before`)."""
    layer_grads = sum(n * b for n, b in trainable(shape, cfg, s, layer=0))
    keys = mb.rows * mb.prompt_len * (s.r + s.c) * shape.kv_heads * shape.head_dim
    pending = (shape.layers - 1) * (layer_grads + keys)
    freed = 0 if s.ckpt else (shape.layers - 1) * act.layer
    later = act.kept - freed + pending + work
    return ("shared-prefix gradients", max(0, later - before),
            f"(L − 1) × (a layer's weight gradients + n·P·nk·({s.r} + {s.c}) B of prompt K/V "
            f"gradients), held until the prompts' backward; beyond the first peak")


def logprob_bytes(shape: ModelShape, cfg: Config, s: Setup, mb: MicroBatch) -> tuple[int, str]:
    """The chunked vocabulary projection (algo/selective.py) at its peak, forward or backward.

    forward: C·V·4 logits buffer + C·V·4 entropy temporary (+ C·V·2 bf16 product)
    backward: C·V·4 buffer (+ 2 × C·V·2 bf16 product and cast) + M·H·r gradient of the hidden
    states + V·H the output weight's gradient when it trains; an entropy bonus checkpoints
    each chunk instead (about 6 × C·V·4). Plus the output weight's bf16 copy (V·H·2) where
    autocast casts an fp32 weight.
    """
    c = min(cfg.train.logprob_chunk_size, mb.positions)
    cv, vh = c * shape.vocab, shape.vocab * shape.hidden
    low = s.bf16 or s.pd == 2
    forward = cv * 8 + (cv * 2 if low else 0)
    head_grad = 0 if s.lora else vh * s.pd
    backward = cv * 4 + (cv * 4 if low else 0) + mb.positions * shape.hidden * s.r + head_grad
    peak = cv * 24 if cfg.algo.entropy_coef else max(forward, backward)
    copy = vh * 2 if s.cast else 0
    how = f"C={c} positions × V={shape.vocab} × 4 B fp32 logits (+ temporaries)"
    if head_grad:
        how += f", output weight's gradient V×H×{s.pd} B"
    return peak + copy, how + (", its bf16 copy V×H×2 B" if copy else "")


def gradient_row(shape: ModelShape, cfg: Config, s: Setup) -> tuple[str, int, str]:
    """The trainable weights' gradients, in their dtype (sharded under FSDP)."""
    tensors = trainable(shape, cfg, s)
    return ("gradients", sum(n * b for n, b in tensors),
            f"{sum(n for n, _ in tensors):,} trainable elements × {tensors[0][1]} B"
            + shard_note(s))


def training_rows(shape: ModelShape, cfg: Config, s: Setup, mb: MicroBatch) -> Rows:
    """The training pass on top of the resident memory: the gradients (whole from the second
    micro-batch of an optimizer step on), a micro-batch's activations, autocast's bf16 weight
    copies, the log-prob chunks, backward's working set, FSDP's gathered units."""
    act = activations(shape, cfg, s, mb)
    rows: Rows = [
        gradient_row(shape, cfg, s),
        ("activations", act.kept, f"{mb.tokens} tokens × {shape.layers} layers"
         + (", checkpointed: each layer's input" if s.ckpt else "")
         + (", lean MLP" if s.lean else "")),
    ]
    if s.cast:
        linear = sum(p.numel for p in shape.linears())
        if s.lora and s.ckpt:  # frozen weights' casts are kept by each layer, replayed here
            linear //= shape.layers
        linear += sum(a + b for _, a, b in adapters(shape, cfg))
        rows.append(("bf16 weight copies", linear * 2,
                     f"{linear:,} Linear weights × 2 B, cast by autocast"))
    logprob, how = logprob_bytes(shape, cfg, s, mb)
    rows.append(("log-prob chunks", logprob, how))
    # The layers' backward starts once the log-prob pass's backward has freed its chunks: its
    # working set counts only beyond them. Lean: gate, up, silu, the product and their gradients
    # live at once (runtime/lean.py's backward); plain autograd frees them op by op.
    # A tied output weight's gradient from the log-prob pass waits for the embedding's.
    tied = shape.vocab * shape.hidden * s.pd if shape.tied and not s.lora else 0
    work = act.tokens * shape.intermediate * s.c * (9 if s.lean else 4) // 2 \
        + (act.layer if s.ckpt else 0) + tied
    rows.append(("backward working set", max(0, work - logprob),
                 f"a layer's backward, {act.tokens} tokens × {4.5 if s.lean else 2}·I·c"
                 + (" + the replayed layer's activations" if s.ckpt else "")
                 + (" + the tied output weight's gradient" if tied else "")
                 + ", beyond the log-prob chunks it reuses"))
    if mb.shared:
        rows.append(pending_row(shape, cfg, s, mb, act, work, act.kept + max(logprob, work)))
    if s.sharded:
        rows.append(fsdp_row(shape, s))
    return rows


def fsdp_row(shape: ModelShape, s: Setup) -> tuple[str, int, str]:
    """FSDP2's unsharded weights in the training pass: the root (embeddings, output projection,
    final norm) for the whole pass, two layers (this one and the prefetched next), and one
    layer's unsharded gradient with its fp32 reduce-scatter copy under bf16."""
    root = sum(p.numel for p in shape.params if p.layer is None)
    layer = max(sum(p.numel for p in shape.params if p.layer == k) for k in range(shape.layers))
    reduce = layer * (s.pd + (4 if s.pd == 2 else 0))
    return ("FSDP gathered weights", (root + 2 * layer) * s.pd + reduce,
            f"root {root:,} + 2 layers × {layer:,} × {s.pd} B, + a layer's reduce-scatter")


def optimizer_rows(shape: ModelShape, cfg: Config, s: Setup) -> Rows:
    """The optimizer step on top of the resident memory: the gradients, and under FSDP the
    multi-tensor AdamW's sqrt(exp_avg_sq) temporary (plain weights take the fused kernel, which
    holds none)."""
    rows: Rows = [gradient_row(shape, cfg, s)]
    if s.sharded:
        rows.append(("AdamW temporaries", rows[0][1], "sqrt(exp_avg_sq) of the multi-tensor step"))
    return rows
