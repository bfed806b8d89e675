import json

import pytest

from grpokit.rewards.base import Sample
from grpokit.rewards.json_reward import build_json_schema, build_json_valid

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.mark.parametrize(
    "completion, expected",
    [
        ('{"n": 1}', 1.0),
        ("  [1, 2]\n", 1.0),
        ("<think>x</think><answer>{\"n\": 1}</answer>", 1.0),
        ("<answer>1</answer><answer>2</answer>", 0.0),
        ("Here:\n```json\n{\"n\": 1}\n```\nDone", 1.0),
        ("```\n[true]\n```", 1.0),
        ('{"n": 1', 0.0),
        ("not json", 0.0),
        ("", 0.0),
        ("   ", 0.0),
        ("[" * 100_000 + "]" * 100_000, 0.0),
    ],
)
def test_json_valid(completion, expected):
    assert build_json_valid(max_chars=9999)([Sample(completion, {})]) == [expected]


def test_deep_nesting_is_invalid_not_a_crash():
    assert build_json_valid()([Sample("[" * 40_000 + "]" * 40_000, {})]) == [0.0]


@pytest.mark.parametrize(
    "completion, schema, expected",
    [
        ('{"n": 1}', SCHEMA, 1.0),
        ('{"n": "1"}', SCHEMA, 0.0),
        ('{"m": 1}', json.dumps(SCHEMA), 0.0),
        ("nope", SCHEMA, 0.0),
        ('{"n": 1}', None, None),
    ],
)
def test_json_schema(completion, schema, expected):
    row = {} if schema is None else {"schema": schema}
    assert build_json_schema()([Sample(completion, row)]) == [expected]


@pytest.mark.parametrize(
    "schema, message",
    [("{not json", "not valid JSON"), ({"type": "nonsense"}, "not a valid JSON Schema"), (3, "must be")],
)
def test_invalid_schema_names_the_row(schema, message):
    with pytest.raises(ValueError, match=f"id=7.*{message}"):
        build_json_schema()([Sample("{}", {"id": 7, "schema": schema})])
