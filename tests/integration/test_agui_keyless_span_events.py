"""A span event that names no key (an AG-UI `TOOL_CALL_ARGS` or `TOOL_CALL_END` without `toolCallId`, a
`TEXT_MESSAGE_CONTENT` without `messageId`, a subagent's `STEP_FINISHED` without `stepName`) is one violation: the
schema's R12 naming the field it lacks. Judged alike by `chatprobe run --record`, `chatprobe check` of the recording
and `chatprobe proxy` (a raw RFC 6455 server on 127.0.0.1), and over HTTP + SSE (a raw HTTP/1.1 server). In a
dialect without a schema (netra) the span's R5 stands, and says the event named no key, never "None".

FAILED on the code before it: each such event was the schema's R12 and the checker's R5 besides, "TOOL_CALL_ARGS
continues tool call None, which is not open" (a tool call named None), two violations for one defect; netra's said
"tool_completed closes tool call None".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from harness.checker import ChatResult
from harness.events import Outcome

from . import test_conforming_servers as conforming
from .outside_servers import WsConn
from .test_agui_wire_variants import _run, answer, framed, sse
from .test_conforming_servers import Server, frame, judged_three_ways, run_frames, text

pytestmark = pytest.mark.timeout(120)

KEYLESS = {
    "args without toolCallId": ({"type": "TOOL_CALL_ARGS", "delta": "{}"}, "TOOL_CALL_ARGS field 'toolCallId'"),
    "end without toolCallId": ({"type": "TOOL_CALL_END"}, "TOOL_CALL_END field 'toolCallId'"),
    "args with a null toolCallId": ({"type": "TOOL_CALL_ARGS", "toolCallId": None, "delta": "{}"},
                                    "TOOL_CALL_ARGS field 'toolCallId'"),
    "content without messageId": ({"type": "TEXT_MESSAGE_CONTENT", "delta": "4"},
                                  "TEXT_MESSAGE_CONTENT field 'messageId'"),
    "a subagent's step end without stepName": ({"type": "STEP_FINISHED", "subagentRunId": "sa1"},
                                               "STEP_FINISHED field 'stepName'"),
}


def verdict(r: ChatResult) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The chat's outcome and each violation's rule and reason."""
    return r.outcome.value, tuple(sorted((v.rule.value, v.reason) for v in r.violations))


def _keyless_run(thread: str, run: str, event: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "RUN_STARTED", "threadId": thread, "runId": run}, event,
            {"type": "TEXT_MESSAGE_START", "messageId": "a1", "role": "assistant"},
            {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1", "delta": "42"},
            {"type": "TEXT_MESSAGE_END", "messageId": "a1"},
            {"type": "RUN_FINISHED", "threadId": thread, "runId": run}]


@dataclass
class KeylessServer:
    """AG-UI over WebSocket: each RunAgentInput answered with a run holding `event` (which names no key)."""

    event: dict[str, Any]

    async def handler(self, conn: WsConn) -> None:
        while (raw := await conn.recv()) is not None:
            msg = json.loads(raw)
            conn.writer.write(b"".join(text(f) for f in _keyless_run(msg["threadId"], msg["runId"], self.event)))
            await conn.writer.drain()


def _one_schema_r12(got: list[tuple[str, tuple[tuple[str, str], ...]]], field: str) -> None:
    [(outcome, [(rule, reason)])] = [(o, list(v)) for o, v in got]
    assert (outcome, rule) == ("failed", "R12") and reason.startswith(field) and "None" not in reason, got


@pytest.mark.parametrize("name", list(KEYLESS))
async def test_a_span_event_naming_no_key_is_the_schema_s_one_r12_by_run_check_and_proxy(monkeypatch, name):
    monkeypatch.setattr(conforming, "verdict", verdict)
    event, field = KEYLESS[name]
    got = await judged_three_ways(lambda: KeylessServer(event), profile_name="ag-ui", chats_per_user=1)
    assert got["run"] == got["check"] == got["proxy"], got
    _one_schema_r12(got["run"], field)


@pytest.mark.parametrize("name", list(KEYLESS))
async def test_over_sse_a_span_event_naming_no_key_is_the_schema_s_one_r12(name):
    event, field = KEYLESS[name]
    result = await answer(lambda body: framed("chunked", sse(_run(
        body, event, {"type": "TEXT_MESSAGE_START", "messageId": "a1", "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1", "delta": "42"},
        {"type": "TEXT_MESSAGE_END", "messageId": "a1"}))))
    assert result.outcome is Outcome.FAILED
    _one_schema_r12([verdict(result)], field)


async def _netra_close_naming_no_call(conn: WsConn, p: dict[str, Any], n: int, server: Server) -> None:
    """A netra run whose tool_completed names neither its tool_call_id nor its tool_name."""
    frames = run_frames(p)
    done = next(f for f in frames if f["type"] == "tool_completed")
    done["payload"] = {"result": 1}
    conn.writer.write(b"".join(frame(json.dumps(f).encode()) for f in frames))


async def test_in_a_dialect_without_a_schema_the_r5_says_the_event_named_no_key(monkeypatch):
    monkeypatch.setattr(conforming, "verdict", verdict)
    got = await judged_three_ways(lambda: Server(_netra_close_naming_no_call), chats_per_user=1)
    expected = [("failed", (("R5", "tool call c0 still open at the terminal event"),
                            ("R5", "tool_completed closes tool call (no key), which is not open")))]
    assert got == {"run": expected, "check": expected, "proxy": expected}, got
