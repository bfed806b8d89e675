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
from grpokit.algo.advantages import BUILT_IN_ESTIMATORS, SCALES, outcome_advantages
from grpokit.algo.correction import CORRECTION_LEVELS, CORRECTIONS, MISMATCH_METRICS
from grpokit.algo.losses import AGGREGATIONS, KL_ESTIMATORS, RATIO_LEVELS
from grpokit.algo.selective import logprobs_from_logits
from grpokit.algo.support import SAMPLING_SUPPORTS, Truncation
from grpokit.algo.surrogates import BUILT_IN_LOSSES
from grpokit.errors import UserError, read_json
from grpokit.rewards.base import StepRewards

EXPECTED_FIELDS = ("advantages", "per_token_loss", "loss", "grad_logprobs")
RTOL, ATOL = 1e-5, 1e-7
"""The relative-plus-absolute bound of every number, under the vector's `tolerance`. grpokit's
float32 math lands within 6e-7 absolute and 1e-5 + 4e-8 of the suite's numbers (cancellation in
ref − logp costs relative precision on the small KL terms), so this leaves some room and still
fails a 1% error on a 2.7e-5 gradient, which an absolute 1e-5 alone lets through."""
_CHOICES = {"estimator": BUILT_IN_ESTIMATORS, "scale": SCALES, "ratio": RATIO_LEVELS, "kl": KL_ESTIMATORS,
            "aggregation": AGGREGATIONS}
_NUMBERS = ("clip_low", "clip_high", "beta", "max_completion_length")
_OPTIONAL_CHOICES = {"loss": BUILT_IN_LOSSES, "rollout_correction": CORRECTIONS,
                     "rollout_correction_level": CORRECTION_LEVELS,
                     "sampling_support": SAMPLING_SUPPORTS}
LOGITS_FIELDS = ("logprobs", "grad_logits")
"""What a vector that gives `inputs.logits` also pins."""


class VectorError(UserError):
    """A vector file that does not follow the format; the message names the file and field."""


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


