"""Tools: the calculator's whitelist, the sandboxed python tool, deadlines and errors of user
tools, the `tags` environment's parsing and replies, and the tools config checks."""

import time

import pytest

from grpokit.config import ConfigError, load_config
from grpokit.config.tools import ToolsConfig
from grpokit.rollout.base import ModelTurn
from grpokit.sandbox import detect
from grpokit.tools import (
    TagEnvironment,
    Tool,
    ToolError,
    build_tools,
    calculate,
    call_tools,
    make_environment,
    print_last_expression,
    register_tool,
)
from grpokit.tools.env import clip

ISOLATED = any(detect()[name] is None for name in ("bwrap", "unshare", "userns"))
needs_sandbox = pytest.mark.skipif(not ISOLATED, reason="no isolation backend works here")


@pytest.mark.parametrize("expression, value", [
    ("48213 * 7391", "356342283"),
    ("2 ** 10 - 24 // 5", "1020"),
    ("(1 + 2) * -3", "-9"),
    ("7 / 2", "3.5"),
    ("1 / 3", "0.333333333333333"),
    ("0.1 + 0.2", "0.3"),  # exact rationals, not floats
    ("-7 % 3", "2"),
    ("2 ** -2", "0.25"),
    ("12345678901234567890 * 98765432109876543210",
     "1219326311370217952237463801111263526900"),
    ("-" * 400 + "1", "1"),
])
def test_calculator_is_exact(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression, match", [
    ("__import__('os').system('ls')", "unsupported expression: Call"),
    ("x + 1", "unsupported expression: Name"),
    ("(1).real", "unsupported expression: Attribute"),
    ("2 ^ 10", r"write \*\*"),
    ("9 ** 9 ** 9", "power is too large"),
    ("10 ** 2000", "power is too large"),
    ("2 ** 0.5", "whole-number exponents"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("", "empty expression"),
    ("1 +", "not an arithmetic expression"),
    ("1" * 1001, "longer than 1000"),
    ("True + 1", "unsupported expression: Constant"),
    ("'a' * 3", "unsupported expression: Constant"),
    ("(" * 300 + "1" + ")" * 300, "too many nested parentheses"),
])
def test_calculator_refuses_what_is_not_bounded_arithmetic(expression, match):
    with pytest.raises(ToolError, match=match):
        calculate(expression)


def test_calculator_bounds_repeated_products():
    with pytest.raises(ToolError, match="too large"):
        calculate("2 ** 4000 * 2 ** 4000")  # each power is within the bound, the product not


@pytest.mark.parametrize("expression, value", [
    ("1 ** 5000", "1"),  # a large exponent, a small result
    ("(-1) ** 10 ** 6", "1"),
    ("(-1) ** (10 ** 6 + 1)", "-1"),
    ("0 ** 10 ** 100", "0"),
    ("1 ** -(10 ** 100)", "1"),
    ("(-1) ** 2 ** 4000", "1"),  # an exponent of 4001 bits on a unit base
    ("2 ** 4095 // 2 ** 4094", "2"),  # 4096 bits: the largest allowed
    ("(1/2) ** 4095 * 2 ** 4095", "1"),
    ("3 ** 2584 % 10", "1"),  # 4095.6 bits
])
def test_calculator_bounds_a_power_by_its_result(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression", [
    "2 ** 4096", "3 ** 2585", "(1/2) ** 4096", "2 ** -4096", "10 ** 10 ** 8", "7 ** 2 ** 4000",
    "(-2) ** 10 ** 999",
])
def test_calculator_refuses_a_power_whose_result_is_too_large_at_once(expression):
    start = time.monotonic()
    with pytest.raises(ToolError, match=r"too large .*over 4096 bits"):
        calculate(expression)
    assert time.monotonic() - start < 0.1  # estimated, never computed


def test_the_last_expression_of_python_code_is_printed():
    assert print_last_expression("x = 3\nx * 4") == \
        "x = 3\n_grpokit_value = x * 4\nif _grpokit_value is not None:\n    print(_grpokit_value)"
    assert print_last_expression("print(1)\nx = 2") == "print(1)\nx = 2"  # not an expression
    assert print_last_expression("def f(:") == "def f(:"  # left for the sandbox to report


