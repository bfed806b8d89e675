"""Direct Preference Optimization on (prompt, chosen, rejected) rows: `grpokit dpo` (docs/dpo.md).

Rows come from the loaders `grpokit sft` uses (data/supervised.py: data.path with the same column
mapping, or a built-in task whose rule writes the pair: arithmetic gives its answer against a
wrong one). The prompt is rendered as `grpokit train` renders it; each completion is tokenized on
its own and ends with EOS.
A step draws `dpo.batch_size` pairs with the seeded PromptSampler; the loss
(algo/dpo.py) covers completion tokens only and is the mean over the step's pairs, so the
micro-batch split leaves the gradient unchanged. Chosen and rejected run in one pass per
micro-batch, their shared prompt once (train.shared_prefix). The reference (dpo.reference) is a
frozen copy, the LoRA base with the adapter disabled, or log-probs precomputed at start and cached
in the run folder (`ref_logprobs.pt`), which a resume reads back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from grpokit.algo.dpo import dpo_loss, preference_metrics, sequence_logprobs
from grpokit.config import Config, ConfigError
from grpokit.data.preference import PreferencePair, load_pairs
from grpokit.data.supervised import SFTExample, collate, sized
from grpokit.runtime import models, precision
from grpokit.training.evaluation import Greedy, greedy_evaluation
from grpokit.training.logprobs import CompletionScorer, length_sorted_chunks
from grpokit.training.loop import run
from grpokit.training.session import shared_prefix
from grpokit.training.state import NonFiniteError, RunState, new_run_state, optimizer_step

REF_CACHE = "ref_logprobs.pt"
"""The precomputed reference log-probs in the run folder (dpo.reference=precomputed)."""


# ---------------------------------------------------------------- the loss


def pair_batch(pairs: list[PreferencePair], pad_id: int) -> dict[str, torch.Tensor]:
    """The chosen completions (rows 0..n-1), then the rejected ones (rows n..2n-1)."""
    return collate([SFTExample(p.prompt_ids, p.chosen_ids) for p in pairs]
                   + [SFTExample(p.prompt_ids, p.rejected_ids) for p in pairs], pad_id)


def pair_logps(scorer: torch.nn.Module, batch: dict[str, torch.Tensor], chunk_size: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of the chosen (n,) and the rejected (n,) of a pair batch."""
    logprobs, _ = scorer(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                         batch["completion_mask"], temperature=1.0, chunk_size=chunk_size)
    logps = sequence_logprobs(logprobs, batch["completion_mask"])  # (2n,)
    return logps.chunk(2)


@dataclass
class Policy:
    """The policy's training pass and its reference, as `dpo.reference` says."""

    model: torch.nn.Module
    scorer: torch.nn.Module
    """The policy's completion log-probs (CompletionScorer, prompts shared when it can)."""
    reference: str
    """copy, adapter_off or precomputed."""
    ref_scorer: torch.nn.Module | None = None
    """The frozen copy's completion log-probs (reference=copy)."""

    @torch.no_grad()
    def ref_logps(self, pairs: list[PreferencePair], batch: dict[str, torch.Tensor],
                  chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference == "precomputed":
            missing = [i for i, p in enumerate(pairs) if p.ref_logps is None]
            if missing:
                raise RuntimeError(f"pairs {missing[:5]} have no precomputed reference log-probs")
            ref = torch.tensor([p.ref_logps for p in pairs], dtype=torch.float32)  # (n, 2)
            return ref[:, 0], ref[:, 1]
        if self.reference == "copy":
            return pair_logps(self.ref_scorer, batch, chunk_size)
        with models.disabled_adapter(self.model):  # LoRA: the reference is the base model
            return pair_logps(self.scorer, batch, chunk_size)


def _tokens(pair: PreferencePair) -> int:
    """Tokens of a pair's two sequences (the prompt is in each)."""
    return 2 * len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)


def _chunks(pairs: list[PreferencePair], pairs_per_pass: int):
    lengths = torch.tensor([len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))
                            for p in pairs])
    for idx in length_sorted_chunks(lengths, pairs_per_pass):
        yield [pairs[i] for i in idx.tolist()]


