"""The simulated agent: turns one chat message into the planned list of events of its run.

Directives in the message (removed before tools are chosen):
  #fail-tool      the first tool call fails (tool_completed success=false) and a recoverable
                  agent_error follows; the run still ends with agent_completed
  #fail-agent     a fatal agent_error (is_recoverable=false) right after thinking; no agent_completed
  #tools=N        exactly N tool calls (0..10)
  #chunks=N       the answer is streamed as N partial_result pieces (1..50, default 2)
  #think=SECONDS  think time of this message (overrides --think)
  #tool-latency=SECONDS  tool latency of this message (overrides --tool-latency)
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .tools import ToolCall, plan_tool_calls, run_tool

Latency = tuple[float, float]

_DIRECTIVE_RE = re.compile(r"#([a-zA-Z][a-zA-Z_-]*)(?:=(\S*))?")

AGENT_NAMES = {"calculator": "math_agent", "current_time": "clock_agent", "lookup": "research_agent"}


def parse_latency(value: Any) -> Latency:
    """``0``, ``0.05``, ``"0.02-0.2"`` (uniform range) or a (lo, hi) pair -> (lo, hi) seconds; ValueError otherwise
    (a pair of anything but two numbers, or a number of hundreds of digits, included)."""
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "…"
    number = (int, float)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, number) and not isinstance(v, bool) for v in value):
        lo, hi = _seconds(value[0], shown), _seconds(value[1], shown)
    elif isinstance(value, number) and not isinstance(value, bool):
        lo = hi = _seconds(value, shown)
    elif isinstance(value, str):
        text = value.strip().lower().removesuffix("s")
        m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)(?:s?\s*-\s*(\d+(?:\.\d*)?|\.\d+))?", text)
        if not m:
            raise ValueError(f"bad latency {shown} (use e.g. 0, 0.05 or 0.02-0.2)")
        lo = float(m.group(1))
        hi = float(m.group(2)) if m.group(2) else lo
    else:
        raise ValueError(f"bad latency {shown} (use e.g. 0, 0.05 or 0.02-0.2)")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"bad latency {shown}: need a finite number of seconds")
    if lo < 0 or hi < lo:
        raise ValueError(f"bad latency {shown}: need 0 <= low <= high")
    return (lo, hi)


def _seconds(value: float, shown: str) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise ValueError(f"bad latency {shown}: need a finite number of seconds") from None


def sample(latency: Latency, rng: random.Random) -> float:
    lo, hi = latency
    return lo if hi == lo else rng.uniform(lo, hi)


@dataclass
class Directives:
    """What a message's `#name=value` directives ask of its run: failures, tool calls, chunks, latencies."""

    fail_tool: bool = False
    fail_agent: bool = False
    tools: int | None = None
    chunks: int = 2
    think: Latency | None = None
    tool_latency: Latency | None = None


def _clamp_int(text: str | None, lo: int, hi: int) -> int | None:
    try:
        return max(lo, min(hi, int(text or "")))
    except ValueError:
        return None


def parse_directives(content: str) -> tuple[Directives, str]:
    d = Directives()
    for m in _DIRECTIVE_RE.finditer(content):
        name, value = m.group(1).lower().replace("_", "-"), m.group(2)
        if name == "fail-tool":
            d.fail_tool = True
        elif name == "fail-agent":
            d.fail_agent = True
        elif name == "tools":
            d.tools = _clamp_int(value, 0, 10)
        elif name == "chunks":
            d.chunks = _clamp_int(value, 1, 50) or d.chunks
        elif name in ("think", "tool-latency"):
            try:
                lat = parse_latency(value or "")
                lat = (min(lat[0], 600.0), min(lat[1], 600.0))
            except ValueError:
                continue
            if name == "think":
                d.think = lat
            else:
                d.tool_latency = lat
    return d, _DIRECTIVE_RE.sub(" ", content)


@dataclass
class Step:
    """One event of a run's script: its role, the delay before it, and how its frame is built."""

    role: str
    delay: float
    build: Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Script:
    """A run's planned events, in order, and the agent that sends them."""

    agent_name: str
    steps: list[Step] = field(default_factory=list)

    @property
    def roles(self) -> list[str]:
        return [s.role for s in self.steps]


