"""A side that has frames in flight towards the proxy as its connection closes: its answer to the close, behind them,
is read and the closing handshake ends clean (FAILED on the code before: the proxy reads one frame ahead, MAX_QUEUE,
and a side with two or more frames in flight had its answer left unread until the close timeout dropped the
connection, a TCP reset where a clean close was due, and the messages that crossed the upstream's close past the first
few never judged). What a side sends past the proxy's bound while closing is not read: that side is dropped at the
close timeout, as before.

Raw peers on 127.0.0.1 (hostile_ws's upstream, a raw client here), so that the frames in flight and the TCP end (a FIN
after the handshake, or a reset) are the test's to send and see."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import struct

import pytest
import websockets.asyncio.client
from prometheus_client import CollectorRegistry

from harness.checker import Expectations
from harness.events import DEFAULT_REQUIRED
from harness.profiles import load_profile
from harness.recorder import Recorder
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import MAX_CLOSING_FRAMES, READ_CAP, LiveChats, Proxy, start_proxy
from tests.integration.hostile_ws import WELCOME, frame, raw, read_frame, upgrade

# Long enough that a chat held for its resend is still in flight when the test reads the proxy's counters.
EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=120.0)
LIVE = dict(target="up", scenario="live", source="live")
CLOSE_1000 = struct.pack("!H", 1000)
# A frame the proxy cannot read in one read (READ_CAP): behind two queued frames, the frames after it stay unread.
BIG = "x" * (2 * READ_CAP)
GUARD = 30  # s: a hang guard for the whole test, never a measure of it


class Live(LiveChats):
    """The proxy's chats, with an event set once a connection's end was judged (its close record written)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gone = asyncio.Event()

    def connection_closed(self, conn):
        super().connection_closed(conn)
        self.gone.set()


