"""Rollout engines on a tiny random model: layout, masks, finish reasons, seeding, correctness."""

from __future__ import annotations

import math

import pytest
import torch

from grpokit.rollout import GenerateEngine, HFEngine, SamplingParams
from grpokit.rollout.sampling import filter_logits, sample_next
from grpokit.runtime.models import apply_lora
from grpokit.testing import tiny_llama

TEXTS = ["What is 7 + 5?", "Hi", "Tell me a long story about cats, please."]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=0)


def _prompts(tokenizer, texts=TEXTS) -> list[list[int]]:
    rendered = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in texts
    ]
    return [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rendered]


def _gen(engine, prompts, group_size=4, seed=0, **params):
    return engine.generate(prompts, group_size, SamplingParams(**params),
                           [seed * 1000 + i for i in range(len(prompts))])


def _check_invariants(batch, prompts, group_size, max_new_tokens, stop_ids, pad_id):
    n = len(prompts) * group_size
    assert batch.completion_ids.shape[0] == batch.prompt_ids.shape[0] == n
    assert batch.group_index.tolist() == [g for g in range(len(prompts)) for _ in range(group_size)]
    assert batch.group_size == group_size
    for row in range(n):
        prompt = prompts[row // group_size]
        assert batch.prompt_ids[row][batch.prompt_mask[row]].tolist() == prompt
        assert not batch.prompt_mask[row, : batch.prompt_ids.shape[1] - len(prompt)].any()
        length = int(batch.completion_mask[row].sum())
        assert batch.completion_mask[row, :length].all()  # a prefix
        ids = batch.completion_ids[row].tolist()
        assert all(t == pad_id for t in ids[length:])
        assert not any(t in stop_ids for t in ids[: length - 1])
        if batch.finish_reason[row] == "stop":
            assert ids[length - 1] in stop_ids
        else:
            assert batch.finish_reason[row] == "length" and length == max_new_tokens
    logprobs = batch.sampling_logprobs
    assert torch.all(logprobs[~batch.completion_mask] == 0)
    assert torch.all(logprobs[batch.completion_mask] <= 0)
    assert torch.isfinite(logprobs).all()


@pytest.mark.parametrize("engine_cls", [HFEngine, GenerateEngine])
@pytest.mark.parametrize(
    "params",
    [
        dict(max_new_tokens=24, temperature=1.0),
        dict(max_new_tokens=24, temperature=0.7, top_p=0.9, top_k=20),
        dict(max_new_tokens=24, temperature=0),
        dict(max_new_tokens=1, temperature=1.0),
    ],
)
def test_layout_masks_and_finish_reasons(tiny, engine_cls, params):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    batch = _gen(engine_cls(model, tokenizer), prompts, **params)
    assert batch.completion_ids.shape[1] <= params["max_new_tokens"]
    _check_invariants(batch, prompts, 4, params["max_new_tokens"], {tokenizer.eos_token_id}, tokenizer.pad_token_id)


def test_sampling_mixes_stop_and_length(tiny):
    model, tokenizer = tiny
    batch = _gen(HFEngine(model, tokenizer), _prompts(tokenizer), group_size=8, max_new_tokens=24)
    assert set(batch.finish_reason) == {"stop", "length"}
    assert batch.completions[0] == tokenizer.decode(
        batch.completion_ids[0][batch.completion_mask[0]], skip_special_tokens=True
    )


def test_seeded_reproducible(tiny):
    model, tokenizer = tiny
    engine, prompts = HFEngine(model, tokenizer), _prompts(tokenizer)
    a = _gen(engine, prompts, seed=1, max_new_tokens=16)
    b = _gen(engine, prompts, seed=1, max_new_tokens=16)
    c = _gen(engine, prompts, seed=2, max_new_tokens=16)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.completions == b.completions
    assert torch.equal(a.sampling_logprobs, b.sampling_logprobs)
    assert a.completions != c.completions


def test_greedy_matches_model_generate_with_left_padding(tiny):
    model, tokenizer = tiny
    prompts = _prompts(tokenizer)
    batch = _gen(HFEngine(model, tokenizer), prompts, group_size=2, max_new_tokens=20, temperature=0)
    for g, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)[0, len(prompt) :]
        for row in (2 * g, 2 * g + 1):
            assert batch.completion_ids[row][batch.completion_mask[row]].tolist() == alone.tolist()
    reference = _gen(GenerateEngine(model, tokenizer), prompts, group_size=2, max_new_tokens=20, temperature=0)
    assert torch.equal(batch.completion_ids, reference.completion_ids)
    assert torch.allclose(batch.sampling_logprobs, reference.sampling_logprobs, atol=1e-5)


@pytest.mark.parametrize("compact_fraction", [0.01, 1.0])
def test_sampling_logprobs_match_a_full_forward(compact_fraction):
    model, tokenizer = tiny_llama(seed=1, eos_rate=0.1)
    prompts = _prompts(tokenizer)
    engine = HFEngine(model, tokenizer, compact_fraction=compact_fraction)
    batch = _gen(engine, prompts, group_size=4, max_new_tokens=20, temperature=0.8)
    assert "stop" in batch.finish_reason  # rows were dropped from the decode batch
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    p = batch.prompt_ids.shape[1]
    logprobs = (logits[:, p - 1 : -1] / 0.8).log_softmax(-1).gather(-1, batch.completion_ids[..., None])[..., 0]
    m = batch.completion_mask
    assert torch.allclose(batch.sampling_logprobs[m], logprobs[m], atol=1e-4)


