"""The `grpokit` command line: train, eval, sft, dpo, ppo, plan, report, conformance, sandbox,
score."""

from __future__ import annotations

# Start-up stays light: `grpokit --help`, `sandbox`, `score` and `report` load no torch or
# transformers. Each command imports what it needs inside its handler; the modules whose parsers
# are declared at start-up (sandbox, score, report) import nothing heavy at module level.
import argparse
import json
import sys
from pathlib import Path

from grpokit.config.typed import parse_overrides
from grpokit.errors import ConfigError, UserError
from grpokit.report import add_commands as add_report
from grpokit.rewards.cli import add_commands as add_score
from grpokit.sandbox.cli import add_commands as add_sandbox


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="dotted overrides, e.g. algo.preset=dapo rollout.group_size=8")


def _console():
    from rich.console import Console
    return Console()


def _load(args):
    from grpokit.config import load_config
    return load_config(args.config, args.overrides)


def cmd_train(args) -> int:
    from grpokit.stages.grpo import train
    train(_load_or_resume(args), resume=args.resume, console=_console())
    return 0


def cmd_eval(args) -> int:
    from grpokit.training.evaluation import run_eval
    results = run_eval(_load(args), _console(), jsonl=args.jsonl)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


def _load_or_resume(args):
    """The config of a new run, or, with --resume DIR, DIR's saved config plus the overrides.
    A resumed run continues in DIR: an explicit other `log.output_dir` is an error."""
    if not args.resume:
        return _load(args)
    from grpokit.config import load_config
    from grpokit.training.state import run_folder_of
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
    from grpokit.stages.sft import run_sft
    run_sft(_load_or_resume(args), _console(), resume=args.resume)
    return 0


def cmd_dpo(args) -> int:
    from grpokit.stages.dpo import run_dpo
    run_dpo(_load_or_resume(args), _console(), resume=args.resume)
    return 0


def cmd_ppo(args) -> int:
    from grpokit.stages.ppo import train_ppo
    train_ppo(_load_or_resume(args), resume=args.resume, console=_console())
    return 0


def cmd_plan(args) -> int:
    from grpokit.runtime.plan_report import parse_memory, report
    if args.device_memory is not None:
        parse_memory(args.device_memory)  # bad input before anything is read
    text, fits = report(_load(args), args.world_size, args.device, args.device_memory)
    print(text)
    return 0 if fits else 1


def add_conformance(subparsers, full: bool) -> None:
    """`grpokit conformance PATH...`. Its module needs torch even to declare its arguments, so
    `grpokit --help` lists it from here, and the module declares them when the command is named."""
    if full:
        from grpokit.conformance import add_commands
        add_commands(subparsers)
    else:
        subparsers.add_parser("conformance",
                              help="check grpokit's GRPO math against conformance vectors")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; `command`, the one about to run, gets its full declaration
    even where that costs an import (conformance)."""
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
    p = sub.add_parser("plan", help="predict a run's peak memory per rank from its config, before "
                                    "loading any weight, and whether it fits (docs/plan.md)")
    _config_args(p)
    p.add_argument("--world-size", type=int, default=1, metavar="N",
                   help="ranks the run will have (default 1)")
    p.add_argument("--device-memory", metavar="SIZE",
                   help="memory per rank, e.g. 80GB or 24GiB (default: the GPU's, else this "
                        "machine's RAM divided among the ranks)")
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="the device the run trains on (default: cuda where a GPU is present)")
    p.set_defaults(func=cmd_plan)
    add_conformance(sub, full=command == "conformance")
    add_sandbox(sub)
    add_score(sub)
    add_report(sub)
    return parser


def _quiet_libraries() -> None:
    """grpokit prints its own progress; silence per-file loading bars of the model libraries."""
    import transformers
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    if args.command in ("train", "eval", "sft", "dpo", "ppo", "plan"):
        _quiet_libraries()
    try:
        return args.func(args)
    except UserError as exc:
        kind = "config error" if isinstance(exc, ConfigError) else "error"
        print(f"grpokit: {kind}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
