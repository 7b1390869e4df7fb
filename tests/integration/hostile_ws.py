"""Raw WebSocket servers that abuse the opening handshake or the connection's end, shared by the tests that hold
chatprobe's three WebSocket clients to one answer: picows and websockets under `chatprobe run`/`monitor`
(test_hostile_handshakes.py) and the Locust user's gevent client (test_gevent_hostile.py).

Each server is raw asyncio streams on 127.0.0.1, so it can send what no framework would: a redirect to another
origin, a subprotocol or an extension the client never offered, an answer that is not HTTP/1.1, a head that never
ends or comes a byte at a time, a deflated frame that inflates to 256 MiB, a close frame and then a socket held open,
a reserved bit no extension defines, a message in millions of tiny fragments. A server is a `Handler`, served by `raw(handler)`.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import re
import ssl
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trustme

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TOKEN = "hs-Tok3n-that-must-stay-home"
WELCOME = json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}}).encode()
# Runs the command as its only child and prints that child's peak RSS (ru_maxrss of RUSAGE_CHILDREN) last on stderr.
MEASURE = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
           "print(f'peak_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); "
           "sys.exit(p.returncode)")
LIMIT_KB = 250 * 1024  # a few hundred MB for the whole process, as tests/integration/test_memory_bounds.py

Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter
Handler = Callable[[Reader, Writer, bytes, "Raw"], Awaitable[None]]
Answer = Callable[[Writer, bytes], Awaitable[None]]


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


def offered_deflate(request: bytes, params: bytes = b"") -> bytes:
    """The extension header accepting permessage-deflate when the request offered it, else nothing."""
    return b"Sec-WebSocket-Extensions: permessage-deflate" + params + b"\r\n" if b"permessage-deflate" in \
        request.lower() else b""


async def read_frame(reader: Reader) -> tuple[int, bytes]:
    """One frame: a client's (masked) or a server's: (opcode, payload as sent, still deflated when it was)."""
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", await reader.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await reader.readexactly(8))[0]
    if not head[1] & 0x80:  # a server's frame: not masked
        return head[0] & 0x0F, await reader.readexactly(n)
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
    """A raw TCP server on 127.0.0.1 (TLS with `tls`): `handler(reader, writer, request head, server)` per
    connection. Every request head is kept; `held` holds a connection open (never reading) until the test ends."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.requests: list[bytes] = []
        self.held = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://127.0.0.1:{self.port}/ws"

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
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)


