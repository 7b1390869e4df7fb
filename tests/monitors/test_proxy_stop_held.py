"""`chatprobe proxy` stopped by SIGTERM with a chat in flight that its server accepted and never answered: the drain's
time runs out, the proxy closes the connection (neither the user nor the server did), and the chat is counted unjudged
(proxy_stopped), never abandoned nor judged. On the WebSocket side with a JWT's claim (the client's frames held until
the server speaks, which it never does) and with an opaque token (taken at once); on the HTTP side with an event stream
begun and then silent. Real processes over real sockets on 127.0.0.1: the proxy in a child process, in front of a raw
upstream of the test's own; what it counted is read from its /metrics as it stops, its stderr and its recording."""
from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time

import jwt
import pytest
import websockets
import websockets.asyncio.server
from websockets.asyncio.client import connect

from harness.offline import check_files
from harness.profiles import load_profile

from .procs import proxy_process
from .test_proxy_unjudged import hold_the_shutdown, outcomes, poll, unjudged, value


def settled(s: dict) -> bool:
    """The chat counted somewhere other than in flight: judged, abandoned or unjudged."""
    return (sum(unjudged(s).values()) + sum(outcomes(s).values()) + value(s, "chatprobe_chats_abandoned_total")
            + value(s, "chatprobe_client_rejections_total")) >= 1 and value(s, "chatprobe_chats_in_flight") == 0


def closes(rec) -> list[dict]:
    return [json.loads(line) for f in rec.glob("*.jsonl") for line in f.read_text().splitlines()
            if json.loads(line).get("dir") == "close"]


@pytest.mark.parametrize("token", ["jwt", "opaque"])
async def test_a_chat_its_server_never_answered_is_proxy_stopped_at_the_drains_end(token, tmp_path):
    came = asyncio.Event()

    async def silent(ws) -> None:  # accepts the upgrade and the message, then says nothing
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                if json.loads(raw).get("type") == "user_message":
                    came.set()

    bearer = (jwt.encode({"sub": "bob", "exp": int(time.time()) + 300}, "some-key-" + "k" * 32, algorithm="HS256")
              if token == "jwt" else "opaque-" + "z" * 24)
    rec = tmp_path / "rec"
    async with websockets.asyncio.server.serve(silent, "127.0.0.1", 0, ping_interval=None, close_timeout=1) as up:
        upstream = f"ws://127.0.0.1:{up.sockets[0].getsockname()[1]}"
        async with proxy_process(upstream, tmp_path, "--drain-timeout", "1s", "--deadline", "60s", "--record",
                                 str(rec), "--record-all", metrics=True, stop=False) as p:
            async with asyncio.timeout(60):
                ws = await connect(f"ws://127.0.0.1:{p.port}/ws", ping_interval=None, close_timeout=2,
                                   additional_headers={"Authorization": f"Bearer {bearer}"})
                await ws.send(json.dumps({"type": "user_message", "payload": {
                    "content": "hi", "thread_id": "t-1", "message_id": "m-1"}}))
                await came.wait()  # the proxy took it (it takes a frame before it forwards it)
                holder = await hold_the_shutdown(p.port)
                p.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for _ in ws:
                        pass
                assert ws.close_code == 1001  # the proxy going away, not the server
                last = await poll(p, settled)
                assert await p.proc.wait() == 0, p.err.read_text()
                holder[1].close()
    err = p.err.read_text()
    assert "1 connection(s) still had a chat in flight at the end of the drain" in err, err
    assert "stopping: 1 chat(s) it could not judge" in err and "Traceback" not in err, err
    assert unjudged(last) == {"proxy_stopped": 1, "parking_full": 0}, (unjudged(last), outcomes(last))
    assert sum(outcomes(last).values()) == 0 and value(last, "chatprobe_chats_abandoned_total") == 0
    assert value(last, "chatprobe_chats_in_flight") == 0 and value(last, "chatprobe_client_rejections_total") == 0
    assert "proxy-stop" in {c.get("by") for c in closes(rec)}, closes(rec)
    (run,) = check_files([rec], load_profile("netra"))
    assert (run.stats.chats, run.results) == (0, []), [(r.outcome, r.note) for r in run.results]
    assert dict(run.stats.unjudged) == {"proxy_stopped": 1}, run.stats.unjudged
