"""The format of a conformance vector (docs/conformance.md): what a file must hold, checked
field by field, so that a malformed vector is an error naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from grpokit.algo.advantages import BUILT_IN_ESTIMATORS, SCALES
from grpokit.algo.correction import CORRECTION_LEVELS, CORRECTIONS, MISMATCH_METRICS
from grpokit.algo.covariance import COV_CONTROLS
from grpokit.algo.losses import AGGREGATIONS, KL_ESTIMATORS, RATIO_LEVELS
from grpokit.algo.support import SAMPLING_SUPPORTS
from grpokit.algo.surrogates import BUILT_IN_LOSSES
from grpokit.errors import UserError, read_json

_CHOICES = {"estimator": BUILT_IN_ESTIMATORS, "scale": SCALES, "ratio": RATIO_LEVELS, "kl": KL_ESTIMATORS,
            "aggregation": AGGREGATIONS}
_NUMBERS = ("clip_low", "clip_high", "beta", "max_completion_length")
_OPTIONAL_CHOICES = {"loss": BUILT_IN_LOSSES, "rollout_correction": CORRECTIONS,
                     "rollout_correction_level": CORRECTION_LEVELS,
                     "sampling_support": SAMPLING_SUPPORTS, "cov_control": COV_CONTROLS}


class VectorError(UserError):
    """A vector file that does not follow the format; the message names the file and field."""


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
    if not isinstance(knobs.get("kl_in_reward", False), bool):
        raise ValueError(f"knobs.kl_in_reward: expected true or false, got {knobs['kl_in_reward']!r}")
    for name, choices in _OPTIONAL_CHOICES.items():  # absent: no rollout correction
        if name in knobs and knobs[name] not in choices:
            raise ValueError(f"knobs.{name}: expected one of {choices}, got {knobs[name]!r}")
    for name in ("adv_eps", "dual_clip", "rollout_correction_threshold", "temperature", "top_k",
                 "top_p", "sapo_tau_pos", "sapo_tau_neg", "cov_ratio", "clip_cov_low",
                 "clip_cov_high", "kl_cov_coef", "teacher_coef"):
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
    names += ["teacher_logprobs"] * ("teacher_logprobs" in inputs)
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
    per_token = {"step_rewards", "teacher_logprobs"} & set(case["inputs"]) \
        or case["knobs"].get("kl_in_reward")
    adv_shape = shape if per_token else shape[:1]
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
