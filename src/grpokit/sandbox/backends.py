"""Isolation backends: how one execution is wrapped, and which wrappers work on this machine.

Every backend runs the program with an empty environment, rlimits set by `prlimit` as the
innermost wrapper (so that process counts are taken inside the sandbox's own user namespace where
there is one), and in a fresh session so that the parent can kill the whole process group.

- `bwrap`: bubblewrap. New user, PID, network, IPC, UTS, cgroup and mount namespaces; the
  filesystem is only /usr (read-only), the interpreter's prefix (read-only), a private /tmp and the
  working folder. As root it is started under a fresh unprivileged uid (one per execution).
- `unshare` (root only): util-linux `unshare` for PID, network, mount, IPC and UTS namespaces,
  tmpfs over the world-writable folders and over the top-level folders the interpreter does not
  need, then `setpriv` to a fresh unprivileged uid with no capabilities.
- `userns` (not root): the same through an unprivileged user namespace; the program runs as the
  namespace's root with every capability dropped and `noroot` securebits locked.
- `unsafe`: a plain subprocess with rlimits only. Never chosen by "auto".
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import sys
import threading
from dataclasses import dataclass

ISOLATED_BACKENDS = ("bwrap", "unshare", "userns")
BACKENDS = ISOLATED_BACKENDS + ("unsafe",)
SANDBOX_DIR = "/sandbox"
"""Where bubblewrap mounts the working folder inside the sandbox."""

# Top-level folders the program may see under the `unshare`/`userns` backends; every other one is
# hidden under an empty read-only tmpfs (datasets, virtual environments, home folders).
_KEEP_TOP = {"tmp", "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev", "sys"}
_SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")

_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


@dataclass(frozen=True)
class Limits:
    """Resource limits of one execution."""

    timeout: float = 5.0
    """Wall-clock deadline in seconds; the whole process tree is killed when it passes."""
    memory_mb: int = 512
    """Address-space limit per process (RLIMIT_AS), in MiB."""
    processes: int = 64
    """Most processes the sandbox may have at once (RLIMIT_NPROC)."""
    file_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE), in MiB."""
    open_files: int = 64
    """Most open file descriptors per process (RLIMIT_NOFILE)."""
    output_bytes: int = 1 << 20
    """Bytes of stdout and of stderr kept; more output kills the run with status output_limit."""


def is_root() -> bool:
    return os.geteuid() == 0


def allocate_uid() -> int:
    """A fresh unprivileged uid for one execution, so that runs cannot touch each other's files
    or processes and RLIMIT_NPROC counts only this run's processes."""
    with _uid_lock:
        while True:
            uid = 1_000_000 + secrets.randbelow(1_000_000_000)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def release_uid(uid: int | None) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _world_executable(path: str) -> bool:
    """Whether an unprivileged uid can reach and execute `path` (every parent folder o+x)."""
    path = os.path.realpath(path)
    parts = path.split("/")
    for i in range(2, len(parts)):
        folder = "/".join(parts[:i])
        if not os.stat(folder).st_mode & 0o001:
            return False
    return bool(os.stat(path).st_mode & 0o001)


@functools.lru_cache(maxsize=1)
def interpreter() -> tuple[str, str]:
    """(python executable, its install prefix) usable by an unprivileged uid.

    The current interpreter when every user can run it, else the system /usr/bin/python3; the
    harness only needs the standard library."""
    candidates = [(os.path.realpath(sys.executable), sys.base_prefix), ("/usr/bin/python3", "/usr")]
    for exe, prefix in candidates:
        if os.path.exists(exe) and (not is_root() or _world_executable(exe)):
            return exe, os.path.realpath(prefix)
    raise RuntimeError(
        "no Python interpreter an unprivileged user can execute: tried "
        + ", ".join(exe for exe, _ in candidates)
    )


def prlimit_args(limits: Limits) -> list[str]:
    cpu = int(limits.timeout) + 1
    return [
        shutil.which("prlimit") or "/usr/bin/prlimit",
        f"--cpu={cpu}",
        f"--as={limits.memory_mb << 20}",
        f"--nproc={limits.processes}",
        f"--fsize={limits.file_mb << 20}",
        f"--nofile={limits.open_files}",
        "--core=0",
        "--",
    ]