@needs_sandbox
def test_python_tool_runs_in_the_sandbox_with_its_limits():
    tools = build_tools(ToolsConfig(names=["python"], timeout=3.0, max_output_chars=40))
    python = tools["python"]
    calls = [(python, "print(48213 * 7391)"), (python, "12 * 34"), (python, "1 / 0"),
             (python, "while True: pass"), (python, "import os\nprint(os.getuid() != 0)")]
    start = time.monotonic()
    ok, expression, error, hang, uid = call_tools(calls)
    assert time.monotonic() - start < 3.0 + 2.0  # the hanging program is cut at 3 s
    assert (ok.text, ok.status) == ("356342283\n", "ok")
    assert expression.text == "408\n"
    assert error.status == "error" and error.text.endswith("ZeroDivisionError: division by zero")
    assert hang.status == "timeout" and "3 s" in hang.text
    assert uid.text == "True\n"  # an unprivileged uid inside the sandbox


def _slow(argument: str) -> str:
    time.sleep(float(argument))
    return "woke"


def _boom(argument: str) -> str:
    raise KeyError(argument)


register_tool("test_slow", _slow, deadline=0.3)
register_tool("test_boom", _boom)


def test_a_hanging_tool_is_cut_at_its_deadline_and_reported():
    slow = build_tools(ToolsConfig(names=["test_slow"]))["test_slow"]
    start = time.monotonic()
    fast, hung = call_tools([(slow, "0.01"), (slow, "30")])
    elapsed = time.monotonic() - start
    assert (fast.text, fast.status) == ("woke", "ok")
    assert (hung.text, hung.status) == ("timed out after 0.3 s", "timeout")
    assert 0.3 <= elapsed < 1.0  # cut at the deadline, the calls waited on together


def test_tool_failures_are_results_and_counted():
    env = TagEnvironment(build_tools(ToolsConfig(names=["test_boom", "calculator", "test_slow"])),
                         result_template="[{result}]")
    turns = [ModelTurn({}, text, text, 1) for text in (
        "so <test_boom>key</test_boom>", "<calculator>6 * 7</calculator>",
        "<calculator>6 / 0</calculator>", "</calculator>", "<test_slow>9</test_slow>")]
    replies = env.respond(turns)
    assert [r.text for r in replies] == [
        "[KeyError: 'key']", "[42]", "[division by zero]",
        "[malformed call: </calculator> without <calculator> before it]",
        "[timed out after 0.3 s]"]
    assert [(r.tool_calls, r.tool_errors, r.tool_timeouts) for r in replies] == \
        [(1, 1, 0), (1, 0, 0), (1, 1, 0), (1, 1, 0), (1, 0, 1)]


def test_a_tool_returning_no_string_is_an_error():
    (result,) = call_tools([(Tool("odd", lambda a: 3), "x")])
    assert result.status == "error" and "returned int, expected str" in result.text


@pytest.mark.parametrize("text, argument", [
    ("I will compute. <calculator>1+1</calculator>", "1+1"),
    ("<calculator>no</calculator>", "no"),
    ("<calculator>old <calculator>2*3</calculator>", "2*3"),  # the last opening tag
    ("<python>\n```python\n    x = 1\n    print(x)\n```\n</python>", "x = 1\nprint(x)"),
])
def test_tag_calls_are_parsed(text, argument):
    env = TagEnvironment({"calculator": Tool("calculator", calculate),
                          "python": Tool("python", str)})
    tool, parsed = env.parse(text)
    assert parsed == argument and tool.name in text


def test_results_are_clipped_with_a_note():
    assert clip("abcdef", 4) == "abcd\n... (2 more characters cut)"
    assert clip("abc", 4) == "abc"


def test_first_messages_carry_the_system_prompt():
    env = make_environment(ToolsConfig(environment="tags", names=["calculator"]), "Use tools.")
    assert env.stop_strings == ("</calculator>",)
    assert env.first_messages({"prompt": "2+2?"}) == [
        {"role": "system", "content": "Use tools."}, {"role": "user", "content": "2+2?"}]


