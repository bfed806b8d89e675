"""A tiny random Llama and a character-level ChatML tokenizer, built without any download: the
model of the unit tests, the benchmarks' smoke runs and users' own tests."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY_SPECIALS = ("<pad>", "<|im_start|>", "<|im_end|>", "<unk>")
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer(extra_tokens: int = 0) -> Any:
    """A character-level ChatML tokenizer over printable ASCII, built without any download."""
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


def checkpoint_state(folder: str | Path, scratch: str | Path) -> dict:
    """A checkpoint's trainer.pt with its sharded folder's "model" and "optimizer" (and
    "reference") merged in, read back whole (the DCP folder is converted to `scratch`)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    folder, scratch = Path(folder), Path(scratch)
    dcp_to_torch_save(folder / "sharded", scratch)
    state = torch.load(folder / "trainer.pt", weights_only=False)
    return {**state, **torch.load(scratch, weights_only=False)}


def uneven_batch(tokenizer: Any, prompts: list[str], owners: list[int], lengths: list[int],
                 pad_extra: int = 0, seed: int = 3) -> tuple[torch.Tensor, ...]:
    """A training-pass batch (prompt ids, prompt mask, completion ids, completion mask): row i
    has prompt `owners[i]` left-padded and `lengths[i]` random completion tokens right-padded,
    with `pad_extra` more padding columns on each side."""
    encoded = [tokenizer(t)["input_ids"] for t in prompts]
    gen = torch.Generator().manual_seed(seed)
    p_len, t_len = max(map(len, encoded)) + pad_extra, max(lengths) + pad_extra
    pid = torch.zeros(len(owners), p_len, dtype=torch.long)
    pmask = torch.zeros(len(owners), p_len, dtype=torch.bool)
    cid = torch.zeros(len(owners), t_len, dtype=torch.long)
    cmask = torch.zeros(len(owners), t_len, dtype=torch.bool)
    for i, (o, n) in enumerate(zip(owners, lengths)):
        p = encoded[o]
        pid[i, p_len - len(p):], pmask[i, p_len - len(p):] = torch.tensor(p), True
        cid[i, :n] = torch.randint(4, len(tokenizer), (n,), generator=gen)
        cmask[i, :n] = True
    return pid, pmask, cid, cmask
