"""The `grpokit` command line: train, eval, sft, conformance, sandbox, score."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import transformers
from rich.console import Console

from grpokit import conformance
from grpokit.config import ConfigError, load_config
from grpokit.evaluation import run_eval
from grpokit.rewards import cli as rewards_cli
from grpokit.sandbox import cli as sandbox_cli
from grpokit.sft import run_sft
from grpokit.trainer import train


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="dotted overrides, e.g. algo.preset=dapo rollout.group_size=8")


def _load(args):
    return load_config(args.config, args.overrides)


def cmd_train(args) -> int:
    train(_load_or_resume(args), resume=args.resume, console=Console())
    return 0


def cmd_eval(args) -> int:
    cfg = _load(args)
    results = run_eval(cfg, Console())
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


def _load_or_resume(args):
    """The config of a new run, or, with --resume DIR, DIR's saved config plus the overrides."""
    if args.resume:
        return load_config(args.config or Path(args.resume) / "config.yaml", args.overrides)
    return _load(args)


def cmd_sft(args) -> int:
    run_sft(_load_or_resume(args), Console(), resume=args.resume)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grpokit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train with GRPO (defaults: the embedded model on arithmetic)")
    _config_args(p)
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR (its newest checkpoint)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a model on a task: rewards, pass@k, maj@k")
    _config_args(p)
    p.add_argument("--output", help="write the results as JSON here")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("sft", help="supervised fine-tuning (cold start) on completion tokens")
    _config_args(p)
    p.add_argument("--resume", metavar="DIR", help="continue the SFT run in DIR (its newest checkpoint)")
    p.set_defaults(func=cmd_sft)
    conformance.add_commands(sub)
    sandbox_cli.add_commands(sub)
    rewards_cli.add_commands(sub)
    return parser


def _quiet_libraries() -> None:
    """grpokit prints its own progress; silence per-file loading bars of the model libraries."""
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("train", "eval", "sft"):
        _quiet_libraries()
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"grpokit: config error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
