"""Run GRPO conformance vectors (docs/conformance.md) through grpokit's own math.

A vector pins the advantages, per-token losses, aggregated loss and d loss / d logprobs of one
small batch, and with sampler log-probs the mismatch metrics of the rollout correction. A vector
may give the policy's logits instead of its log-probs, with the sampler's temperature, top-k and
top-p: the log-probs then come out of `algo.sampling_support` (replay or full), and the vector also
pins them and d loss / d logits.
`run_case` recomputes them with `grpokit.algo` (the gradient with torch autograd, advantages and
old / reference / sampler log-probs held fixed) and compares each number b with
|a − b| ≤ min(tolerance, ATOL + RTOL·|b|): the vector's absolute `tolerance` is a ceiling, and the
relative bound keeps small numbers (KL-only gradients of about 3e-5) from passing at any value.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from grpokit.algo import (
    LossKnobs,
    per_token_loss,
    policy_loss,
    process_advantages,
    rollout_correction_weights,
)
from grpokit.algo.advantages import (
    combine_rewards,
    distill_advantages,
    kl_reward_advantages,
    outcome_advantages,
)
from grpokit.algo.correction import MISMATCH_METRICS
from grpokit.algo.covariance import cov_selection
from grpokit.algo.losses import kl_penalty
from grpokit.algo.selective import logprobs_from_logits
from grpokit.algo.support import Truncation
from grpokit.conformance.vectors import VectorError, load_case, vector_files
from grpokit.rewards.base import StepRewards

EXPECTED_FIELDS = ("advantages", "per_token_loss", "loss", "grad_logprobs")
RTOL, ATOL = 1e-5, 1e-7
"""The relative-plus-absolute bound of every number, under the vector's `tolerance`. grpokit's
float32 math lands within 6e-7 absolute and 1e-5 + 4e-8 of the suite's numbers (cancellation in
ref − logp costs relative precision on the small KL terms), so this leaves some room and still
fails a 1% error on a 2.7e-5 gradient, which an absolute 1e-5 alone lets through."""
LOGITS_FIELDS = ("logprobs", "grad_logits")
"""What a vector that gives `inputs.logits` also pins."""


@dataclass
class CaseResult:
    """The verdict on one vector."""

    name: str
    """The vector's `name`."""
    passed: bool
    """True when every expected number b is within min(tolerance, ATOL + RTOL·|b|)."""
    max_deviation: float
    """Largest absolute difference over all expected numbers (inf for NaN or inf)."""
    failed_field: str | None = None
    """The expected field whose worst number is furthest beyond its bound; None when passed."""
    deviations: dict[str, float] = field(default_factory=dict)
    """Largest absolute difference per expected field."""
    path: str = ""
    """The file the vector came from."""


def _advantages(case: dict[str, Any]) -> torch.Tensor:
    knobs, inputs = case["knobs"], case["inputs"]
    eps = float(knobs.get("adv_eps", 1e-6))
    if "step_rewards" in inputs:
        steps = [None if row is None else StepRewards(tuple(float(r) for r, _ in row),
                                                       tuple(int(end) for _, end in row))
                 for row in inputs["step_rewards"]]
        num_tokens = len(inputs["old_logprobs"][0])
        return process_advantages(steps, inputs["group_size"], num_tokens, eps=eps)
    rows = [[math.nan if r is None else float(r) for r in row] for row in inputs["rewards"]]
    return outcome_advantages(torch.tensor(rows, dtype=torch.float64), inputs["reward_weights"],
                              inputs["group_size"], estimator=knobs["estimator"],
                              scale=knobs["scale"], eps=eps)


def loss_knobs(knobs: dict[str, Any]) -> LossKnobs:
    """The LossKnobs a vector's `knobs` object describes (derived as the trainer derives them)."""
    return LossKnobs.from_values(knobs)


def _tensor(inputs: dict[str, Any], name: str, needed: bool = True) -> torch.Tensor | None:
    return torch.tensor(inputs[name], dtype=torch.float64) if needed else None  # (N, T)


