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
    """The server accepts the upgrade and the message and says nothing (a JWT's claim: the client's frames held all
    along; an opaque token: a chat in flight at once). SIGTERM, the drain runs out, the proxy closes the connection
    with 1001: counted proxy_stopped, in no outcome, not abandoned, nothing in flight, and `check` agrees."""
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


async def test_an_event_stream_its_server_went_silent_on_is_proxy_stopped_at_the_drains_end(tmp_path):
    """The HTTP side: the server answered the chat's POST with an event stream, sent RUN_STARTED and went silent. The
    drain runs out, the proxy cuts the stream: proxy_stopped, not abandoned. (The cut ends every client connection at
    once, so nothing keeps /metrics served after it: the process's stderr and its recording say what it counted.)"""
    never = asyncio.Event()
    started = b'data: {"type": "RUN_STARTED", "threadId": "t1", "runId": "r1"}\n\n'

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"%x\r\n%s\r\n" % (len(started), started))
            await writer.drain()
            await never.wait()  # silent until the test ends
        writer.transport.abort()

    body = json.dumps({"threadId": "t1", "runId": "r1", "state": {}, "tools": [], "context": [], "forwardedProps": {},
                       "messages": [{"id": "m1", "role": "user", "content": "hi"}]}).encode()
    rec = tmp_path / "rec"
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        upstream = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with proxy_process(upstream, tmp_path, "--profile", "ag-ui", "--drain-timeout", "1s", "--deadline",
                                 "60s", "--record", str(rec), "--record-all", metrics=True, stop=False) as p:
            async with asyncio.timeout(60):
                reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
                writer.write(b"POST /agent HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer opaque-%s\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (b"z" * 24, len(body), body))
                await reader.readuntil(b"RUN_STARTED")
                before = await poll(p, lambda s: value(s, "chatprobe_chats_in_flight") == 1)
                assert value(before, "chatprobe_chats_in_flight") == 1
                p.proc.send_signal(signal.SIGTERM)
                rest = await reader.read()  # cut at the drain's end: never the stream's end
                assert not rest.endswith(b"0\r\n\r\n"), rest
                assert await p.proc.wait() == 0, p.err.read_text()
                writer.close()
    finally:
        never.set()
        server.close()
    err = p.err.read_text()
    assert "1 connection(s) still had a chat in flight at the end of the drain" in err, err
    assert "stopping: 1 chat(s) it could not judge" in err and "Traceback" not in err, err
    assert {c.get("by") for c in closes(rec)} == {"proxy-stop"}, closes(rec)
    (run,) = check_files([rec], load_profile("ag-ui"))
    assert (run.stats.chats, run.results) == (0, []), [(r.outcome, r.note) for r in run.results]
    assert dict(run.stats.unjudged) == {"proxy_stopped": 1}, run.stats.unjudged
