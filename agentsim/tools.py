"""The simulated agent's tools: safe arithmetic, a built-in look-up table, and the current time."""

from __future__ import annotations

import ast
import operator
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

_BIN_OPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPS: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalcError(ValueError):
    pass


MAX_RESULT_BITS = 1024


def safe_eval(expression: str) -> float | int:
    """Evaluate + - * / // % ** and parentheses over numbers, by walking the AST (never eval)."""
    if len(expression) > 200:
        raise CalcError("expression too long")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except SyntaxError:
        raise CalcError(f"not an arithmetic expression: {expression!r}") from None

    def walk(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            value: float | int = node.value  # type: ignore[assignment]  # narrowed by the type() test above
            return value
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN_OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 1e6):
                raise CalcError("exponent too large")
            try:
                value = _BIN_OPS[type(node.op)](left, right)
            except ZeroDivisionError:
                raise CalcError("division by zero") from None
            # A product of bounded powers still grows: 12 factors of 1000000**64 is past the 4,300 digits Python
            # turns into text (the run crashed on writing the result); no calculator answer needs 1,024 bits.
            if isinstance(value, int) and value.bit_length() > MAX_RESULT_BITS:
                raise CalcError("result too large")
            return value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
            return _UNARY_OPS[type(node.op)](walk(node.operand))
        raise CalcError(f"unsupported syntax: {type(node).__name__}")

    result = walk(tree)
    if isinstance(result, float) and result.is_integer() and abs(result) < 1e15:
        return int(result)
    return result


LOOKUP_TABLE: dict[str, str] = {
    "paris": "Paris is the capital of France (population about 2.1 million).",
    "london": "London is the capital of the United Kingdom.",
    "tokyo": "Tokyo is the capital of Japan.",
    "berlin": "Berlin is the capital of Germany.",
    "python": "Python is a programming language first released in 1991.",
    "websocket": "WebSocket (RFC 6455) gives a full-duplex channel over one TCP connection.",
    "jwt": "A JSON Web Token (RFC 7519) carries signed claims such as sub and exp.",
    "gpu": "An on-demand A100 GPU costs about 3.00 USD per hour in this table.",
    "cpu": "A general purpose vCPU costs about 0.04 USD per hour in this table.",
    "storage": "Object storage costs about 0.023 USD per GB-month in this table.",
    "bandwidth": "Egress bandwidth costs about 0.09 USD per GB in this table.",
    "weather": "The simulated weather is 18 C and partly cloudy.",
    "pi": "pi is approximately 3.14159.",
    "light": "The speed of light is 299792458 m/s.",
}

_EXPR_RE = re.compile(r"[-+(]*\d[\d.\s]*(?:(?:\*\*|//|[-+*/%^])[\s(]*[-+]?\d[\d.\s)]*)+")
_TIME_RE = re.compile(r"\b(time|date|clock|today|now)\b", re.IGNORECASE)
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


@dataclass
class ToolCall:
    """A tool call the agent will make: the tool's name and its parameters."""

    tool_name: str
    parameters: dict[str, Any]


def plan_tool_calls(content: str, count: int | None) -> list[ToolCall]:
    """Choose tool calls from the message; with no recognisable tool, one look-up.

    ``count`` (from ``#tools=N``) forces the number of calls, cycling through the recognised ones.
    """
    recognised: list[ToolCall] = []
    for m in _EXPR_RE.finditer(content):
        expr = m.group(0).strip()
        if any(op in expr for op in "+-*/%^") and any(c.isdigit() for c in expr):
            recognised.append(ToolCall("calculator", {"expression": expr}))
    if _TIME_RE.search(content):
        recognised.append(ToolCall("current_time", {"timezone": "UTC"}))
    words = [w.lower() for w in _WORD_RE.findall(content)]
    for w in words:
        if w in LOOKUP_TABLE:
            recognised.append(ToolCall("lookup", {"query": w}))
    if not recognised:
        query = max(words, key=len) if words else "weather"
        recognised.append(ToolCall("lookup", {"query": query}))
    if count is None:
        return recognised[:10]
    return [ToolCall(recognised[i % len(recognised)].tool_name, dict(recognised[i % len(recognised)].parameters))
            for i in range(count)]


def run_tool(call: ToolCall) -> tuple[bool, Any]:
    """Do the tool's real work; returns (success, result)."""
    if call.tool_name == "calculator":
        try:
            return True, safe_eval(call.parameters["expression"])
        except CalcError as exc:
            return False, f"calculator error: {exc}"
    if call.tool_name == "current_time":
        now = time.time()
        return True, {"iso": datetime.fromtimestamp(now, UTC).isoformat(), "epoch": now}
    if call.tool_name == "lookup":
        query = call.parameters.get("query", "")
        hit = LOOKUP_TABLE.get(query)
        return True, {"query": query, "found": hit is not None, "answer": hit or f"no entry for {query!r}"}
    return False, f"unknown tool {call.tool_name!r}"