def masked(opcode: int, payload: bytes) -> bytes:
    """One masked client frame."""
    key = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One unmasked server frame: (opcode, payload)."""
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    return head[0] & 0x0F, await reader.readexactly(n)


async def tcp_end(reader: asyncio.StreamReader) -> str:
    """How the peer ended the TCP connection once nothing more was due: "fin" (a clean close) or "reset"."""
    try:
        while await reader.read(65536):
            pass
    except ConnectionResetError:
        return "reset"
    return "fin"


def message(i: int, content: str = "hi") -> bytes:
    return json.dumps({"type": "user_message", "payload": {"content": content, "thread_id": f"t{i}",
                                                         "message_id": f"m{i}"}}).encode()


async def proxy_in_front(upstream_port: int, recorder=None, **options):
    metrics = ChatMetrics(CollectorRegistry())
    live = Live(load_profile("netra"), MetricsSink(metrics, "up", "live"), EXP, "live", 0.2, recorder)
    proxy = Proxy(f"ws://127.0.0.1:{upstream_port}", live, **options)
    server = await start_proxy(proxy, "127.0.0.1", 0)
    return metrics, live, server


async def test_the_clients_answer_behind_messages_that_crossed_the_upstreams_close_is_read_and_the_close_is_clean(
        tmp_path):
    """The upstream closes (1000) right after its welcome; the client, before that close reached it, had sent four
    chats (the last one larger than one read of the proxy's), then answers the close. The proxy reads them all while
    the closing handshake goes on: the client's connection ends with the handshake (1000, then a FIN, no reset), and
    the four messages are the chats that crossed the close, held for their resend (in flight), the recording's close
    record 1000. Before, the proxy read two of them and no further: the client's answer sat unread until the close
    timeout dropped the connection (a reset), and the fourth chat was never seen."""
    async def closes_after_welcome(reader, writer, head, srv):
        writer.write(upgrade(head) + frame(1, WELCOME) + frame(8, CLOSE_1000))
        await writer.drain()
        while (await read_frame(reader))[0] != 8:  # the proxy's answer to the close
            pass

    recorder = Recorder(tmp_path / "rec", keep_all=True)
    async with raw(closes_after_welcome) as upstream:
        metrics, live, server = await proxy_in_front(upstream.port, recorder)
        try:
            async with asyncio.timeout(GUARD):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
                key = base64.b64encode(os.urandom(16))
                writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
                assert await server_frame(reader) == (1, WELCOME)
                assert await server_frame(reader) == (8, CLOSE_1000)
                # What the client sent before the close reached it, then its answer to the close, behind them.
                writer.write(b"".join(masked(1, message(i)) for i in range(3)) + masked(1, message(3, BIG))
                             + masked(8, CLOSE_1000))
                await writer.drain()
                assert await tcp_end(reader) == "fin"
                writer.close()
                await live.gone.wait()
            assert metrics.registry.get_sample_value("chatprobe_chats_in_flight", LIVE) == 4
            (recording,) = (tmp_path / "rec").glob("*.jsonl")
            records = [json.loads(line) for line in recording.read_text().splitlines()]
            assert [r.get("code") for r in records if r["dir"] == "close"] == [1000]
            assert sum(r["dir"] == "send" for r in records) == 4
        finally:
            server.close()
            live.stop()  # the chats held for their resend: counted unjudged (proxy_stopped), no timer left behind


async def after_the_close(send: bytes, **options) -> str:
    """A client that closes (1000) its connection through the proxy to a raw upstream which, once the proxy's close
    (passing the client's on) reached it, sends `send` (frames that crossed the close), then its answer to the close
    and its end (a FIN): how the proxy ended that upstream's TCP connection, "fin" after the handshake or "reset"."""
    ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def answers_late(reader, writer, head, srv):
        writer.write(upgrade(head) + frame(1, WELCOME))
        await writer.drain()
        while (await read_frame(reader))[0] != 8:  # the proxy's close, passing the client's on
            pass
        try:
            writer.write(send + frame(8, CLOSE_1000))
            await writer.drain()
            writer.write_eof()  # the server ends the TCP connection first (RFC 6455 7.1.1)
            ended.set_result(await tcp_end(reader))
        except ConnectionResetError:
            ended.set_result("reset")

    async with raw(answers_late) as upstream:
        metrics, live, server = await proxy_in_front(upstream.port, **options)
        try:
            async with asyncio.timeout(GUARD):
                url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
                async with websockets.asyncio.client.connect(url, open_timeout=10) as ws:
                    assert await ws.recv() == WELCOME.decode()
                assert ws.close_code == 1000
                return await ended
        finally:
            server.close()
            live.stop()


async def test_the_upstreams_answer_behind_frames_it_sent_as_the_client_closed_is_read_and_the_close_is_clean():
    """The client closes while the upstream has frames in flight (two events and a pong, one of them larger than one
    read of the proxy's): the proxy reads and drops them (the client is gone) while its close goes on, reads the
    upstream's answer behind them and ends the connection with the handshake (a FIN, no reset). Before, it read two
    and no further, and dropped the upstream at the close timeout (a reset)."""
    events = [json.dumps({"type": "agent_thinking", "run_id": "r1", "seq": 1, "payload": {"thought": BIG}}).encode(),
              json.dumps({"type": "pong"}).encode(), json.dumps({"type": "pong"}).encode()]
    assert await after_the_close(b"".join(frame(1, e) for e in events)) == "fin"


@pytest.mark.parametrize("send", [
    # past 2 x --max-size bytes: ten frames of 60 KiB with --max-size 64 KiB
    b"".join(frame(1, b"x" * 60 * 1024) for _ in range(10)),
    # past MAX_CLOSING_FRAMES messages, and a read's worth of frames more
    frame(1, b"{}") * (MAX_CLOSING_FRAMES + 2 * READ_CAP // 4),
], ids=["bytes", "frames"])
async def test_a_side_that_keeps_sending_while_closing_is_read_only_within_the_bound_and_dropped(send):
    """A side that goes on sending after the close is read only up to the proxy's bound (2 x --max-size bytes,
    MAX_CLOSING_FRAMES messages): its answer, past it, is never read, and it is dropped at the close timeout (a
    reset), as any side that does not answer the close in time."""
    assert await after_the_close(send, max_size=64 * 1024) == "reset"
