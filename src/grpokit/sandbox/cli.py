"""`grpokit sandbox doctor` and `grpokit sandbox run FILE`."""

from __future__ import annotations

import argparse
import json

from grpokit.sandbox import SandboxUnavailable, doctor, run


def add_commands(subparsers) -> None:
    """Register the `sandbox` command group on the top-level subparsers."""
    parser = subparsers.add_parser("sandbox", help="isolated execution of untrusted code")
    commands = parser.add_subparsers(dest="sandbox_command", required=True)
    doctor = commands.add_parser("doctor", help="which isolation this machine offers")
    doctor.set_defaults(func=doctor_command)
    run = commands.add_parser("run", help="run a Python file in the sandbox, print the verdict as JSON")
    run.add_argument("file", help="Python program to run")
    run.add_argument("--timeout", type=float, default=5.0, help="wall-clock deadline in seconds")
    run.add_argument("--memory", type=int, default=512, help="address-space limit in MiB")
    run.add_argument("--backend", default="auto",
                     help="auto, bwrap, unshare, userns or unsafe (no isolation)")
    run.add_argument("--stdin", default=None, help="file whose content is the program's stdin")
    run.set_defaults(func=run_command)


def doctor_command(args: argparse.Namespace) -> int:

    report = doctor()
    print(f"running as root: {report['root']}")
    print(f"sandbox python: {report['python']}")
    for name, reason in report["backends"].items():
        print(f"  {name:8s} {'works' if reason is None else 'unavailable: ' + reason}")
    if report["auto"] is None:
        print("auto: NO ISOLATION AVAILABLE; untrusted code will not run (install bubblewrap)")
        return 1
    print(f"auto: {report['auto']}")
    return 0


def run_command(args: argparse.Namespace) -> int:

    with open(args.file, encoding="utf-8") as handle:
        program = handle.read()
    stdin = ""
    if args.stdin:
        with open(args.stdin, encoding="utf-8") as handle:
            stdin = handle.read()
    try:
        result = run(program, stdin=stdin, timeout=args.timeout, memory_mb=args.memory,
                     backend=args.backend)
    except SandboxUnavailable as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps({
        "status": result.status, "exit_code": result.exit_code, "backend": result.backend,
        "wall_time": round(result.wall_time, 4), "stdout": result.stdout, "stderr": result.stderr,
        "stdout_truncated": result.stdout_truncated, "stderr_truncated": result.stderr_truncated,
    }, indent=2))
    return 0 if result.status == "ok" else 1
