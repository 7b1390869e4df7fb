"""`chatprobe run` and `chatprobe monitor` as a user runs them (a scenario file and `--target`) against WebSocket
servers that abuse the opening handshake or the connection's end, over both WebSocket clients: picows (the default)
and websockets (`compression: deflate` takes it). Each server is raw asyncio streams on 127.0.0.1 written here, so it
can send what no framework would: a redirect to another origin, a subprotocol or an extension the client never
offered, an answer that is not HTTP/1.1, a head that never ends, a deflated frame that inflates to 256 MiB, a close
frame and then a socket held open, a reserved bit no extension defines.

Each test has cases that failed on the code before it (the others hold the two clients to one answer): the
websockets client followed a redirect, to another port with the token as a subprotocol; picows took a subprotocol
and an extension it never offered and frames with a reserved bit set, and called an answer it could not parse
`refused` (exit 3, "unreachable"); the websockets client waited out the connect timeout on a head it had already
refused and, having failed a connection (a frame over max_size, inflated or not) or answered a close, waited for the
server to hang up until the chat's deadline: an R10 instead of the R12.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import os
import re
import struct
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TOKEN = "hs-Tok3n-that-must-stay-home"
WELCOME = json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}}).encode()
# The two WebSocket clients, as a scenario picks them: picows unless compression is on.
CLIENTS = {"picows": "none", "websockets": "deflate"}
# Runs the command as its only child and prints that child's peak RSS (ru_maxrss of RUSAGE_CHILDREN) last on stderr.
MEASURE = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
           "print(f'peak_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); "
           "sys.exit(p.returncode)")
LIMIT_KB = 250 * 1024  # a few hundred MB for the whole process, as tests/integration/test_memory_bounds.py

Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter
Handler = Callable[[Reader, Writer, bytes, "Raw"], Awaitable[None]]


def frame(opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> bytes:
    """One unmasked server frame."""
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def upgrade(request: bytes, extra: bytes = b"", status: bytes = b"HTTP/1.1 101 Switching Protocols") -> bytes:
    key = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", request)
    assert key is not None
    accept = base64.b64encode(hashlib.sha1(key.group(1) + GUID).digest())
    return (status + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
            + extra + b"\r\n")


async def read_frame(reader: Reader) -> tuple[int, bytes]:
    """One masked client frame: (opcode, payload as sent, still deflated when it was)."""
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4)
    data = await reader.readexactly(n)
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    if head[0] & 0x40:  # permessage-deflate (the client's own frames)
        payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
    return head[0] & 0x0F, payload


def run_frames(message_id: str) -> list[bytes]:
    """A valid netra run answering the chat whose message had `message_id`."""
    roles = [("agent_started", {"message_id": message_id}), ("agent_thinking", {"thought": "t"}),
             ("tool_executing", {"tool_name": "c", "tool_call_id": "c1"}),
             ("tool_completed", {"tool_name": "c", "tool_call_id": "c1"}), ("agent_completed", {"result": "ok"})]
    return [json.dumps({"type": t, "run_id": "r1", "seq": i + 1, "payload": p}).encode()
            for i, (t, p) in enumerate(roles)]


async def welcome_and_message(reader: Reader, writer: Writer) -> str:
    """Send the welcome, read the chat's message: its message_id."""
    writer.write(frame(1, WELCOME))
    await writer.drain()
    _, data = await read_frame(reader)
    return json.loads(data)["payload"]["message_id"]


async def read_until_gone(reader: Reader) -> None:
    """Keep the socket open and read what the client sends, until it goes away."""
    while await reader.read(65536):
        pass


