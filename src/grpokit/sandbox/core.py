"""Run untrusted code in a sandbox: one execution, its deadline, its capped output, its cleanup."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

from grpokit.sandbox import backends
from grpokit.sandbox.backends import Limits

_PROBE = "import os\nprint('grpokit-probe', os.getpid() < 100, os.getuid() != 0)\n"


class SandboxUnavailable(RuntimeError):
    """No isolation backend works here (or the one asked for does not)."""


@dataclass
class ExecResult:
    """What one sandboxed execution did, as observed by the trusted parent."""

    status: str
    """One of ok, error (non-zero exit), timeout, memory, killed (signal), output_limit."""
    exit_code: int | None
    """Exit code, or -signal when a signal ended the program; None when the parent killed it."""
    stdout: str
    """Standard output, at most Limits.output_bytes bytes, decoded as UTF-8 with replacement."""
    stderr: str
    """Standard error, capped the same way."""
    wall_time: float
    """Seconds from start to the end of the process tree."""
    stdout_truncated: bool = False
    """Whether stdout was longer than the cap."""
    stderr_truncated: bool = False
    """Whether stderr was longer than the cap."""
    backend: str = ""
    """The backend that ran it."""


class _CappedReader(threading.Thread):
    """Drains one pipe, keeping the first `cap` bytes; sets `over` when more arrive."""

    def __init__(self, pipe, cap: int, over: threading.Event):
        super().__init__(daemon=True)
        self.pipe, self.cap, self.over = pipe, cap, over
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False

    def run(self) -> None:
        fd = self.pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            keep = max(0, min(len(chunk), self.cap - self.size))
            if keep:
                self.chunks.append(chunk[:keep])
                self.size += keep
            if keep < len(chunk):
                self.truncated = True
                self.over.set()
                return

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _kill_uid(uid: int) -> None:
    """Kill every process of a per-execution uid until none is left (backstop for escapees)."""
    for _ in range(50):
        found = False
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/status") as status:
                    fields = dict(row.split(":", 1) for row in status if ":" in row)
            except OSError:
                continue
            # Zombies are already dead; their parent (or init) reaps them.
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
                found = True
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        if not found:
            return
        time.sleep(0.01)


def _kill_tree(proc: subprocess.Popen, uid: int | None) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    if uid is not None:
        _kill_uid(uid)


def _status(code: int, killed: str | None, stderr: str, isolated: bool) -> tuple[str, int | None]:
    """Classify the end of a run; the shells and bwrap report a signal as 128 + signal."""
    if killed:
        return killed, None
    if code == 0:
        return "ok", 0
    if isolated and 128 < code <= 128 + 64:
        code = -(code - 128)
    if code < 0:
        if -code == signal.SIGXCPU:
            return "timeout", code
        return ("memory" if "MemoryError" in stderr[-2000:] else "killed"), code
    return ("memory" if "MemoryError" in stderr[-2000:] else "error"), code


def _supervise(cmd, cwd, stdin: bytes, limits: Limits, uid: int | None):
    """Start the command, enforce the deadline and output cap, return what happened."""
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env={}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
    )
    over = threading.Event()
    readers = [_CappedReader(proc.stdout, limits.output_bytes, over),
               _CappedReader(proc.stderr, limits.output_bytes, over)]
    for reader in readers:
        reader.start()
    threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True).start()
    killed = None
    deadline = start + limits.timeout
    while proc.poll() is None:
        if over.is_set() or time.monotonic() >= deadline:
            killed = "output_limit" if over.is_set() else "timeout"
            break
        time.sleep(0.005)
    _kill_tree(proc, None)
    proc.wait()
    if uid is not None:
        _kill_uid(uid)
    wall = time.monotonic() - start
    for reader in readers:
        reader.join(timeout=0.5)
    for pipe in (proc.stdout, proc.stderr):
        pipe.close()
    return proc.returncode, killed, readers, wall


def _prepare(files: dict[str, str], uid: int | None) -> str:
    workdir = tempfile.mkdtemp(prefix="grpokit-sandbox-")
    for name, text in files.items():
        if os.path.isabs(name) or ".." in name.split("/"):
            raise ValueError(f"sandbox file name {name!r} must be a relative path inside the folder")
        path = os.path.join(workdir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, 0o644)
    if uid is not None:
        for root, dirs, _ in os.walk(workdir):
            for name in [root] + [os.path.join(root, d) for d in dirs]:
                os.chown(name, uid, uid)
    return workdir


def _remove(workdir: str) -> None:
    def unlock(func, path, _exc):
        os.chmod(os.path.dirname(path), 0o700)
        func(path)

    shutil.rmtree(workdir, onerror=unlock)


def run(
    program: str | dict[str, str],
    *,
    stdin: str = "",
    timeout: float = 5.0,
    memory_mb: int = 512,
    backend: str = "auto",
    argv: list[str] | None = None,
    limits: Limits | None = None,
) -> ExecResult:
    """Run a Python program (source text, or files with `main.py` as the entry) in the sandbox.

    `argv` replaces the default `python -I -B main.py` ("python" is the sandbox interpreter).
    `limits` overrides timeout and memory_mb when given."""
    name = resolve(backend)
    limits = limits or Limits(timeout=timeout, memory_mb=memory_mb)
    files = {"main.py": program} if isinstance(program, str) else dict(program)
    uid = backends.allocate_uid() if backends.uses_private_uid(name) else None
    workdir = _prepare(files, uid)
    try:
        cmd = backends.command(name, workdir, argv or ["python", "-I", "-B", "main.py"], limits, uid)
        code, killed, (out, err), wall = _supervise(cmd, workdir, stdin.encode(), limits, uid)
    finally:
        _remove(workdir)
        backends.release_uid(uid)
    status, exit_code = _status(code, killed, err.text(), name != "unsafe")
    return ExecResult(status, exit_code, out.text(), err.text(), wall,
                      out.truncated, err.truncated, name)


@functools.lru_cache(maxsize=None)
def probe(backend: str) -> str | None:
    """Run a tiny program under a backend; None when it works, else why not."""
    reason = backends.applicable(backend)
    if reason:
        return reason
    uid = backends.allocate_uid() if backends.uses_private_uid(backend) else None
    workdir = _prepare({"main.py": _PROBE}, uid)
    try:
        cmd = backends.command(backend, workdir, ["python", "-I", "-B", "main.py"], Limits(), uid)
        code, _, (out, err), _ = _supervise(cmd, workdir, b"", Limits(timeout=10.0), uid)
    except OSError as exc:
        return f"could not start: {exc}"
    finally:
        _remove(workdir)
        backends.release_uid(uid)
    expected = "grpokit-probe True True" if backend != "unsafe" else "grpokit-probe"
    if code != 0 or not out.text().startswith(expected):
        return f"probe failed (exit {code}): {(err.text() or out.text()).strip()[-300:]}"
    return None


def resolve(backend: str = "auto") -> str:
    """The backend a run with `backend` uses; raises SandboxUnavailable when it does not work."""
    if backend not in backends.BACKENDS + ("auto",):
        raise ValueError(f"unknown sandbox backend {backend!r}; valid: auto, {', '.join(backends.BACKENDS)}")
    if backend == "auto":
        for name in backends.ISOLATED_BACKENDS:
            if probe(name) is None:
                return name
        reasons = "; ".join(f"{name}: {probe(name)}" for name in backends.ISOLATED_BACKENDS)
        raise SandboxUnavailable(
            f"no isolation backend works here ({reasons}); install bubblewrap, or pass "
            "backend='unsafe' to run untrusted code without isolation"
        )
    reason = probe(backend)
    if reason:
        raise SandboxUnavailable(f"sandbox backend {backend!r} does not work here: {reason}")
    return backend


def detect() -> dict[str, str | None]:
    """For every backend: None when it works here, else the reason it does not."""
    return {name: probe(name) for name in backends.BACKENDS}


def doctor() -> dict:
    """What isolation this machine offers and which backend "auto" picks."""
    report = detect()
    auto = next((name for name in backends.ISOLATED_BACKENDS if report[name] is None), None)
    try:
        python = backends.interpreter()[0]
    except RuntimeError as exc:
        python = str(exc)
    return {"backends": report, "auto": auto, "root": backends.is_root(), "python": python}
