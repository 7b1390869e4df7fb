"""A run's remembered ids are bounded in bytes (harness/payload_checks.py, MAX_REMEMBERED_BYTES): a correct AG-UI
server whose run names more ids than that passes, with one warning saying which checks stopped, judged the same by
`chatprobe run --record`, `chatprobe check` of its recording and `chatprobe proxy` (one checker for all three).

FAILED on the code before the bound was in bytes: the checks remembered 10,000 ids of each kind, and forgot the
rest: every TOOL_CALL_RESULT of a call past the 10,000th was an R5 ("which never started") on a server doing nothing
wrong, by all three (and 10,000 ids of 1 KiB were ~12 MiB a chat, 128 chats a proxy's connection).
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from harness.checker import ChatResult

from . import test_conforming_servers as conforming
from .outside_servers import WsConn
from .test_conforming_servers import judged_three_ways, text

pytestmark = pytest.mark.timeout(180)

CALLS = 10_100  # past the 10,000 ids a kind the checks kept before


def many_calls(thread: str, run: str) -> list[dict[str, Any]]:
    """A correct run: CALLS tool calls, each started, ended and answered, then a short answer."""
    frames: list[dict[str, Any]] = [{"type": "RUN_STARTED", "threadId": thread, "runId": run}]
    for i in range(CALLS):
        cid = f"call-{i:05d}"
        frames += [{"type": "TOOL_CALL_START", "toolCallId": cid, "toolCallName": "calc"},
                   {"type": "TOOL_CALL_END", "toolCallId": cid},
                   {"type": "TOOL_CALL_RESULT", "messageId": f"result-{i:05d}", "toolCallId": cid, "content": "1"}]
    frames += [{"type": "TEXT_MESSAGE_START", "messageId": "answer", "role": "assistant"},
               {"type": "TEXT_MESSAGE_CONTENT", "messageId": "answer", "delta": "42"},
               {"type": "TEXT_MESSAGE_END", "messageId": "answer"},
               {"type": "RUN_FINISHED", "threadId": thread, "runId": run}]
    return frames


class ManyCalls:
    """AG-UI over WebSocket: each RunAgentInput answered with `many_calls`, 500 frames a write."""

    async def handler(self, conn: WsConn) -> None:
        while (raw := await conn.recv()) is not None:
            msg = json.loads(raw)
            frames = many_calls(msg["threadId"], msg["runId"])
            for start in range(0, len(frames), 500):
                conn.writer.write(b"".join(text(f) for f in frames[start:start + 500]))
                await conn.writer.drain()
                await asyncio.sleep(0)  # wait-ok: a yield that lets the reader of the other side in, no condition


def verdict(r: ChatResult) -> tuple[str, tuple[tuple[str, int], ...], tuple[str, ...]]:
    """The chat's outcome, its violations by rule, and its warnings (each its rule and the start of its reason)."""
    return (r.outcome.value, tuple(sorted(r.rule_counts().items())),
            tuple(sorted(f"{w.rule.value} {w.reason[:60]}" for w in r.warnings)))


async def test_a_run_with_more_ids_than_remembered_passes_with_one_warning_everywhere(monkeypatch):
    monkeypatch.setattr(conforming, "verdict", verdict)  # the helper's verdicts, with what each warning says
    got = await judged_three_ways(ManyCalls, profile_name="ag-ui", chats_per_user=1,
                                  expect={"deadline": "60s", "settle": "0.1s", "first_event_limit": "10s",
                                          "stall_limit": "30s"})
    # One warning (R12 advice): the ids passed the bound, at the first id past it.
    expected = [("passed", (), ("R12 TOOL_CALL_START: the run's ids passed 256 KiB of memory; ids",))]
    assert got == {"run": expected, "check": expected, "proxy": expected}, got
