"""Containment tests: each attack is contained, ends within its deadline + 1 s, and leaves no
process or file behind. The default run uses the backend "auto" picks; the other isolated
backends that work here run under -m slow."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time

import pytest

from grpokit.sandbox import ExecResult, Limits, SandboxPool, SandboxUnavailable, detect, resolve, run
from grpokit.sandbox.core import _status

try:
    AUTO = resolve("auto")
except SandboxUnavailable as exc:  # pragma: no cover - depends on the machine
    AUTO, WHY = None, str(exc)
OTHERS = [name for name, reason in detect().items()
          if reason is None and name not in (AUTO, "unsafe")]
BACKENDS = ([AUTO] if AUTO else []) + [pytest.param(name, marks=pytest.mark.slow) for name in OTHERS]
needs_isolation = pytest.mark.skipif(AUTO is None, reason="no isolation backend works here")


def _leftovers(marker: str) -> list[str]:
    """Command lines of live processes that mention the marker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().decode(errors="replace")
            with open(f"/proc/{pid}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z" and int(pid) != os.getpid():
            found.append(cmdline)
    return found


def _workdirs() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("grpokit-sandbox-")}


def _contained(backend: str, program: str, timeout: float = 0.5, **kwargs) -> ExecResult:
    before = _workdirs()
    start = time.monotonic()
    result = run(program, timeout=timeout, backend=backend, **kwargs)
    assert time.monotonic() - start < timeout + 1.0
    assert _workdirs() <= before, "the working folder was not removed"
    return result


@needs_isolation
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name, program, statuses",
    [
        ("infinite loop", "while True:\n    pass\n", {"timeout"}),
        ("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                      "        pass\n", {"timeout"}),
        ("one huge allocation", "data = bytes(8 << 30)\n", {"memory"}),
        ("100 MB on stdout", "import sys\nfor _ in range(1600):\n    sys.stdout.write('x' * 65536)\n",
         {"output_limit"}),
        ("huge file", "with open('big', 'wb') as f:\n    for _ in range(100):\n"
                      "        f.write(bytes(1 << 20))\n", {"killed", "error"}),
        ("kill the parent", "import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\n"
                            "except OSError:\n    pass\nwhile True:\n    pass\n", {"timeout"}),
    ],
)
def test_attack_is_contained(backend, name, program, statuses):
    marker = "grpokit_marker_" + secrets.token_hex(4)
    result = _contained(backend, f"# {marker}\n" + program)
    assert result.status in statuses, (name, result)
    assert len(result.stdout) <= Limits().output_bytes
    assert not _leftovers(marker)


@needs_isolation
@pytest.mark.parametrize("backend", BACKENDS)
def test_growing_memory_bomb_hits_the_limit(backend):
    program = "chunks = []\nwhile True:\n    chunks.append(b'x' * (8 << 20))\n"
    result = _contained(backend, program, timeout=2.0, memory_mb=96)
    assert result.status == "memory", result


@needs_isolation
@pytest.mark.parametrize("backend", BACKENDS)
def test_daemonized_grandchild_does_not_outlive_the_run(backend):
    marker = "grpokit_daemon_" + secrets.token_hex(4)
    program = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(30) # {marker}'])\n"
        "    os._exit(0)\n"
        "time.sleep(0.2)\n"
        "print('parent done')\n"
    )
    result = _contained(backend, program)
    assert result.status == "ok" and "parent done" in result.stdout
    time.sleep(0.1)
    assert not _leftovers(marker)


@needs_isolation
@pytest.mark.parametrize("backend", BACKENDS)
def test_writes_outside_the_working_folder_do_not_reach_the_host(backend):
    target = os.path.join(tempfile.gettempdir(), "grpokit-escape-" + secrets.token_hex(4))
    home = os.path.join(os.path.expanduser("~"), "grpokit-escape-" + secrets.token_hex(4))
    program = (
        "for path in [%r, %r, '/usr/grpokit-escape', '/grpokit-escape']:\n"
        "    try:\n        open(path, 'w').write('x')\n    except OSError:\n        pass\n"
        "open('inside', 'w').write('fine')\n" % (target, home)
    )
    result = _contained(backend, program)
    assert result.status == "ok", result
    for path in (target, home, "/usr/grpokit-escape", "/grpokit-escape"):
        assert not os.path.exists(path)


@needs_isolation
@pytest.mark.parametrize("backend", BACKENDS)
def test_parent_environment_is_not_visible(backend, monkeypatch):
    secret = "s3cret-" + secrets.token_hex(8)
    monkeypatch.setenv("GRPOKIT_TEST_SECRET", secret)
    program = (
        "import os\nprint(dict(os.environ))\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n        print(open('/proc/%s/environ' % pid, 'rb').read())\n"
        "    except OSError:\n        pass\n"
    )
    result = _contained(backend, program)
    assert result.status == "ok"
    assert secret not in result.stdout and "GRPOKIT_TEST_SECRET" not in result.stdout


@needs_isolation
@pytest.mark.parametrize("backend", BACKENDS)
def test_network_is_unreachable(backend):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        program = (
            "import socket\ntry:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n"
            "    print('connected')\nexcept OSError as exc:\n    print('refused', exc)\n"
        )
        result = _contained(backend, program)
        with pytest.raises(socket.timeout):
            listener.accept()
    assert "connected" not in result.stdout and "refused" in result.stdout


@needs_isolation
def test_runs_as_unprivileged_user_in_its_own_pid_namespace():
    result = run("import os\nprint(os.getuid(), os.getpid(), len(os.listdir('/proc')))\n", backend=AUTO)
    uid, pid, _ = map(int, result.stdout.split())
    assert result.status == "ok" and uid != 0 and pid < 100


@pytest.mark.parametrize(
    "code, killed, stderr, expected",
    [
        (0, None, "", ("ok", 0)),
        (1, None, "Traceback\nValueError: x", ("error", 1)),
        (1, None, "Traceback\nMemoryError", ("memory", 1)),
        (137, None, "", ("killed", -9)),
        (128 + 24, None, "", ("timeout", -24)),
        (-9, "timeout", "", ("timeout", None)),
        (-9, "output_limit", "", ("output_limit", None)),
    ],
)
def test_status_classification(code, killed, stderr, expected):
    assert _status(code, killed, stderr, isolated=True) == expected


def test_unknown_backend_is_refused_with_the_valid_names():
    with pytest.raises(ValueError, match="valid: auto, bwrap"):
        run("print(1)", backend="chroot")


@needs_isolation
def test_pool_keeps_order_and_captures_stdin():
    with SandboxPool(2) as pool:
        results = pool.run_many([
            {"program": "print(input()[::-1])", "stdin": text, "backend": AUTO} for text in ("abc", "xy", "")
        ])
    assert [r.stdout for r in results] == ["cba\n", "yx\n", ""]
    assert [r.status for r in results] == ["ok", "ok", "error"]
