"""The bf16 decision (measured and cached), the reference's bf16 weights, fp32 attention in the
training passes, and one autocast region over an optimizer step's micro-batches."""

import json

import pytest
import torch

from grpokit.runtime import precision
from grpokit.runtime.precision import (
    autocast,
    autocast_paused,
    bf16_decision,
    bf16_linear_weights,
    cpu_has_bf16,
    use_bf16,
    use_fp32_attention,
)
from grpokit.testing import tiny_llama
from grpokit.training.logprobs import CompletionScorer, completion_logprobs


@pytest.mark.parametrize(
    "flags, expected",
    [
        ("fpu vme avx avx2", False),
        ("fpu avx512f avx512_bf16", True),
        ("fpu amx_tile amx_bf16 amx_int8", True),
        ("fpu avx512_bf16x", False),
    ],
)
def test_cpu_has_bf16(flags: str, expected: bool) -> None:
    cpuinfo = f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert cpu_has_bf16(cpuinfo) is expected


def _probe(monkeypatch, tmp_path, fp32: float, bf16: float) -> list[torch.dtype]:
    monkeypatch.setenv("GRPOKIT_CACHE", str(tmp_path))
    calls: list[torch.dtype] = []

    def fake(dtype, repeats=5):
        calls.append(dtype)
        return {torch.float32: fp32, torch.bfloat16: bf16}[dtype]

    monkeypatch.setattr(precision, "measure_matmul", fake)
    return calls


@pytest.mark.parametrize("mode, fp32, bf16, expected", [
    ("auto", 100.0, 500.0, True), ("auto", 100.0, 110.0, False),  # below BF16_MIN_SPEEDUP
    ("auto", 100.0, 40.0, False),  # bf16 without matrix units: slower
    ("bf16", 100.0, 40.0, True), ("off", 100.0, 500.0, False),
])
def test_the_decision_follows_the_measurement(monkeypatch, tmp_path, mode, fp32, bf16, expected):
    calls = _probe(monkeypatch, tmp_path, fp32, bf16)
    on, line = bf16_decision(mode)
    assert on is expected and use_bf16(mode) is expected
    assert ("bf16 autocast" if expected else "fp32") in line
    if mode == "auto":
        assert f"{bf16:.0f} GFLOP/s in bf16 vs {fp32:.0f}" in line
    with autocast(on):
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert (out.dtype == torch.bfloat16) is expected
    assert len(calls) == (2 if mode == "auto" else 0)


def test_the_probe_is_measured_once_per_machine(monkeypatch, tmp_path):
    calls = _probe(monkeypatch, tmp_path, 100.0, 500.0)
    assert "measured now" in bf16_decision("auto")[1]
    assert "cached" in bf16_decision("auto")[1] and len(calls) == 2
    saved = json.loads((tmp_path / "bf16-probe.json").read_text())
    (entry,) = saved.values()
    assert entry == {"fp32_gflops": 100.0, "bf16_gflops": 500.0}


def test_the_real_probe_measures_both_dtypes():
    assert precision.measure_matmul(torch.float32, repeats=1) > 0
    assert precision.measure_matmul(torch.bfloat16, repeats=1) > 0


def test_unknown_modes_are_refused():
    with pytest.raises(ValueError, match="auto"):
        use_bf16("fp8")


def _batch(tok):
    prompt = torch.tensor([tok("What is 1 + 2?")["input_ids"]] * 3)
    gen = torch.Generator().manual_seed(0)
    completion = torch.randint(4, len(tok), (3, 6), generator=gen)
    return (prompt, torch.ones_like(prompt, dtype=torch.bool), completion,
            torch.ones_like(completion, dtype=torch.bool))


def test_bf16_reference_weights_give_the_same_forward_to_the_bit():
    model, tok = tiny_llama(seed=2)
    frozen, _ = tiny_llama(seed=2)
    frozen.requires_grad_(False)
    assert bf16_linear_weights(frozen) == 2 * 7  # q k v o gate up down per layer; not lm_head
    assert frozen.get_output_embeddings().weight.dtype == torch.float32
    batch = _batch(tok)
    with torch.no_grad(), autocast(True):
        a, _ = completion_logprobs(model, *batch)
        b, _ = completion_logprobs(frozen, *batch)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="frozen"):
        bf16_linear_weights(model)


def test_training_passes_run_attention_in_fp32_and_sampling_does_not():
    model, tok = tiny_llama(seed=3)
    batch = _batch(tok)
    with torch.no_grad(), autocast(True):
        plain, _ = completion_logprobs(model, *batch)
    assert use_fp32_attention(model)
    scorer = CompletionScorer(model)
    with torch.no_grad(), autocast(True):
        outside, _ = completion_logprobs(model, *batch)  # as the sampler calls the model
        inside, _ = scorer(*batch)
    with torch.no_grad():
        fp32, _ = completion_logprobs(model, *batch)
    assert torch.equal(outside, plain)
    assert not torch.equal(inside, plain)
    # fp32 attention brings the bf16 pass closer to the fp32 one
    assert (inside - fp32).abs().max() <= (plain - fp32).abs().max()


def test_one_autocast_region_over_micro_batches_gives_the_same_gradients():
    """The optimizer step's micro-batches share one autocast region (its bf16 weight casts are
    made once); backward runs with autocast paused. Gradients equal separate regions exactly."""
    model, tok = tiny_llama(seed=1)
    batch = _batch(tok)

    def grads(shared: bool):
        model.zero_grad()
        outer = autocast(True) if shared else autocast(False)
        with outer:
            for part in (slice(0, 2), slice(2, 3)):
                with autocast(True):
                    lp, _ = completion_logprobs(model, *(x[part] for x in batch),
                                                share_prefix=True)
                with autocast_paused("cpu"):
                    lp.sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    separate, shared = grads(False), grads(True)
    assert all(torch.equal(separate[n], shared[n]) for n in separate)


@pytest.mark.parametrize("shared_prefix", [True, False])
def test_bf16_with_gradient_checkpointing_trains_on_the_cpu(tiny_model_dir, tmp_path,
                                                            shared_prefix):
    """Checkpointing replays each layer's forward in backward: the replay must run attention in
    fp32 as the forward did (precision.use_fp32_attention), or its saved tensors differ in dtype
    and the backward stops with a CheckpointError."""
    from grpokit.cli import main

    assert main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={tmp_path / 'run'}",
                 "model.autocast=bf16", "model.gradient_checkpointing=true",
                 f"train.shared_prefix={str(shared_prefix).lower()}", "train.steps=1",
                 "rollout.prompts_per_step=2", "rollout.group_size=2",
                 "rollout.max_new_tokens=4", "eval.num_prompts=0", "log.report_to=[]",
                 "log.report=false", "data.max_prompt_length=1024"]) == 0