def pairs_per_pass(cfg: Config) -> int:
    """Pairs per forward/backward: train.micro_batch_size counts sequences (2 per pair)."""
    return max(cfg.train.micro_batch_size // 2, 1)


def pairs_loss(policy: Policy, pairs: list[PreferencePair], cfg: Config, num_pairs: int,
               pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss of `pairs` over a step of `num_pairs`, with the implicit rewards."""
    batch = pair_batch(pairs, pad_id)
    ref_chosen, ref_rejected = policy.ref_logps(pairs, batch, cfg.train.logprob_chunk_size)
    chosen, rejected = pair_logps(policy.scorer, batch, cfg.train.logprob_chunk_size)
    return dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=cfg.dpo.beta,
                    label_smoothing=cfg.dpo.label_smoothing, num_pairs=num_pairs)


def train_step(policy: Policy, pairs: list[PreferencePair], state: RunState, cfg: Config,
               pad_id: int, autocast: Callable = contextlib.nullcontext) -> dict[str, float]:
    """One optimizer step on `pairs`, micro-batched and length-sorted; returns its metrics."""
    start = time.perf_counter()
    policy.model.train()
    total, chosen, rejected = 0.0, [], []
    parts = list(_chunks(pairs, pairs_per_pass(cfg)))
    for k, part in enumerate(parts):
        with models.memory_named(state.step + 1, k, len(parts), phase="the DPO update",
                                 size=lambda: sized(2 * len(part), sum(map(_tokens, part)))):
            with autocast():
                loss, c, r = pairs_loss(policy, part, cfg, len(pairs), pad_id)
            if not torch.isfinite(loss):
                raise NonFiniteError(f"non-finite DPO loss {loss.item()} at step {state.step + 1}")
            loss.backward()
        total += loss.item()
        chosen.append(c)
        rejected.append(r)
    metrics = {"loss/dpo": total, **{f"dpo/{k}": v for k, v in preference_metrics(
        torch.cat(chosen), torch.cat(rejected)).items()}}
    metrics.update(optimizer_step(policy.model, state.optimizer, state.scheduler,
                                  cfg.train.max_grad_norm))
    tokens = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    elapsed = time.perf_counter() - start
    metrics.update({"train/tokens": float(tokens), "perf/step_time_s": elapsed,
                    "perf/train_tokens_per_s": tokens / max(elapsed, 1e-9)})
    return metrics


@torch.no_grad()
def evaluate_pairs(policy: Policy, pairs: list[PreferencePair], cfg: Config, pad_id: int,
                   autocast: Callable = contextlib.nullcontext) -> dict[str, float]:
    """Held-out DPO loss, implicit rewards, margin and reward accuracy over `pairs`."""
    policy.model.eval()
    total, chosen, rejected = 0.0, [], []
    for part in _chunks(pairs, pairs_per_pass(cfg)):
        with autocast():
            loss, c, r = pairs_loss(policy, part, cfg, len(pairs), pad_id)
        total += loss.item()
        chosen.append(c)
        rejected.append(r)
    return {"pair_loss": total, **preference_metrics(torch.cat(chosen), torch.cat(rejected))}


# ---------------------------------------------------------------- precomputed reference


def _fingerprint(pairs: list[PreferencePair]) -> str:
    ids = [[p.prompt_ids, p.chosen_ids, p.rejected_ids] for p in pairs]
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


@torch.no_grad()
def precompute_reference(policy: Policy, parts: dict[str, list[PreferencePair]], cfg: Config,
                         pad_id: int, out: Path, resumed: bool, autocast: Callable) -> None:
    """Fill every pair's `ref_logps`: computed once by the start model (a new run) and written
    to the run folder, or read back from it (a resume: the weights have moved since)."""
    path = out / REF_CACHE
    if resumed:
        if not path.is_file():
            raise ConfigError(f"--resume: {path} is missing; dpo.reference=precomputed keeps the "
                              "reference log-probs there")
        cache = torch.load(path)
        for name, pairs in parts.items():
            if cache[name]["fingerprint"] != _fingerprint(pairs):
                raise ConfigError(f"--resume: {path} holds the reference log-probs of other "
                                  f"{name} pairs than this run's; the data changed")
    else:
        policy.model.eval()
        scorer = Policy(policy.model, policy.scorer, "adapter_off" if models.is_lora(
            policy.model) else "copy", policy.scorer)
        cache = {}
        for name, pairs in parts.items():
            values = torch.zeros(len(pairs), 2)
            for start in range(0, len(pairs), pairs_per_pass(cfg)):
                part = pairs[start:start + pairs_per_pass(cfg)]
                with autocast():
                    c, r = scorer.ref_logps(part, pair_batch(part, pad_id),
                                            cfg.train.logprob_chunk_size)
                values[start:start + len(part)] = torch.stack([c, r], dim=1)
            cache[name] = {"fingerprint": _fingerprint(pairs), "logps": values}
        torch.save(cache, path)
    for name, pairs in parts.items():
        for pair, (c, r) in zip(pairs, cache[name]["logps"].tolist()):
            pair.ref_logps = (c, r)


# ---------------------------------------------------------------- the stage


@dataclass
class DPOStage:
    """DPO on the run loop (grpokit/training/loop.py)."""

    cfg: Config
    policy: Policy
    tokenizer: Any
    state: RunState
    notes: list[str]
    train_pairs: list[PreferencePair]
    eval_pairs: list[PreferencePair]
    greedy: Greedy | None
    autocast: Callable
    resumed: bool
    last: list[PreferencePair] = field(default_factory=list)
    """The pairs of the step just run (its samples)."""
    loss: float = float("nan")
    """The last step's loss."""

    @property
    def model(self) -> torch.nn.Module:
        return self.policy.model

    def begin(self, out: Path) -> None:
        """dpo.reference=precomputed: the reference log-probs, computed by the start model and
        cached in the run folder, or read back from it on a resume."""
        if self.cfg.dpo.reference == "precomputed":
            precompute_reference(self.policy, {"train": self.train_pairs, "eval": self.eval_pairs},
                                 self.cfg, self.tokenizer.pad_token_id, out, self.resumed,
                                 self.autocast)

    def step(self) -> dict[str, float]:
        self.last = [self.train_pairs[i] for i in self.state.sampler.next_batch()]
        metrics = train_step(self.policy, self.last, self.state, self.cfg,
                             self.tokenizer.pad_token_id, self.autocast)
        self.loss = metrics["loss/dpo"]
        return metrics

    def samples(self, step: int, count: int) -> list[dict[str, Any]]:
        """The step's first pairs as trained on: the rendered prompt, chosen and rejected."""
        decode = self.tokenizer.decode
        return [{"index": i, "prompt": decode(p.prompt_ids), "chosen": decode(p.chosen_ids),
                 "rejected": decode(p.rejected_ids)} for i, p in enumerate(self.last[:count])]

    def evaluate(self, jsonl: Path | None) -> dict[str, float]:
        """Held-out pair metrics, and greedy accuracy where there are rewards to score it."""
        results = evaluate_pairs(self.policy, self.eval_pairs, self.cfg,
                                 self.tokenizer.pad_token_id, self.autocast) \
            if self.eval_pairs else {}
        if self.greedy is not None:
            results.update(self.greedy(jsonl))
        return results

    def finish(self, out: Path) -> dict[str, Any]:
        """`<output_dir>/final` (merged when LoRA) and the last step's loss."""
        final = models.save_model(self.model, self.tokenizer, out / "final", merge_lora=True)
        return {"train_loss": self.loss, "final": str(final)}


def run_dpo(cfg: Config, console: Any = None, resume: str | Path | None = None) -> dict[str, Any]:
    """DPO as the config says, on the run loop of every stage; writes checkpoints and
    `<output_dir>/final` (merged when LoRA). Returns held-out results before and after, the
    last loss and the paths."""
    return run(cfg, "dpo", _start, resume=resume, console=console)


def _start(cfg: Config, saved: dict[str, Any] | None) -> DPOStage:
    """Tokenizer, every pair (checked before the weights load: a bad row fails in seconds), the
    policy and its reference, and a fresh run state (the loop restores a resumed one)."""
    path = models.resolve_model_path(cfg.model.path)
    tokenizer = models.load_tokenizer(path)
    train_pairs, eval_pairs, task = load_pairs(cfg, tokenizer)
    model = models.load_trainable(cfg.model, path,
                                  resume_from=None if saved is None else saved["path"] / "model")
    share, note = shared_prefix(cfg, model)
    ref_scorer = None
    if cfg.dpo.reference == "copy":
        ref_scorer = CompletionScorer(models.load_reference(path, dtype=cfg.model.dtype), share)
    policy = Policy(model, CompletionScorer(model, share), cfg.dpo.reference, ref_scorer)
    bf16 = precision.use_bf16(cfg.model.autocast)
    greedy = greedy_evaluation(cfg, model, tokenizer, task, bf16)
    state = new_run_state("dpo", cfg, model, len(train_pairs), cfg.dpo.batch_size,
                          cfg.train.steps)
    notes = [f"[bold]grpokit dpo[/]: {len(train_pairs)} training pairs, {cfg.train.steps} steps "
             f"of {cfg.dpo.batch_size} pairs, {len(eval_pairs)} held out, reference "
             f"{cfg.dpo.reference}", note]
    return DPOStage(cfg, policy, tokenizer, state, [n for n in notes if n], train_pairs,
                    eval_pairs, greedy, lambda: precision.autocast(bf16), saved is not None)
