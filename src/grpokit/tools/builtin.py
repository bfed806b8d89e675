"""The built-in tools: `python` (the model's code in grpokit.sandbox) and `calculator` (exact
arithmetic on an `ast` whitelist: numbers, + - * / // % ** and parentheses, nothing else)."""

from __future__ import annotations

import ast
import decimal
import math
import operator
from fractions import Fraction

from grpokit import sandbox
from grpokit.sandbox import Limits
from grpokit.tools.registry import Tool, ToolError, ToolTimeout

PYTHON_DEADLINE_S = 5.0
"""Default deadline of a python call (the sandbox's wall-clock limit)."""
CALCULATOR_DEADLINE_S = 1.0
"""Default deadline of a calculator call."""
STDERR_LINES = 3
"""Lines of a failed program's stderr shown to the model (a traceback's last lines name the error)."""


class PythonTool:
    """Runs the code of a call in the sandbox; the result is its stdout, and for a program that
    failed, the last lines of stderr too. A last line that is an expression has its value
    printed, as in a notebook cell (`12 * 34` shows 408)."""

    def __init__(self, timeout: float, memory_mb: int, backend: str, output_chars: int):
        self.backend = sandbox.resolve(backend)  # SandboxUnavailable when none works here
        # The sandbox keeps a little more output than the model is shown, so a flood of prints
        # ends early instead of filling a megabyte.
        self.limits = Limits(timeout=timeout, memory_mb=memory_mb,
                             output_bytes=max(4 * output_chars, 4096))

    def __call__(self, code: str) -> str:
        result = sandbox.run(print_last_expression(code), backend=self.backend,
                             limits=self.limits)
        if result.status == "timeout":
            raise ToolTimeout()
        if result.status in ("ok", "output_limit"):
            return result.stdout
        if result.status == "memory":
            raise ToolError(f"{result.stdout}MemoryError: over {self.limits.memory_mb} MiB")
        tail = "\n".join(result.stderr.strip().splitlines()[-STDERR_LINES:])
        raise ToolError(f"{result.stdout}{tail or f'exit status {result.exit_code}'}")


def print_last_expression(code: str) -> str:
    """`code` with its last statement, when it is an expression, printed unless it is None
    (the source is only parsed here, never run; code that does not parse is left as it is, and
    the sandbox reports its SyntaxError)."""
    try:
        tree = ast.parse(code)
        if not tree.body or not isinstance(tree.body[-1], ast.Expr):
            return code
        value = ast.Name("_grpokit_value", ast.Load())
        tree.body[-1:] = [
            ast.Assign([ast.Name("_grpokit_value", ast.Store())], tree.body[-1].value),
            ast.If(ast.Compare(value, [ast.IsNot()], [ast.Constant(None)]),
                   [ast.Expr(ast.Call(ast.Name("print", ast.Load()), [value], []))], []),
        ]
        return ast.unparse(ast.fix_missing_locations(tree))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return code


def python_tool(timeout: float | None, memory_mb: int, backend: str, output_chars: int) -> Tool:
    deadline = timeout or PYTHON_DEADLINE_S
    return Tool("python", PythonTool(deadline, memory_mb, backend, output_chars), deadline)


# ---------------------------------------------------------------- calculator

MAX_EXPRESSION_CHARS = 1000
"""Longest expression the calculator takes."""
MAX_BITS = 4096
"""Largest numerator or denominator of any intermediate value, in bits (about 1233 digits); a
power is refused from its result's estimated size before it is computed."""

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _checked(value: Fraction) -> Fraction:
    if max(abs(value.numerator).bit_length(), value.denominator.bit_length()) > MAX_BITS:
        raise ToolError(f"the result is too large (over {MAX_BITS} bits)")
    return value


def _power_bits(base: Fraction, exponent: int) -> float:
    """The bit length of base ** exponent's larger part (numerator or denominator), estimated
    from the base's logarithm before anything is computed; 0 for a base of 0, 1 or -1, whose
    powers stay that small whatever the exponent."""
    largest = max(abs(base.numerator), base.denominator)
    if largest <= 1:
        return 0.0
    if abs(exponent).bit_length() > 64:  # beyond any float product worth computing
        return math.inf
    return abs(exponent) * math.log2(largest)


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise ToolError("only whole-number exponents are supported")
    if base == 0 and exponent < 0:
        raise ToolError("division by zero")
    # Bounded by the result, not the operands: 1 ** 5000 is 1, while 10 ** 10 ** 8 is refused
    # from its estimate, without spending seconds and megabytes on computing it. _checked then
    # applies the exact bound to what is computed.
    bits = _power_bits(base, exponent.numerator)
    if bits > MAX_BITS:
        size = "far" if math.isinf(bits) else f"about {bits:.0f} bits,"
        raise ToolError(f"the power is too large ({size} over {MAX_BITS} bits)")
    return base ** exponent.numerator


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(repr(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _checked(_power(_evaluate(node.left), _evaluate(node.right)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if right == 0 and type(node.op) in (ast.Div, ast.FloorDiv, ast.Mod):
            raise ToolError("division by zero")
        return _checked(Fraction(_BINARY[type(node.op)](left, right)))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ToolError("^ is not a power here: write ** (2 ** 10)")
    raise ToolError(f"unsupported expression: {type(node).__name__} (numbers, + - * / // % ** "
                    "and parentheses only)")


def format_number(value: Fraction) -> str:
    """An integer exactly; otherwise a decimal with 15 significant digits."""
    if value.denominator == 1:
        return str(value.numerator)
    with decimal.localcontext() as context:
        context.prec = 15
        return str((decimal.Decimal(value.numerator) / value.denominator).normalize())


def calculate(expression: str) -> str:
    """The value of an arithmetic expression, exactly (rationals), or a ToolError saying why not."""
    text = expression.strip()
    if not text:
        raise ToolError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        return format_number(_evaluate(ast.parse(text, mode="eval")))
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {exc.msg}") from None
    except ValueError as exc:  # e.g. a null byte
        raise ToolError(f"not an arithmetic expression: {exc}") from None
    except (RecursionError, MemoryError):
        raise ToolError("expression nested too deeply") from None


def calculator_tool(timeout: float | None) -> Tool:
    return Tool("calculator", calculate, timeout or CALCULATOR_DEADLINE_S)
