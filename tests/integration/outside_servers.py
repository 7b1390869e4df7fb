"""Agent chat servers written from docs/protocol.md and docs/profiles.md alone, as an outside evaluator would write
them: no agentsim, no `websockets` server, no AG-UI encoder. A raw RFC 6455 server on asyncio streams (every text
frame can be cut into continuation frames with WebSocket pings between the pieces) and a raw HTTP/1.1 server that
streams AG-UI events as Server-Sent Events (chunked, CRLF lines, comments, `event:`/`id:` fields, data split over
lines). Each runs in a thread of its own with its own event loop, so `harness.cli.main` can drive it from the test.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import Any

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class WsConn:
    """One server side of a WebSocket connection, framed by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> None:
        self.reader = reader
        self.writer = writer
        self.path = path
        self.lock = asyncio.Lock()
        self.closed = False

    async def _frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        head = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + struct.pack("!H", n)
        else:
            head += bytes([127]) + struct.pack("!Q", n)
        self.writer.write(head + payload)

    async def send(self, obj: Any, *, pieces: int = 1, ping_between: bool = False) -> None:
        """One JSON text message, cut into `pieces` frames (text + continuations), a ping between them if asked."""
        if self.closed:
            return
        data = (obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)).encode()
        pieces = max(1, min(pieces, len(data)))
        step = -(-len(data) // pieces)
        parts = [data[i:i + step] for i in range(0, len(data), step)]
        async with self.lock:
            for i, part in enumerate(parts):
                await self._frame(0x1 if i == 0 else 0x0, part, fin=i == len(parts) - 1)
                if ping_between and i < len(parts) - 1:
                    await self._frame(0x9, b"mid")  # a control frame inside a fragmented message (RFC 6455 5.4)
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    async def recv(self) -> str | None:
        """The next text message from the client (pings answered, continuations joined); None once it closes."""
        buf = b""
        while True:
            try:
                b0, b1 = await self.reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
                mask = await self.reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
                raw = await self.reader.readexactly(n)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.closed = True
                return None
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(raw))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                async with self.lock:
                    if not self.closed:
                        await self._frame(0x8, payload[:2])
                self.closed = True
                self.writer.close()
                return None
            if opcode == 0x9:
                async with self.lock:
                    await self._frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            buf += payload
            if b0 & 0x80:
                return buf.decode()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (a crash, a load balancer's idle cut)."""
        self.closed = True
        self.writer.transport.abort()


Handler = Callable[[WsConn], Awaitable[None]]


_HANDLERS: set[asyncio.Task[Any]] = set()


def hold_handler() -> None:
    """Keep a connection's handler task referenced until it ends. asyncio's stream protocol lets go of it once the
    client has gone: a handler still waiting (a stream held open forever) was then collected by the garbage collector,
    in whichever thread ran it, as "Task was destroyed but it is pending!", and never cancelled by InThread's stop.
    Worse than noise: the collector closed the socket first, then the handler's `finally` closed its transport from
    that thread (the client's, often), on the server's loop, by the old descriptor's number, which a connection
    accepted meanwhile may have taken: its reader removed, its request was never read, and its chat failed with no
    answer within connect_timeout (the twenty-user SSE parity test, now and then)."""
    task = asyncio.current_task()
    if task is not None:
        _HANDLERS.add(task)
        task.add_done_callback(_HANDLERS.discard)


class RawWsServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hold_handler()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest()).decode()
        writer.write((f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        conn = WsConn(reader, writer, path)
        try:
            await self.handler(conn)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if not conn.closed:
                with contextlib.suppress(Exception):
                    async with conn.lock:
                        await conn._frame(0x8, struct.pack("!H", 1000))
                        await writer.drain()
            writer.close()


SseScript = Callable[[dict[str, Any]], Any]  # async generator of bytes (raw SSE text) from the decoded request


class RawSseServer:
    """HTTP/1.1 by hand: POST a JSON body, answer `text/event-stream` with chunked transfer encoding."""

    def __init__(self, script: SseScript, framing: str = "chunked",
                 headers: Callable[[dict[str, str]], bytes] | None = None) -> None:
        self.script = script
        self.framing = framing  # chunked, length (a Content-Length body) or close (HTTP/1.0, ended by the close)
        self.headers = headers  # more response header lines (each ending CRLF), given the request's headers
        self.server: asyncio.Server | None = None
        self.requests: list[dict[str, Any]] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/agent"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hold_handler()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        request = json.loads(body)
        self.requests.append(request)
        # One request a connection: what the client sends after it is read and dropped, and its end (the client closed
        # the connection) ends the answer, as a real server's failed write would: a stream that never ends
        # (`forever()`) does not wait on, for good, for a client that left.
        answer = asyncio.ensure_future(self._answer(request, headers, writer))
        gone = asyncio.ensure_future(_until_closed(reader))
        try:
            await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (answer, gone):
                task.cancel()
            await asyncio.wait({answer, gone})
            writer.close()

    async def _answer(self, request: dict[str, Any], headers: dict[str, str], writer: asyncio.StreamWriter) -> None:
        head = b"Content-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
        if self.headers is not None:
            head += self.headers(headers)
        try:
            if self.framing == "length":
                body = b"".join([piece async for piece in self.script(request)])
                writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            elif self.framing == "close":
                writer.write(b"HTTP/1.0 200 OK\r\n" + head + b"\r\n")
                async for piece in self.script(request):
                    writer.write(piece)
                    await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"Transfer-Encoding: chunked\r\n\r\n")
                async for piece in self.script(request):
                    if piece:
                        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        await writer.drain()
                writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            pass


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Until the client's end of the connection closes (its EOF, a reset); what it sends meanwhile is dropped."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(1 << 16):
            pass


class InThread:
    """Run a server's event loop in a daemon thread for the length of a `with` block."""

    def __init__(self, server: RawWsServer | RawSseServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> RawWsServer | RawSseServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self.server.server is not None
            self.server.server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:  # let them end (a stream held open forever) before the loop stops, not be destroyed pending
                await asyncio.wait(tasks, timeout=5)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()  # its descriptors (ws_stacks.LoopThread says why)


def leaks_at_close(leak: str, *, after: str | None = None) -> Handler:
    """A netra server that answers every user_message with a clean run and, when the client closes the connection (its
    close frame), first sends `leak` (a text frame: another user's event, junk), then the close's answer: something
    the connection says after its last chat was judged, with no chat after it, at a point no timing can move. With
    `after`, only on a connection that carried a message of that content."""

    async def handler(conn: WsConn) -> None:
        leaking = after is None
        send_frame = conn._frame

        async def leak_before_close(opcode: int, payload: bytes, fin: bool = True) -> None:
            if opcode == 0x8 and leaking:
                await send_frame(0x1, leak.encode())
            await send_frame(opcode, payload, fin)

        conn._frame = leak_before_close  # type: ignore[method-assign]
        await conn.send({"type": "connection_established", "data": {"connection_id": "c"}})
        while (raw := await conn.recv()) is not None:
            msg = json.loads(raw)
            if msg.get("type") != "user_message":
                continue
            p = msg["payload"]
            leaking = leaking or p.get("content") == after
            run, call = f"run-{p['message_id']}", {"tool_name": "calc", "tool_call_id": "c0"}
            steps = [("agent_started", {"message_id": p["message_id"]}), ("agent_thinking", {"thought": "t"}),
                     ("tool_executing", call), ("tool_completed", {**call, "result": 1}),
                     ("partial_result", {"content": "x"}), ("agent_completed", {"result": "ok"})]
            for seq, (kind, fields) in enumerate(steps, 1):
                await conn.send({"type": kind, "run_id": run, "thread_id": p.get("thread_id"), "seq": seq,
                                 "payload": fields})

    return handler
