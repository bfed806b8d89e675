"""From a row to the prompt text and token ids the policy sees.

A row with `messages` (a chat list of {role, content}) is used as is; a row with a plain `prompt`
becomes one user message. When both are present, `messages` wins. A system prompt, when given,
replaces the row's leading system message or is put in front of the messages.

The chat list goes through `tokenizer.apply_chat_template(..., add_generation_prompt=True)`. A
tokenizer without a chat template (a base model) gets the raw text instead: the message contents
(system prompt first) joined by blank lines, with the tokenizer's own special tokens (e.g. BOS)
added when encoding. Prompts are never truncated: one longer than max_prompt_length is an error.
"""

from __future__ import annotations

from typing import Any

from grpokit.typed_tree import DataError

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
    """Token ids of each row's rendered prompt; a row longer than max_prompt_length is an error."""
    # A chat template writes its own special tokens (BOS); adding them again would double them.
    add_special_tokens = not has_chat_template(tokenizer)
    encoded = []
    for i, row in enumerate(rows):
        text = _render(row, tokenizer, system_prompt, f"row {i}")
        ids = list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
        if max_prompt_length is not None and len(ids) > max_prompt_length:
            raise DataError(
                f"row {i}: the prompt is {len(ids)} tokens, longer than max_prompt_length="
                f"{max_prompt_length} (prompts are never truncated); raise max_prompt_length or "
                f"shorten the prompt: {_short(text)}"
            )
        encoded.append(ids)
    return encoded


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
