"""Small agent servers for profile tests: AG-UI over HTTP+SSE (HTTP/1.1 by hand) and any dialect over WebSocket.

A server is given a *script*: a function of the decoded request that returns what to stream, so each test states
the exact event order it wants the harness to judge.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Self

from ag_ui.core import BaseEvent, RunAgentInput
from ag_ui.encoder import EventEncoder
from websockets.asyncio.server import ServerConnection, serve


@dataclass(frozen=True)
class Pause:
    """A script item: the server waits this long before what comes next (a later run, a slow tool)."""

    seconds: float


# What a script yields: an AG-UI event (encoded with the package's own encoder), raw bytes of the stream, or a Pause.
Item = BaseEvent | bytes | Pause
Script = Callable[[RunAgentInput], Iterable[Item]]


@dataclass
class Response:
    status: int = 200
    content_type: str = "text/event-stream"
    hang: bool = False  # accept the request, never answer it
    content_encoding: str | None = None  # a Content-Encoding header, whatever the client asked for
    body: bytes | None = None  # these bytes as the stream, instead of the script's events
    # The script's whole stream passed through this (a content coding: gzip.compress) and sent in chunk_size pieces.
    encode: Callable[[bytes], bytes] | None = None
    chunked: bool = False  # the encoded stream in HTTP chunks, one a chunk_size piece (the client reads each apart)


@dataclass
class AguiSSEServer:
    """AG-UI over HTTP POST + SSE on a loopback port, speaking HTTP/1.1 by hand (one request per connection)."""

    script: Script
    response: Response = field(default_factory=Response)
    chunk_size: int | None = None  # write the stream in pieces this small, to test reassembly
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    server: asyncio.Server | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/agent"

    async def __aenter__(self) -> "AguiSSEServer":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):  # a hanging request must not keep wait_closed() waiting
            w.close()
        async with asyncio.timeout(5):
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.headers.append(headers)
            request = json.loads(body)
            self.requests.append(request)
            run_input = RunAgentInput.model_validate(request)  # the harness's request is a valid RunAgentInput
            r = self.response
            if r.hang:
                await reader.read()  # until the client gives up
                return
            reason = {200: "OK", 401: "Unauthorized", 403: "Forbidden", 500: "Internal Server Error"}.get(r.status, "X")
            encoding = f"Content-Encoding: {r.content_encoding}\r\n" if r.content_encoding else ""
            if r.chunked:
                encoding += "Transfer-Encoding: chunked\r\n"
            writer.write(f"HTTP/1.1 {r.status} {reason}\r\nContent-Type: {r.content_type}\r\n{encoding}"
                         "Cache-Control: no-cache\r\nConnection: close\r\n\r\n".encode())
            if r.body is not None:
                writer.write(r.body)
                await writer.drain()
                return
            if r.status != 200 or r.content_type != "text/event-stream":
                writer.write(b'{"error": "no"}')
                await writer.drain()
                return
            encoder = EventEncoder()
            if r.encode is not None:
                data = r.encode(b"".join(item if isinstance(item, bytes) else encoder.encode(item).encode()
                                         for item in self.script(run_input) if not isinstance(item, Pause)))
                step = self.chunk_size or len(data) or 1
                for i in range(0, len(data), step):
                    piece = data[i:i + step]
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if r.chunked else piece)
                    await writer.drain()
                if r.chunked:
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                return
            for item in self.script(run_input):
                if isinstance(item, Pause):
                    await writer.drain()
                    await asyncio.sleep(item.seconds)  # wait-ok: the scripted server pauses its stream (the behaviour under test)
                    continue
                data = item if isinstance(item, bytes) else encoder.encode(item).encode()
                step = self.chunk_size or len(data) or 1
                for i in range(0, len(data), step):
                    writer.write(data[i:i + step])
                    await writer.drain()
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


WsScript = Callable[[dict[str, Any]], Iterable[dict[str, Any] | str]]


class Served:
    """A `websockets` server of `self._handler` on a loopback port for an `async with` block (no compression)."""

    server: Any

    async def _handler(self, ws: ServerConnection) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self.server = await serve(self._handler, "127.0.0.1", 0, compression=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        async with asyncio.timeout(5):
            await self.server.wait_closed()


@dataclass
class WsServer(Served):
    """Any JSON dialect over WebSocket: `script(request)` gives the frames to send back, in order."""

    script: WsScript
    # What the server sends on a new connection: a frame (a JSON object, or a text as it is), or several in order.
    welcome: dict[str, Any] | str | list[dict[str, Any] | str] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    server: Any = None

    @property
    def url(self) -> str:
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"ws://{host}:{port}/chat"

    async def _handler(self, ws: ServerConnection) -> None:
        for frame in self.welcome if isinstance(self.welcome, list) else [] if self.welcome is None else [self.welcome]:
            await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
        async for message in ws:
            request = json.loads(message)
            self.requests.append(request)
            for frame in self.script(request):
                await ws.send(frame if isinstance(frame, str) else json.dumps(frame))


class InThread:
    """Run an async server in its own event loop thread, so a synchronous test can call `chatprobe` in-process."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Any:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.__aenter__(), self.loop).result(timeout=5)
        return self.server

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.__aexit__(None, None, None), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()
