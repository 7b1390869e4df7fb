"""`chatprobe proxy` stamps the server's events as it reads them from the upstream, and while its writes to a client
are backed up (the client reads slowly: a phone on a bad network, or a hostile user) it reads the upstream no
further: a healthy server's events reach it late. Its timing rules (R9, R10, R11) broken while it was held back so
are the client's doing (chatprobe_client_rejections_total), not the server's outcome; a slow server behind a client
that reads at once is still blamed. Real sockets on 127.0.0.1: raw upstreams written here (netra over WebSocket,
AG-UI over SSE), the proxy in this process (its WebSocket side and its HTTP side), and a raw client whose receive
buffer is small and which stops reading its socket. Every wait has a deadline and waits on the proxy's own state or
on bytes read."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct

import websockets
from prometheus_client import CollectorRegistry
from websockets.asyncio.server import ServerConnection, serve

from harness.checker import Expectations
from harness.events import DEFAULT_REQUIRED
from harness.profiles import load_profile
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, start_proxy
from monitors.sse_proxy import WRITE_LIMIT, SSEProxy, start_sse_proxy

# Limits short enough for a test; the client holds the proxy back for longer than the deadline.
EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=0.5, deadline=1.5, stall_limit=1.0)
PAD = "x" * (1024 * 1024)  # each heartbeat's filler: 8 of them are more than the kernel's buffers hold
HEARTBEATS = 8
RUN = "r-1"


def _event(kind: str, seq: int, **payload: object) -> str:
    return json.dumps({"type": kind, "run_id": RUN, "thread_id": "t-1", "seq": seq, "payload": payload})


RUN_EVENTS = [
    _event("agent_started", 1, agent_name="a", message_id="m-1"),
    _event("agent_thinking", 2, thought="t", step_number=1),
    _event("tool_executing", 3, tool_name="calculator", tool_call_id="c-1", parameters={}),
    _event("tool_completed", 4, tool_name="calculator", tool_call_id="c-1", result=12, duration_ms=1.0, success=True),
    _event("agent_thinking", 5, thought="t", step_number=2),
    _event("agent_completed", 6, result="12", duration_ms=5.0),
]


@contextlib.asynccontextmanager
async def upstream(answers: bool, started: int = 0):
    """A raw netra upstream: it welcomes, and answers the message at once with the run's first `started` events,
    HEARTBEATS large heartbeats (control frames, no event) and then, when `answers`, the rest of the run; else
    nothing more (a server that hangs)."""
    never = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(json.dumps({"type": "connection_established", "payload": {"user_id": "u"}}))
            await ws.recv()
            for frame in RUN_EVENTS[:started]:
                await ws.send(frame)
            for _ in range(HEARTBEATS):
                await ws.send(json.dumps({"type": "heartbeat", "payload": {"pad": PAD}}))
            if answers:
                for frame in RUN_EVENTS[started:]:
                    await ws.send(frame)
            await never

    async with serve(handler, "127.0.0.1", 0, ping_interval=None, compression=None, max_size=None) as server:
        try:
            yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            never.cancel()


@contextlib.asynccontextmanager
async def proxied(url: str, exp: Expectations = EXP):
    metrics = ChatMetrics(CollectorRegistry())
    live = LiveChats(load_profile("netra"), MetricsSink(metrics, "up", "live"), exp, "live", 0.1)
    server = await start_proxy(Proxy(url, live, send_timeout=60.0, max_size=2 * len(PAD)), "127.0.0.1", 0)
    try:
        yield server, metrics
    finally:
        server.close()
        async with asyncio.timeout(10):
            await server.wait_closed()


def sample(metrics: ChatMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"target": "up", "source": "live", "scenario": "live",
                                                   **labels}) or 0.0


def outcomes(metrics: ChatMetrics) -> dict[str, float]:
    return {o: sample(metrics, "chatprobe_chats_total", outcome=o)
            for o in ("passed", "failed", "incomplete", "error")}


def timing_violations(metrics: ChatMetrics) -> dict[str, float]:
    return {r: sample(metrics, "chatprobe_rule_violations_total", rule=r) for r in ("R9", "R10", "R11")}


async def until(cond, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)  # wait-ok: poll interval of a condition wait bounded by the timeout


def _masked_text(text: str) -> bytes:
    data = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    if len(data) < 126:
        head += bytes([0x80 | len(data)])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", len(data))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class RawClient:
    """A WebSocket client on a plain socket whose receive buffer is set small before it connects, so that what the
    proxy sends it backs up in the proxy as soon as it stops reading."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.seen = b""

    @classmethod
    async def connect(cls, port: int) -> "RawClient":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        # A small stream buffer too: asyncio reads the socket into it until it holds twice this, then stops.
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        client = cls(reader, writer)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        await client.read_until(b"connection_established")
        return client

    async def read_until(self, needle: bytes, timeout: float = 30.0) -> None:
        """Read the socket until `needle` came (keeping only a tail of what came before)."""
        async with asyncio.timeout(timeout):
            while needle not in self.seen:
                chunk = await self.reader.read(65536)
                assert chunk, "the proxy closed the connection"
                self.seen = self.seen[-1024:] + chunk

    def send(self, text: str) -> None:
        self.writer.write(_masked_text(text))

    def close(self) -> None:
        self.writer.transport.abort()