def compute(case: dict[str, Any]) -> dict[str, Any]:
    """grpokit's numbers for a vector: advantages, per_token_loss, loss, grad_logprobs, and the
    mismatch metrics when the inputs carry sampler_logprobs."""
    inputs = case["inputs"]
    knobs = loss_knobs(case["knobs"])
    logits, logprobs = _policy_logprobs(case)  # (N, T, V) or None, (N, T)
    old = _tensor(inputs, "old_logprobs")  # (N, T)
    mask = torch.tensor(inputs["completion_mask"]).bool()  # (N, T)
    ref = _tensor(inputs, "ref_logprobs", knobs.beta != 0.0)  # (N, T) or None
    sampler = _tensor(inputs, "sampler_logprobs", "sampler_logprobs" in inputs)  # (N, T) or None
    advantages, selected = _advantages_and_selection(case, old, mask, knobs)
    weights, _ = rollout_correction_weights(
        old, sampler, mask, knobs.rollout_correction, knobs.rollout_correction_level,
        knobs.rollout_correction_threshold)  # (N, T) or None
    with torch.no_grad():
        per_token = per_token_loss(logprobs, old, advantages, mask, knobs, ref_logprobs=ref,
                                   correction=weights, selected=selected)
    loss, metrics = policy_loss(logprobs, old, advantages, mask, knobs, ref_logprobs=ref,
                                sampler_logprobs=sampler, selected=selected)
    loss.backward()
    got = {"advantages": advantages.tolist(), "per_token_loss": per_token.tolist(),
           "loss": loss.item(), "grad_logprobs": logprobs.grad.tolist(),
           "metrics": {k: v for k, v in metrics.items() if k in MISMATCH_METRICS}}
    if logits is not None:
        got.update(logprobs=logprobs.detach().tolist(), grad_logits=logits.grad.tolist())
    return got


