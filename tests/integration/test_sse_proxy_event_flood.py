"""The proxy's HTTP side against an upstream that floods an event stream with tiny events (or blank lines), over real
loopback sockets: each read of it is checked a slice at a time, the event loop handed over between slices, so the
proxy's other users wait for a few thousand lines at most, not for a whole 64 KiB read of them. Measured as lines
parsed (and events judged) per turn of the event loop, not with a clock: the same on any machine, however loaded."""
from __future__ import annotations

import asyncio
import contextlib
import json
import sys

import pytest

from .test_sse_proxy import BODY, proxy_to

FLOOD = 512 * 1024  # bytes of the flood, a few reads of 64 KiB


class PerTurn:
    """The most calls of `name` (in a file ending with `filename`) made in one turn of the event loop: a ticker task
    counts the turns, a profile hook the calls since the ticker last ran (and `calls`, all of them)."""

    def __init__(self, name: str, filename: str) -> None:
        self.name, self.filename = name, filename
        self.turn = 0
        self._seen_turn = -1
        self.run = 0
        self.most = 0
        self.calls = 0

    def __call__(self, frame, event, arg) -> None:
        code = frame.f_code
        if event == "call" and code.co_name == self.name and code.co_filename.endswith(self.filename):
            if self._seen_turn != self.turn:
                self._seen_turn, self.run = self.turn, 0
            self.run += 1
            self.calls += 1
            self.most = max(self.most, self.run)

    @contextlib.asynccontextmanager
    async def counting(self):
        async def tick() -> None:
            while True:
                self.turn += 1
                await asyncio.sleep(0)  # wait-ok: one turn of the event loop is what is counted

        ticker = asyncio.ensure_future(tick())
        previous = sys.getprofile()
        sys.setprofile(self)
        try:
            yield self
        finally:
            sys.setprofile(previous)
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)


@pytest.mark.parametrize("flood,name,filename,most", [
    (b"data:1\n\n", "server_frame", "monitors/proxy.py", 600),  # 8,192 events in a 64 KiB read, each judged
    (b"\n", "_line", "harness/eventstream.py", 4200),  # 65,536 lines in a 64 KiB read, each parsed
])
async def test_an_upstream_flooding_tiny_events_is_checked_a_slice_at_a_time(flood, name, filename, most):
    start = json.dumps({"type": "RUN_STARTED", "threadId": "t1", "runId": "r1"}).encode()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(len(BODY))
            # No length, no chunks: the body is what comes until the close, each read of it one piece for h11.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: %s\n\n" % start)
            writer.write(flood * (FLOOD // len(flood)))
            await writer.drain()
        finally:
            writer.close()

    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    try:
        async with proxy_to(f"http://127.0.0.1:{up.sockets[0].getsockname()[1]}", deadline="30s") as (url, _, _):
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                async with PerTurn(name, filename).counting() as per_turn:
                    writer.write(b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY))
                    got = 0
                    async with asyncio.timeout(60):
                        while data := await reader.read(1 << 16):
                            got += len(data)
            finally:
                writer.transport.abort()
    finally:
        up.close()
    assert got > FLOOD  # relayed whole (and the connection ended with it)
    assert per_turn.most <= most, f"{per_turn.most} calls of {name} in one turn of the event loop"


async def test_a_user_who_closes_as_soon_as_a_long_last_read_ends_its_run_is_not_judged_abandoned():
    """The slices of a read are checked over several turns of the loop, after the read went to the client whole: a
    client that closes the moment it reads the run's end (its answer's last 60 KiB in one read) may leave before the
    proxy has checked them. What it was sent is still checked: the chat passed, it was not abandoned."""
    from .test_sse_proxy import RUN, sample, until

    content = [{"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1", "delta": "x" * 40}] * 900
    events = b"".join(b"data: %s\n\n" % json.dumps(e).encode() for e in [*RUN[:2], *content, *RUN[2:]])
    assert len(events) > 48 * 1024

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(len(BODY))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(events), events))
            await writer.drain()
            await reader.read()  # until the proxy closes its request
        finally:
            writer.close()

    up = await asyncio.start_server(upstream, "127.0.0.1", 0)
    try:
        async with proxy_to(f"http://127.0.0.1:{up.sockets[0].getsockname()[1]}", deadline="30s") as (url, metrics,
                                                                                                         _):
            host, port = url.removeprefix("http://").split(":")
            for _ in range(5):  # the race, five times over
                reader, writer = await asyncio.open_connection(host, int(port))
                try:
                    writer.write(b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
                    got = b""
                    async with asyncio.timeout(30):
                        while b"RUN_FINISHED" not in got:
                            data = await reader.read(1 << 16)
                            assert data, got[-200:]
                            got += data
                finally:
                    writer.transport.abort()  # at once, as a page unloading
            await until(lambda: sum(sample(metrics, "chatprobe_chats_total", outcome=o)
                                    for o in ("passed", "failed", "incomplete", "error")) == 5)
            assert sample(metrics, "chatprobe_chats_total", outcome="passed") == 5
            assert sample(metrics, "chatprobe_chats_abandoned_total") == 0
    finally:
        up.close()