def _chunks(text: str, n: int) -> list[str]:
    size = max(1, -(-len(text) // n))
    parts = [text[i * size:(i + 1) * size] for i in range(n)]
    return [p if p else "" for p in parts]


def build_script(content: str, message_id: str, think: Latency, tool_latency: Latency,
                 rng: random.Random) -> Script:
    """Plan a run's events; tool work and answer text are computed when each event is sent."""
    d, clean = parse_directives(content)
    think = d.think or think
    tool_latency = d.tool_latency or tool_latency
    calls: list[ToolCall] = [] if d.fail_agent else plan_tool_calls(clean, d.tools)
    if d.fail_tool and not calls and not d.fail_agent:
        calls = plan_tool_calls(clean, 1)
    agent_name = AGENT_NAMES.get(calls[0].tool_name, "assistant") if calls else "assistant"
    ctx_results: list[str] = []
    script = Script(agent_name)
    add = script.steps.append

    add(Step("agent_started", 0.0, lambda ctx: {"agent_name": agent_name, "message_id": message_id}))
    first_thought = (f"Working out how to answer: {clean.strip()[:80]!r}; "
                     f"planning {len(calls)} tool call(s).")
    add(Step("agent_thinking", sample(think, rng), lambda ctx: {"thought": first_thought, "step_number": 1}))
    if d.fail_agent:
        add(Step("agent_error", 0.0, lambda ctx: {
            "error_message": "the agent failed while planning (#fail-agent)",
            "error_type": "AgentExecutionError", "is_recoverable": False, "severity": "critical"}))
        return script

    for i, call in enumerate(calls):
        call_id = f"c-{i + 1}"
        fail = d.fail_tool and i == 0
        state: dict[str, Any] = {}

        def executing(ctx: dict, call: ToolCall = call, call_id: str = call_id, state: dict = state) -> dict:
            state["t0"] = time.monotonic()
            return {"tool_name": call.tool_name, "tool_call_id": call_id, "parameters": call.parameters}

        def completed(ctx: dict, call: ToolCall = call, call_id: str = call_id, state: dict = state,
                      fail: bool = fail) -> dict:
            if fail:
                ok, result = False, f"{call.tool_name} failed (#fail-tool)"
            else:
                ok, result = run_tool(call)
            ctx_results.append(f"{call.tool_name}: {result}")
            duration_ms = round((time.monotonic() - state.get("t0", time.monotonic())) * 1000.0, 3)
            return {"tool_name": call.tool_name, "tool_call_id": call_id, "result": result,
                    "duration_ms": duration_ms, "success": ok}

        add(Step("tool_executing", 0.0, executing))
        add(Step("tool_completed", sample(tool_latency, rng), completed))
        if fail:
            add(Step("agent_error", 0.0, lambda ctx, call=call, call_id=call_id: {  # type: ignore[misc]
                "error_message": f"tool {call.tool_name} ({call_id}) failed; continuing without it",
                "error_type": "ToolExecutionError", "is_recoverable": True, "severity": "warning"}))
    if calls:
        add(Step("agent_thinking", sample(think, rng),
                 lambda ctx: {"thought": "Composing the answer from the tool results.", "step_number": 2}))

    def answer(ctx: dict) -> str:
        if "answer" not in ctx:
            body = "; ".join(ctx_results) if ctx_results else "no tools were needed"
            ctx["answer"] = f"Answer to {clean.strip()[:60]!r}: {body}."
        return ctx["answer"]

    for k in range(d.chunks):
        add(Step("partial_result", 0.0, lambda ctx, k=k: {  # type: ignore[misc]
            "content": _chunks(answer(ctx), d.chunks)[k], "is_complete": k == d.chunks - 1}))
    add(Step("agent_completed", 0.0, lambda ctx: {
        "result": answer(ctx), "duration_ms": round((time.monotonic() - ctx["t0"]) * 1000.0, 3)}))
    return script
