"""`reward_model`: a learned reward model (a local sequence-classification checkpoint).

Each (prompt, completion) pair is rendered with the tokenizer's chat template when it has one
(user = the row's `prompt`, or its `messages`; assistant = the completion), else as
prompt + completion, truncated from the left to `max_length` tokens so the completion's end is
kept. The reward is the logit when the model has one label, else the softmax probability of
`label` (an index or a name from the model's id2label).
"""

from __future__ import annotations

from typing import Any

from grpokit.rewards.base import RewardValue, Sample
from grpokit.rewards.registry import register


def _messages(sample: Sample) -> list[dict[str, str]]:
    messages = sample.row.get("messages")
    if isinstance(messages, list):
        history = [m for m in messages if m.get("role") != "assistant"]
    else:
        prompt = sample.row.get("prompt")
        history = [{"role": "user", "content": prompt if isinstance(prompt, str) else sample.prompt}]
    return [*history, {"role": "assistant", "content": sample.completion}]


def _label_index(config: Any, label: int | str | None) -> int | None:
    num_labels = int(config.num_labels)
    if num_labels == 1:
        return None
    names = {str(v): int(k) for k, v in (config.id2label or {}).items()}
    if isinstance(label, int) and 0 <= label < num_labels:
        return label
    if isinstance(label, str) and label in names:
        return names[label]
    raise ValueError(
        f"reward_model: the model has {num_labels} labels {sorted(names)}; set `label` to one of "
        f"them (name or index), got {label!r}"
    )


class RewardModel:
    """Scores samples with a sequence-classification model, batch by batch."""

    def __init__(
        self,
        path: str,
        batch_size: int = 8,
        max_length: int = 2048,
        device: str = "cpu",
        label: int | str | None = None,
    ):
        if batch_size <= 0 or max_length <= 0:
            raise ValueError(f"reward_model: batch_size and max_length must be > 0, got {batch_size}, {max_length}")
        # Loaded here, not at import: every built-in registers when a run names rewards, and
        # `grpokit score` with the other built-ins needs neither torch nor transformers.
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = "reward_model"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.truncation_side = "left"
        self.tokenizer.padding_side = "right"
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.label = _label_index(self.model.config, label)
        self._fallback_id = self.tokenizer.eos_token_id or self.tokenizer.pad_token_id
        self.batch_size, self.max_length, self.device = batch_size, max_length, device

    def text(self, sample: Sample) -> str:
        """The text the model scores for one sample."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(_messages(sample), tokenize=False)
        prompt = sample.row.get("prompt")
        return (prompt if isinstance(prompt, str) else sample.prompt) + sample.completion

    def __call__(self, samples: list[Sample]) -> list[RewardValue]:
        import torch

        with torch.inference_mode():
            return self._score(samples)

    def _score(self, samples: list[Sample]) -> list[RewardValue]:
        scores: list[RewardValue] = []
        for start in range(0, len(samples), self.batch_size):
            texts = [self.text(s) for s in samples[start : start + self.batch_size]]
            ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
            # A text with no tokens at all (empty prompt and completion) is scored as one EOS.
            ids = [row or [self._fallback_id] for row in ids]
            batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)
            logits = self.model(**batch).logits.float()  # (b, num_labels)
            if self.label is None:
                scores.extend(logits[:, 0].tolist())
            else:
                scores.extend(logits.softmax(-1)[:, self.label].tolist())
        return scores


@register("reward_model")
def build_reward_model(**args) -> RewardModel:
    """Factory for `reward_model` (args path, batch_size, max_length, device, label)."""
    if "path" not in args:
        raise ValueError("reward_model: the `path` arg (a local model directory) is required")
    return RewardModel(**args)