def _advantages_and_selection(case: dict[str, Any], old: torch.Tensor, mask: torch.Tensor,
                              knobs: LossKnobs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The advantages (REINFORCE++'s KL-in-reward returns with knobs.kl_in_reward), with the
    teacher's per-token term when the inputs give teacher_logprobs, and the tokens of
    knobs.cov_control (N, T), chosen from the old log-probs as the trainer chooses them at a
    step's start (clip_cov's draw seeded with 0), or None."""
    advantages = _advantages(case)  # (N,) or (N, T)
    if knobs.kl_in_reward:  # REINFORCE++: KL(π_old ‖ π_ref) in the returns, whitened
        inputs = case["inputs"]
        rows = [[math.nan if r is None else float(r) for r in row] for row in inputs["rewards"]]
        reward = combine_rewards(torch.tensor(rows, dtype=torch.float64), inputs["reward_weights"])
        kl = kl_penalty(old, _tensor(inputs, "ref_logprobs"), kind=knobs.kl)
        advantages = kl_reward_advantages(reward, kl, mask, beta=knobs.beta,
                                          eps=float(case["knobs"].get("adv_eps", 1e-6)))
    if "teacher_logprobs" in case["inputs"]:
        advantages = distill_advantages(advantages, _tensor(case["inputs"], "teacher_logprobs"),
                                        old, mask, float(case["knobs"].get("teacher_coef", 1.0)))
    if knobs.cov_control == "none":
        return advantages, None
    adv = advantages if advantages.ndim == 2 else advantages.unsqueeze(1).expand_as(mask)
    chosen = cov_selection(adv[mask], old[mask], mode=knobs.cov_control, ratio=knobs.cov_ratio,
                           low=knobs.clip_cov_low, high=knobs.clip_cov_high,
                           generator=torch.Generator().manual_seed(0))
    selected = torch.zeros_like(mask)
    selected[mask] = chosen
    return advantages, selected


def _policy_logprobs(case: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The policy's log-probs (N, T), a leaf unless the vector gives logits (N, T, V): then
    they are computed as the trainer does, over the sampler's kept set under `replay` (the
    default) or the whole vocabulary under `full`, and both keep their gradient."""
    inputs, knobs = case["inputs"], case["knobs"]
    if "logits" not in inputs:
        return None, torch.tensor(inputs["logprobs"], dtype=torch.float64, requires_grad=True)
    logits = torch.tensor(inputs["logits"], dtype=torch.float64, requires_grad=True)
    truncation = Truncation(int(knobs.get("top_k", 0)), float(knobs.get("top_p", 1.0)))
    replay = knobs.get("sampling_support", "replay") == "replay"
    logprobs = logprobs_from_logits(logits, torch.tensor(inputs["completion_ids"]),
                                    float(knobs.get("temperature", 1.0)),
                                    truncation if replay else None)  # (N, T)
    logprobs.retain_grad()
    return logits, logprobs


def _differences(got: Any, want: Any):
    """(|got − want|, want) for every expected number of nested lists (or objects); the
    difference is inf where `got` is not finite or misses an entry."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or not set(want) <= set(got):
            yield math.inf, 0.0
            return
        for key, w in want.items():
            yield from _differences(got[key], w)
    elif isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            yield math.inf, 0.0
            return
        for g, w in zip(got, want):
            yield from _differences(g, w)
    elif isinstance(got, list) or not math.isfinite(got):
        yield math.inf, want
    else:
        yield abs(got - want), want


def max_deviation(got: Any, want: Any) -> float:
    """Largest absolute difference between nested lists (or objects) of numbers; inf when `got`
    is not finite or misses an entry."""
    return max((d for d, _ in _differences(got, want)), default=0.0)


def max_excess(got: Any, want: Any, tolerance: float) -> float:
    """Largest |got − want| − min(tolerance, ATOL + RTOL·|want|): ≤ 0 when every number is
    within its bound."""
    return max((d - min(tolerance, ATOL + RTOL * abs(w)) for d, w in _differences(got, want)),
               default=-math.inf)


def run_case(case: dict[str, Any], path: str = "") -> CaseResult:
    """Compare grpokit's numbers with a validated vector's `expected`."""
    got = compute(case)
    tolerance = float(case["tolerance"])
    expected = case["expected"]
    names = EXPECTED_FIELDS + (("metrics",) if "metrics" in expected else ()) \
        + (LOGITS_FIELDS if "logits" in case["inputs"] else ())
    deviations = {name: max_deviation(got[name], expected[name]) for name in names}
    excess = {name: max_excess(got[name], expected[name], tolerance) for name in names}
    worst = max(excess, key=lambda name: excess[name])
    passed = excess[worst] <= 0
    return CaseResult(name=case["name"], passed=passed, max_deviation=max(deviations.values()),
                      failed_field=None if passed else worst, deviations=deviations, path=path)

def run_paths(paths: list[str | Path]) -> list[CaseResult]:
    """Run every vector of the given files and folders; VectorError on a malformed file."""
    return [run_case(load_case(path), str(path)) for path in vector_files(paths)]


def _print_results(results: list[CaseResult]) -> None:
    table = Table(title="GRPO conformance")
    table.add_column("case", overflow="fold")
    for column in ("result", "max deviation", "failed field"):
        table.add_column(column)
    for result in results:
        verdict = "[green]pass[/green]" if result.passed else "[red]FAIL[/red]"
        deviation = f"{result.max_deviation:.3g}"
        table.add_row(result.name, verdict, deviation, result.failed_field or "")
    console = Console()
    console.print(table)
    failed = sum(not result.passed for result in results)
    console.print(f"{len(results) - failed} passed, {failed} failed")


def _command(args: argparse.Namespace) -> int:
    try:
        results = run_paths(args.paths)
    except VectorError as err:
        print(f"error: {err}")
        return 2
    _print_results(results)
    return 0 if all(result.passed for result in results) else 1


def add_commands(subparsers: Any) -> None:
    """Register `grpokit conformance PATH...` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "conformance", help="check grpokit's GRPO math against conformance vectors",
        description="Run GRPO conformance vectors (JSON files, or folders searched for *.json) "
                    "and report pass/fail per case with the largest deviation.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="vector file or folder")
    parser.set_defaults(func=_command)
