"""The in-sandbox test harness for assert-style tests (HumanEval `check(candidate)`).

This file is copied into the sandbox's working folder and run with the sandbox interpreter; it
uses only the standard library. Two processes:

- `check` (started first): makes itself non-dumpable (so that a process of the same uid cannot
  read its memory or file descriptors), reads the hidden test and a nonce from stdin, then starts
  the candidate in a separate `serve` process. The test's `candidate` is a proxy that sends the
  arguments to that process and decodes the answer into plain values, so the comparisons in the
  test run on data, never on objects the candidate built (an `__eq__` that always returns True
  cannot survive the trip). It prints the nonce only after `check` returned.
- `serve ENTRY`: runs solution.py, then answers calls of ENTRY read as JSON lines. It never sees
  the test or the nonce; its prints go to stderr.
"""

import builtins
import json
import math
import os
import subprocess
import sys

MAX_LINE = 8 << 20
_TAGS = ("tuple", "dict", "set", "frozenset", "bytes", "complex")


def encode(value, depth=0):
    """Plain data to a JSON-able tree; exact types only (subclasses are refused)."""
    if depth > 100:
        raise ValueError("value nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"t": "float", "v": repr(value)}
    if kind is list:
        return [encode(item, depth + 1) for item in value]
    if kind in (tuple, set, frozenset):
        return {"t": kind.__name__, "v": [encode(item, depth + 1) for item in value]}
    if kind is dict:
        return {"t": "dict", "v": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"t": "bytes", "v": value.hex()}
    if kind is complex:
        return {"t": "complex", "v": [encode(value.real), encode(value.imag)]}
    raise TypeError("cannot pass a value of type %s across the sandbox" % kind.__name__)


def decode(tree, depth=0):
    """The inverse of encode; anything else is a protocol error."""
    if depth > 100:
        raise ValueError("value nested too deeply")
    if tree is None or type(tree) in (bool, int, float, str):
        return tree
    if type(tree) is list:
        return [decode(item, depth + 1) for item in tree]
    if type(tree) is not dict or set(tree) != {"t", "v"}:
        raise ValueError("malformed value from the candidate")
    tag, body = tree["t"], tree["v"]
    if tag == "float" and body in ("nan", "inf", "-inf"):
        return float(body)
    if tag == "bytes" and type(body) is str:
        return bytes.fromhex(body)
    if type(body) is not list:
        raise ValueError("malformed value from the candidate")
    items = [decode(item, depth + 1) for item in body]
    if tag == "tuple":
        return tuple(items)
    if tag in ("set", "frozenset"):
        return set(items) if tag == "set" else frozenset(items)
    if tag == "complex" and len(items) == 2:
        return complex(items[0], items[1])
    if tag == "dict" and all(type(pair) is list and len(pair) == 2 for pair in items):
        return {key: value for key, value in items}
    raise ValueError("malformed value from the candidate")


class CandidateError(Exception):
    """The candidate raised, died, or answered something that is not plain data."""


def _no_dump():
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 4
        raise OSError("prctl(PR_SET_DUMPABLE, 0) failed")


def _proxy(child):
    def candidate(*args, **kwargs):
        request = json.dumps({"args": encode(list(args)), "kwargs": encode(kwargs)})
        try:
            child.stdin.write(request + "\n")
            child.stdin.flush()
        except OSError:
            raise CandidateError("the candidate process is gone")
        line = child.stdout.readline(MAX_LINE)
        if not line.endswith("\n"):
            raise CandidateError("the candidate process died or answered too much")
        answer = json.loads(line)
        if type(answer) is not dict:
            raise CandidateError("malformed answer")
        if "raise" in answer:
            name = str(answer["raise"])
            kind = getattr(builtins, name, None) if name.isidentifier() else None
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                kind = CandidateError
            raise kind(str(answer.get("message", ""))[:1000])
        return decode(answer["return"])

    return candidate


def check_main():
    _no_dump()
    payload = json.loads(sys.stdin.read())
    sys.stdin.close()
    child = subprocess.Popen(
        [sys.executable, "-I", "-B", os.path.abspath(__file__), "serve", payload["entry_point"]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, env={}, text=True,
    )
    candidate = _proxy(child)
    namespace = {"__name__": "__check__"}
    exec(compile(payload["helpers"], "prompt.py", "exec"), namespace)
    # Some tests call the function by its name instead of through `candidate`.
    namespace[payload["entry_point"]] = candidate
    exec(compile(payload["test"], "test.py", "exec"), namespace)
    try:
        namespace["check"](candidate)
    finally:
        child.kill()
        child.wait()
    sys.stdout.write(payload["nonce"] + "\n")
    sys.stdout.flush()


def serve_main(entry_point):
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    requests = os.fdopen(os.dup(0), "r")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    namespace = {"__name__": "solution"}
    with open("solution.py", encoding="utf-8") as handle:
        exec(compile(handle.read(), "solution.py", "exec"), namespace)
    function = namespace[entry_point]
    for line in requests:
        call = json.loads(line)
        try:
            result = function(*decode(call["args"]), **decode(call["kwargs"]))
            answer = json.dumps({"return": encode(result)})
        except Exception as exc:  # the test decides whether an exception was expected
            answer = json.dumps({"raise": type(exc).__name__, "message": str(exc)[:1000]})
        channel.write(answer + "\n")
        channel.flush()


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check_main()
    else:
        serve_main(sys.argv[2])
