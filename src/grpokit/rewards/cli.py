"""`grpokit score`: score completions in a JSONL file with a config's reward functions.

Each input line is a JSON object with `completion` and the dataset fields the rewards read
(answer, tests, schema, ...; optionally prompt, num_tokens, max_tokens, finish_reason). Each
output line is the input plus `rewards` ({function name: value or null}) and `reward`, the
weighted sum over the non-null values (null when all are null).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from grpokit.rewards.base import REWARD_TIMEOUT_S, RewardSpec, Sample
from grpokit.rewards.runner import RewardError, RewardResult, RewardRunner


class ScoreInputError(ValueError):
    """The config or the input file is not what `grpokit score` expects."""


def load_specs(path: str) -> list[RewardSpec]:
    """The `rewards:` list of a YAML config as RewardSpecs."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    entries = config.get("rewards") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ScoreInputError(f"{path}: expected a non-empty `rewards:` list of {{name, weight, args}}")
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ScoreInputError(f"{path}: rewards[{i}] must be a mapping with a `name`, got {entry!r}")
        unknown = set(entry) - {"name", "weight", "args"}
        if unknown:
            raise ScoreInputError(f"{path}: rewards[{i}]: unknown keys {sorted(unknown)}; valid: name, weight, args")
        specs.append(RewardSpec(entry["name"], float(entry.get("weight", 1.0)), dict(entry.get("args") or {})))
    return specs


def read_samples(path: str) -> tuple[list[dict[str, Any]], list[Sample]]:
    """The input lines and their Samples (errors name the line number)."""
    lines, samples = [], []
    for number, text in enumerate(Path(path).read_text().splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError as exc:
            raise ScoreInputError(f"{path}:{number}: not valid JSON: {exc}") from exc
        if not isinstance(line, dict) or not isinstance(line.get("completion"), str):
            raise ScoreInputError(f"{path}:{number}: expected an object with a string `completion`")
        prompt = line.get("prompt")
        samples.append(Sample(
            completion=line["completion"],
            row=line,
            prompt=prompt if isinstance(prompt, str) else "",
            num_tokens=int(line.get("num_tokens", 0)),
            finish_reason=str(line.get("finish_reason", "stop")),
            max_tokens=int(line.get("max_tokens", 0)),
        ))
        lines.append(line)
    return lines, samples


def _value(result: RewardResult, i: int, k: int) -> Any:
    name = result.names[k]
    steps = (result.step_rewards or {}).get(name)
    if steps is not None and steps[i] is not None:
        return {"steps": list(steps[i].rewards), "ends": list(steps[i].ends)}
    value = float(result.rewards[i, k])
    return None if math.isnan(value) else value


def write_scores(lines: list[dict], result: RewardResult, out: TextIO) -> None:
    """One output line per input line: its fields plus `rewards` and the weighted `reward`."""
    for i, line in enumerate(lines):
        rewards = {name: _value(result, i, k) for k, name in enumerate(result.names)}
        terms = [w * float(result.rewards[i, k]) for k, w in enumerate(result.weights)
                 if not math.isnan(float(result.rewards[i, k]))]
        out.write(json.dumps({**line, "rewards": rewards, "reward": sum(terms) if terms else None}) + "\n")


def cmd_score(args: argparse.Namespace) -> int:
    """Handler of `grpokit score`."""
    try:
        specs = load_specs(args.config)
        lines, samples = read_samples(args.input)
        runner = RewardRunner(specs, max_error_rate=args.max_error_rate, timeout=args.timeout)
        out = open(args.output, "w") if args.output else sys.stdout
        try:
            for start in range(0, len(samples), args.batch_size):
                stop = start + args.batch_size
                write_scores(lines[start:stop], runner.score(samples[start:stop]), out)
        finally:
            if out is not sys.stdout:
                out.close()
    except (ScoreInputError, RewardError, ValueError, OSError) as exc:
        print(f"grpokit score: {exc}", file=sys.stderr)
        return 2
    return 0


def add_commands(subparsers: Any) -> None:
    """Register `score` on the grpokit command line."""
    parser = subparsers.add_parser("score", help="score completions in a JSONL file with reward functions")
    parser.add_argument("-c", "--config", required=True, help="YAML file with a `rewards:` list")
    parser.add_argument("--input", required=True, help="JSONL: one {completion, answer, ...} per line")
    parser.add_argument("--output", help="JSONL to write (default: standard output)")
    parser.add_argument("--batch-size", type=int, default=256, help="samples scored together")
    parser.add_argument("--max-error-rate", type=float, default=0.1,
                        help="stop when a function fails on more than this share of a batch")
    parser.add_argument("--timeout", type=float, default=REWARD_TIMEOUT_S,
                        help="seconds per function and batch")
    parser.set_defaults(func=cmd_score)