def _shape(value: Any, where: str) -> tuple[int, ...]:
    """Shape of a rectangular nested list of numbers; raises naming `where` otherwise."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return ()
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of numbers, got {value!r}")
    shapes = {_shape(item, f"{where}[{i}]") for i, item in enumerate(value)}
    if len(shapes) != 1:
        raise ValueError(f"{where}: rows have different lengths")
    return (len(value), *shapes.pop())


def _check_knobs(knobs: Any) -> None:
    if not isinstance(knobs, dict):
        raise ValueError("knobs: expected an object")
    for name, choices in _CHOICES.items():
        if knobs.get(name) not in choices:
            raise ValueError(f"knobs.{name}: expected one of {choices}, got {knobs.get(name)!r}")
    for name in _NUMBERS:
        _shape(knobs.get(name), f"knobs.{name}")
    for name, choices in _OPTIONAL_CHOICES.items():  # absent: no rollout correction
        if name in knobs and knobs[name] not in choices:
            raise ValueError(f"knobs.{name}: expected one of {choices}, got {knobs[name]!r}")
    for name in ("adv_eps", "dual_clip", "rollout_correction_threshold", "temperature", "top_k",
                 "top_p", "sapo_tau_pos", "sapo_tau_neg"):
        if knobs.get(name) is not None:
            _shape(knobs[name], f"knobs.{name}")


def _check_rewards(inputs: dict[str, Any], num: int) -> None:
    if "step_rewards" in inputs:
        steps = inputs["step_rewards"]
        if not isinstance(steps, list) or len(steps) != num:
            raise ValueError(f"inputs.step_rewards: expected a list of {num} entries (or null)")
        for i, row in enumerate(steps):
            if row is not None and _shape(row, f"inputs.step_rewards[{i}]")[1:] != (2,):
                raise ValueError(f"inputs.step_rewards[{i}]: expected [[reward, end_index], ...]")
        return
    for key in ("rewards", "reward_weights"):
        if key not in inputs:
            raise ValueError(f"inputs.{key}: missing (or give inputs.step_rewards)")
    num_weights = _shape(inputs["reward_weights"], "inputs.reward_weights")[0]
    rows = inputs["rewards"]
    if not isinstance(rows, list) or len(rows) != num:
        raise ValueError(f"inputs.rewards: expected {num} rows")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != num_weights:
            raise ValueError(f"inputs.rewards[{i}]: expected {num_weights} values (number or null)")
        for k, value in enumerate(row):
            if value is not None:
                _shape(value, f"inputs.rewards[{i}][{k}]")


def _check_inputs(inputs: Any, knobs: dict[str, Any]) -> tuple[int, int]:
    if not isinstance(inputs, dict):
        raise ValueError("inputs: expected an object")
    source = "logits" if "logits" in inputs else "logprobs"
    names = [source, "old_logprobs", "completion_mask"]
    if knobs["beta"] != 0:
        names.append("ref_logprobs")
    if knobs.get("rollout_correction", "none") != "none" or "sampler_logprobs" in inputs:
        names.append("sampler_logprobs")
    if source == "logits":
        names.append("completion_ids")
    for name in names:
        if name not in inputs:
            raise ValueError(f"inputs.{name}: missing")
    shape = _shape(inputs[source], f"inputs.{source}")
    if len(shape) != (3 if source == "logits" else 2):
        raise ValueError(f"inputs.{source}: expected an (N, T{', V' * (source == 'logits')}) "
                         f"array, got shape {shape}")
    shape = shape[:2]
    for name in names[1:]:
        if _shape(inputs[name], f"inputs.{name}") != shape:
            raise ValueError(f"inputs.{name}: expected shape {shape} like inputs.{source}")
    group_size = inputs.get("group_size")
    if not isinstance(group_size, int) or group_size < 1 or shape[0] % group_size:
        raise ValueError(f"inputs.group_size: expected a positive divisor of N={shape[0]}, "
                         f"got {group_size!r}")
    _check_rewards(inputs, shape[0])
    return shape


def _check_expected(case: dict[str, Any], shape: tuple[int, int]) -> None:
    expected = case.get("expected")
    if not isinstance(expected, dict):
        raise ValueError("expected: missing or not an object")
    adv_shape = shape if "step_rewards" in case["inputs"] else shape[:1]
    shapes = {"advantages": adv_shape, "per_token_loss": shape, "loss": (), "grad_logprobs": shape}
    if "logits" in case["inputs"]:
        shapes.update(logprobs=shape, grad_logits=tuple(_shape(case["inputs"]["logits"], "")))
    for name, want in shapes.items():
        if name not in expected:
            raise ValueError(f"expected.{name}: missing")
        if _shape(expected[name], f"expected.{name}") != want:
            raise ValueError(f"expected.{name}: expected shape {want}")
    metrics = expected.get("metrics", {})
    if not isinstance(metrics, dict) or not set(metrics) <= set(MISMATCH_METRICS):
        raise ValueError(f"expected.metrics: expected an object with keys among {MISMATCH_METRICS}")
    for name, value in metrics.items():
        _shape(value, f"expected.metrics.{name}")
    if metrics and "sampler_logprobs" not in case["inputs"]:
        raise ValueError("expected.metrics: needs inputs.sampler_logprobs")


def validate_case(case: Any) -> None:
    """Raise ValueError naming the first missing or invalid field of a vector."""
    if not isinstance(case, dict):
        raise ValueError("expected a JSON object at the top level")
    if not isinstance(case.get("name"), str) or not case["name"]:
        raise ValueError("name: missing or not a string")
    tolerance = case.get("tolerance")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise ValueError(f"tolerance: expected a non-negative number, got {tolerance!r}")
    _check_knobs(case.get("knobs"))
    shape = _check_inputs(case.get("inputs"), case["knobs"])
    _check_expected(case, shape)


def load_case(path: str | Path) -> dict[str, Any]:
    """Read and validate one vector file; VectorError names the file and the bad field."""
    path = Path(path)
    case = read_json(path, VectorError)
    try:
        validate_case(case)
    except ValueError as err:
        raise VectorError(f"{path}: {err}") from err
    return case


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
    advantages = _advantages(case)  # (N,) or (N, T)
    weights, _ = rollout_correction_weights(
        old, sampler, mask, knobs.rollout_correction, knobs.rollout_correction_level,
        knobs.rollout_correction_threshold)  # (N, T) or None
    with torch.no_grad():
        per_token = per_token_loss(logprobs, old, advantages, mask, knobs, ref_logprobs=ref,
                                   correction=weights)
    loss, metrics = policy_loss(logprobs, old, advantages, mask, knobs, ref_logprobs=ref,
                                sampler_logprobs=sampler)
    loss.backward()
    got = {"advantages": advantages.tolist(), "per_token_loss": per_token.tolist(),
           "loss": loss.item(), "grad_logprobs": logprobs.grad.tolist(),
           "metrics": {k: v for k, v in metrics.items() if k in MISMATCH_METRICS}}
    if logits is not None:
        got.update(logprobs=logprobs.detach().tolist(), grad_logits=logits.grad.tolist())
    return got


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


def vector_files(paths: list[str | Path]) -> list[Path]:
    """The *.json files named, or found under the folders named (recursively), in order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(path.rglob("*.json"))
            if not found:
                raise VectorError(f"{path}: no *.json vector files in this folder")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise VectorError(f"{path}: no such file or folder")
    return files


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
