"""The lean client's connection without a task: picows calls back with frames and with the connection's end (`listen`),
frames of one socket read carry that read's time, and the client's chats wait on one timer each. Real sockets: a raw
server written here, and agentsim."""
from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import struct
import time

from harness.checker import Expectations
from harness.client import Session
from harness.events import DEFAULT_REQUIRED, Outcome
from harness.flow import ChatOptions
from harness.sinks import Sink
from harness.transports.base import ConnectSettings
from harness.transports.picows_ws import PicowsTransport

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([n]) if n < 126 else bytes([126]) + struct.pack("!H", n))
    return head + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    mask = await reader.readexactly(4)
    return head[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(n)))


async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    request = await reader.readuntil(b"\r\n\r\n")
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


async def serve(handler) -> tuple[asyncio.AbstractServer, str]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    return srv, f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/ws"


class Listener:
    """What PicowsTransport.listen calls, made of two callbacks."""

    def __init__(self, on_frame, on_end) -> None:
        self.on_frame, self.on_end = on_frame, on_end


async def until(condition, seconds: float = 10) -> None:
    """Wait for a condition the callbacks make true, bounded."""
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.005)  # wait-ok: poll interval of a condition wait bounded by the timeout


async def test_frames_of_one_read_share_its_time_and_a_ping_ending_a_read_does_not_leak_it_into_the_next():
    client_frames: list[tuple[int, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await upgrade(reader, writer)
            client_frames.append(await read_frame(reader))  # "start"
            # One write, one TCP segment, one read on the client: two events and a ping last.
            writer.write(frame(1, b'{"type": "a"}') + frame(1, b'{"type": "b"}') + frame(9, b"p"))
            client_frames.append(await read_frame(reader))  # the pong
            client_frames.append(await read_frame(reader))  # "go"
            writer.write(frame(1, b'{"type": "c"}'))
            while (await read_frame(reader))[0] != 8:
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv, url = await serve(handler)
    got: list[tuple[str | bytes, float]] = []
    ends: list[object] = []
    transport = PicowsTransport(ConnectSettings(url=url, connect_timeout=3))
    try:
        async with asyncio.timeout(10):  # a hang fails the test
            await transport.open()
            transport.listen(Listener(lambda message, at: got.append((message, at)), ends.append))
            transport.send_now("start")
            await until(lambda: len(got) == 2)
            go_at = time.monotonic()
            transport.send_now("go")
            await until(lambda: len(got) == 3)
            await transport.close()
            await until(lambda: bool(ends))
    finally:
        srv.close()
    (_, at_a), (_, at_b), (_, at_c) = got
    assert at_a == at_b  # one read, one time: b's does not include handling a
    assert at_c >= go_at  # its own read's time, not the one that ended with the ping
    assert client_frames[1] == (10, b"p")  # the ping answered with its payload
    assert ends == [transport] and transport.close_code is not None


def test_a_connection_closed_for_an_oversized_frame_is_told_once_with_1009_and_nothing_logged():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await upgrade(reader, writer)
            await read_frame(reader)
            writer.write(frame(1, b"x" * 2000))
            while (await read_frame(reader))[0] != 8:
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    ends: list[int] = []

    async def exchange() -> tuple[int | None, str | None]:
        srv, url = await serve(handler)
        transport = PicowsTransport(ConnectSettings(url=url, connect_timeout=3, max_size=1024))
        try:
            async with asyncio.timeout(10):  # a hang fails the test
                await transport.open()
                transport.listen(Listener(lambda message, at: None, lambda _transport: ends.append(1)))
                transport.send_now("start")
                await until(lambda: bool(ends))
        finally:
            srv.close()
        return transport.close_code, transport.protocol_error

    # A loop of its own, closed and collected here: a future whose exception nobody read says so when collected.
    logged: list[dict] = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _loop, context: logged.append(context))
    try:
        close_code, protocol_error = loop.run_until_complete(exchange())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    del loop
    gc.collect()
    assert ends == [1]
    assert close_code in (1006, 1009)
    assert protocol_error == "frame larger than the 1024 byte limit"
    assert logged == []


HOLD = ChatOptions(settle=0)
EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=60.0, first_event_limit=10.0)


async def test_open_chats_on_picows_hold_no_reader_task(sim_factory):
    async with sim_factory() as (sim, target, _gt):
        sessions = [Session(target, f"u{i}", "hold", Sink(), connect_timeout=5) for i in range(5)]
        chats = [asyncio.ensure_future(s.chat("hold #think=30", EXP, HOLD)) for s in sessions]
        try:
            await until(lambda: all(c.events for s in sessions for c in s.checker.chats) and
                        len(sessions) == sum(len(s.checker.chats) for s in sessions))
            assert all(s.reader is None and not s.closed for s in sessions)
            # agentsim runs in this loop too: the harness's tasks are those running its code.
            mine = {t for t in asyncio.all_tasks() if "/harness/" in t.get_coro().cr_code.co_filename}
            assert mine == set(chats)  # one task per chat, none per connection
        finally:
            for c in chats:
                c.cancel()
            await asyncio.gather(*chats, return_exceptions=True)
            async with asyncio.timeout(10):
                await asyncio.gather(*(s.close() for s in sessions))
        assert all(s.closed for s in sessions)


async def test_the_settle_window_ends_the_wait_long_before_the_deadline(sim_factory):
    # One timer per chat: armed for the 60 s deadline while the run goes on, moved to the settle window's end.
    async with sim_factory() as (sim, target, _gt):
        sink = Sink()
        session = Session(target, "u", "settle", sink, connect_timeout=5)
        try:
            async with asyncio.timeout(10):  # far below the deadline: a timer left at it fails the test
                results = [await session.chat("What is 2 * 3?", EXP, ChatOptions(settle=0.05)) for _ in range(3)]
        finally:
            await session.close()
    assert [r.outcome for r in results] == [Outcome.PASSED] * 3
