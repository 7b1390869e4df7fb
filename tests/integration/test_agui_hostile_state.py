"""A hostile AG-UI server over WebSocket playing state patches the checks must not misjudge: `chatprobe run
--record`, `chatprobe check` of its recording and `chatprobe proxy` judge it alike (one checker for all three).

FAILED on the code before: a valid patch on a state nested 600 deep (which JSON writes and the size check weighs) was
an R12 "does not apply ... maximum recursion depth exceeded" (the patch library's copy and compare recurse), and a
STATE_SNAPSHOT without `snapshot` made the state null, so the valid delta after it was an R12 too; a STATE_DELTA of
90,000 operations (3 MiB) was validated and applied one operation at a time, ~2 s of the client's CPU in one go.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from harness.payload_checks import MAX_PATCH_OPS

from . import test_conforming_servers as conforming
from .outside_servers import WsConn
from .test_agui_id_bounds import verdict
from .test_conforming_servers import judged_three_ways, text

pytestmark = pytest.mark.timeout(120)

DEPTH = 600


def deep_state_run(thread: str, run: str) -> list[dict[str, Any]]:
    """A state nested DEPTH deep by moves, a copy and a test of it (both valid), a snapshot missing its `snapshot`
    (its own R12), a valid delta after it, and an answer."""
    nest: list[dict[str, Any]] = [{"op": "add", "path": "/d", "value": {}}]
    for _ in range(DEPTH):
        nest += [{"op": "add", "path": "/x", "value": {}}, {"op": "move", "from": "/d", "path": "/x/d"},
                 {"op": "move", "from": "/x", "path": "/d"}]
    deep = json.loads('{"d":' * DEPTH + "{}" + "}" * DEPTH)
    return [{"type": "RUN_STARTED", "threadId": thread, "runId": run},
            {"type": "STATE_DELTA", "delta": nest},
            {"type": "STATE_DELTA", "delta": [{"op": "copy", "from": "/d", "path": "/e"}]},
            {"type": "STATE_SNAPSHOT", "snapshot": {"d": deep}},
            {"type": "STATE_DELTA", "delta": [{"op": "test", "path": "/d", "value": deep}]},
            {"type": "STATE_SNAPSHOT"},
            {"type": "STATE_DELTA", "delta": [{"op": "add", "path": "/n", "value": 1}]},
            {"type": "TEXT_MESSAGE_START", "messageId": "answer", "role": "assistant"},
            {"type": "TEXT_MESSAGE_CONTENT", "messageId": "answer", "delta": "42"},
            {"type": "TEXT_MESSAGE_END", "messageId": "answer"},
            {"type": "RUN_FINISHED", "threadId": thread, "runId": run}]


class DeepState:
    async def handler(self, conn: WsConn) -> None:
        while (raw := await conn.recv()) is not None:
            msg = json.loads(raw)
            conn.writer.write(b"".join(text(f) for f in deep_state_run(msg["threadId"], msg["runId"])))
            await conn.writer.drain()


async def test_a_deep_state_and_a_snapshot_without_its_state_are_judged_alike_by_run_check_and_proxy(monkeypatch):
    monkeypatch.setattr(conforming, "verdict", verdict)
    got = await judged_three_ways(DeepState, profile_name="ag-ui", chats_per_user=1,
                                  expect={"deadline": "20s", "settle": "0.1s"})
    # The snapshot's own R12, and one advice: the state is not followed past the depth (not a violation).
    expected = [("failed", (("R12", 1),), ("R12 STATE_DELTA: state nested too deeply to follow (past the int",))]
    assert got == {"run": expected, "check": expected, "proxy": expected}, got


def long_patch_run(thread: str, run: str, ops: int) -> list[dict[str, Any]]:
    """A STATE_DELTA of `ops` valid operations (90,000: a 3 MiB frame that held the client's loop ~2 s), a delta that
    does not apply to the state the server would then have (no member /gone), an activity patched as long, and an
    answer."""
    many = [{"op": "add", "path": "/a", "value": i} for i in range(ops)]
    return [{"type": "RUN_STARTED", "threadId": thread, "runId": run},
            {"type": "STATE_DELTA", "delta": many},
            {"type": "STATE_DELTA", "delta": [{"op": "remove", "path": "/gone"}]},
            {"type": "ACTIVITY_SNAPSHOT", "messageId": "act", "activityType": "PLAN", "content": {"a": 0}},
            {"type": "ACTIVITY_DELTA", "messageId": "act", "activityType": "PLAN", "patch": many},
            {"type": "TEXT_MESSAGE_START", "messageId": "answer", "role": "assistant"},
            {"type": "TEXT_MESSAGE_CONTENT", "messageId": "answer", "delta": "42"},
            {"type": "TEXT_MESSAGE_END", "messageId": "answer"},
            {"type": "RUN_FINISHED", "threadId": thread, "runId": run}]


class LongPatches:
    ops = 90_000

    async def handler(self, conn: WsConn) -> None:
        while (raw := await conn.recv()) is not None:
            msg = json.loads(raw)
            for f in long_patch_run(msg["threadId"], msg["runId"], self.ops):
                conn.writer.write(text(f))
                await conn.writer.drain()


class PatchesAtTheBound(LongPatches):
    ops = MAX_PATCH_OPS


async def test_a_patch_past_the_bound_is_not_applied_and_said_once_and_one_at_it_is_checked_everywhere(monkeypatch):
    # FAILED on the code before: the 90,000 operations were applied one by one (~2 s of the client's CPU in one go),
    # so the delta after them was an R12 ("does not apply"); now neither long patch is applied, the state and the
    # activity are not followed from there, each said once (advice: AG-UI sets a patch no size).
    monkeypatch.setattr(conforming, "verdict", verdict)
    got = await judged_three_ways(LongPatches, profile_name="ag-ui", chats_per_user=1,
                                  expect={"deadline": "20s", "settle": "0.1s"})
    said = f"a patch of over {MAX_PATCH_OPS:,} operations (not applied, nor validated past them)"
    expected = [("passed", (), (f"R12 {f'ACTIVITY_DELTA: {said}'[:60]}", f"R12 {f'STATE_DELTA: {said}'[:60]}"))]
    assert got == {"run": expected, "check": expected, "proxy": expected}, got
    # At the bound a patch is applied and checked: the remove of a member the state does not have is its R12.
    got = await judged_three_ways(PatchesAtTheBound, profile_name="ag-ui", chats_per_user=1,
                                  expect={"deadline": "20s", "settle": "0.1s"})
    expected = [("failed", (("R12", 1),), ())]
    assert got == {"run": expected, "check": expected, "proxy": expected}, got
