import argparse
import json
import re

import pytest

from grpokit.rewards.cli import add_commands

CONFIG = """
rewards:
  - {name: format, weight: 0.5}
  - {name: math, weight: 1.0, args: {extract: [answer_tag, boxed]}}
  - {name: json_schema}
"""

LINES = [
    {"completion": "<think>a</think><answer>4</answer>", "answer": "4", "id": 1},
    {"completion": "<answer>5</answer>", "answer": "4"},
    {"completion": "no tags", "prompt": "say hi"},
]


def run(tmp_path, config, lines):
    (tmp_path / "c.yaml").write_text(config)
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines))
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["score", "-c", str(tmp_path / "c.yaml"), "--input", str(tmp_path / "in.jsonl"),
                              "--output", str(tmp_path / "out.jsonl"), "--max-error-rate", "0"])
    return args.func(args)


def test_scores_each_line(tmp_path):
    assert run(tmp_path, CONFIG, LINES) == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["rewards"] for o in out] == [
        {"format": 1.0, "math": 1.0, "json_schema": None},
        {"format": 0.0, "math": 0.0, "json_schema": None},
        {"format": 0.0, "math": None, "json_schema": None},
    ]
    assert [o["reward"] for o in out] == [1.5, 0.0, 0.0]
    assert out[0]["id"] == 1 and out[2]["prompt"] == "say hi"


@pytest.mark.parametrize(
    "config, lines, message",
    [
        ("rewards: []", LINES, "non-empty `rewards:`"),
        ("rewards: [{weight: 1}]", LINES, "rewards\\[0\\] must be a mapping with a `name`"),
        ("rewards: [{name: format, wieght: 1}]", LINES, "unknown keys \\['wieght'\\]"),
        ("rewards: [{name: formatt}]", LINES, "did you mean 'format'"),
        (CONFIG, [LINES[0], "{oops"], "in.jsonl:2: not valid JSON"),
        (CONFIG, [{"answer": "4"}], "in.jsonl:1: expected an object with a string `completion`"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, capsys, config, lines, message):
    assert run(tmp_path, config, lines) == 2
    assert re.search(message, capsys.readouterr().err)