@contextlib.asynccontextmanager
async def raw(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[Raw]:
    async with Raw(handler, tls) as server:
        yield server


def tls_context(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    """A server TLS context for 127.0.0.1 from a CA of the test's own, and that CA's PEM file (for --ca-file)."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, str(ca_file)


class Drip:
    """A TCP relay on 127.0.0.1 to `port`: what the client sends goes on at once; the server's first `count` bytes
    come one every DRIP_PAUSE, the rest as they come. In front of a TLS server it drips the TLS handshake."""

    def __init__(self, port: int, count: int) -> None:
        self.upstream, self.count = port, count
        self.tasks: set[asyncio.Task] = set()
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def copy(source: Reader, sink: Writer, drip: int) -> None:
            while data := await source.read(1 if drip > 0 else 65536):
                sink.write(data)
                await sink.drain()
                drip -= 1
                if drip >= 0:
                    await asyncio.sleep(DRIP_PAUSE)  # wait-ok: the drip itself
            sink.close()

        try:
            await asyncio.gather(copy(reader, up_writer, 0), copy(up_reader, writer, self.count))
        except OSError:
            pass  # one side went away
        finally:
            writer.close()
            up_writer.close()

    async def __aenter__(self) -> Drip:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)


# -- the handshake --

async def answers_nothing(reader: Reader, writer: Writer, head: bytes, server: Raw) -> None:
    """Takes the request and hangs up (where a redirect points: the test reads `requests`)."""
    await writer.drain()


def redirect_to(port: int, status: str = "302 Found") -> Handler:
    """Answers the upgrade with a redirect to another origin (port) on 127.0.0.1."""
    async def redirect(reader: Reader, writer: Writer, head: bytes, server: Raw) -> None:
        writer.write(f"HTTP/1.1 {status}\r\nLocation: ws://127.0.0.1:{port}/steal\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        await writer.drain()
    return redirect


# What an upgrade may choose that a client never offered (the token going as a header: no subprotocol is offered).
UNOFFERED = {"subprotocol": b"Sec-WebSocket-Protocol: chat.evil\r\n",
             "jwt-auth unasked": b"Sec-WebSocket-Protocol: jwt-auth\r\n",
             "extension": b"Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n"}


# A 101 that announces a body (RFC 9110 8.6 and RFC 9112 6.1 forbid both on a 1xx), sent with `chooses`: the header,
# and the name every client's refusal gives (UPGRADE_BODY_SAID).
UPGRADE_BODIES = {"content-length": (b"Content-Length: 5\r\n", "Content-Length"),
                  "transfer-encoding": (b"Transfer-Encoding: chunked\r\n", "Transfer-Encoding")}
UPGRADE_BODY_SAID = "WebSocket handshake failed: the server's 101 answer announces a body ({} header), which a 101 may " \
                    "not have (RFC 9110)"


def chooses(chosen: bytes) -> Handler:
    """Upgrades with `chosen` among the headers, then plays a whole valid run."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        writer.write(upgrade(head, chosen))
        message_id = await welcome_and_message(reader, writer)
        writer.writelines(frame(1, f) for f in run_frames(message_id))
        await read_until_gone(reader)
    return server


async def http10(writer: Writer, head: bytes) -> None:
    writer.write(upgrade(head, status=b"HTTP/1.0 101 Switching Protocols"))
    await writer.drain()


async def endless_headers(writer: Writer, head: bytes) -> None:
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\n")
    while True:  # until the client goes away (drain raises)
        writer.write(b"X-Junk: " + b"a" * 1000 + b"\r\n")
        await writer.drain()


async def endless_line(writer: Writer, head: bytes) -> None:
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nX-Junk: ")
    chunk = b"a" * 65536
    while True:
        writer.write(chunk)
        await writer.drain()


async def endless_200(writer: Writer, head: bytes) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n")
    chunk = b"<p>" * 20000
    while True:
        writer.write(chunk)
        await writer.drain()


async def refusal_unframed(writer: Writer, head: bytes) -> None:
    writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Type: text/html\r\n\r\n<h1>Sign in</h1>")


async def refusal_cut_short(writer: Writer, head: bytes) -> None:
    writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 1000\r\n\r\n<h1>Forbidden</h1>")


async def refusal_huge(writer: Writer, head: bytes) -> None:
    writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 500000000\r\n\r\n")
    for _ in range(32):  # 2 MiB, then the socket stays open
        writer.write(b"x" * 65536)
        await writer.drain()


async def refusal_encoded(writer: Writer, head: bytes) -> None:
    writer.write(b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b")


# A 401 or 403 whose body does not end while the server keeps the connection open: the status line says it all.
REFUSALS: dict[str, Answer] = {"401 body without a length": refusal_unframed,
                               "403 body short of its Content-Length": refusal_cut_short,
                               "401 body of 500 MB": refusal_huge, "401 body in gzip transfer coding": refusal_encoded}

async def bare_lf(writer: Writer, head: bytes) -> None:
    """A right 101 but for its lines, each ended by LF alone (the connection then held open)."""
    writer.write(upgrade(head, offered_deflate(head)).replace(b"\r\n", b"\n"))
    await writer.drain()


MALFORMED: dict[str, Answer] = {"HTTP/1.0 101": http10, "endless headers": endless_headers,
                                "endless header line": endless_line, "200 with an endless body": endless_200}


def malformed(answer: Answer) -> Handler:
    """Answers the upgrade with `answer`, then reads until the client goes away."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        await answer(writer, head)
        await read_until_gone(reader)
    return server


DRIP_PAUSE = 0.25  # seconds between two bytes of a dripped upgrade answer (~50 s for the whole of it)


async def drips_the_upgrade(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
    """A valid 101 answer, one byte every DRIP_PAUSE: each read gets a byte well within any per-read timeout, so only
    a deadline on the whole handshake (connect_timeout) ends it; then a valid run, for a client that waited it out."""
    for i in range(len(answer := upgrade(head, offered_deflate(head)))):
        writer.write(answer[i:i + 1])
        await writer.drain()
        await asyncio.sleep(DRIP_PAUSE)  # wait-ok: the drip itself
    message_id = await welcome_and_message(reader, writer)
    writer.writelines(frame(1, f) for f in run_frames(message_id))
    await read_until_gone(reader)


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


async def oversized(writer: Writer, first: bytes) -> None:
    writer.write(frame(1, first) + frame(1, b'{"type": "agent_thinking", "x": "' + b"a" * (5 << 20) + b'"}'))


async def bomb(writer: Writer, first: bytes) -> None:
    writer.write(frame(1, first) + frame(1, deflate_bomb(), rsv1=True))


def refuses_then_holds(send: Callable[[Writer, bytes], Awaitable[None]]) -> Handler:
    """After the first event, what `send` writes (a frame the client must refuse), then the socket stays open and
    unread until the test ends."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        writer.write(upgrade(head, offered_deflate(head, b"; server_no_context_takeover; client_no_context_takeover")))
        message_id = await welcome_and_message(reader, writer)
        await send(writer, run_frames(message_id)[0])
        await writer.drain()
        await srv.held.wait()  # never set: the socket stays open, unread, until the test ends
    return server


async def closes_then_holds(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
    """Two events, its close frame (1001), then the TCP connection kept open and unread until the test ends."""
    writer.write(upgrade(head, offered_deflate(head)))
    message_id = await welcome_and_message(reader, writer)
    writer.writelines(frame(1, f) for f in run_frames(message_id)[:2])
    writer.write(frame(8, struct.pack("!H", 1001) + b"going away"))
    await writer.drain()
    await srv.held.wait()  # never set: the socket stays open, unread, until the test ends


def fragments(size: int, count: int = 2_000_000) -> Handler:
    """After the first event, one text message in `count` continuation frames of `size` bytes each (2 MB of 2-byte
    fragments hold under max_size, 4 MiB, on 8 MB of the wire; empty ones never end it), then its end, then reads."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        writer.write(upgrade(head, offered_deflate(head)))
        first, *_ = run_frames(await welcome_and_message(reader, writer))
        writer.write(frame(1, first) + frame(1, b'{"type": "agent_thinking", "run_id": "r1", "seq": 2, '
                                                b'"payload": {"thought": "', fin=False))
        batch = frame(0, b"a" * size, fin=False) * 10_000
        for _ in range(count // 10_000):  # until the client goes away (drain raises)
            writer.write(batch)
            await writer.drain()
        writer.write(frame(0, b'"}}'))
        await read_until_gone(reader)
    return server


# The reserved bits of a frame's first byte.
RESERVED = {"rsv1": 0x40, "rsv2": 0x20, "rsv3": 0x10}


def reserved_bits(bits: int) -> Handler:
    """Upgrades with no extension, sends the run's first event, then the rest with `bits` set."""
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
    return server


# Frames a server may not send (RFC 6455 5.2, 5.5, 7.4, 8.1), each failing the connection at the client's end, and
# what the chats on it are told (the R12 detail chatprobe's clients and the proxy give).
BROKEN_FRAMES = {
    "text-not-utf8": (frame(1, b'{"type": "agent_thinking", "run_id": "r1", "seq": 2, "payload": {"thought": "\xff"}}'),
                      "text frame that is not valid UTF-8"),
    "rsv2": (bytes([0x81 | 0x20, 2]) + b"{}", "WebSocket protocol error"),
    "masked": (bytes([0x81, 0x80 | 2]) + b"\0\0\0\0{}", "WebSocket protocol error"),
    "ping-over-125-bytes": (frame(9, b"p" * 126), "WebSocket protocol error"),
    "fragmented-ping": (frame(9, b"p", fin=False), "WebSocket protocol error"),
    "reserved-opcode": (frame(3, b"x"), "WebSocket protocol error"),
    "close-code-1005": (frame(8, struct.pack("!H", 1005)), "WebSocket protocol error"),
    "close-reason-not-utf8": (frame(8, struct.pack("!H", 1000) + b"\xff\xfe"), "text frame that is not valid UTF-8"),
    # RFC 6455 5.2: "the minimal number of bytes MUST be used to encode the length" (picows refused these, websockets
    # read them and answered the ping).
    "ping-length-in-64-bits": (bytes([0x89, 127]) + struct.pack("!Q", 4) + b"ping", "WebSocket protocol error"),
    "text-length-in-16-bits": (bytes([0x81, 126]) + struct.pack("!H", 2) + b"{}", "WebSocket protocol error"),
}


def breaks_framing(broken: bytes) -> Handler:
    """Upgrades with no extension, sends the run's first event, then `broken` (one of BROKEN_FRAMES), then reads."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        writer.write(upgrade(head))
        first, *_ = run_frames(await welcome_and_message(reader, writer))
        writer.write(frame(1, first) + broken)
        await read_until_gone(reader)
    return server


# -- a flood --

FLOOD_FOR = 40.0  # seconds a flooding server goes on at most, whatever the client does (a chat's deadline is a few)
# Control frames sent back to back: pongs no ping asked for (the client takes them and does nothing), pings (it
# answers each, the server reading the answers).
FLOODS = {"pongs": frame(10, b"p" * 125), "pings": frame(9, b"p" * 125)}
# Text frames sent back to back, each the cheapest to send of its kind and none of them an event of the run: empty ones
# (2 bytes, each a malformed frame to judge, an R12), `{}` (a JSON object without a type, R12 too), a keepalive the
# dialect ignores (netra's heartbeat).
TINY_FRAMES = {"empty": frame(1, b""), "no-type": frame(1, b"{}"), "heartbeat": frame(1, b'{"type": "heartbeat"}')}


def floods(control: bytes) -> Handler:
    """After the first event, `control` frames (or one of TINY_FRAMES) back to back for FLOOD_FOR seconds, reading
    what the client sends and heeding no end of it (its close frame, its FIN), as a server that streams at line rate:
    the socket always has bytes to read. Then reads until the client goes away."""
    async def server(reader: Reader, writer: Writer, head: bytes, srv: Raw) -> None:
        writer.write(upgrade(head, offered_deflate(head)))
        first, *_ = run_frames(await welcome_and_message(reader, writer))
        writer.write(frame(1, first))
        reading = asyncio.ensure_future(read_until_gone(reader))
        batch = control * (65536 // len(control))
        loop = asyncio.get_running_loop()
        until = loop.time() + FLOOD_FOR
        try:
            while loop.time() < until:
                writer.write(batch)
                await writer.drain()  # raises once the client has dropped the connection
            await reading
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
    return server