def test_registering_a_taken_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_tool("python", str)
    with pytest.raises(ValueError, match="already registered"):
        register_tool("test_slow", lambda a: a)
    with pytest.raises(ValueError, match="must be an identifier"):
        register_tool("two words", str)
    with pytest.raises(ValueError, match="deadline must be a positive"):
        register_tool("negative", str, deadline=0)


def test_unknown_names_are_errors_that_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown tool 'pyton' \(did you mean 'python'\?\)"):
        build_tools(ToolsConfig(names=["pyton"]))
    with pytest.raises(ValueError, match=r"unknown environment 'tag' \(did you mean 'tags'\?\)"):
        make_environment(ToolsConfig(environment="tag"), None)


@pytest.mark.parametrize("override, match", [
    ("tools.max_turns=0", "tools.max_turns must be >= 1"),
    ("tools.timeout=-1", "tools.timeout must be a positive"),
    ("tools.max_output_chars=0", "tools.max_output_chars must be >= 1"),
    ("tools.result_template=out", "must contain {result}"),
    ("tools.names=[]", "tools.names must list at least one tool"),
    ("tools.names=[python,python]", "each once"),
    ("tools.memory_mb=1", "tools.memory_mb must be >= 16"),
    ("tools.environment=tags rollout.engine=generate", "needs rollout.engine=hf"),
    ("tools.environment=tags rollout.engine=vllm", "needs rollout.engine=hf"),
    ("tools.colour=red", "colour"),
])
def test_config_errors_name_the_field(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=override.split())


def test_the_tools_config_loads():
    cfg = load_config("configs/tools_arithmetic.yaml")
    assert cfg.tools.environment == "tags" and cfg.data.task == "multiply"


# ---------------------------------------------------------------- import paths


ENV_FILE = '''
from grpokit.rollout.base import EnvReply


class Echo:
    stop_strings = ("</echo>",)

    def __init__(self, cfg=None, system_prompt=None):
        self.system_prompt = system_prompt

    def first_messages(self, row):
        return [{"role": "user", "content": row["prompt"]}]

    def respond(self, turns):
        return [EnvReply("ok") for _ in turns]


ECHO = Echo()


def shout(argument):
    return argument.upper()
'''


@pytest.mark.parametrize("attr, kind", [("ECHO", "an object"), ("Echo", "a factory")])
def test_an_environment_by_import_path(tmp_path, monkeypatch, attr, kind):
    from grpokit.config.tools import ToolsConfig
    from grpokit.tools.env import make_environment

    (tmp_path / "my_env.py").write_text(ENV_FILE)
    monkeypatch.chdir(tmp_path)  # a relative file is searched in the working directory
    env = make_environment(ToolsConfig(environment=f"my_env.py:{attr}"), "be brief")
    assert env.stop_strings == ("</echo>",) and env.respond([None])[0].text == "ok"
    if kind == "a factory":  # built with the tools config and the run's system prompt
        assert env.system_prompt == "be brief"
    with pytest.raises(ValueError, match=r"environment 'my_env.py:Nope': .* no attribute 'Nope'"):
        make_environment(ToolsConfig(environment="my_env.py:Nope"), None)


def test_a_tool_by_import_path_goes_by_its_function_name(tmp_path, monkeypatch):
    from grpokit.config.tools import ToolsConfig
    from grpokit.tools.env import make_environment

    (tmp_path / "my_env.py").write_text(ENV_FILE)
    monkeypatch.chdir(tmp_path)
    env = make_environment(ToolsConfig(environment="tags", names=["calculator",
                                                                   "my_env.py:shout"]), None)
    assert env.stop_strings == ("</calculator>", "</shout>")
    assert env.tools["shout"].fn("hi") == "HI"
    with pytest.raises(ValueError, match=r"tool 'missing.py:shout': no file missing.py"):
        make_environment(ToolsConfig(environment="tags", names=["missing.py:shout"]), None)


def test_a_bad_environment_path_exits_2_before_the_run_folder(tiny_model_dir, tmp_path, capsys):
    from grpokit.cli import main

    out = tmp_path / "run"
    assert main(["train", f"model.path={tiny_model_dir}", f"log.output_dir={out}",
                 "tools.environment=nowhere.py:Env", "train.steps=1"]) == 2
    assert "environment 'nowhere.py:Env': no file nowhere.py" in capsys.readouterr().err
    assert not out.exists()
