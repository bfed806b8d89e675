import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from grpokit.data.render import encode_prompts, prompt_messages, render_prompt

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