def test_compaction_does_not_change_greedy_output():
    model, tokenizer = tiny_llama(seed=2, eos_rate=0.3)
    prompts = _prompts(tokenizer)
    eager = _gen(HFEngine(model, tokenizer, compact_fraction=0.01), prompts, 2, max_new_tokens=24, temperature=0)
    never = _gen(HFEngine(model, tokenizer, compact_fraction=1.0), prompts, 2, max_new_tokens=24, temperature=0)
    assert torch.equal(eager.completion_ids, never.completion_ids)
    assert eager.finish_reason == never.finish_reason


def test_extra_stop_tokens_and_early_exit(tiny):
    model, tokenizer = tiny
    space = tokenizer.convert_tokens_to_ids(" ")
    stops = {tokenizer.eos_token_id} | set(tokenizer.convert_tokens_to_ids(list("aeiou 0123456789")))
    engine = HFEngine(model, tokenizer, stop_token_ids=tuple(stops - {tokenizer.eos_token_id}))
    assert space in engine.stop_ids
    prompts = _prompts(tokenizer)
    batch = _gen(engine, prompts, group_size=4, max_new_tokens=200)
    assert batch.finish_reason == ["stop"] * 12
    assert batch.completion_ids.shape[1] < 200  # every row stopped, decoding ended early
    _check_invariants(batch, prompts, 4, 200, stops, tokenizer.pad_token_id)


def test_lora_model_and_training_flag_restored(tiny):
    model, tokenizer = tiny_llama(seed=0)
    lora = apply_lora(model, rank=2)
    lora.train()
    batch = _gen(HFEngine(lora, tokenizer), _prompts(tokenizer), group_size=2, max_new_tokens=8)
    assert batch.completion_ids.shape[0] == 6 and lora.training


@pytest.mark.parametrize(
    "prompts, group_size, params, match",
    [
        ([], 2, {}, "prompt_ids is empty"),
        ([[5, 6], []], 2, {}, "prompt 1 has no tokens"),
        ([[5, 10_000]], 2, {}, r"prompt 0 has token ids outside \[0, 101\)"),
        ([["a"]], 2, {}, "prompt 0 must be a list of int"),
        ([[5]], 0, {}, "group_size must be >= 1"),
        ([[5]], 2, {"temperature": -1.0}, "temperature must be >= 0"),
        ([[5]], 2, {"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ([[5]], 2, {"top_k": -1}, "top_k must be >= 0"),
        ([[5]], 2, {"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ],
)
def test_bad_input_is_named(tiny, prompts, group_size, params, match):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match=match):
        _gen(HFEngine(model, tokenizer), prompts, group_size, **params)


# ---------------------------------------------------------------- the sampler, by hand

P = [0.5, 0.3, 0.15, 0.05]


@pytest.mark.parametrize(
    "top_k, top_p, kept",
    [
        (0, 1.0, [0, 1, 2, 3]),
        (2, 1.0, [0, 1]),
        (1, 1.0, [0]),
        (0, 0.8, [0, 1]),  # 0.5 + 0.3 reaches 0.8: the third token is dropped
        (0, 0.81, [0, 1, 2]),
        (0, 0.4, [0]),  # the most likely token always stays
        (3, 0.7, [0, 1]),
    ],
)
def test_filter_logits(top_k, top_p, kept):
    logits = torch.tensor([P, P[::-1]]).log()
    out = filter_logits(logits, top_k, top_p)
    assert torch.isfinite(out[0]).nonzero().squeeze(-1).tolist() == kept
    assert torch.isfinite(out[1]).nonzero().squeeze(-1).tolist() == sorted(3 - i for i in kept)


@pytest.mark.parametrize(
    "logits, params, token, logprob",
    [
        ([0.0, 2.0], SamplingParams(temperature=0), 1, math.log(math.exp(2) / (1 + math.exp(2)))),
        # temperature 0.5 squares the odds 1:3 into 1:9
        ([0.0, math.log(3.0)], SamplingParams(temperature=0.5, top_k=1), 1, 0.0),
        ([math.log(9.0), 0.0, -50.0], SamplingParams(temperature=1.0, top_p=0.5), 0, 0.0),
    ],
)
def test_sample_next_by_hand(logits, params, token, logprob):
    tokens, logprobs = sample_next(torch.tensor([logits]), params, torch.tensor([0.3]))
    assert tokens.tolist() == [token]
    assert logprobs.item() == pytest.approx(logprob, abs=1e-6)


def test_sample_next_temperature_scales_the_distribution():
    logits = torch.tensor([[0.0, math.log(3.0)]]).expand(20_000, 2)
    uniforms = 1.0 - torch.rand(20_000, generator=torch.Generator().manual_seed(0))
    tokens, logprobs = sample_next(logits, SamplingParams(temperature=0.5), uniforms)
    assert tokens.float().mean().item() == pytest.approx(0.9, abs=0.01)
    expected = torch.where(tokens == 1, math.log(0.9), math.log(0.1))
    assert torch.allclose(logprobs, expected, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_nan_logit_stops_sampling_with_a_clear_error(temperature):
    from grpokit.rollout.sampling import sample_next

    logits = torch.zeros(3, 5)
    logits[1, 4] = float("nan")  # one bad logit in one row
    with pytest.raises(FloatingPointError, match="NaN logits"):
        sample_next(logits, SamplingParams(temperature=temperature), torch.full((3,), 0.5))
    tokens, logprobs = sample_next(torch.zeros(3, 5), SamplingParams(temperature=temperature),
                                   torch.full((3,), 0.5))
    torch.testing.assert_close(logprobs, torch.full((3,), -torch.log(torch.tensor(5.0)).item()))
