"""The vLLM engine: rollouts from vLLM's offline `LLM`, colocated with the trainer (DESIGN.md §5).

The trainer owns the weights. The engine starts from a copy of the policy's current weights, and
`sync_weights()` pushes them again after every optimizer step through vLLM's in-place reload, then
resets the prefix cache (cached KV blocks would otherwise keep serving the old weights) and runs
the sync probe: the engine continues a fixed prompt through its prefix cache, and its log-probs of
that continuation must agree with the policy's within a tolerance, so a push that silently did
nothing, or a cache that still serves old blocks, stops the run instead of training off-policy.
Settings, pitfalls and installation: docs/vllm.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines drown the run's own log
import vllm  # noqa: E402  (after the logging default above, which vllm reads at import)
from vllm.inputs import TokensPrompt  # noqa: E402

from grpokit.rollout.base import RolloutBatch, SamplingParams  # noqa: E402
from grpokit.rollout.batching import (  # noqa: E402
    EngineBase,
    assemble,
    check_prompts,
    left_pad,
    single_turn_only,
)
from grpokit.rollout.sampling import check_params  # noqa: E402
from grpokit.rollout.vllm_weights import (  # noqa: E402
    contiguous,
    policy_weights,
    shared_memory_dir,
)

PROBE_TEXT = "The quick brown fox jumps over the lazy dog. 12 + 30 = 42."
"""The sync probe's fixed text, repeated to fill its prompt (`probe_prompt`)."""
PROBE_NEW_TOKENS = 4
"""Tokens the probe has the engine generate (greedily) after its prompt; engine and policy compare
their log-probs of these tokens. Each costs a decoding step: a few keep the probe cheap."""
PROBE_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.5}
"""Default largest |Δ log-prob| of the probe, by the engine's dtype. fp32 engines agree with the
policy to ~1e-5; a bf16 engine scored against the fp32 policy differs by up to a few tenths."""


def _cpu_bind() -> str:
    """The cores this process may run on, as vLLM's OpenMP binding wants them (e.g. "0-1")."""
    cores = sorted(os.sched_getaffinity(0))
    if cores == list(range(cores[0], cores[-1] + 1)):
        return f"{cores[0]}-{cores[-1]}"
    return ",".join(map(str, cores))


@contextlib.contextmanager
def _engine_environment(cpu: bool):
    """Set what vLLM reads at start-up; afterwards put back the LD_PRELOAD it rewrites.

    On CPU vLLM preloads torch's libgomp (and its own malloc) by editing LD_PRELOAD in this
    process, so that its worker binds threads. The worker has started by the end of the block;
    restoring the variable keeps every later child of the trainer (sandboxed code, reward
    workers) from inheriting those libraries.
    """
    if cpu:
        # vLLM's default binding used a single core here; bind to every core we may use.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", _cpu_bind())
    preload = os.environ.get("LD_PRELOAD")
    try:
        yield
    finally:
        if preload is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = preload