def _bwrap(workdir: str, argv: list[str], limits: Limits, uid: int | None) -> list[str]:
    exe, prefix = interpreter()
    cmd = []
    if uid is not None:
        cmd += _setpriv_uid(uid)
    cmd += [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session"]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if os.path.islink(f"/{link}"):
            cmd += ["--symlink", os.readlink(f"/{link}"), f"/{link}"]
    if not prefix.startswith("/usr/"):
        cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", workdir, SANDBOX_DIR]
    cmd += ["--chdir", SANDBOX_DIR, "--uid", "65534", "--gid", "65534", "--hostname", "sandbox"]
    cmd += ["--clearenv", "--"] + prlimit_args(limits) + [exe if a == "python" else a for a in argv]
    return cmd


def _setpriv_uid(uid: int) -> list[str]:
    return [
        shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
        "--inh-caps=-all", "--bounding-set=-all", "--",
    ]


def _mount_script() -> str:
    """Shell run as (namespace) root before dropping privileges: private scratch folders and an
    empty tmpfs over every top-level folder the interpreter does not live in. The shell stays
    the PID namespace's init (no exec), so that signals to the program behave as usual and its
    death ends the namespace."""
    _, prefix = interpreter()
    keep = _KEEP_TOP | {prefix.split("/")[1]}
    hide = [
        f"/{name}" for name in sorted(os.listdir("/"))
        if name not in keep and os.path.isdir(f"/{name}") and not os.path.islink(f"/{name}")
        and f"/{name}" not in _SCRATCH
    ]
    mount = shutil.which("mount") or "/bin/mount"
    # The working folder is the current directory: it stays reachable through "." after the
    # folder holding it is covered, and is bound to a fixed place inside the private /tmp.
    lines = ["set -e"]
    lines += [f"{mount} -t tmpfs -o size=64m,mode=1777,nosuid,nodev tmpfs {d}" for d in _SCRATCH
              if os.path.isdir(d)]
    lines += [f"{mount} -t tmpfs -o ro,size=1m,mode=755 tmpfs {d}" for d in hide]
    lines += ["mkdir /tmp/sandbox", f"{mount} --no-canonicalize --bind . /tmp/sandbox", "cd /tmp/sandbox", '"$@"']
    return "\n".join(lines)


def _unshare(workdir: str, argv: list[str], limits: Limits, uid: int | None) -> list[str]:
    exe, _ = interpreter()
    cmd = [shutil.which("unshare") or "unshare"]
    if uid is None:
        cmd += ["--user", "--map-root-user"]
    cmd += ["--pid", "--fork", "--kill-child", "--net", "--mount", "--mount-proc", "--ipc", "--uts"]
    cmd += ["--", "/bin/sh", "-c", _mount_script(), "sh"]
    if uid is not None:
        cmd += _setpriv_uid(uid)
    else:
        cmd += [
            shutil.which("setpriv") or "setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all",
            "--securebits=+noroot,+noroot_locked,+no_setuid_fixup,+no_setuid_fixup_locked", "--",
        ]
    return cmd + prlimit_args(limits) + [exe if a == "python" else a for a in argv]


def _unsafe(workdir: str, argv: list[str], limits: Limits, uid: int | None) -> list[str]:
    exe, _ = interpreter()
    return prlimit_args(limits) + [exe if a == "python" else a for a in argv]


def command(backend: str, workdir: str, argv: list[str], limits: Limits, uid: int | None) -> list[str]:
    """The full command line that runs `argv` ("python" stands for the sandbox interpreter)."""
    builders = {"bwrap": _bwrap, "unshare": _unshare, "userns": _unshare, "unsafe": _unsafe}
    return builders[backend](workdir, argv, limits, uid)


def uses_private_uid(backend: str) -> bool:
    """Whether executions of this backend run under a fresh uid (root starting bwrap/unshare)."""
    return is_root() and backend in ("bwrap", "unshare")


def applicable(backend: str) -> str | None:
    """Why a backend cannot be tried here, or None when it can."""
    needed = {"bwrap": ["bwrap", "prlimit"], "unshare": ["unshare", "setpriv", "prlimit"],
              "userns": ["unshare", "setpriv", "prlimit"], "unsafe": ["prlimit"]}[backend]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    if backend == "unshare" and not is_root():
        return "needs root (use userns or bwrap)"
    if backend == "userns" and is_root():
        return "for non-root users (root uses unshare)"
    return None
