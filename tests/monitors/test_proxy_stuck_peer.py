"""`chatprobe proxy` stopped (SIGTERM) while one side of a chat stops reading and the other keeps writing: the proxy's
writes to the stuck side back up, and websockets' closing handshake waits for them to drain before its close timeout
starts. The shutdown's deadline is the drain (--drain-timeout) and then the shutdown grace (SHUTDOWN_GRACE): past it,
every connection left is cut (stop_proxy, FrontDoor.cut_all), so the process exits without waiting a second grace,
and the chat in flight is counted unjudged (proxy_stopped), as docs/runbook.md says. Real processes over real sockets
on 127.0.0.1: the proxy, a raw upstream written here, and a WebSocket client. Every wait has a deadline."""
from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from monitors.proxy import SHUTDOWN_GRACE

from .procs import proxy_process
from .test_proxy_unjudged import poll, value

DRAIN = 1.0  # the test's --drain-timeout
PAD = "x" * 60_000  # each flooded frame's filler
RUN = "run-stuck"
# The proxy's exit: the drain, one grace, and slack for a loaded machine. Without the cut at the end of the first
# grace it waits out a second one (stop_proxy) and says so.
EXIT_BY = DRAIN + SHUTDOWN_GRACE + 3.0
STILL_OPEN = "connections still open"


def event(kind: str, **payload: object) -> str:
    return json.dumps({"type": kind, "payload": {"run_id": RUN, "thread_id": "t-1", **payload}})


@contextlib.asynccontextmanager
async def upstream(flood: bool):
    """A raw netra upstream: it welcomes, answers the first message with agent_started, then either floods
    agent_thinking events for good (`flood`) or reads nothing more (its receive queue held at one frame, so that its
    socket's buffers fill). Yields its ws:// URL and a list holding its connection once one came."""
    conns: list[ServerConnection] = []
    never = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        conns.append(ws)
        await ws.send(json.dumps({"type": "connection_established", "payload": {"user_id": "u"}}))
        await ws.recv()
        await ws.send(event("agent_started"))
        with contextlib.suppress(websockets.ConnectionClosed):
            if flood:
                while True:
                    await ws.send(event("agent_thinking", thought=PAD))
            await never  # reads nothing: the client's frames wait in the socket

    async with serve(handler, "127.0.0.1", 0, max_queue=1, ping_interval=None, compression=None,
                     max_size=None) as server:
        try:
            yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", conns
        finally:
            never.cancel()


async def backed_up(conn_of, timeout: float = 20.0) -> None:
    """Until the writing side's socket holds frames its peer did not take (the stuck side's buffers are full)."""
    async with asyncio.timeout(timeout):
        while (ws := conn_of()) is None or ws.transport.get_write_buffer_size() == 0:
            await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout


async def stop_and_time(p, loop) -> float:
    """SIGTERM the proxy; how long it took to exit (it must, within EXIT_BY, with 0)."""
    stopped_at = loop.time()
    p.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(EXIT_BY + 10):
        assert await p.proc.wait() == 0, p.err.read_text()
    return loop.time() - stopped_at


async def test_sigterm_ends_the_proxy_within_its_deadline_while_the_client_reads_nothing_of_a_flood(tmp_path):
    """The user's client sends its message, reads the first event, then reads nothing while the upstream floods: the
    proxy's writes to the client back up. SIGTERM: the chat is in flight (no terminal event) past the drain, its
    closing handshake waits on the full buffer, and at the end of the grace the connection is cut. FAILED with
    `door.cut_all()` left out of stop_proxy: the process waited a second grace (2 x 5 s) and said connections were
    still open."""
    async with upstream(flood=True) as (url, conns), proxy_process(
            url, tmp_path, "--drain-timeout", f"{DRAIN:g}s", "--send-timeout", "120s", "--deadline", "120s",
            "--stall-limit", "120s", metrics=True, stop=False) as p:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(60):
            # max_queue=1: once a frame waits unread, the client's socket is read no more.
            ws = await connect(f"ws://127.0.0.1:{p.port}/ws?user=stuck", ping_interval=None, close_timeout=1,
                               max_queue=1, max_size=None, open_timeout=10)
            assert json.loads(await ws.recv())["type"] == "connection_established"
            await ws.send(json.dumps({"type": "user_message", "payload": {
                "content": "What is 3 * 4?", "thread_id": "t-1", "message_id": "m-1"}}))
            assert json.loads(await ws.recv())["type"] == "agent_started"
            await backed_up(lambda: conns[0] if conns else None)
            await poll(p, lambda s: value(s, "chatprobe_chats_in_flight") == 1)
            took = await stop_and_time(p, loop)
            ws.transport.abort()
    err = p.err.read_text()
    assert took < EXIT_BY and STILL_OPEN not in err, (took, err)
    assert "stopping: 1 chat(s) it could not judge" in err and "proxy_stopped" in err, err
    assert "Traceback" not in err, err


async def test_sigterm_ends_the_proxy_within_its_deadline_while_the_upstream_reads_nothing_of_a_flood(tmp_path):
    """The other way round: the upstream reads nothing after the message while the client floods frames; the proxy's
    writes to the upstream back up. SIGTERM ends the proxy within the drain and one grace all the same, the chat
    counted proxy_stopped."""
    async with upstream(flood=False) as (url, conns), proxy_process(
            url, tmp_path, "--drain-timeout", f"{DRAIN:g}s", "--send-timeout", "120s", "--deadline", "120s",
            "--stall-limit", "120s", metrics=True, stop=False) as p:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(60):
            ws = await connect(f"ws://127.0.0.1:{p.port}/ws?user=flooder", ping_interval=None, close_timeout=1,
                               max_size=None, open_timeout=10)
            assert json.loads(await ws.recv())["type"] == "connection_established"
            await ws.send(json.dumps({"type": "user_message", "payload": {
                "content": "What is 3 * 4?", "thread_id": "t-1", "message_id": "m-1"}}))
            assert json.loads(await ws.recv())["type"] == "agent_started"

            async def flood() -> None:
                with contextlib.suppress(websockets.ConnectionClosed):
                    while True:
                        await ws.send(json.dumps({"type": "heartbeat", "payload": {"pad": PAD}}))

            flooding = asyncio.create_task(flood())
            try:
                await backed_up(lambda: ws)  # the client's own socket backs up once the proxy's to the upstream is full
                await poll(p, lambda s: value(s, "chatprobe_chats_in_flight") == 1)
                took = await stop_and_time(p, loop)
            finally:
                flooding.cancel()
                ws.transport.abort()
    err = p.err.read_text()
    assert took < EXIT_BY and STILL_OPEN not in err, (took, err)
    assert "stopping: 1 chat(s) it could not judge" in err and "proxy_stopped" in err, err
    assert "Traceback" not in err, err