class VLLMEngine(EngineBase):
    """Rollouts from a colocated vLLM engine holding a copy of the policy's weights."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        stop_token_ids: tuple[int, ...] = (),
        autocast: bool = False,
        kv_cache_gib: float | None = 1.0,
        gpu_memory_utilization: float = 0.5,
        block_size: int = 32,
        max_model_len: int | None = None,
        probe_tolerance: float | None = None,
        enforce_eager: bool = True,
        probe_every: int = 1,
    ) -> None:
        super().__init__(model, tokenizer, stop_token_ids, autocast)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.dtype = torch.bfloat16 if autocast else base.dtype
        """The engine's dtype: bf16 when the run samples under bf16, else the policy's."""
        self._init_probe(probe_tolerance, probe_every)
        self.last_sync_s = 0.0
        """Seconds the last weight push took (write, in-place reload, prefix-cache reset)."""
        self._dir = Path(tempfile.mkdtemp(prefix="grpokit-vllm-", dir=shared_memory_dir()))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._dir, True)
        self._write_checkpoint(base)
        cpu = not torch.cuda.is_available()
        _check_block_size(block_size, cpu)
        with _engine_environment(cpu):
            self.llm = vllm.LLM(
                model=str(self._dir), dtype=_dtype_name(self.dtype),
                block_size=block_size, max_model_len=max_model_len, seed=0,
                kv_cache_memory_bytes=None if kv_cache_gib is None else int(kv_cache_gib * 2**30),
                gpu_memory_utilization=gpu_memory_utilization, enforce_eager=enforce_eager,
                logprobs_mode="processed_logprobs", generation_config="vllm",
                worker_extension_cls="grpokit.rollout.vllm_weights.WorkerSync",
            )
        config = self.llm.llm_engine.vllm_config
        self.probe_ids = probe_prompt(self.tokenizer, config.cache_config.block_size,
                                      config.model_config.max_model_len)
        """The probe's prompt: PROBE_TEXT's tokens repeated over one KV block and one token."""
        if self.probe_every:
            self.check_probe()

    def _init_probe(self, tolerance: float | None, every: int) -> None:
        """The sync probe's settings and last results."""
        if every < 0:
            raise ValueError(f"probe_every must be >= 0 (0: never), got {every}")
        self.probe_tolerance = tolerance if tolerance is not None else \
            PROBE_TOLERANCE.get(self.dtype, PROBE_TOLERANCE[torch.bfloat16])
        """Largest |Δ log-prob| between engine and policy on the probe before a sync fails."""
        self.probe_every = every
        """The probe runs at start-up and after every probe_every-th sync; 0: never."""
        self.syncs = 0
        """Weight syncs so far."""
        self.last_probe_s = 0.0
        """Seconds the last sync probe took."""
        self.last_probe_max_abs: float | None = None
        """Largest |Δ log-prob| between engine and policy on the probe, when the last sync (or
        the start-up) ran it; None when it did not (the run then logs no probe metric)."""
        self.last_probe_shift = 0.0
        """How far the policy's probe log-probs moved since the check before (max |Δ|): a
        push that did nothing is caught only when this exceeds the tolerance."""
        self.last_probe_cached_tokens = 0
        """Prompt tokens of the last probe that vLLM served from its prefix cache; 0 right after
        a reset, else the cache kept blocks computed with earlier weights."""
        self._policy_probe: torch.Tensor | None = None

    def _write_checkpoint(self, base: torch.nn.Module) -> None:
        """The folder vLLM starts from: the policy's config, tokenizer (vLLM's start-up renders a
        chat with it) and current weights, in the engine's dtype (it warns on every cast)."""
        base.config.save_pretrained(self._dir)
        self.tokenizer.save_pretrained(self._dir)
        save_file(contiguous(policy_weights(self.model), self.dtype),
                  str(self._dir / "model.safetensors"))

    def generate(
        self,
        prompt_ids: list[list[int]],
        group_size: int,
        params: SamplingParams,
        seeds: Sequence[int],
        episodes: Any = None,
    ) -> RolloutBatch:
        """Sample group_size completions for each prompt (token ids, no padding).

        Prompt i is one request seeded with seeds[i] (vLLM seeds its sample j with seed + j),
        so its completions do not depend on the other prompts of the call. Multi-turn episodes
        are the HF engine's (docs/tools.md).
        """
        single_turn_only("vllm", episodes)
        check_params(params)
        check_prompts(prompt_ids, group_size, self.model.get_input_embeddings().num_embeddings)
        # vLLM refuses n > 1 for greedy decoding: there, each of the G samples is its own request.
        copies = group_size if params.temperature == 0 else 1
        requests = [self._sampling(params, group_size // copies, int(seeds[i]) + j)
                    for i in range(len(prompt_ids)) for j in range(copies)]
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids for _ in range(copies)]
        outputs = self.llm.generate(prompts, requests, use_tqdm=False)
        samples = [s for out in outputs for s in sorted(out.outputs, key=lambda s: s.index)]
        return self._to_batch(prompt_ids, samples, group_size)

    def _sampling(self, params: SamplingParams, n: int, seed: int) -> Any:
        return vllm.SamplingParams(
            n=n, max_tokens=params.max_new_tokens, temperature=params.temperature,
            top_p=params.top_p, top_k=params.top_k, seed=seed, stop_token_ids=self.stop_ids,
            logprobs=0, detokenize=False,
        )

    def _to_batch(self, prompt_ids: list[list[int]], samples: list[Any],
                  group_size: int) -> RolloutBatch:
        """Right-padded completions, masks and sampling log-probs, on the policy's device."""
        device = self.model.get_input_embeddings().weight.device
        width = max(len(s.token_ids) for s in samples)
        ids = torch.full((len(samples), width), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros((len(samples), width), dtype=torch.float32)
        for row, sample in enumerate(samples):
            n = len(sample.token_ids)
            ids[row, :n] = torch.tensor(sample.token_ids, dtype=torch.long)
            logprobs[row, :n] = torch.tensor([step[t].logprob for step, t in
                                              zip(sample.logprobs, sample.token_ids)])
        lengths = torch.tensor([len(s.token_ids) for s in samples])
        mask = torch.arange(width)[None, :] < lengths[:, None]
        stopped = torch.tensor([s.finish_reason == "stop" for s in samples])
        prompts, prompt_mask = left_pad(prompt_ids, self.pad_id, device)
        return assemble(
            self.tokenizer, prompts.repeat_interleave(group_size, 0),
            prompt_mask.repeat_interleave(group_size, 0), ids.to(device), mask.to(device),
            stopped.to(device), group_size, logprobs.to(device),
        )

    def sync_weights(self) -> None:
        """Push the policy's current weights into the engine and drop its prefix cache, then,
        after every probe_every-th sync, check both with the probe."""
        start = time.perf_counter()
        self._push(policy_weights(self.model))
        self._reset_prefix_cache()
        self.last_sync_s = time.perf_counter() - start
        self.syncs += 1
        if self.probe_every and self.syncs % self.probe_every == 0:
            self.check_probe(after_reset=True)
        else:
            self.last_probe_max_abs = None

    def _reset_prefix_cache(self) -> None:
        """Drop every cached KV block: they were computed with the weights before the push.

        vLLM refuses (returns False) while a request still holds blocks; between two `generate`
        calls none should, so a refusal means the engine would keep serving stale blocks.
        """
        if not self.llm.reset_prefix_cache():
            raise RuntimeError(
                "vLLM refused to reset its prefix cache after a weight push (some KV blocks are "
                "still held by a request): its cached blocks were computed with the old weights, "
                "so the engine would sample from a mix of old and new weights. See docs/vllm.md."
            )

    def _push(self, weights: dict[str, torch.Tensor]) -> None:
        """Write the weights to shared memory and have the worker reload them in place."""
        path = self._dir / "push.safetensors"
        save_file(contiguous(weights, self.dtype), str(path))
        try:
            self.llm.collective_rpc("grpokit_load_weights", args=(str(path),))
        finally:
            path.unlink(missing_ok=True)

    def check_probe(self, after_reset: bool = False) -> float:
        """Have the engine continue the probe prompt and the policy score that continuation;
        raise when their log-probs differ beyond the tolerance or, `after_reset`, when the
        prompt was still served from the prefix cache. Returns the largest deviation."""
        start = time.perf_counter()
        new_ids, engine, self.last_probe_cached_tokens = self.engine_continuation(self.probe_ids)
        policy = self.policy_logprobs(self.probe_ids + new_ids)  # (L+n-1,)
        prompt_part = policy[: len(self.probe_ids) - 1]  # fixed tokens: comparable across checks
        if self._policy_probe is not None:
            self.last_probe_shift = float((prompt_part - self._policy_probe).abs().max())
        self._policy_probe = prompt_part
        self.last_probe_max_abs = float((engine - policy[len(prompt_part):]).abs().max())
        self.last_probe_s = time.perf_counter() - start
        stale = after_reset and self.last_probe_cached_tokens > 0
        if stale or not self.last_probe_max_abs <= self.probe_tolerance:
            raise RuntimeError(self._probe_failure(stale))
        return self.last_probe_max_abs

    def _probe_failure(self, stale: bool) -> str:
        """The sync probe's error: what it measured, and what that means."""
        deviation = (f"engine and policy log-probs of the probe's continuation differ by up to "
                     f"{self.last_probe_max_abs:.3g} (tolerance {self.probe_tolerance:g})")
        if stale:
            return (f"vLLM sync probe failed: right after the prefix-cache reset, "
                    f"{self.last_probe_cached_tokens} of the probe's prompt tokens were served "
                    f"from the prefix cache, i.e. from KV blocks computed with earlier weights "
                    f"(a stale prefix cache; {deviation}). See docs/vllm.md.")
        return (f"vLLM sync probe failed: {deviation}; the engine is not sampling from the "
                "policy's weights (a weight push that did not land, or a stale prefix cache). "
                "See docs/vllm.md.")

    def engine_continuation(self, ids: list[int]) -> tuple[list[int], torch.Tensor, int]:
        """The engine's greedy continuation of `ids` (PROBE_NEW_TOKENS tokens), its log-prob of
        each continuation token, and how many tokens of `ids` it took from its prefix cache.

        Generated tokens, not prompt log-probs: vLLM never reads the prefix cache for a request
        that asks for prompt log-probs (it recomputes the whole prompt), so only a generation
        sees what the cache holds. Greedy log-probs are the unscaled ones.
        """
        request = vllm.SamplingParams(max_tokens=PROBE_NEW_TOKENS, temperature=0.0, logprobs=0,
                                      ignore_eos=True, detokenize=False)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], request, use_tqdm=False)[0]
        sample = out.outputs[0]
        new_ids = [int(t) for t in sample.token_ids]
        logprobs = torch.tensor([step[t].logprob for step, t in zip(sample.logprobs, new_ids)])
        return new_ids, logprobs, int(out.num_cached_tokens or 0)

    def engine_logprobs(self, ids: list[int]) -> torch.Tensor:
        """(L-1,) the engine's log-prob of each token of `ids` after the first, from prompt
        log-probs: always recomputed, never read from the prefix cache (so blind to it)."""
        request = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], request, use_tqdm=False)[0]
        return torch.tensor([step[t].logprob for step, t in zip(out.prompt_logprobs[1:], ids[1:])])

    def policy_logprobs(self, ids: list[int]) -> torch.Tensor:
        """(L-1,) the policy module's log-prob of each token of `ids` after the first (fp32)."""
        device = self.model.get_input_embeddings().weight.device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                logits = self.model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1]
        finally:
            self.model.train(was_training)
        targets = torch.tensor(ids[1:], device=device)[:, None]
        return logits.float().log_softmax(-1).gather(-1, targets).squeeze(-1).cpu()

    def close(self) -> None:
        """Stop the engine's processes and remove its weight folder (also done at exit)."""
        engine = getattr(getattr(self, "llm", None), "llm_engine", None)
        if engine is not None:
            engine.engine_core.shutdown()
        self._cleanup()