class Raw:
    """A raw TCP server on 127.0.0.1: `handler(reader, writer, request head, server)` per connection. Every request
    head is kept; `held` holds a connection open (never reading) until the test ends."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.held = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            await self.handler(reader, writer, head, self)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away
        finally:
            writer.close()

    async def __aenter__(self) -> Raw:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)


@contextlib.asynccontextmanager
async def raw(handler: Handler) -> AsyncIterator[Raw]:
    async with Raw(handler) as server:
        yield server


async def chatprobe(tmp_path: Path, url: str, compression: str, *, auth: str = "header", deadline: str = "30s",
                    connect_timeout: str = "20s", command: str = "run") -> tuple[int, dict, str, int]:
    """`chatprobe run SCENARIO --target URL` (or `monitor --once`), bounded: (exit code, the one chat of --json
    (run) or {} (monitor), stdout + stderr, peak RSS in KiB)."""
    scenario = tmp_path / "one.yaml"
    scenario.write_text(f"name: one\nconnect_timeout: {connect_timeout}\ncompression: {compression}\nreconnect: false\n"
                        f"expect: {{deadline: {deadline}, settle: 0.1s}}\n")
    out = tmp_path / "r.json"
    if command == "run":
        args = ["run", str(scenario), "--target", url, "--json", str(out), "-q"]
    else:
        args = ["monitor", "--once", "--target", url, "--scenario", str(scenario)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MEASURE, sys.executable, "-m", "harness", *args, "--auth", auth,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1", "CHATPROBE_TOKEN": TOKEN})
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)  # a hang fails here
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = stdout.decode() + stderr.decode()
    peak_kb = int(stderr.decode().strip().splitlines()[-1].rpartition("peak_kb=")[2])
    assert "Traceback" not in text and TOKEN not in text, text
    if command != "run":
        return proc.returncode or 0, {}, text, peak_kb
    (scenario_doc,) = json.loads(out.read_text())["scenarios"]
    (chat,) = scenario_doc["chats"]
    return proc.returncode or 0, chat, text, peak_kb


# -- the handshake --

@pytest.mark.parametrize("auth", ["header", "subprotocol"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_redirect_to_another_origin_is_followed_by_neither_client(tmp_path, client, auth):
    """A 302 to another port: no connection is made there (the websockets client went, and with `--auth
    subprotocol` the token went with it); the handshake failed with the server's answer, as picows says it."""
    async with raw(lambda reader, writer, head, server: writer.drain()) as elsewhere:
        async def redirect(reader: Reader, writer: Writer, head: bytes, server: Raw) -> None:
            writer.write(f"HTTP/1.1 302 Found\r\nLocation: ws://127.0.0.1:{elsewhere.port}/steal\r\n"
                         "Content-Length: 0\r\n\r\n".encode())
            await writer.drain()

        async with raw(redirect) as server:
            code, chat, _, _ = await chatprobe(tmp_path, f"ws://127.0.0.1:{server.port}/ws", CLIENTS[client],
                                               auth=auth)
    assert elsewhere.requests == []
    assert (code, chat["outcome"], chat["error_kind"]) == (1, "error", "protocol_error")
    assert chat["error"] == "HTTP 302 at the WebSocket handshake"


async def test_the_monitor_follows_no_redirect_either(tmp_path):
    """`chatprobe monitor --once` carries the same client: the probe fails, nothing reaches the other origin."""
    async with raw(lambda reader, writer, head, server: writer.drain()) as elsewhere:
        async def redirect(reader: Reader, writer: Writer, head: bytes, server: Raw) -> None:
            writer.write(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: ws://127.0.0.1:{elsewhere.port}/ws\r\n"
                         "Content-Length: 0\r\n\r\n".encode())
            await writer.drain()

        async with raw(redirect) as server:
            code, _, text, _ = await chatprobe(tmp_path, f"ws://127.0.0.1:{server.port}/ws", "deflate",
                                               auth="subprotocol", command="monitor")
    assert elsewhere.requests == []
    assert code == 1, text


