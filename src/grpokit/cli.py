"""The `grpokit` command line: train, eval, sft, dpo, ppo, report, conformance, sandbox, score."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import transformers
from rich.console import Console

from grpokit import conformance, report
from grpokit.config import ConfigError, load_config
from grpokit.training import run_folder_of
from grpokit.typed_tree import UserError, parse_overrides
from grpokit.evaluation import run_eval
from grpokit.rewards import cli as rewards_cli
from grpokit.sandbox import cli as sandbox_cli
from grpokit.dpo import run_dpo
from grpokit.ppo import train_ppo
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
    results = run_eval(cfg, Console(), jsonl=args.jsonl)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


def _load_or_resume(args):
    """The config of a new run, or, with --resume DIR, DIR's saved config plus the overrides.
    A resumed run continues in DIR: an explicit other `log.output_dir` is an error."""
    if not args.resume:
        return _load(args)
    run = run_folder_of(args.resume)
    if not (run / "config.yaml").is_file() and args.config is None:
        raise ConfigError(f"--resume {args.resume}: no config.yaml there; is it a run folder?")
    explicit = parse_overrides(args.overrides).get("log", {}).get("output_dir")
    if explicit is not None and Path(explicit).resolve() != run.resolve():
        raise ConfigError(f"log.output_dir={explicit} differs from --resume {args.resume}: a "
                          f"resumed run continues in its own folder")
    return load_config(args.config or run / "config.yaml",
                       [*args.overrides, f"log.output_dir={run}"])


def cmd_sft(args) -> int:
    run_sft(_load_or_resume(args), Console(), resume=args.resume)
    return 0


def cmd_dpo(args) -> int:
    run_dpo(_load_or_resume(args), Console(), resume=args.resume)
    return 0


def cmd_ppo(args) -> int:
    train_ppo(_load_or_resume(args), resume=args.resume, console=Console())
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
    p.add_argument("--jsonl", help="write each prompt's completions and scores, then the summary, "
                                   "as JSON lines here (grpokit report reads it)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("sft", help="supervised fine-tuning (cold start) on completion tokens")
    _config_args(p)
    p.add_argument("--resume", metavar="DIR", help="continue the SFT run in DIR (its newest checkpoint)")
    p.set_defaults(func=cmd_sft)
    p = sub.add_parser("dpo", help="DPO on (prompt, chosen, rejected) pairs (defaults: the "
                                   "embedded model on arithmetic pairs)")
    _config_args(p)
    p.add_argument("--resume", metavar="DIR",
                   help="continue the DPO run in DIR (its newest checkpoint)")
    p.set_defaults(func=cmd_dpo)
    p = sub.add_parser("ppo", help="PPO with a learned critic and GAE, GRPO's rollout and "
                                   "update otherwise (the baseline of bench/compare_ppo.py)")
    _config_args(p)
    p.add_argument("--resume", metavar="DIR", help="continue the PPO run in DIR")
    p.set_defaults(func=cmd_ppo)
    conformance.add_commands(sub)
    sandbox_cli.add_commands(sub)
    rewards_cli.add_commands(sub)
    report.add_commands(sub)
    return parser


def _quiet_libraries() -> None:
    """grpokit prints its own progress; silence per-file loading bars of the model libraries."""
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("train", "eval", "sft", "dpo", "ppo"):
        _quiet_libraries()
    try:
        return args.func(args)
    except UserError as exc:
        kind = "config error" if isinstance(exc, ConfigError) else "error"
        print(f"grpokit: {kind}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
