"""Completion log-probs of the training pass: they match the sampler and ignore padding."""

import torch

from grpokit.rollout.base import SamplingParams
from grpokit.rollout.hf import HFEngine
from grpokit.testing import tiny_llama
from grpokit.training.logprobs import batched_logprobs, completion_logprobs


def _rollout(temperature=0.7):
    model, tok = tiny_llama(seed=1)
    prompts = [tok("What is 1 + 2?")["input_ids"], tok("Hi")["input_ids"]]
    engine = HFEngine(model, tok)
    batch = engine.generate(prompts, 3, SamplingParams(max_new_tokens=10, temperature=temperature),
                            [0, 1])
    return model, batch


def test_training_logprobs_equal_the_sampling_logprobs():
    model, b = _rollout(temperature=0.7)
    with torch.no_grad():
        lp, ent = completion_logprobs(model, b.prompt_ids, b.prompt_mask, b.completion_ids,
                                      b.completion_mask, temperature=0.7, chunk_size=5,
                                      with_entropy=True)
    mask = b.completion_mask
    assert torch.allclose(lp[mask], b.sampling_logprobs[mask], atol=1e-4)
    assert (lp[~mask] == 0).all() and (ent[mask] > 0).all()


def test_extra_padding_changes_nothing():
    model, b = _rollout()
    pad = 0
    wide_p = torch.nn.functional.pad(b.prompt_ids, (4, 0), value=pad)
    wide_pm = torch.nn.functional.pad(b.prompt_mask, (4, 0), value=False)
    wide_c = torch.nn.functional.pad(b.completion_ids, (0, 3), value=pad)
    wide_cm = torch.nn.functional.pad(b.completion_mask, (0, 3), value=False)
    with torch.no_grad():
        lp, _ = completion_logprobs(model, b.prompt_ids, b.prompt_mask, b.completion_ids,
                                    b.completion_mask, temperature=0.7)
        wide, _ = completion_logprobs(model, wide_p, wide_pm, wide_c, wide_cm, temperature=0.7)
    assert wide.shape[1] == lp.shape[1] + 3
    assert torch.allclose(wide[:, : lp.shape[1]], lp, atol=1e-5)
    assert (wide[:, lp.shape[1]:] == 0).all()


def test_batched_logprobs_equal_one_pass_whatever_the_micro_batch():
    model, b = _rollout()
    with torch.no_grad():
        whole, _ = completion_logprobs(model, b.prompt_ids, b.prompt_mask, b.completion_ids,
                                       b.completion_mask, temperature=0.7)
    for size in (1, 4, 6):
        lp, _ = batched_logprobs(model, b, micro_batch_size=size, temperature=0.7, chunk_size=3)
        assert torch.allclose(lp, whole, atol=1e-5)
