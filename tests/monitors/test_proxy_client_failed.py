"""A client the proxy fails for what it sent (a frame with a reserved bit set, text that is not UTF-8, a message in
too many fragments) left its chat then: the proxy's close went out at once and nothing of the client is read after
it (RFC 6455 7.1.7). A client that then answers no close and keeps its socket open holds the connection until the
proxy's close timeout (2 s) drops it; its chat was judged as left at that drop, two seconds late: with no event relayed
meanwhile (the relay to a closing client waits for its close), a prompt server was charged an R9 ("no event within the
limit, the client left after 2.0s"), a failed chat on its dashboard that any client could make at will. Real processes
over real sockets on 127.0.0.1: agentsim, the proxy, and raw clients written here. Every wait has a deadline."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import struct
import subprocess
import sys

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from harness.events import Outcome

from .procs import ROOT, agentsim_process, proxy_process
from .test_proxy_unjudged import outcomes, poll, value

UPGRADE = ("GET /ws?user={user} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
MASK = b"\x01\x02\x03\x04"


def frame(opcode: int, data: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame (payloads under 64 KiB)."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    size = len(data)
    head += bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack(">H", size)
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(data))


def chat(n: int) -> bytes:
    return json.dumps({"type": "user_message", "payload": {
        "content": f"What is 17 * {n}?", "thread_id": f"t-{n}", "message_id": f"m-{n}"}}).encode()


# What each client sends right behind its chat, in the same write.
VIOLATIONS = {
    "reserved-bit": frame(1, b"x", rsv=0x40),  # 1002, failed as it is read
    "not-utf8": frame(1, b"\xff\xfe"),  # 1007, failed as the message is taken
    "fragments": frame(1, b"", fin=False) + frame(0, b"", fin=False) * 4200,  # 1009, past 4096 fragments
}


async def hostile(port: int, user: str, n: int, violation: bytes, judged: asyncio.Event) -> None:
    """Upgrade, send a chat and the violation, then answer nothing and close nothing (the proxy's close frame and its
    end of the socket read and ignored): the socket is held open until the test saw the chats judged."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(40):
            writer.write(UPGRADE.format(user=user).encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
            writer.write(frame(1, chat(n)) + violation)
            await writer.drain()
            try:
                while await reader.read(65536):
                    pass
            except ConnectionError:
                pass
            await judged.wait()
    finally:
        writer.transport.abort()


async def test_a_client_failed_for_what_it_sent_left_its_chat_at_the_failure_not_the_close_timeout(tmp_path):
    """FAILED before: each chat was judged left at the close timeout, 2 s after it was sent with no event relayed,
    an R9 against agentsim (which answers in milliseconds) and a failed chat. Now each is a chat its client left
    before any event came, at once: not the server's doing (no R9, none failed), and `chatprobe check` of the
    recording judges it so too."""
    record = tmp_path / "rec"
    judged = asyncio.Event()
    # A server as prompt as a real agent's: its first event half a second after the message, within the limit.
    async with agentsim_process("--fault", "delay_first=0.5s@1") as url, proxy_process(
            url, tmp_path, "--first-event-limit", "1s", "--settle", "0.2s", "--record", str(record), "--record-all",
            "-v", metrics=True) as p:
        clients = asyncio.gather(*(hostile(p.port, name, n, violation, judged)
                                   for n, (name, violation) in enumerate(VIOLATIONS.items(), 1)))
        try:
            samples = await poll(p, lambda s: sum(outcomes(s).values()) >= len(VIOLATIONS))
        finally:
            judged.set()
            await clients
    assert sum(outcomes(samples).values()) == len(VIOLATIONS), samples
    assert outcomes(samples)[Outcome.FAILED.value] == 0, samples
    assert value(samples, "chatprobe_rule_violations_total", rule="R9") == 0, samples
    assert value(samples, "chatprobe_chats_abandoned_before_first_event_total") == len(VIOLATIONS), samples
    err = p.err.read_text()
    assert "Traceback" not in err, err
    # -v's line names the close each client got, the failure's (it said 1000, a close never sent).
    for code in (1002, 1007, 1009):
        assert f"closed by client (to the client {code}, to the upstream 1001)" in err, err
    checked = subprocess.run([sys.executable, "-m", "harness", "check", str(record),
                              "--json", str(tmp_path / "check.json")],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    report = json.loads((tmp_path / "check.json").read_text())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    stats = report["scenarios"][0]["stats"]
    assert stats["chats"] == len(VIOLATIONS) and stats["outcomes"]["passed"] == len(VIOLATIONS), stats
    assert not stats["violations"], stats


async def _accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frames: bytes) -> None:
    """A raw upstream's side of the handshake: the proxy's upgrade request read and accepted, then `frames` sent."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = re.search(rb"(?i)sec-websocket-key: *(\S+)", head).group(1)
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + frames)
    await writer.drain()


async def test_an_upstream_failed_for_what_it_sent_is_logged_with_the_close_it_got(tmp_path):
    """FAILED before: an upstream that sent a frame with a reserved bit set was failed with 1002 by the proxy, and -v's
    line said "to the upstream 1000", a close it never got."""
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accepted(reader, writer, bytes([0xC1, 1]) + b"x")  # a text frame with RSV1 set
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the proxy ends it
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    try:
        async with proxy_process(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", tmp_path, "-v") as p:
            async with asyncio.timeout(20):
                async with connect(f"ws://127.0.0.1:{p.port}/ws", open_timeout=10) as ws:
                    with pytest.raises(ConnectionClosed):
                        await ws.recv()
                    assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1014
                while "closed by server" not in (err := p.err.read_text()):
                    await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
    finally:
        server.close()
    assert "closed by server (to the client 1014, to the upstream 1002)" in err, err


async def test_an_upstream_that_drops_the_connection_is_logged_as_a_drop_for_both_sides(tmp_path):
    """FAILED before: an upstream that dropped its connection (no close frame: a crash, a reset) had its client dropped
    as it came, yet -v's line said "to the client 1000, to the upstream 1000", closes neither side ever got (an SRE
    reading it took a crash for a clean close)."""
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _accepted(reader, writer, bytes([0x81, 2]) + b"{}")
        async with asyncio.timeout(10):
            await reader.read(2)  # the client's first frame came: dropped, no close frame
        writer.transport.abort()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    try:
        async with proxy_process(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", tmp_path, "-v") as p:
            async with asyncio.timeout(20):
                async with connect(f"ws://127.0.0.1:{p.port}/ws", open_timeout=10, close_timeout=2) as ws:
                    await ws.recv()
                    await ws.send("hello")
                    with pytest.raises(ConnectionClosed):
                        await ws.recv()
                    assert ws.protocol.close_rcvd is None  # dropped, as the upstream dropped it
                while "closed by server" not in (err := p.err.read_text()):
                    await asyncio.sleep(0.02)  # wait-ok: poll interval of a condition wait bounded by the timeout
    finally:
        server.close()
    assert "closed by server (to the client 1006, to the upstream 1006)" in err, err
