"""The `code` reward: extraction, row formats, pass fractions, and completions that try to cheat."""

from __future__ import annotations

import pytest

from grpokit.rewards.base import RewardSpec, Sample
from grpokit.rewards.code import extract_code
from grpokit.rewards.registry import build
from grpokit.sandbox import SandboxUnavailable, resolve

try:
    resolve("auto")
    ISOLATED = True
except SandboxUnavailable:  # pragma: no cover - depends on the machine
    ISOLATED = False
needs_isolation = pytest.mark.skipif(not ISOLATED, reason="no isolation backend works here")

ADD_ROW = {
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "entry_point": "add",
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-4, 4) == 0\n"
            "    assert candidate((1,), (2,)) == (1, 2)\n",
}
STDIO_ROW = {"tests": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10"},
                       {"input": "0 0\n", "output": "0\n"}]}
GOOD_STDIO = "a, b = map(int, input().split())\nprint(a + b)\n"


@pytest.mark.parametrize(
    "completion, how, expected",
    [
        ("x = 1", "auto", "x = 1"),
        ("Here:\n```python\nx = 1\n```\ntext", "auto", "x = 1\n"),
        ("```\ny = 2\n```\n```python\nx = 1\n```", "auto", "x = 1\n"),
        ("```py\nx = 1\n```", "auto", "x = 1\n"),
        ("```\ny = 2\n```", "auto", "y = 2\n"),
        ("```python\nx = 1\ndef f(", "auto", "x = 1\ndef f("),
        ("no code", "fenced", ""),
        ("```python\nx = 1\n```", "none", "```python\nx = 1\n```"),
    ],
)
def test_extract_code(completion, how, expected):
    assert extract_code(completion, how) == expected


@pytest.fixture(scope="module")
def reward():
    return build(RewardSpec("code", 1.0, {"mode": "fraction", "timeout": 1.0}))


def _score(fn, completions, row, finish_reason="stop"):
    return fn([Sample(completion=c, row=row, finish_reason=finish_reason) for c in completions])


@needs_isolation
def test_assert_style_completions(reward):
    completions = [
        "    return a + b\n",                                           # body continuing the prompt
        "```python\ndef add(a, b):\n    return a + b\n```",           # whole function, fenced
        "",                                                             # empty
        "   \n\t\n",                                                    # whitespace only
        "```python\ndef add(a, b):\n    return a +",                  # truncated mid-expression
        "    return a - b\n",                                           # wrong
        "    while True:\n        pass\n",                              # hangs: fails at the deadline
        "    return a + b\n" + "# padding\n" * 50000,                   # huge but correct
    ]
    assert _score(reward, completions, ADD_ROW) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]


CHEATS = {
    "exit at import": "import sys\nsys.exit(0)\n",
    "os._exit in the call": "def add(a, b):\n    import os\n    os._exit(0)\n",
    "SystemExit in the call": "def add(a, b):\n    raise SystemExit(0)\n",
    "always-equal object": "class E:\n    def __eq__(self, other):\n        return True\n"
                           "    __hash__ = object.__hash__\ndef add(a, b):\n    return E()\n",
    "int subclass equal to all": "class E(int):\n    def __eq__(self, other):\n        return True\n"
                                 "def add(a, b):\n    return E(0)\n",
    "patch AssertionError": "import builtins\nbuiltins.AssertionError = type('A', (BaseException,), {})\n"
                            "def add(a, b):\n    return 0\n",
    "print a fake verdict": "print('PASS')\nimport sys\nsys.stdout.write('0' * 32 + '\\n')\n"
                            "def add(a, b):\n    return 0\n",
    "kill the checker": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\ndef add(a, b):\n    return 0\n",
    "read stdin for the test": "import sys\nsecret = sys.stdin.read()\ndef add(a, b):\n    return 0\n",
}


@needs_isolation
def test_cheating_completions_fail(reward):
    completions = [f"```python\n{code}```" for code in CHEATS.values()]
    assert _score(reward, completions, ADD_ROW) == [0.0] * len(CHEATS)


@needs_isolation
def test_hidden_test_is_not_readable_by_the_candidate():
    marker = "HIDDEN_MARKER_42"
    row = dict(ADD_ROW, test=ADD_ROW["test"] + f"    assert '{marker}'\n")
    spy = (
        # The spy spells the marker in two pieces so that its own source does not contain it.
        "import os, sys\nfound = []\nneedle = ('%s' + '%s').encode()\n"
        "for name in os.listdir('.'):\n"
        "    if os.path.isfile(name) and needle in open(name, 'rb').read():\n"
        "        found.append(name)\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    for part in ('cmdline', 'environ', 'fd/0', 'mem'):\n"
        "        try:\n"
        "            data = open('/proc/%%s/%%s' %% (pid, part), 'rb').read(1 << 20)\n"
        "        except OSError:\n            continue\n"
        "        if needle in data:\n            found.append((pid, part))\n"
        "def add(a, b):\n    return a + b if not found else 0\n" % (marker[:7], marker[7:])
    )
    fn = build(RewardSpec("code", 1.0, {"timeout": 3.0}))
    assert _score(fn, [f"```python\n{spy}```"], row) == [1.0]


@needs_isolation
def test_stdio_rows_score_the_pass_fraction(reward):
    wrong_second = "a, b = map(int, input().split())\nprint(a + b if a != 5 else 0)\n"
    completions = [
        GOOD_STDIO,
        wrong_second,
        "a, b = map(int, input().split())\nprint(a + b, '   ')\n",     # trailing spaces are fine
        "a, b = map(int, input().split())\nprint(a + b)\nprint()\nprint('x')\n",  # extra line
        GOOD_STDIO + "raise SystemExit(3)\n",                            # right text, bad exit
        "import sys\nsys.exit(0)\n",
    ]
    assert _score(reward, completions, STDIO_ROW) == pytest.approx([1.0, 2 / 3, 1.0, 0.0, 0.0, 0.0])


@needs_isolation
def test_mode_all_and_rows_without_tests():
    fn = build(RewardSpec("code", 1.0, {"mode": "all"}))
    wrong_second = "a, b = map(int, input().split())\nprint(a + b if a != 5 else 0)\n"
    samples = [Sample(GOOD_STDIO, STDIO_ROW), Sample(wrong_second, STDIO_ROW),
               Sample(GOOD_STDIO, {"prompt": "no tests"}), Sample(GOOD_STDIO, {"tests": []})]
    assert fn(samples) == [1.0, 0.0, None, None]


@pytest.mark.parametrize(
    "args, match",
    [({"mode": "best"}, "mode must be one of"), ({"extract": "xml"}, "extract must be one of"),
     ({"timeout": 0}, "must be > 0"), ({"backend": "chroot"}, "unknown sandbox backend")],
)
def test_bad_args_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        build(RewardSpec("code", 1.0, args))


@needs_isolation
@pytest.mark.parametrize(
    "row, match",
    [({"test": "def check(c): pass"}, "row 0: an assert-style row needs"),
     ({"tests": [{"input": 1, "output": "1"}]}, "row 0: `tests` must be a list"),
     ({"tests": "1 -> 1"}, "row 0: `tests` must be a list")],
)
def test_malformed_rows_name_the_row_and_field(reward, row, match):
    with pytest.raises(ValueError, match=match):
        reward([Sample("x", row)])