MESSAGE = json.dumps({"type": "user_message", "payload": {"content": "What is 3 * 4?", "thread_id": "t-1",
                                                          "message_id": "m-1"}})


async def test_a_client_that_stops_reading_does_not_make_a_prompt_server_look_late():
    """The server answers at once; the client sends its message and reads nothing until the chat's deadline has
    passed: the proxy's writes to it back up, so it reads the upstream no further and the run's events (behind the
    heartbeats) reach it past the first-event limit and the deadline. FAILED before the fix: the chat was counted
    `incomplete` with an R9 and an R10, the server's; now it is the client's doing, in no outcome and no rule."""
    async with upstream(answers=True) as url, proxied(url) as (server, metrics):
        client = await RawClient.connect(server.sockets[0].getsockname()[1])
        try:
            client.send(MESSAGE)
            await until(lambda: sample(metrics, "chatprobe_chats_in_flight") == 1)
            # The proxy's own state: its writes to this client paused (its buffer over the write limit) ...
            await until(lambda: any(c.paused for c in server.connections))
            # ... and the chat judged at its deadline while it still is.
            await until(lambda: sample(metrics, "chatprobe_chats_in_flight") == 0)
            assert any(c.paused for c in server.connections)
            # The client reads again: everything the server sent comes through, its terminal event last.
            await client.read_until(b"agent_completed")
        finally:
            client.close()
    assert outcomes(metrics) == {"passed": 0, "failed": 0, "incomplete": 0, "error": 0}
    assert timing_violations(metrics) == {"R9": 0, "R10": 0, "R11": 0}
    assert sample(metrics, "chatprobe_client_rejections_total") == 1


async def test_a_hung_server_is_still_blamed_behind_a_client_that_reads_at_once():
    """The server sends its large heartbeats and then nothing (hung); the client reads everything as it comes (the
    proxy's writes to it pause for a moment on each large frame, no more): the chat is the server's, `incomplete`
    with an R9 and an R10, as before the fix."""
    async with upstream(answers=False) as url, proxied(url) as (server, metrics):
        client = await RawClient.connect(server.sockets[0].getsockname()[1])
        try:
            client.send(MESSAGE)
            reading = asyncio.ensure_future(client.read_until(b"never comes", timeout=60.0))
            await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="incomplete") == 1)
            assert not reading.done()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        finally:
            client.close()
    assert outcomes(metrics) == {"passed": 0, "failed": 0, "incomplete": 1, "error": 0}
    assert timing_violations(metrics) == {"R9": 1, "R10": 1, "R11": 0}
    assert sample(metrics, "chatprobe_client_rejections_total") == 0


async def test_a_client_that_pauses_mid_run_does_not_make_a_prompt_server_stall():
    """The server sends the whole run at once, the large heartbeats mid-run; the client reads the first events, then
    nothing for longer than the stall limit, then everything: the run's last events reach the proxy past the stall
    limit after the ones before. FAILED before the fix: the chat was `failed` with an R11, the server's."""
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=0.5, deadline=20.0, stall_limit=0.5)
    async with upstream(answers=True, started=2) as url, proxied(url, exp) as (server, metrics):
        client = await RawClient.connect(server.sockets[0].getsockname()[1])
        try:
            client.send(MESSAGE)
            await client.read_until(b"agent_thinking")
            await until(lambda: any(c.paused for c in server.connections))
            await asyncio.sleep(2 * exp.stall_limit)  # wait-ok: the client reading nothing is what the test is about
            await client.read_until(b"agent_completed")
            await until(lambda: sample(metrics, "chatprobe_chats_in_flight") == 0)
        finally:
            client.close()
    assert outcomes(metrics) == {"passed": 0, "failed": 0, "incomplete": 0, "error": 0}
    assert timing_violations(metrics) == {"R9": 0, "R10": 0, "R11": 0}
    assert sample(metrics, "chatprobe_client_rejections_total") == 1


# The HTTP side: an AG-UI run answered over SSE, the same large padding (SSE comment lines, no event) before it.
AGUI_BODY = json.dumps({"threadId": "t1", "runId": "r1", "state": {}, "tools": [], "context": [], "forwardedProps": {},
                        "messages": [{"id": "m1", "role": "user", "content": "hi"}]}).encode()