def probe_prompt(tokenizer: Any, block_size: int, max_model_len: int) -> list[int]:
    """The probe's prompt: PROBE_TEXT's tokens, repeated to block_size + 1 tokens.

    vLLM caches only full KV blocks and always recomputes a prompt's last token, so this is the
    shortest prompt of which a stale cache can serve a block. Shortened to fit `max_model_len`
    with the continuation (a model length under block_size + 1 + PROBE_NEW_TOKENS leaves the
    probe no cacheable block, and its prefix-cache check then sees nothing).
    """
    text = [int(t) for t in tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]]
    length = max(2, min(block_size + 1, max_model_len - PROBE_NEW_TOKENS))
    return (text * (length // len(text) + 1))[:length]


def _check_block_size(block_size: int, cpu: bool) -> None:
    """Refuse, before vLLM's start-up, a KV block size its attention kernels do not take: a
    multiple of 16 on GPU (FlashAttention, Triton), of 32 on CPU (measured: 16 fails there with
    "No common block size")."""
    unit = 32 if cpu else 16
    if block_size < unit or block_size % unit:
        raise ValueError(f"rollout.vllm.block_size={block_size}: vLLM's {'CPU' if cpu else 'GPU'} "
                         f"attention needs a positive multiple of {unit}")


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]
