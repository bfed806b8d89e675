"""The shapes `grpokit plan` needs, read from a model's config alone: no weight is loaded.

The model is built on PyTorch's `meta` device from its config.json (or the embedded default
model's GGUF header): every parameter gets its shape and no storage, so the counts below
are those of the real model for any architecture transformers knows (tied embeddings counted
once), and a 32B config is read in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grpokit.errors import ConfigError
from grpokit.runtime import models
from grpokit.runtime.lean import LEAN_MLP_CLASSES

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Param:
    """One parameter of the model: its name, shape, and what holds it."""

    name: str
    shape: tuple[int, ...]
    layer: int | None
    """The decoder layer it belongs to (FSDP shards each layer as one unit), None: the root."""
    linear: tuple[int, int] | None
    """(in_features, out_features) when it is the weight of an nn.Linear of the decoder (not the
    output projection), else None."""

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def shard_numel(self, world: int) -> int:
        """Elements on the rank with the largest share when FSDP2 splits dim 0 over `world`
        ranks: ceil(dim0 / world) rows (FSDP2 pads the shards to this size)."""
        if world == 1 or not self.shape:
            return self.numel
        return -(-self.shape[0] // world) * (self.numel // self.shape[0])


@dataclass(frozen=True)
class ModelShape:
    """What the memory plan reads from a model's config."""

    path: str
    model_type: str
    params: tuple[Param, ...]
    """Every parameter once (a tied output matrix is the input embedding's)."""
    hidden: int
    """H: the width of the residual stream."""
    intermediate: int
    """I: the MLP's inner width."""
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    """The output projection is the input embedding matrix."""
    output: str
    """The name of the output projection's weight (the embedding's, when tied)."""
    lean_mlp: bool
    """The MLP class takes the lean training forward (runtime/lean.py) when model.lean_mlp is on."""
    shared_prefix: bool
    """Every layer keeps a plain full-attention KV cache, so train.shared_prefix can apply."""

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.params)

    def linears(self) -> list[Param]:
        return [p for p in self.params if p.linear is not None]


def read_config(path: str) -> tuple[Any, str]:
    """The transformers config of `model.path` (a folder with config.json, a name in the local
    Hugging Face cache, or the embedded default model) and where it came from. Nothing is
    downloaded and no weight is read."""
    from transformers import AutoConfig

    if str(path).lower() == models.DEFAULT_MODEL:
        folder = models.cache_root() / "models" / models.DEFAULT_MODEL
        if not (folder / "config.json").is_file():  # not converted yet: the GGUF file's header
            try:
                gguf = models.default_gguf_file()
            except FileNotFoundError as exc:
                raise ConfigError(f"model.path: {exc}") from exc
            return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name), str(gguf)
        return AutoConfig.from_pretrained(str(folder)), str(folder)
    folder = models.resolve_model_path(path)
    if not (Path(folder) / "config.json").is_file():
        raise ConfigError(f"model.path: {folder} has no config.json (a LoRA adapter folder? "
                          f"plan its base model)")
    try:
        return AutoConfig.from_pretrained(str(folder)), str(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"model.path: the config.json in {folder} cannot be read: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                          ) from exc


def meta_model(config: Any) -> torch.nn.Module:
    """The causal LM of `config` on the meta device: shapes, no storage."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"model.path: {type(config).__name__} is not a causal LM transformers "
                          f"can build: {exc}") from exc


def _params(model: torch.nn.Module) -> tuple[Param, ...]:
    """Every parameter once, with its decoder layer and, for a Linear weight of the decoder, its
    features."""
    head = model.get_output_embeddings()
    linear = {id(m.weight): (m.in_features, m.out_features) for m in model.modules()
              if isinstance(m, torch.nn.Linear) and m is not head}
    layer_of = {id(p): i for i, layer in enumerate(model.get_decoder().layers)
                for p in layer.parameters()}
    return tuple(Param(name, tuple(p.shape), layer_of.get(id(p)), linear.get(id(p)))
                 for name, p in model.named_parameters())  # named_parameters: tied ones once


def _shares_prefix(text: Any) -> bool:
    """logprobs.prefix_sharing_problem's cache test, on the config: every layer's cache is a
    plain DynamicLayer (no sliding window, no linear attention)."""
    from transformers.cache_utils import DynamicCache, DynamicLayer

    try:
        return all(type(layer) is DynamicLayer for layer in DynamicCache(config=text).layers)
    except Exception:  # a config the cache cannot read: the joint pass, as the run would fall back
        return False


def model_shape(path: str) -> ModelShape:
    """The ModelShape of `model.path` (the plan gives its weights the bytes of model.dtype)."""
    config, where = read_config(path)
    model = meta_model(config)
    text = config.get_text_config()
    head = model.get_output_embeddings().weight
    heads = text.num_attention_heads
    hidden = text.hidden_size
    mlp = type(model.get_decoder().layers[0].mlp).__name__ \
        if hasattr(model.get_decoder().layers[0], "mlp") else ""
    return ModelShape(
        path=where, model_type=getattr(text, "model_type", "?"), params=_params(model),
        hidden=hidden, intermediate=getattr(text, "intermediate_size", 4 * hidden),
        layers=text.num_hidden_layers, heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or hidden // heads, vocab=text.vocab_size,
        tied=head is model.get_input_embeddings().weight,
        output=next(n for n, p in model.named_parameters() if p is head),
        lean_mlp=mlp in LEAN_MLP_CLASSES and getattr(text, "hidden_act", "") in ("silu", "swish"),
        shared_prefix=_shares_prefix(text))
