"""A client with more chats open at once on one connection than `chatprobe proxy` follows (flow.MAX_OPEN_WATCHED, 64):
the proxy judges the oldest as it stands each time one more comes, the client's doing, and `chatprobe check` of the
proxy's own recording judges the same chats so, not as chats it followed to their end.

Real processes over real sockets on 127.0.0.1: agentsim (its runs think for 30 s, so that every chat stays open),
`chatprobe proxy --record --record-all` in front of it, a WebSocket client that opens 100 chats on one connection and
then leaves; `chatprobe check --json` of the recording in a child process.

FAILED on the code before the change: the proxy counted 64 chats `passed` (abandoned as the client left) and 36 in
chatprobe_client_rejections_total, while `check` of its recording, whose own bound is 1,000 chats open on a
connection, followed all 100 and counted 100 `passed`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys

import websockets
from websockets.asyncio.client import connect

from harness.events import Outcome
from harness.flow import MAX_OPEN_WATCHED, TOO_MANY_OPEN

from .procs import ROOT, agentsim_process, proxy_process
from .test_proxy_unjudged import outcomes, poll, unjudged, value

CHATS = 100


async def _drain(ws) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async for _ in ws:
            pass


async def test_chats_the_proxy_let_go_for_too_many_open_are_judged_alike_by_check_of_its_recording(tmp_path):
    rec = tmp_path / "rec"
    crowded = CHATS - MAX_OPEN_WATCHED
    async with agentsim_process("--think", "30", "--max-live-runs-per-user", "1000") as sim, proxy_process(
            sim, tmp_path, "--record", str(rec), "--record-all", metrics=True) as p:
        async with asyncio.timeout(60):
            ws = await connect(f"ws://127.0.0.1:{p.port}/ws?user=alice", ping_interval=None, close_timeout=2)
            assert json.loads(await ws.recv())["type"] == "connection_established"
            reader = asyncio.ensure_future(_drain(ws))  # the user's client reads what comes, as a chat UI does
            for i in range(CHATS):
                await ws.send(json.dumps({"type": "user_message", "payload": {
                    "content": "What is 2 * 2?", "thread_id": f"t-{i}", "message_id": f"m-{i}"}}))
            # Every message reached the proxy while the runs think: the oldest let go, one per message past the bound.
            during = await poll(p, lambda s: value(s, "chatprobe_client_rejections_total") == crowded)
            assert value(during, "chatprobe_client_rejections_total") == crowded, during
            assert value(during, "chatprobe_chats_in_flight") == MAX_OPEN_WATCHED, during
            # The user leaves: the chats still open are abandoned, judged on what arrived (passed).
            await ws.close()
            await reader
            live = await poll(p, lambda s: value(s, "chatprobe_chats_in_flight") == 0)
    judged = outcomes(live)
    assert value(live, "chatprobe_chats_in_flight") == 0, live
    assert judged[Outcome.PASSED.value] == MAX_OPEN_WATCHED and sum(judged.values()) == MAX_OPEN_WATCHED, judged
    assert value(live, "chatprobe_client_rejections_total") == crowded, live
    assert value(live, "chatprobe_chats_abandoned_total") == MAX_OPEN_WATCHED, live
    assert sum(judged.values()) + value(live, "chatprobe_client_rejections_total") + sum(unjudged(live).values()) \
        == CHATS  # every chat started counted once

    out = tmp_path / "check.json"
    checked = subprocess.run([sys.executable, "-m", "harness", "check", str(rec), "--json", str(out), "-q"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "Traceback" not in checked.stderr, checked.stderr
    (scenario,) = json.loads(out.read_text())["scenarios"]
    stats = scenario["stats"]
    # `check` of the proxy's recording: the proxy's verdicts, the chats it let go the client's doing (its
    # client_rejections), among the `error` chats, `rejected`, as a message the server rejected is there.
    assert stats["outcomes"][Outcome.PASSED.value] == judged[Outcome.PASSED.value], stats
    assert stats["error_kinds"] == {"rejected": crowded}, stats
    assert stats["outcomes"][Outcome.ERROR.value] == value(live, "chatprobe_client_rejections_total"), stats
    assert stats["chats"] == sum(stats["outcomes"].values()) == CHATS, stats
    assert stats["unjudged_chats"] == unjudged(live), stats
    let_go = [c for c in scenario["chats"] if c["outcome"] == Outcome.ERROR.value]
    assert {c["thread_id"] for c in let_go} == {f"t-{i}" for i in range(crowded)}, let_go  # the oldest ones
    assert {(c["error_kind"], c["error"], c["note"]) for c in let_go} == {("rejected", TOO_MANY_OPEN, TOO_MANY_OPEN)}
    # Which chats: named on each send record past the bound, the chat the proxy let go for it (its send record).
    records = [json.loads(line) for f in rec.glob("*.jsonl") for line in f.read_text().splitlines()]
    named = [r["crowded_out"] for r in records if "crowded_out" in r]
    assert named == list(range(1, crowded + 1)), named