@pytest.mark.parametrize("chosen", [b"Sec-WebSocket-Protocol: chat.evil\r\n",
                                    b"Sec-WebSocket-Protocol: jwt-auth\r\n",
                                    b"Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n"],
                         ids=["subprotocol", "jwt-auth unasked", "extension"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_an_upgrade_choosing_what_the_client_never_offered_fails_the_connection(tmp_path, client, chosen):
    """RFC 6455 4.1: a subprotocol or an extension the client did not offer MUST fail the connection (the token goes
    as a header here: no subprotocol is offered). picows took both and the chat passed."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        writer.write(upgrade(head, chosen))
        message_id = await welcome_and_message(reader, writer)
        writer.writelines(frame(1, f) for f in run_frames(message_id))
        await read_until_gone(reader)

    async with raw(server) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, f"ws://127.0.0.1:{srv.port}/ws", CLIENTS[client])
    assert (code, chat["outcome"], chat["error_kind"]) == (1, "error", "protocol_error"), chat


async def test_picows_refuses_permessage_deflate_it_never_offered(tmp_path):
    """The brief's own case for the lean client, which offers no extension: a server answering permessage-deflate
    and then sending deflated frames is refused at the handshake, not read as garbage."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        assert b"permessage-deflate" not in head.lower()
        writer.write(upgrade(head, b"Sec-WebSocket-Extensions: permessage-deflate\r\n"))
        await read_until_gone(reader)

    async with raw(server) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, f"ws://127.0.0.1:{srv.port}/ws", "none")
    assert (code, chat["outcome"], chat["error_kind"]) == (1, "error", "protocol_error"), chat
    assert chat["error"] == "WebSocket handshake failed: the server chose an extension the client did not offer"


async def _http10(writer: Writer, head: bytes) -> None:
    writer.write(upgrade(head, status=b"HTTP/1.0 101 Switching Protocols"))
    await writer.drain()


async def _endless_headers(writer: Writer, head: bytes) -> None:
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\n")
    while True:  # until the client goes away (drain raises)
        writer.write(b"X-Junk: " + b"a" * 1000 + b"\r\n")
        await writer.drain()


async def _endless_line(writer: Writer, head: bytes) -> None:
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nX-Junk: ")
    chunk = b"a" * 65536
    while True:
        writer.write(chunk)
        await writer.drain()


async def _endless_200(writer: Writer, head: bytes) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n")
    chunk = b"<p>" * 20000
    while True:
        writer.write(chunk)
        await writer.drain()


@pytest.mark.parametrize("answer", [_http10, _endless_headers, _endless_line, _endless_200],
                         ids=["HTTP/1.0 101", "endless headers", "endless header line", "200 with an endless body"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_an_answer_that_is_no_http_1_1_upgrade_is_a_protocol_error_in_bounded_memory(tmp_path, client, answer):
    """The server answered, wrongly: a protocol_error (exit 1), not `refused` (picows: exit 3, "unreachable") nor a
    wait until connect_timeout (20 s here) for a head the websockets client had already refused (`timeout`)."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        await answer(writer, head)
        await read_until_gone(reader)

    async with raw(server) as srv:
        code, chat, _, peak_kb = await chatprobe(tmp_path, f"ws://127.0.0.1:{srv.port}/ws", CLIENTS[client])
    assert (code, chat["outcome"], chat["error_kind"]) == (1, "error", "protocol_error"), chat
    assert peak_kb < LIMIT_KB


# -- the connection's end --

@functools.cache
def deflate_bomb() -> bytes:
    """One permessage-deflate message (no context takeover) of 1.4 MB that inflates to 256 MiB of one JSON string."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [z.compress(b'{"type": "partial_result", "run_id": "r1", "seq": 2, "payload": {"content": "')]
    chunk = b"a" * (1 << 20)
    parts += [z.compress(chunk) for _ in range(256)]
    parts.append(z.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


async def _oversized(writer: Writer, first: bytes) -> None:
    writer.write(frame(1, first) + frame(1, b'{"type": "agent_thinking", "x": "' + b"a" * (5 << 20) + b'"}'))


async def _bomb(writer: Writer, first: bytes) -> None:
    writer.write(frame(1, first) + frame(1, deflate_bomb(), rsv1=True))


@pytest.mark.parametrize(("client", "send"), [("picows", _oversized), ("websockets", _oversized),
                                              ("websockets", _bomb)],
                         ids=["picows-oversized", "websockets-oversized", "websockets-deflate-bomb"])
async def test_a_frame_the_client_refuses_then_a_socket_held_open_is_an_r12_at_once(tmp_path, client, send):
    """After the first event, a frame over max_size (4 MiB), or a deflated one that inflates to 256 MiB, and then the
    server neither reads nor closes: the client closes with 1009 and drops the socket within its close timeout, so
    the chat is judged on the R12 (not held to its 30 s deadline, an R10), in bounded memory."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        offered = b"permessage-deflate" in head.lower()
        writer.write(upgrade(head, b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
                                   b"client_no_context_takeover\r\n" if offered else b""))
        message_id = await welcome_and_message(reader, writer)
        await send(writer, run_frames(message_id)[0])
        await writer.drain()
        await srv.held.wait()  # never set: the socket stays open, unread, until the test ends

    async with raw(server) as srv:
        code, chat, _, peak_kb = await chatprobe(tmp_path, f"ws://127.0.0.1:{srv.port}/ws", CLIENTS[client])
    rules = {v["rule"]: v["reason"] for v in chat["violations"]}
    assert code == 1 and chat["outcome"] == "incomplete"
    assert rules.get("R12") == "malformed frame: frame larger than the 4194304 byte limit", rules
    assert "R10" not in rules, rules
    assert peak_kb < LIMIT_KB


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_close_frame_then_a_socket_held_open_ends_the_chat_at_once(tmp_path, client):
    """Mid-run, the server sends its close frame (1001) and then keeps the TCP connection open without reading: the
    connection is over (RFC 6455 reads nothing after a close frame), so the chat ends incomplete there and then,
    not at its 30 s deadline (R10)."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        offered = b"permessage-deflate" in head.lower()
        writer.write(upgrade(head, b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if offered else b""))
        message_id = await welcome_and_message(reader, writer)
        writer.writelines(frame(1, f) for f in run_frames(message_id)[:2])
        writer.write(frame(8, struct.pack("!H", 1001) + b"going away"))
        await writer.drain()
        await srv.held.wait()  # never set: the socket stays open, unread, until the test ends

    async with raw(server) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, f"ws://127.0.0.1:{srv.port}/ws", CLIENTS[client])
    assert code == 1 and chat["outcome"] == "incomplete", chat
    assert chat["events_received"] == 2
    assert "R10" not in {v["rule"] for v in chat["violations"]}, chat["violations"]


@pytest.mark.parametrize("bits", [0x40, 0x20, 0x10], ids=["rsv1", "rsv2", "rsv3"])
async def test_a_reserved_bit_no_extension_defines_fails_the_connection(tmp_path, bits):
    """RFC 6455 5.2: with no extension negotiated, a frame with a reserved bit set MUST fail the connection. picows
    (which offers none) read it as a frame like any other: a run of such frames passed."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        writer.write(upgrade(head))
        message_id = await welcome_and_message(reader, writer)
        first, *rest = run_frames(message_id)
        writer.write(frame(1, first))
        for f in rest:
            marked = bytearray(frame(1, f))
            marked[0] |= bits
            writer.write(bytes(marked))
        await read_until_gone(reader)

    async with raw(server) as srv:
        code, chat, _, _ = await chatprobe(tmp_path, f"ws://127.0.0.1:{srv.port}/ws", "none")
    rules = {v["rule"]: v["reason"] for v in chat["violations"]}
    assert code == 1 and chat["outcome"] != "passed", chat
    assert rules.get("R12") == "malformed frame: WebSocket protocol error", rules
    assert chat["events_received"] == 1
