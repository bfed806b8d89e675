"""From a row to the prompt text and token ids the policy sees.

A row with `messages` (a chat list of {role, content}) is used as is; a row with a plain `prompt`
becomes one user message. When both are present, `messages` wins. A system prompt, when given,
replaces the row's leading system message or is put in front of the messages.

The chat list goes through `tokenizer.apply_chat_template(..., add_generation_prompt=True)`. A
tokenizer without a chat template (a base model) gets the raw text instead: the message contents
(system prompt first) joined by blank lines, with the tokenizer's own special tokens (e.g. BOS)
added when encoding. Prompts are never truncated: one longer than max_prompt_length is an error,
naming the row by where it came from (a dataset's file and line, a task's row). A prompt whose
character count alone proves it too long is refused before it is tokenized (`min_tokens`).
"""

from __future__ import annotations

import json
import weakref
from typing import Any

from grpokit.errors import DataError

Messages = list[dict[str, str]]


def check_messages(messages: Any, where: str) -> Messages:
    """`messages` itself when it is a non-empty list of {role: str, content: str}, else an error."""
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{where}: messages must be a non-empty list of {{role, content}} dicts, "
            f"got {type(messages).__name__} {_short(messages)}"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise DataError(
                f"{where}: messages[{i}] must be a dict with a string 'role', got {_short(message)}"
            )
        if not isinstance(message.get("content"), str):
            raise DataError(
                f"{where}: messages[{i}]['content'] must be a string, "
                f"got {_short(message.get('content'))}"
            )
    return messages