AGUI_RUN = [{"type": "RUN_STARTED", "threadId": "t1", "runId": "r1"},
            {"type": "TEXT_MESSAGE_START", "messageId": "a1", "role": "assistant"},
            {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1", "delta": "hello"},
            {"type": "TEXT_MESSAGE_END", "messageId": "a1"},
            {"type": "RUN_FINISHED", "threadId": "t1", "runId": "r1"}]
COMMENT = b": " + b"x" * 60_000 + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@contextlib.asynccontextmanager
async def sse_upstream(answers: bool):
    """A raw HTTP upstream answering a chat's POST at once with an event stream: 8 MiB of comment lines, then, when
    `answers`, the whole AG-UI run; else nothing more (a server that hangs)."""
    never = asyncio.get_running_loop().create_future()

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(HEARTBEATS * len(PAD) // len(COMMENT)):
                writer.write(_chunk(COMMENT))
            if answers:
                writer.write(b"".join(_chunk(f"data: {json.dumps(e)}\n\n".encode()) for e in AGUI_RUN) + b"0\r\n\r\n")
            await writer.drain()
            await never
        writer.transport.abort()

    server = await asyncio.start_server(serve_one, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        never.cancel()
        server.close()


@contextlib.asynccontextmanager
async def sse_proxied(url: str):
    metrics = ChatMetrics(CollectorRegistry())
    profile = load_profile("ag-ui")
    exp = Expectations(required=frozenset(), first_event_limit=0.5, deadline=1.5, stall_limit=1.0)
    live = LiveChats(profile, MetricsSink(metrics, "up", "live"), exp, "live", 0.1)
    proxy = SSEProxy(url, live, send_timeout=60.0)
    server = await start_sse_proxy(proxy, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], metrics, proxy
    finally:
        server.close()
        async with asyncio.timeout(10):
            await server.wait_closed()


async def _raw_post(port: int) -> RawClient:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(b"POST /agent HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(AGUI_BODY), AGUI_BODY))
    return RawClient(reader, writer)


def _writes_paused(proxy: SSEProxy) -> bool:
    """The proxy's own state: a client's write buffer over its limit (asyncio paused writing to it)."""
    return any(c.transport.get_write_buffer_size() > WRITE_LIMIT for c in proxy.clients)


async def test_over_sse_a_client_that_stops_reading_does_not_make_a_prompt_server_look_late():
    """The HTTP side alike: the server answers the chat's POST at once, the client reads nothing of the stream until
    the chat's deadline has passed. FAILED before the fix: `incomplete`, R9 and R10, the server's."""
    async with sse_upstream(answers=True) as url, sse_proxied(url) as (port, metrics, proxy):
        client = await _raw_post(port)
        try:
            await until(lambda: sample(metrics, "chatprobe_chats_in_flight") == 1)
            await until(lambda: _writes_paused(proxy))
            await until(lambda: sample(metrics, "chatprobe_chats_in_flight") == 0)
            assert _writes_paused(proxy)
            await client.read_until(b"RUN_FINISHED")
        finally:
            client.close()
    assert outcomes(metrics) == {"passed": 0, "failed": 0, "incomplete": 0, "error": 0}
    assert timing_violations(metrics) == {"R9": 0, "R10": 0, "R11": 0}
    assert sample(metrics, "chatprobe_client_rejections_total") == 1


async def test_over_sse_a_hung_server_is_still_blamed_behind_a_client_that_reads_at_once():
    async with sse_upstream(answers=False) as url, sse_proxied(url) as (port, metrics, _proxy):
        client = await _raw_post(port)
        try:
            reading = asyncio.ensure_future(client.read_until(b"never comes", timeout=60.0))
            await until(lambda: sample(metrics, "chatprobe_chats_total", outcome="incomplete") == 1)
            assert not reading.done()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        finally:
            client.close()
    assert outcomes(metrics) == {"passed": 0, "failed": 0, "incomplete": 1, "error": 0}
    assert timing_violations(metrics) == {"R9": 1, "R10": 1, "R11": 0}
    assert sample(metrics, "chatprobe_client_rejections_total") == 0


async def test_a_server_that_hangs_after_its_client_caught_up_is_still_blamed():
    """The client holds the proxy back for a while mid-run, then reads everything; the server sends nothing more (it
    hangs) and the chat reaches its deadline with the proxy reading freely for seconds: the missing terminal event
    was never sent, the R10 is the server's (`incomplete`), though the client had held the proxy back earlier."""
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=0.5, deadline=3.0, stall_limit=5.0)
    async with upstream(answers=False, started=2) as url, proxied(url, exp) as (server, metrics):
        client = await RawClient.connect(server.sockets[0].getsockname()[1])
        try:
            client.send(MESSAGE)
            await client.read_until(b"agent_thinking")
            await until(lambda: any(c.paused for c in server.connections))
            await asyncio.sleep(0.5)  # wait-ok: the client reading nothing for a while is what the test is about
            reading = asyncio.ensure_future(client.read_until(b"never comes", timeout=60.0))
            await until(lambda: sample(metrics, "chatprobe_chats_in_flight") == 0)
            assert not reading.done()
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        finally:
            client.close()
    assert outcomes(metrics) == {"passed": 0, "failed": 0, "incomplete": 1, "error": 0}
    assert timing_violations(metrics) == {"R9": 0, "R10": 1, "R11": 0}
    assert sample(metrics, "chatprobe_client_rejections_total") == 0
