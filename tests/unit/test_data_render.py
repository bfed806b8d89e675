import json

import pytest
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from grpokit.data.render import encode_prompts, prompt_messages, render_prompt
from grpokit.errors import DataError

TEMPLATE = (
    "<s>{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 []?.,+-*=\n"


def make_tokenizer(chat_template=TEMPLATE):
    """One token per character, plus <s> as BOS; no files, no downloads."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {ch: i + 3 for i, ch in enumerate(CHARS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.mark.parametrize(
    "row, system_prompt, expected",
    [
        ({"prompt": "hi"}, None, "<s>[user]hi\n[assistant]"),
        ({"prompt": "hi"}, "be brief", "<s>[system]be brief\n[user]hi\n[assistant]"),
        (
            {"messages": [{"role": "system", "content": "old"}, {"role": "user", "content": "hi"}]},
            "new",
            "<s>[system]new\n[user]hi\n[assistant]",
        ),
        (
            {"messages": [{"role": "system", "content": "old"}, {"role": "user", "content": "hi"}]},
            None,
            "<s>[system]old\n[user]hi\n[assistant]",
        ),
        (
            {"prompt": "ignored", "messages": [{"role": "user", "content": "hi"}]},
            None,
            "<s>[user]hi\n[assistant]",
        ),
    ],
)
def test_render_with_chat_template(row, system_prompt, expected):
    assert render_prompt(row, make_tokenizer(), system_prompt) == expected


@pytest.mark.parametrize(
    "row, system_prompt, expected",
    [
        ({"prompt": "hi"}, None, "hi"),
        ({"prompt": "hi"}, "be brief", "be brief\n\nhi"),
        (
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]},
            None,
            "s\n\nhi",
        ),
    ],
)
def test_render_without_chat_template_uses_raw_text(row, system_prompt, expected):
    assert render_prompt(row, make_tokenizer(chat_template=None), system_prompt) == expected


def test_render_does_not_modify_the_row():
    row = {"messages": [{"role": "system", "content": "old"}, {"role": "user", "content": "hi"}]}
    render_prompt(row, make_tokenizer(), "new")
    assert row["messages"][0]["content"] == "old"


def test_encode_prompts():
    tokenizer = make_tokenizer()
    ids = encode_prompts([{"prompt": "ab"}, {"prompt": "a"}], tokenizer, None, max_prompt_length=21)
    # <s>, [user] (6), ab, newline, [assistant] (11): the template writes <s> once and
    # encoding adds no second one.
    assert ids[0] == tokenizer("<s>[user]ab\n[assistant]", add_special_tokens=False)["input_ids"]
    assert len(ids[0]) == 21 and ids[0].count(tokenizer.bos_token_id) == 1
    assert len(ids[0]) == len(ids[1]) + 1


def test_encode_prompts_too_long_names_the_row():
    rows = [{"prompt": "a"}, {"prompt": "a" * 30}]
    with pytest.raises(
        ValueError, match=r"row 1: the prompt is 49 tokens, longer than max_prompt_length=40"
    ):
        encode_prompts(rows, make_tokenizer(), None, max_prompt_length=40)


def test_encode_prompts_without_limit():
    assert (
        len(encode_prompts([{"prompt": "a" * 300}], make_tokenizer(chat_template=None))[0]) == 300
    )


@pytest.mark.parametrize(
    "row, message",
    [
        ({"answer": "1"}, r"row 0: has neither 'prompt' nor 'messages' \(keys: \['answer'\]\)"),
        ({"prompt": ""}, "row 0: 'prompt' must be a non-empty string"),
        ({"prompt": 3}, "row 0: 'prompt' must be a non-empty string, got 3"),
        ({"messages": "hi"}, "row 0: messages must be a non-empty list"),
        ({"messages": []}, "row 0: messages must be a non-empty list"),
        (
            {"messages": [{"content": "hi"}]},
            r"row 0: messages\[0\] must be a dict with a string 'role'",
        ),
        (
            {"messages": [{"role": "user", "content": ["x"]}]},
            r"messages\[0\]\['content'\] must be a string",
        ),
        ("hi", "row 0: a row must be a dict"),
    ],
)
def test_bad_rows(row, message):
    with pytest.raises(ValueError, match=message):
        encode_prompts([row], make_tokenizer())


def test_prompt_messages_default_location():
    with pytest.raises(ValueError, match="^row: "):
        prompt_messages({})


# ---------------------------------------------------------------- prompts too long


def test_a_prompt_too_long_is_named_by_its_file_and_line(tmp_path):
    from grpokit.data.datasets import load_rows, split_rows
    from grpokit.testing import tiny_tokenizer

    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["a", "b", "c" * 40, "d"]))
    train, _ = split_rows(load_rows(path, cache_dir=str(tmp_path / "cache")), 0.25, seed=1)
    assert [row["prompt"][0] for row in train] == ["a", "c", "d"]  # row 1 of the split is line 3
    with pytest.raises(DataError, match=f"^{path}: line 3: the prompt is 59 tokens, longer"):
        encode_prompts(train, tiny_tokenizer(), None, max_prompt_length=40)


def test_a_built_in_tasks_rows_are_named_by_split_and_1_based_row():
    from grpokit.data import load_task
    from grpokit.testing import tiny_tokenizer

    task = load_task("arithmetic", train_size=4, eval_size=2)
    assert [row.where for row in task.eval_rows] == [
        "task 'arithmetic': held-out row 1", "task 'arithmetic': held-out row 2"]
    with pytest.raises(DataError, match="^task 'arithmetic': training row 1: the prompt is"):
        encode_prompts(task.train_rows, tiny_tokenizer(), None, max_prompt_length=5)


def byte_level_bpe():
    """A small byte-level BPE tokenizer (the kind of most chat models) with ChatML tokens."""
    from grpokit.testing import TINY_CHAT_TEMPLATE

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        ["the quick brown fox jumps over the lazy dog; 12+30=42"] * 20, trainers.BpeTrainer(
            vocab_size=320, special_tokens=["<|im_start|>", "<|im_end|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def metaspace_bpe_with_nfc():
    """A BPE tokenizer with byte fallback, NFC and a sentencepiece-style space marker."""
    vocab = {"<unk>": 0, "<s>": 1, **{f"<0x{b:02X}>": b + 2 for b in range(256)}}
    for word in ("▁", "t", "h", "e", "f", "o", "x", "é", "▁t", "▁th", "▁the", "▁f", "▁fo", "▁fox",
                 "▁é"):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.BPE(vocab, [("▁", "t"), ("▁t", "h"), ("▁th", "e"), ("▁", "f"),
                                           ("▁f", "o"), ("▁fo", "x"), ("▁", "é")],
                                   unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>")


TEXTS = ["the fox", "e\u0301" * 50, "\u1100\u1161\u11a8" * 40, "日本語のテキスト " * 20,
         "🙂🙃 " * 30, "the quick brown fox " * 25, "x" * 300, "\n\t  " * 40]


@pytest.mark.parametrize("make", [byte_level_bpe, metaspace_bpe_with_nfc, "tiny"])
def test_the_character_bound_never_exceeds_the_token_count(make):
    from grpokit.data.render import max_token_chars, min_tokens
    from grpokit.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer() if make == "tiny" else make()
    assert max_token_chars(tokenizer) == max(map(len, tokenizer.get_vocab()))
    for text in TEXTS:
        tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert 0 < min_tokens(text, tokenizer) <= tokens, text


def _wordpiece():
    backend = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def _fused_unknown():
    backend = Tokenizer(models.BPE({"<unk>": 0, "a": 1}, [], unk_token="<unk>", fuse_unk=True))
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def _stripping():
    tokenizer = byte_level_bpe()
    tokenizer.backend_tokenizer.normalizer = normalizers.Strip()
    return tokenizer


def _swallowing_spaces():
    tokenizer = byte_level_bpe()
    tokenizer.add_tokens([AddedToken("<mask>", lstrip=True)])
    return tokenizer


@pytest.mark.parametrize("make", [_wordpiece, _fused_unknown, _stripping, _swallowing_spaces])
def test_no_bound_where_one_token_can_stand_for_any_number_of_characters(make):
    from grpokit.data.render import max_token_chars, min_tokens

    # A word of unknown characters is one [UNK]; a fused <unk> swallows a run; Strip drops
    # spaces, and so does an added token that strips the spaces beside it.
    tokenizer = make()
    assert max_token_chars(tokenizer) is None and min_tokens("b" * 1000, tokenizer) == 0


@pytest.mark.parametrize("make", [byte_level_bpe, "tiny"])
def test_a_megabyte_prompt_is_refused_by_its_length_before_tokenizing(make, monkeypatch):
    from grpokit.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer() if make == "tiny" else make()

    def never(*args, **kwargs):
        raise AssertionError("tokenized")

    monkeypatch.setattr(type(tokenizer), "__call__", never)
    with pytest.raises(DataError, match=r"^row 0: the prompt is 5000050 characters, so at least "
                                        r"416671 tokens \(no token of this tokenizer stands for "
                                        r"more than 12 characters\), longer than "
                                        r"max_prompt_length=512"):
        encode_prompts([{"prompt": "x" * 5_000_000}], tokenizer, None, max_prompt_length=512)