def prompt_messages(
    row: dict[str, Any], system_prompt: str | None = None, where: str = "row"
) -> Messages:
    """The chat messages of a row, with `system_prompt` (if any) as the leading system message."""
    if not isinstance(row, dict):
        raise DataError(
            f"{where}: a row must be a dict with 'prompt' or 'messages', got {_short(row)}"
        )
    if row.get("messages") is not None:
        messages = [dict(m) for m in check_messages(row["messages"], where)]
    elif "prompt" in row:
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: 'prompt' must be a non-empty string, got {_short(prompt)}")
        messages = [{"role": "user", "content": prompt}]
    else:
        raise DataError(f"{where}: has neither 'prompt' nor 'messages' (keys: {sorted(row)})")
    if system_prompt is not None:
        if messages[0]["role"] == "system":
            messages = messages[1:]
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer formats chats itself (instruct models) or takes raw text (base)."""
    return bool(getattr(tokenizer, "chat_template", None))


def _render(row: dict[str, Any], tokenizer: Any, system_prompt: str | None, where: str) -> str:
    messages = prompt_messages(row, system_prompt, where)
    if not has_chat_template(tokenizer):
        return "\n\n".join(message["content"] for message in messages)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def render_prompt(row: dict[str, Any], tokenizer: Any, system_prompt: str | None = None) -> str:
    """The prompt text the model sees for a row (see the module docstring)."""
    return _render(row, tokenizer, system_prompt, "row")


def encode_prompts(
    rows: list[dict[str, Any]],
    tokenizer: Any,
    system_prompt: str | None = None,
    max_prompt_length: int | None = None,
) -> list[list[int]]:
    """Token ids of each row's rendered prompt; a row longer than max_prompt_length is an error
    naming the row: its `where` (a dataset's file and line, see datasets.Row), else its index."""
    return [encode_prompt(row, tokenizer, system_prompt, max_prompt_length,
                          getattr(row, "where", None) or f"row {i}")
            for i, row in enumerate(rows)]


def encode_prompt(row: dict[str, Any], tokenizer: Any, system_prompt: str | None,
                  max_prompt_length: int | None, where: str) -> list[int]:
    """Token ids of one row's rendered prompt. One longer than max_prompt_length is a DataError
    naming the row by `where`, found by its characters alone, before tokenizing, where they
    prove it (`min_tokens`)."""
    text = _render(row, tokenizer, system_prompt, where)
    if max_prompt_length is not None:
        _refuse_by_characters(text, tokenizer, max_prompt_length, where)
    # A chat template writes its own special tokens (BOS); adding them again would double them.
    ids = list(tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"])
    if max_prompt_length is not None and len(ids) > max_prompt_length:
        raise DataError(
            f"{where}: the prompt is {len(ids)} tokens, longer than max_prompt_length="
            f"{max_prompt_length} (prompts are never truncated); raise max_prompt_length or "
            f"shorten the prompt: {_short(text)}"
        )
    return ids


def _refuse_by_characters(text: str, tokenizer: Any, max_prompt_length: int, where: str) -> None:
    """The over-long error, before tokenizing, when the characters alone prove the prompt too long
    (tokenizing megabytes takes seconds to minutes)."""
    if len(text) <= max_prompt_length:
        return  # the bound below cannot prove it too long: skip working it out
    floor = min_tokens(text, tokenizer)
    if floor > max_prompt_length:
        raise DataError(
            f"{where}: the prompt is {len(text)} characters, so at least {floor} tokens (no "
            f"token of this tokenizer stands for more than {max_token_chars(tokenizer)} "
            f"characters), longer than max_prompt_length={max_prompt_length} (prompts are never "
            f"truncated); raise max_prompt_length or shorten the prompt: {_short(text)}"
        )


# ---------------------------------------------------------------- a lower bound on token counts

# Pre-tokenizers that keep every character of the text in some piece (a "Removed" split, or
# Whitespace / BertPreTokenizer, drop characters, so a count of characters proves nothing).
_KEEPING = {"ByteLevel", "Metaspace", "Digits", "Punctuation", "Split", "UnicodeScripts"}
# Split patterns that isolate every single character: each piece is one character, so any model,
# its unknown token included, emits at least one token per piece.
_EVERY_CHARACTER = {r"[\s\S]", r"[\S\s]", r"[\w\W]", r"[\W\w]", r"[\d\D]", r"[\D\d]", r"(?s:.)"}
# Normalizers that never shorten the text, or (the Unicode forms) whose result is measured.
_MEASURED = {"NFC", "NFD", "NFKC", "NFKD", "Prepend", "Lowercase"}
_BOUNDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state(component: Any) -> dict[str, Any] | None:
    """A tokenizers component (normalizer, pre-tokenizer) as its JSON description; a custom
    (Python) one has none and proves nothing."""
    if component is None:
        return None
    try:
        return json.loads(component.__getstate__())
    except Exception:  # a custom component cannot be serialized
        return {"type": "custom"}


def _parts(spec: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [p for part in spec[key] for p in _parts(part, key)] \
        if spec.get("type") == "Sequence" else [spec]


def _keeps_characters(pre: dict[str, Any] | None) -> bool | str:
    """True when every character stays in a piece; "each" when every piece is one character."""
    parts = _parts(pre, "pretokenizers") if pre is not None else []
    if any(p["type"] not in _KEEPING or p.get("behavior") == "Removed" for p in parts):
        return False
    isolating = [p for p in parts if p["type"] == "Split" and not p.get("invert")
                 and p.get("behavior") == "Isolated"
                 and p["pattern"].get("Regex", p["pattern"].get("String")) in _EVERY_CHARACTER]
    return "each" if isolating else True


def _counts_characters(normalizer: dict[str, Any] | None) -> bool:
    """Whether the length of the normalized text bounds what the model sees: no step shortens it
    except the Unicode forms, which are applied when measuring."""
    for part in _parts(normalizer, "normalizers") if normalizer is not None else []:
        pattern = part.get("pattern", {}).get("String") if part["type"] == "Replace" else None
        if part["type"] not in _MEASURED and not (
                pattern is not None and len(part["content"]) >= len(pattern)):
            return False
    return True


def max_token_chars(tokenizer: Any) -> int | None:
    """The most characters of text one token stands for, where the tokenizer's pipeline proves a
    bound, else None; worked out once per tokenizer.

    A BPE token stands for at most as many characters as its string in the vocabulary has: a
    byte-level token's string has one character per byte and a character is at least one byte;
    an added token (<|im_start|>) stands for its string. So L, the longest string in the
    vocabulary, bounds every token, provided that no step drops characters (the pre-tokenizer
    keeps them all; the normalizer, whose result is what gets measured, adds or rewrites only)
    and that the unknown token cannot swallow a run of characters (a fused one can, unless the
    model falls back to bytes), nor an added token the spaces beside it (lstrip / rstrip). Other
    models (WordLevel, WordPiece, Unigram) map a whole piece to one unknown token, so they are
    bounded only when every piece is one character."""
    if tokenizer not in _BOUNDS:
        _BOUNDS[tokenizer] = _longest_token(tokenizer)
    return _BOUNDS[tokenizer]


def _longest_token(tokenizer: Any) -> int | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None  # a Python tokenizer: no description of its pipeline to prove a bound by
    keeps = _keeps_characters(_state(backend.pre_tokenizer))
    model = backend.model
    bpe = type(model).__name__ == "BPE" and (getattr(model, "byte_fallback", False) or not
                                             getattr(model, "fuse_unk", True) or
                                             getattr(model, "unk_token", None) is None)
    stripping = any(t.lstrip or t.rstrip for t in tokenizer.added_tokens_decoder.values())
    if not keeps or not (bpe or keeps == "each") or stripping or not _counts_characters(
            _state(backend.normalizer)):
        return None
    return max(map(len, tokenizer.get_vocab()), default=None)


def min_tokens(text: str, tokenizer: Any) -> int:
    """A lower bound on the number of tokens `text` becomes: its characters after the tokenizer's
    normalizer over `max_token_chars`, rounded up; 0 where the tokenizer proves no bound."""
    longest = max_token_chars(tokenizer)
    if not longest:
        return 0
    normalizer = tokenizer.backend_tokenizer.normalizer
    characters = len(normalizer.normalize_str(text)) if normalizer is not None else len(text)
    return -(-characters // longest)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
