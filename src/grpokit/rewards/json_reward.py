"""JSON rewards: `json_valid` (the answer parses as JSON) and `json_schema` (it validates).

The JSON text of a completion is, in order: the content of its single `<answer>...</answer>`
block; else the content of its first ```json (or plain ```) fence; else the whole completion.
Several answer blocks, an empty text, or a text longer than `max_chars` score 0.0.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from grpokit.rewards.base import Sample
from grpokit.rewards.extract import answer_tags
from grpokit.rewards.item import ItemReward, describe_row
from grpokit.rewards.registry import register

_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
_NO_JSON = object()


def json_text(completion: str) -> str | None:
    """The part of the completion that should be JSON, or None when it is ambiguous."""
    # A linear scan: a regex would retry from every unclosed <answer> (quadratic on tag soup).
    answers = answer_tags(completion)
    if len(answers) > 1:
        return None
    if answers:
        return answers[0].strip()
    fence = _FENCE.search(completion)
    return (fence.group(1) if fence else completion).strip()


def parse_json(completion: str, max_chars: int) -> Any:
    """The parsed JSON value, or _NO_JSON when there is none."""
    text = json_text(completion)
    if not text or len(text) > max_chars:
        return _NO_JSON
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NO_JSON


def _validator(row: dict[str, Any]) -> Any:
    schema = row["schema"]
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ValueError(
                f"json_schema: {describe_row(row)}: field 'schema' is not valid JSON: {exc}"
            ) from exc
    if not isinstance(schema, (dict, bool)):
        raise ValueError(
            f"json_schema: {describe_row(row)}: field 'schema' must be a JSON Schema object, "
            f"got {type(schema).__name__}"
        )
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(
            f"json_schema: {describe_row(row)}: field 'schema' is not a valid JSON Schema: "
            f"{exc.message}"
        ) from exc
    return cls(schema)


def _check_max_chars(max_chars: object) -> int:
    if not isinstance(max_chars, int) or max_chars <= 0:
        raise ValueError(f"json rewards: max_chars must be a positive integer, got {max_chars!r}")
    return max_chars


@register("json_valid")
def build_json_valid(max_chars: int = 100_000) -> ItemReward:
    """Factory for `json_valid` (arg max_chars)."""
    limit = _check_max_chars(max_chars)

    def score(sample: Sample) -> float:
        return 0.0 if parse_json(sample.completion, limit) is _NO_JSON else 1.0

    return ItemReward("json_valid", score)


@register("json_schema")
def build_json_schema(max_chars: int = 100_000) -> ItemReward:
    """Factory for `json_schema` (arg max_chars); the schema is row["schema"]."""
    limit = _check_max_chars(max_chars)

    def score(sample: Sample) -> float | None:
        if sample.row.get("schema") is None:
            return None
        validator = _validator(sample.row)
        value = parse_json(sample.completion, limit)
        if value is _NO_JSON:
            return 0.0
        return 1.0 if validator.is_valid(value) else 0.0

    return ItemReward("json_schema", score)
