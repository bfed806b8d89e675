"""Checks that need a CUDA GPU: the HF engine on CUDA with per-prompt seeds, a GRPO step under bf16
autocast, the vLLM engine's sync probe on CUDA. Without CUDA every test here is skipped (the
default suite collects them: `make test` reports them as skipped). `scripts/gpu_check.sh` runs
them on a GPU machine with `pytest tests/gpu -q`.

On a GPU machine every rank trains on its GPU (LOCAL_RANK): `build_session` moves the policy and
the reference there, the rollout tensors follow the policy's device, and the loss terms are moved
to it. These checks have not run on a GPU yet (the machines grpokit is developed on have none);
scripts/gpu_check.sh runs them where one is available.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from grpokit.rollout import SamplingParams
from grpokit.rollout.hf import HFEngine
from grpokit.testing import tiny_llama

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() "
                                "is False); scripts/gpu_check.sh runs these on a GPU machine")
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vllm is not installed in this environment")
TEXTS = ["What is 7 + 5?", "Hi", "Tell me a long story about cats, please."]
TINY = [
    "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=6",
    "eval.before_and_after=false", "data.max_prompt_length=1024", "train.micro_batch_size=4",
    "log.report_to=[]", "checkpoint.keep_last=0", "train.lr=1e-3", "train.steps=1",
    "data.task_args={digits: 1, ops: '+', train_size: 12, eval_size: 2, style: short}",
]


def _prompts(tokenizer) -> list[list[int]]:
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                              add_generation_prompt=True) for t in TEXTS]
    return [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rendered]


def test_hf_engine_on_cuda_is_reproducible_from_per_prompt_seeds():
    model, tokenizer = tiny_llama()
    engine = HFEngine(model.cuda(), tokenizer)  # fp32: batch shapes cannot flip a sample
    prompts, params, seeds = _prompts(tokenizer), SamplingParams(max_new_tokens=16), [7, 8, 9]
    a = engine.generate(prompts, 4, params, seeds)
    b = engine.generate(prompts, 4, params, seeds)
    alone = engine.generate(prompts[1:2], 4, params, seeds[1:2])
    assert a.completion_ids.device.type == "cuda"
    assert torch.equal(a.completion_ids, b.completion_ids) and a.completions == b.completions
    assert alone.completions == a.completions[4:8]  # prompt 1's samples: its seed alone
    assert engine.generate(prompts, 4, params, [1, 2, 3]).completions != a.completions
    assert torch.isfinite(a.sampling_logprobs).all()


def test_hf_engine_on_cuda_samples_under_bf16_autocast():
    model, tokenizer = tiny_llama()
    engine = HFEngine(model.cuda(), tokenizer, autocast=True)
    batch = engine.generate(_prompts(tokenizer), 4, SamplingParams(max_new_tokens=16), [1, 2, 3])
    logprobs = batch.sampling_logprobs[batch.completion_mask]
    assert torch.isfinite(logprobs).all() and (logprobs <= 0).all()


def test_one_step_train_with_bf16_autocast_on_a_cuda_machine_has_a_finite_loss(tmp_path):
    """`grpokit train` as a user runs it on a GPU machine, forced to bf16 autocast."""
    from grpokit.cli import main
    from grpokit.testing import save_tiny_llama

    model_dir = save_tiny_llama(tmp_path / "model")
    out = tmp_path / "run"
    code = main(["train", f"model.path={model_dir}", f"log.output_dir={out}",
                 "model.autocast=bf16", *TINY])
    assert code == 0
    (line,) = (out / "metrics.jsonl").read_text().splitlines()
    metrics = json.loads(line)
    assert math.isfinite(metrics["loss/policy"]) and metrics["train/tokens"] > 0


def test_a_grpo_step_with_the_policy_on_cuda(tmp_path):
    import grpokit.stages.grpo as trainer
    from grpokit.config import load_config
    from grpokit.testing import save_tiny_llama
    from grpokit.training.groups import PromptGroups
    from grpokit.training.session import build_session
    from grpokit.training.state import new_run_state

    model_dir = save_tiny_llama(tmp_path / "model")
    cfg = load_config(overrides=[f"model.path={model_dir}", f"log.output_dir={tmp_path / 'run'}",
                                 "model.autocast=bf16", "algo.beta=0", *TINY])
    session = build_session(cfg)
    assert next(session.model.parameters()).device.type == "cuda"
    groups = PromptGroups(session, session.task.train_rows)
    state = new_run_state("grpo", cfg, session.model, len(groups.rows),
                          cfg.rollout.prompts_per_step, trainer.total_updates(cfg))
    _, metrics = trainer.train_step(session, groups, state)
    assert math.isfinite(metrics["loss/policy"])


def _tied_tiny(seed: int = 0):
    """tiny_llama with hidden 128 and a tied output matrix, as tests/unit/test_rollout_vllm.py
    builds it (the default model ties its head; a tied head is what a weight push can miss)."""
    model, tokenizer = tiny_llama(hidden=128, seed=seed)
    shared = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape,
                                            generator=torch.Generator().manual_seed(seed)) * 0.02)
    model.model.embed_tokens.weight = model.lm_head.weight = shared
    model.config.tie_word_embeddings = True
    return model, tokenizer


@needs_vllm
def test_vllm_engine_on_cuda_passes_the_sync_probe_and_is_seeded():
    from grpokit.rollout.vllm import VLLMEngine

    model, tokenizer = _tied_tiny()
    engine = VLLMEngine(model, tokenizer, autocast=True, kv_cache_gib=0.25,
                        gpu_memory_utilization=0.2)  # bf16, as a GPU run samples
    try:
        assert engine.last_probe_max_abs <= engine.probe_tolerance  # the start-up probe
        prompts, params = _prompts(tokenizer), SamplingParams(max_new_tokens=16)
        a = engine.generate(prompts, 4, params, [5, 6, 7])
        b = engine.generate(prompts, 4, params, [5, 6, 7])
        assert a.completions == b.completions and torch.isfinite(a.sampling_logprobs).all()
        before = engine.engine_logprobs(engine.probe_ids)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.3 * p.abs().mean())
        engine.sync_weights()
        assert engine.last_probe_max_abs <= engine.probe_tolerance
        assert (engine.engine_logprobs(engine.probe_ids) - before).abs().max() > 0.05
    finally:
        engine.close()
