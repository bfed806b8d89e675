import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

from grpokit.rewards.base import Sample
from grpokit.rewards.model import RewardModel

TEXTS = ["what is two plus two", "the answer is four", "hello world", "<s> </s> <pad> <unk>"]


def _save_model(path, num_labels, chat_template=None):
    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(TEXTS, trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>")
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, num_labels=num_labels,
        id2label={i: f"L{i}" for i in range(num_labels)}, label2id={f"L{i}": i for i in range(num_labels)},
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    return str(path)


SAMPLES = [
    Sample("the answer is four", {"prompt": "what is two plus two"}),
    Sample("hello", {"prompt": "what is two plus two"}),
    Sample("", {"prompt": ""}),
    Sample("four " * 500, {"prompt": "what"}),
]


def test_logit_reward_is_batch_invariant(tmp_path):
    path = _save_model(tmp_path / "rm", num_labels=1)
    batched = RewardModel(path, batch_size=4, max_length=32)(SAMPLES)
    single = RewardModel(path, batch_size=1, max_length=32)(SAMPLES)
    assert len(batched) == 4 and all(math.isfinite(x) for x in batched)
    assert batched == pytest.approx(single, abs=1e-5)


def test_label_probability_and_chat_template(tmp_path):
    template = "{% for m in messages %}{{ m['content'] }} </s> {% endfor %}"
    path = _save_model(tmp_path / "rm2", num_labels=2, chat_template=template)
    by_name = RewardModel(path, label="L1")(SAMPLES[:2])
    by_index = RewardModel(path, label=1)(SAMPLES[:2])
    assert by_name == by_index and all(0.0 < p < 1.0 for p in by_name)
    assert "the answer is four </s>" in RewardModel(path, label=1).text(SAMPLES[0])
    with pytest.raises(ValueError, match="set `label`"):
        RewardModel(path)
