import argparse
import json
import re
import subprocess
import sys
import threading

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


@pytest.mark.parametrize("config, content, message", [
    (CONFIG, b'{"completion": "a", "answer": "4"}\n{"completion": "caf\xe9"}\n',
     r"in.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 20\)"),
    ("rewards:\n  - {name: format\n", None, r"c.yaml:3: not valid YAML"),
])
def test_undecodable_input_and_invalid_yaml_name_file_and_line(tmp_path, capsys, config, content,
                                                               message):
    (tmp_path / "in.jsonl").write_bytes(content or json.dumps(LINES[0]).encode())
    (tmp_path / "c.yaml").write_text(config)
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["score", "-c", str(tmp_path / "c.yaml"),
                              "--input", str(tmp_path / "in.jsonl")])
    assert args.func(args) == 2
    assert re.search(message, capsys.readouterr().err)


def _parse(tmp_path, *extra):
    (tmp_path / "c.yaml").write_text(CONFIG)
    (tmp_path / "in.jsonl").write_text(json.dumps(LINES[0]))
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    return parser.parse_args(["score", "-c", str(tmp_path / "c.yaml"), "--input", str(tmp_path / "in.jsonl"),
                              *extra])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "-1"], "--batch-size: must be a positive integer, got '-1'"),
        (["--batch-size", "0"], "--batch-size: must be a positive integer"),
        (["--batch-size", "2.5"], "--batch-size: must be a positive integer"),
        (["--max-error-rate", "2"], "--max-error-rate: must be a number in \\[0, 1\\]"),
        (["--max-error-rate", "nan"], "--max-error-rate: must be a number in \\[0, 1\\]"),
        (["--timeout", "0"], "--timeout: must be a positive, finite number of seconds"),
        (["--timeout", "inf"], "--timeout: must be a positive, finite number of seconds"),
        (["--slowest", "-3"], "--slowest: must be a non-negative integer"),
    ],
)
def test_nonsensical_numbers_exit_with_status_2(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_:
        _parse(tmp_path, *extra)
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_batch_size_minus_one_from_the_command_line(tmp_path):
    (tmp_path / "c.yaml").write_text(CONFIG)
    (tmp_path / "in.jsonl").write_text(json.dumps(LINES[0]))
    out = subprocess.run([sys.executable, "-m", "grpokit", "score", "-c", str(tmp_path / "c.yaml"),
                          "--input", str(tmp_path / "in.jsonl"), "--batch-size", "-1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "--batch-size: must be a positive integer, got '-1'" in out.stderr
    assert out.stdout == ""


def test_bad_counts_in_a_line_name_the_line(tmp_path, capsys):
    lines = [LINES[0], {"completion": "x", "num_tokens": -4}]
    assert run(tmp_path, CONFIG, lines) == 2
    assert "in.jsonl:2: `num_tokens` must be a non-negative integer, got -4" in capsys.readouterr().err


def test_report_counts_and_slowest_items(tmp_path, capsys):
    lines = LINES + [{"completion": r"\boxed{4}", "answer": "4"}, {"completion": "<answer>x</answer>", "answer": "}{"}]
    args = _parse(tmp_path, "--output", str(tmp_path / "out.jsonl"), "--report", str(tmp_path / "r.json"),
                  "--slowest", "2", "--batch-size", "2")
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    assert args.func(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["completions"] == 5
    math_ = report["functions"]["math"]
    # lines 1 and 4 right, line 2 wrong, line 3 has no answer, line 5's gold is not mathematics
    assert {k: math_[k] for k in ("1", "0", "other", "None", "error")} == \
        {"1": 2, "0": 1, "other": 0, "None": 2, "error": 0}
    assert math_["mean"] == pytest.approx(2 / 3)
    assert len(math_["slowest"]) == 2 and {"line", "seconds", "value"} <= set(math_["slowest"][0])
    assert math_["slowest"][0]["seconds"] >= math_["slowest"][1]["seconds"]
    assert report["functions"]["json_schema"]["None"] == 5
    table = capsys.readouterr().err
    assert "grpokit score: 5 completions" in table and "math" in table


def test_a_judge_that_is_down_stops_score_with_status_2(tmp_path, capsys):
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Down(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Down)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        config = f"rewards:\n  - {{name: judge, args: {{base_url: '{url}', model: m, max_retries: 0}}}}\n"
        assert run(tmp_path, config, LINES) == 2
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert "reward 'judge' failed on 3 of 3 samples" in err
    assert "last error: sample 2" in err and "HTTP 500 after 1 attempts" in err
