"""The `multiply` task: long multiplications (5 digits by 4 by default), a task where a tool helps.

A small model rarely multiplies 48213 × 7391 right in its head; with the `python` (or
`calculator`) tool of a multi-turn episode it can compute the product and copy it into its
answer (configs/tools_arithmetic.yaml, docs/tools.md). The answer is the integer inside
<answer> </answer>, checked by the `math` reward; the system prompt shows one worked call.
"""

from __future__ import annotations

import random

from grpokit.data.base import Task, register_task
from grpokit.data.generate import Row, check_size, distinct_rows
from grpokit.rewards.base import RewardSpec

SYSTEM_PROMPT = (
    "You can run Python code: write it between <python> and </python>, and its output is shown "
    "between <output> and </output>. Give the final integer inside <answer> </answer>.\n"
    "Example. Question: What is 123 * 456?\n"
    "Reply: <python>print(123 * 456)</python>\n<output>\n56088\n</output>\n<answer>56088</answer>"
)
"""Default system prompt of the `multiply` task (the python tool's tags, one worked call)."""

CALCULATOR_PROMPT = SYSTEM_PROMPT.replace("You can run Python code", "You can use a calculator") \
    .replace("<python>print(123 * 456)</python>", "<calculator>123 * 456</calculator>") \
    .replace("<python> and </python>", "<calculator> and </calculator>") \
    .replace("write it", "write an expression")
"""The system prompt with the calculator tool's tags instead (task_args tool: calculator)."""

PROMPT_TEMPLATE = "What is {a} * {b}?"
"""User prompt of one problem."""

HINT_TEMPLATE = ("What is {a} * {b}? Write <{tool}>{call}</{tool}>, then the output inside "
                 "<answer> </answer>.")
"""User prompt of the `hint` style: it spells out the call (a model as small as the default one
almost never writes the tags from the system prompt's example alone)."""

CALLS = {"python": "print({a} * {b})", "calculator": "{a} * {b}"}

PROMPTS = {"python": SYSTEM_PROMPT, "calculator": CALCULATOR_PROMPT}


def make_row(a: int, b: int, style: str = "plain", tool: str = "python") -> Row:
    """The task row of a × b."""
    if style == "hint":
        call = CALLS[tool].format(a=a, b=b)
        prompt = HINT_TEMPLATE.format(a=a, b=b, tool=tool, call=call)
    else:
        prompt = PROMPT_TEMPLATE.format(a=a, b=b)
    return {"prompt": prompt, "answer": str(a * b), "expression": f"{a}*{b}"}


@register_task("multiply")
def multiply_task(digits_a: int = 5, digits_b: int = 4, train_size: int = 2000,
                  eval_size: int = 100, seed: int = 0, tool: str = "python",
                  style: str = "plain") -> Task:
    """a × b with a of `digits_a` digits and b of `digits_b` digits (exactly: no leading zero);
    eval rows never repeat a train product. `tool` picks the tags the prompts show (python or
    calculator); style "plain" asks only the question, "hint" also spells out the call.
    Reward: math on the <answer> tag."""
    if tool not in PROMPTS:
        raise ValueError(f"task 'multiply': tool must be one of {sorted(PROMPTS)}, got {tool!r}")
    if style not in ("plain", "hint"):
        raise ValueError(f"task 'multiply': style must be 'plain' or 'hint', got {style!r}")
    check_size("digits_a", digits_a, 1, 30)
    check_size("digits_b", digits_b, 1, 30)
    check_size("train_size", train_size, 1)
    check_size("eval_size", eval_size, 0)
    check_size("seed", seed, 0)

    def draw(rng: random.Random) -> Row:
        return make_row(rng.randint(10 ** (digits_a - 1), 10**digits_a - 1),
                        rng.randint(10 ** (digits_b - 1), 10**digits_b - 1), style, tool)

    train, held_out = distinct_rows(draw, key=lambda row: row["expression"],
                                    train_size=train_size, eval_size=eval_size, seed=seed,
                                    task="multiply")
    return Task(name="multiply", train_rows=train, eval_rows=held_out,
                rewards=[RewardSpec("math", 1.0, {"extract": ["answer_tag"]})],
                system_prompt=PROMPTS[tool])
