"""`grpokit score`: score completions in a JSONL file with a config's reward functions, and report
per function how many scored 1, 0, something else, None, or failed, with the slowest items, so a
verifier can be audited on one's own data before training.

Each input line is a JSON object with `completion` and the dataset fields the rewards read
(answer, tests, schema, ...; optionally prompt, num_tokens, max_tokens, finish_reason). Each
output line is the input plus `rewards` ({function name: value or null}) and `reward`, the
weighted sum over the non-null values (null when all are null). Each function scores one
completion at a time, so that the time of every item is known.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from grpokit.errors import UserError, read_json_lines, read_yaml
from grpokit.rewards.base import REWARD_TIMEOUT_S, RewardSpec, Sample
from grpokit.rewards.user import note_config_dir

if TYPE_CHECKING:  # the runner needs torch: imported when `grpokit score` runs, not to declare it
    from grpokit.rewards.audit import ScoreReport
    from grpokit.rewards.runner import RewardResult, RewardRunner


class ScoreInputError(UserError):
    """The config or the input file is not what `grpokit score` expects."""


def load_specs(path: str) -> list[RewardSpec]:
    """The `rewards:` list of a YAML config as RewardSpecs (YAML 1.2 booleans, as in
    `grpokit train`'s config)."""
    config = read_yaml(path, ScoreInputError) or {}
    entries = config.get("rewards") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ScoreInputError(f"{path}: expected a non-empty `rewards:` list of {{name, weight, args}}")
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ScoreInputError(f"{path}: rewards[{i}] must be a mapping with a `name`, got {entry!r}")
        unknown = set(entry) - {"name", "weight", "args", "isolate"}
        if unknown:
            raise ScoreInputError(f"{path}: rewards[{i}]: unknown keys {sorted(unknown)}; valid: name, weight, args, isolate")
        if not isinstance(entry.get("isolate", False), bool):
            raise ScoreInputError(f"{path}: rewards[{i}].isolate must be true or false, got {entry['isolate']!r}")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ScoreInputError(f"{path}: rewards[{i}].weight must be a finite number, got {weight!r}")
        args = entry.get("args") or {}
        if not isinstance(args, dict):
            raise ScoreInputError(f"{path}: rewards[{i}].args must be a mapping, got {args!r}")
        specs.append(RewardSpec(entry["name"], float(weight), dict(args), entry.get("isolate", False)))
    note_config_dir(Path(path).parent)  # import paths are searched from the config's folder first
    return specs


def _count(line: dict[str, Any], key: str, where: str) -> int:
    value = line.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ScoreInputError(f"{where}: `{key}` must be a non-negative integer, got {value!r}")
    return value


def read_samples(path: str) -> tuple[list[dict[str, Any]], list[Sample], list[int]]:
    """The input lines, their Samples and their 1-based line numbers (errors name the line)."""
    lines, samples, numbers = [], [], []
    for number, line in read_json_lines(path, ScoreInputError):
        where = f"{path}:{number}"
        if not isinstance(line, dict) or not isinstance(line.get("completion"), str):
            raise ScoreInputError(f"{where}: expected an object with a string `completion`")
        prompt = line.get("prompt")
        samples.append(Sample(
            completion=line["completion"],
            row=line,
            prompt=prompt if isinstance(prompt, str) else "",
            num_tokens=_count(line, "num_tokens", where),
            finish_reason=str(line.get("finish_reason", "stop")),
            max_tokens=_count(line, "max_tokens", where),
        ))
        lines.append(line)
        numbers.append(number)
    return lines, samples, numbers


def _value(result: RewardResult, i: int, k: int) -> Any:
    name = result.names[k]
    steps = (result.step_rewards or {}).get(name)
    if steps is not None and steps[i] is not None:
        return {"steps": list(steps[i].rewards), "ends": list(steps[i].ends)}
    value = result.value(i, k)
    return None if math.isnan(value) else value


def write_scores(lines: list[dict], result: RewardResult, out: TextIO) -> None:
    """One output line per input line: its fields plus `rewards` and the weighted `reward`."""
    for i, line in enumerate(lines):
        rewards = {name: _value(result, i, k) for k, name in enumerate(result.names)}
        terms = [w * result.value(i, k) for k, w in enumerate(result.weights)
                 if not math.isnan(result.value(i, k))]
        out.write(json.dumps({**line, "rewards": rewards, "reward": sum(terms) if terms else None}) + "\n")


def _score_all(args: argparse.Namespace, runner: RewardRunner, report: ScoreReport, out: TextIO) -> None:
    lines, samples, numbers = read_samples(args.input)
    for start in range(0, len(samples), args.batch_size):
        stop = start + args.batch_size
        result = runner.score(samples[start:stop], timed=True)
        report.add(result, numbers[start:stop])
        write_scores(lines[start:stop], result, out)


def cmd_score(args: argparse.Namespace) -> int:
    """Handler of `grpokit score`."""
    from grpokit.rewards.audit import ScoreReport
    from grpokit.rewards.runner import RewardError, RewardRunner
    report, runner, status = None, None, 0
    try:
        specs = load_specs(args.config)
        report = ScoreReport([s.name for s in specs], args.slowest)
        runner = RewardRunner(specs, max_error_rate=args.max_error_rate, timeout=args.timeout)
        out = open(args.output, "w") if args.output else sys.stdout
        try:
            _score_all(args, runner, report, out)
        finally:
            if out is not sys.stdout:
                out.close()
    except (ScoreInputError, RewardError, ValueError, OSError) as exc:
        print(f"grpokit score: {exc}", file=sys.stderr)
        status = 2
    finally:
        if runner is not None:
            runner.close()
    if report is not None and report.total:
        print(report.table(), file=sys.stderr)
        if args.report:
            Path(args.report).write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    return status


def _int_at_least(minimum: int):
    """An argparse type: an integer >= minimum, else a message naming what was expected."""
    kind = "a positive integer" if minimum == 1 else "a non-negative integer"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}")
        return value

    return parse


_positive_int, _count_arg = _int_at_least(1), _int_at_least(0)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number of seconds, got {text!r}")
    return value


def add_commands(subparsers: Any) -> None:
    """Register `score` on the grpokit command line; nonsensical numbers exit with status 2."""
    parser = subparsers.add_parser("score", help="score completions in a JSONL file with reward functions")
    parser.add_argument("-c", "--config", required=True, help="YAML file with a `rewards:` list")
    parser.add_argument("--input", required=True, help="JSONL: one {completion, answer, ...} per line")
    parser.add_argument("--output", help="JSONL to write (default: standard output)")
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="samples scored together")
    parser.add_argument("--max-error-rate", type=_rate, default=0.1,
                        help="stop when a function fails on more than this share of a batch")
    parser.add_argument("--timeout", type=_seconds, default=REWARD_TIMEOUT_S,
                        help="seconds per function and batch")
    parser.add_argument("--report", help="also write the per-function report as JSON to this file")
    parser.add_argument("--slowest", type=_count_arg, default=5,
                        help="how many of the slowest items the report lists per function")
    parser.set_defaults(func=cmd_score)
