"""The netra dialect served by WebSocket stacks a team would deploy, not framed by hand: FastAPI/Starlette on uvicorn
(its `websockets` and `wsproto` backends, permessage-deflate on or off), the `websockets` library's asyncio server
(deflate with a small server window and no context takeover, a tiny `max_size`, pings every few milliseconds),
`wsproto` driven on raw asyncio streams (fragments, pings between them, deflate) and `trio-websocket` on trio.

One netra server (`NetraApp`, written on anyio so it runs on asyncio and trio alike) speaks through a `Conn` each stack
adapts: a text message (in pieces where the stack can cut one), a binary one, a WebSocket ping, a close with a code.
Each stack runs in a thread of its own with its own event loop, on 127.0.0.1, a port the OS picks; `serve(...)` is a
context manager giving the `ws://` URL, every start and stop bounded.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio


class Conn(Protocol):
    async def send_text(self, text: str, pieces: int = 1) -> None: ...
    async def send_bytes(self, data: bytes) -> None: ...
    async def ping(self) -> None: ...
    async def recv(self) -> str | None: ...
    async def close(self, code: int) -> None: ...


# -- what a run does ------------------------------------------------------------------------------------------------

@dataclass
class Text:
    """A text message written as it is (not JSON-encoded here), in `pieces` frames where the stack can cut one."""
    text: str
    pieces: int = 1


@dataclass
class Binary:
    data: bytes


@dataclass
class Wait:
    seconds: float


@dataclass
class Close:
    """A closing handshake with `code`; 1006 (which no close frame carries) drops the TCP connection instead, without
    one (a crash, a load balancer's cut), where the stack lets the application do so (the websockets server); 1005 is
    a close frame with no status code (a browser's or Node's `ws` `close()` called without one), where the stack lets
    the application send one (wsproto)."""
    code: int


PING = "ping"  # a WebSocket ping (opcode 9), where the stack lets the application send one

Action = dict[str, Any] | Text | Binary | Wait | Close | str
Answer = Callable[[dict[str, Any], int], list[Action]]

USER = "u-stack-☃"


def run_events(p: dict[str, Any], *, tools: int = 1, chunks: int = 2) -> list[dict[str, Any]]:
    """A clean run answering message payload `p` (docs/protocol.md's 'Server to client'), its text not ASCII."""
    from .test_independent_servers import run_events as independent_run

    return independent_run(p, user=USER, tools=tools, chunks=chunks, text="part ünï")


def clean(p: dict[str, Any], n: int) -> list[Action]:
    return list(run_events(p))


WELCOME = {"type": "connection_established", "data": {"connection_id": "c-1", "user_id": USER,
                                                      "server_time": "2026-12-04T00:00:00Z"}, "timestamp": 1.5}


@dataclass
class NetraApp:
    """A netra server: a welcome, each `user_message` answered by `answer(payload, n)` (n from 1, across connections),
    played while the connection goes on reading (several runs interleave), a JSON ping with a pong, a resume with the
    run's events past `last_seq` (else RESUME_UNKNOWN_RUN)."""

    answer: Answer = clean
    messages: int = 0
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    async def serve(self, conn: Conn) -> None:
        lock = anyio.Lock()  # one action at a time: a message's pieces are never split by another run's
        await conn.send_text(json.dumps(WELCOME))
        async with anyio.create_task_group() as tg:
            while (raw := await conn.recv()) is not None:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    msg = {}
                kind = msg.get("type") if isinstance(msg, dict) else None
                if kind == "ping":
                    async with lock:
                        await conn.send_text(json.dumps({"type": "pong", "data": {"timestamp": 1.0}}))
                elif kind == "user_message":
                    self.messages += 1
                    tg.start_soon(self.play, conn, lock, self.answer(msg["payload"], self.messages))
                elif kind == "resume":
                    p = msg["payload"]
                    events = self.runs.get(p["run_id"])
                    if events is None:
                        unknown = {"type": "error_message", "error_code": "RESUME_UNKNOWN_RUN", "run_id": p["run_id"]}
                        async with lock:
                            await conn.send_text(json.dumps(unknown))
                    else:
                        tg.start_soon(self.play, conn, lock, [e for e in events if e["seq"] > p["last_seq"]])
                elif kind not in ("pong", "heartbeat"):
                    invalid = {"type": "error_message", "error_code": "INVALID_MESSAGE", "error_message": "?"}
                    async with lock:
                        await conn.send_text(json.dumps(invalid))
            tg.cancel_scope.cancel()

    async def play(self, conn: Conn, lock: anyio.Lock, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, dict) and "seq" in action and "run_id" in action:
                kept = self.runs.setdefault(action["run_id"], [])
                if action not in kept:
                    kept.append(action)
        try:
            for action in actions:
                if isinstance(action, Wait):
                    await anyio.sleep(action.seconds)  # wait-ok: the agent's think time
                    continue
                async with lock:
                    if isinstance(action, dict):
                        await conn.send_text(json.dumps(action, ensure_ascii=False))
                    elif isinstance(action, Text):
                        await conn.send_text(action.text, action.pieces)
                    elif isinstance(action, Binary):
                        await conn.send_bytes(action.data)
                    elif isinstance(action, Close):
                        await conn.close(action.code)
                        return
                    elif action == PING:
                        await conn.ping()
                await anyio.sleep(0)  # wait-ok: a yield, so runs on one connection interleave
        except Exception:  # the client went away mid-run: a server logs it and carries on
            return


# -- the stacks ----------------------------------------------------------------------------------------------------

class LoopThread:
    """An asyncio loop in a daemon thread, for the length of a `with` block."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LoopThread:
        self.thread.start()
        return self

    def run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __exit__(self, *exc: object) -> None:
        async def cancel_all() -> None:
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            # Its epoll and self-pipe descriptors (3 a loop, 12 a test of four roads): left open, a pytest worker
            # passed 1,024 descriptors over the suite, and a select()-based server (waitress) failed on them.
            self.loop.close()


@contextlib.contextmanager
def raw_asyncio_on_loopback(client: Any) -> Iterator[int]:
    """`asyncio.start_server(client)` on a loopback port, served by a LoopThread: its port (the raw servers of the
    WebSocket and SSE stacks)."""
    with LoopThread() as lt:
        server = lt.run(asyncio.start_server(client, "127.0.0.1", 0))
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            lt.loop.call_soon_threadsafe(server.close)


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


# FastAPI / Starlette on uvicorn

class StarletteConn:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send_text(self, text: str, pieces: int = 1) -> None:
        await self.ws.send_text(text)  # ASGI has no fragments: uvicorn writes one frame

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def ping(self) -> None:  # ASGI has no ping either: uvicorn's own (ws_ping_interval) are the server's
        return None

    async def recv(self) -> str | None:
        msg = await self.ws.receive()
        if msg["type"] == "websocket.disconnect":
            return None
        return msg.get("text") if msg.get("text") is not None else (msg.get("bytes") or b"").decode("utf-8", "replace")

    async def close(self, code: int) -> None:
        await self.ws.close(code)


@contextlib.contextmanager
def serve_uvicorn(app: NetraApp, *, ws: str = "websockets", deflate: bool = False,
                  ping_interval: float | None = None) -> Iterator[str]:
    """FastAPI's `@app.websocket("/ws")` endpoint on uvicorn, `--ws websockets|wsproto`, `ws_per_message_deflate`."""
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect

    api = FastAPI()

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await app.serve(StarletteConn(websocket))

    endpoint.__annotations__["websocket"] = WebSocket  # the class itself: FastAPI reads it to inject the socket
    api.websocket("/ws")(endpoint)

    from .asgi import uvicorn_on_loopback

    with uvicorn_on_loopback(api, force_exit=True, ws=ws, ws_per_message_deflate=deflate, ws_ping_interval=ping_interval,
                             ws_ping_timeout=None, log_level="critical") as port:
        yield f"ws://127.0.0.1:{port}/ws"


# the websockets library's asyncio server

class WebsocketsConn:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send_text(self, text: str, pieces: int = 1) -> None:
        if pieces <= 1:
            await self.ws.send(text)
        else:  # an iterable is sent as one fragmented message
            step = -(-len(text) // pieces)
            await self.ws.send([text[i:i + step] for i in range(0, len(text), step)])

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send(data)

    async def ping(self) -> None:
        await self.ws.ping()

    async def recv(self) -> str | None:
        from websockets.exceptions import ConnectionClosed

        try:
            msg = await self.ws.recv()
        except ConnectionClosed:
            return None
        return msg if isinstance(msg, str) else msg.decode("utf-8", "replace")

    async def close(self, code: int) -> None:
        if code == 1006:
            self.ws.transport.abort()
            return
        await self.ws.close(code)


@contextlib.contextmanager
def serve_websockets(app: NetraApp, **options: Any) -> Iterator[str]:
    """`websockets.asyncio.server.serve` with the options given (compression, extensions, max_size, ping_interval)."""
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        await app.serve(WebsocketsConn(ws))

    async def start() -> Any:
        return await serve(handler, "127.0.0.1", 0, **options)

    with LoopThread() as lt:
        server = lt.run(start())
        try:
            yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/ws"
        finally:
            server.close()
            with contextlib.suppress(Exception):
                lt.run(server.wait_closed())


# wsproto on raw asyncio streams

class WsprotoConn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deflate: bool) -> None:
        from wsproto import ConnectionType, WSConnection

        self.reader, self.writer, self.deflate = reader, writer, deflate
        self.ws = WSConnection(ConnectionType.SERVER)
        self.pending: list[Any] = []
        self.closed = False

    def _write(self, event: Any) -> None:
        if not self.closed:
            self.writer.write(self.ws.send(event))

    async def _drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def accept(self) -> bool:
        from wsproto.events import AcceptConnection, Request
        from wsproto.extensions import PerMessageDeflate

        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                return False
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, Request):
                    extensions = [PerMessageDeflate()] if self.deflate else []
                    self.writer.write(self.ws.send(AcceptConnection(extensions=extensions)))
                    return True

    async def send_text(self, text: str, pieces: int = 1) -> None:
        from wsproto.events import Message, Ping

        step = -(-len(text) // max(1, pieces))
        parts = [text[i:i + step] for i in range(0, len(text), step)] or [""]
        for i, part in enumerate(parts):
            self._write(Message(data=part, message_finished=i == len(parts) - 1))
            if i < len(parts) - 1:
                self._write(Ping(payload=b"between"))  # a control frame inside a fragmented message (RFC 6455 5.4)
        await self._drain()

    async def send_bytes(self, data: bytes) -> None:
        from wsproto.events import Message

        self._write(Message(data=data))
        await self._drain()

    async def ping(self) -> None:
        from wsproto.events import Ping

        self._write(Ping(payload=b"are you there"))
        await self._drain()

    async def recv(self) -> str | None:
        from wsproto.events import CloseConnection, Message, Ping

        buf = ""
        while True:
            while self.pending:
                event = self.pending.pop(0)
                if isinstance(event, CloseConnection):
                    if not self.closed:
                        self.writer.write(self.ws.send(event.response()))
                        self.closed = True
                    await self._drain()
                    self.writer.close()
                    return None
                if isinstance(event, Ping):
                    self._write(event.response())
                elif isinstance(event, Message):
                    buf += event.data if isinstance(event.data, str) else event.data.decode("utf-8", "replace")
                    if event.message_finished:
                        return buf
            try:
                data = await self.reader.read(65536)
            except ConnectionError:
                data = b""
            if not data:
                self.closed = True
                return None
            self.ws.receive_data(data)
            self.pending.extend(self.ws.events())

    async def close(self, code: int) -> None:
        from wsproto.events import CloseConnection
        from wsproto.frame_protocol import CloseReason

        if code == CloseReason.NO_STATUS_RCVD:  # a close frame with no status code (what 1005 stands for): no reason
            self._write(CloseConnection(code=CloseReason.NO_STATUS_RCVD))
        else:
            self._write(CloseConnection(code=code, reason="going"))
        self.closed = True
        await self._drain()


@contextlib.contextmanager
def serve_wsproto(app: NetraApp, *, deflate: bool = False) -> Iterator[str]:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = WsprotoConn(reader, writer, deflate)
        try:
            if await conn.accept():
                await app.serve(conn)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    with raw_asyncio_on_loopback(client) as port:
        yield f"ws://127.0.0.1:{port}/ws"


# trio-websocket on trio

class TrioConn:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send_text(self, text: str, pieces: int = 1) -> None:
        await self.ws.send_message(text)

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_message(data)

    async def ping(self) -> None:
        await self.ws.ping()

    async def recv(self) -> str | None:
        from trio_websocket import ConnectionClosed

        try:
            msg = await self.ws.get_message()
        except ConnectionClosed:
            return None
        return msg if isinstance(msg, str) else msg.decode("utf-8", "replace")

    async def close(self, code: int) -> None:
        await self.ws.aclose(code)


@contextlib.contextmanager
def serve_trio(app: NetraApp) -> Iterator[str]:
    import trio
    from trio_websocket import serve_websocket

    ready: dict[str, Any] = {}
    started = threading.Event()

    async def handler(request: Any) -> None:
        ws = await request.accept()
        await app.serve(TrioConn(ws))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
            ready["port"] = server.port
            ready["cancel"] = nursery.cancel_scope
            ready["token"] = trio.lowlevel.current_trio_token()
            started.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(10), "trio-websocket did not start"
    try:
        yield f"ws://127.0.0.1:{ready['port']}/ws"
    finally:
        trio.from_thread.run_sync(ready["cancel"].cancel, trio_token=ready["token"])
        thread.join(10)


# -- the judges ----------------------------------------------------------------------------------------------------

Serve = Callable[[], contextlib.AbstractContextManager[str]]
Verdict = tuple[str, tuple[str, ...]]


def judge(tmp_path: Any, serve: Serve, scenario: dict[str, Any], *,
          ways: tuple[str, ...] = ("run", "check", "websockets", "proxy")) -> dict[str, list[Verdict]]:
    """Each chat's (outcome, rules), sorted, by every road: `chatprobe run` with the default client (picows), recorded,
    and `chatprobe check` of the recording; `chatprobe run` with the websockets client (the scenario's `compression:
    deflate` picks it: a server that does not take deflate gets an uncompressed connection); and `chatprobe proxy` in
    front of the server with a `chatprobe run` through it. Each road against a fresh server; the counts add up."""
    from harness.cli import main
    from harness.profiles import load_profile
    from harness.scenario import Scenario
    from monitors.proxy import LiveChats, Proxy, start_proxy

    from .test_independent_servers import KeptSink, chat_verdicts

    sc = {"name": "stacks", "users": 1, "connect_timeout": "3s", **scenario}
    sc["expect"] = {"deadline": "3s", "settle": "0.1s", **scenario.get("expect", {})}
    path = tmp_path / "scenario.yaml"
    path.write_text(json.dumps(sc))
    out: dict[str, list[Verdict]] = {}
    chats = 0

    def run(url: str, scenario_path: Any, name: str, *extra: str) -> list[Verdict]:
        report = tmp_path / f"{name}.json"
        code = main(["run", "--target", url, "--auth", "none", str(scenario_path), "--json", str(report), "-q",
                     *extra])
        assert code in (0, 1), (name, code)
        verdicts, _ = chat_verdicts(json.loads(report.read_text()))
        return verdicts

    if "run" in ways or "check" in ways:
        rec = tmp_path / "rec"
        with serve() as url:
            out["run"] = run(url, path, "run", "--record", str(rec))
        code = main(["check", str(rec), "--scenario", str(path), "--json", str(tmp_path / "check.json"), "-q"])
        assert code in (0, 1), code
        out["check"], _ = chat_verdicts(json.loads((tmp_path / "check.json").read_text()))
        chats = len(out["run"])
    if "websockets" in ways:
        deflated = tmp_path / "deflate.yaml"
        deflated.write_text(json.dumps({**sc, "compression": "deflate"}))
        with serve() as url:
            out["websockets"] = run(url, deflated, "websockets")
        chats = chats or len(out["websockets"])
    if "proxy" in ways:
        profile = load_profile("netra")
        parsed = Scenario.model_validate(sc)
        kept = KeptSink()
        # the user behind the proxy waits longer than the proxy's deadline (one who leaves first abandons the chat)
        played = tmp_path / "played.yaml"
        played.write_text(json.dumps({**sc, "expect": {**sc["expect"], "deadline": parsed.expect.deadline + 1}}))
        with serve() as url, LoopThread() as lt:
            live = LiveChats(profile, kept, parsed.expectations(profile), "live", parsed.expect.settle)
            front = lt.run(start_proxy(Proxy(url.rsplit("/", 1)[0], live), "127.0.0.1", 0))
            try:
                run(f"ws://127.0.0.1:{front.sockets[0].getsockname()[1]}/ws", played, "played")
                results = kept.wait_for(chats, 10)
            finally:
                lt.loop.call_soon_threadsafe(front.close)
        out["proxy"] = sorted((r.outcome.value, tuple(sorted(r.rule_counts()))) for r in results)
    return out


# aiohttp's WebSocketResponse

class AiohttpConn:
    def __init__(self, ws: Any, request: Any, close_reason: bytes | None = None, written: bool = False) -> None:
        self.ws, self.request, self.close_reason, self.written = ws, request, close_reason, written

    async def send_text(self, text: str, pieces: int = 1) -> None:
        await self.ws.send_str(text)  # aiohttp has no fragments: one frame a message

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def ping(self) -> None:
        await self.ws.ping(b"aiohttp")

    async def recv(self) -> str | None:
        from aiohttp import WSMsgType

        msg = await self.ws.receive()
        if msg.type == WSMsgType.TEXT:
            return str(msg.data)
        if msg.type == WSMsgType.BINARY:
            return bytes(msg.data).decode("utf-8", "replace")
        return None  # CLOSE, CLOSING, CLOSED, ERROR

    async def close(self, code: int) -> None:
        if self.close_reason is not None and self.written:
            # a close frame written on aiohttp's frame writer, past its close(): aiohttp does not know it closed, so
            # it answers the client's close frame with its own 1000 (an intermediary's close before the server's)
            await self.ws._writer.send_frame(code.to_bytes(2, "big") + self.close_reason, 0x8)
            return
        if self.close_reason is not None:  # the code and reason on the wire as they are: aiohttp checks neither
            await self.ws.close(code=code, message=self.close_reason)
            return
        if code == 1006:  # no close frame: the TCP connection dropped (a crash)
            self.request.transport.abort()
            return
        await self.ws.close(code=code, message=b"" if code == 1005 else b"going")


@contextlib.contextmanager
def serve_aiohttp(app: NetraApp, *, headers: dict[str, str | None] | None = None, close_reason: bytes | None = None,
                  written_close: bool = False, **options: Any) -> Iterator[str]:
    """`aiohttp.web.WebSocketResponse(**options)` at /ws (compress: True or the server's window bits, heartbeat: its
    pings, protocols, receive_timeout...), with `headers` added to its 101 answer (on_response_prepare: beside its own;
    None: a copy of aiohttp's own value; a name written "=Name": in place of aiohttp's own). With `close_reason`, a `Close(code)`
    is `ws.close(code=code, message=close_reason)` whatever the code (1006 and 0 too: aiohttp sends any), or with
    `written_close` that close frame written on aiohttp's frame writer, past its close()."""
    from aiohttp import web

    async def endpoint(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(**options)
        await ws.prepare(request)
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            await app.serve(AiohttpConn(ws, request, close_reason, written_close))
        return ws

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        for name, value in (headers or {}).items():  # added to aiohttp's own, as a middleware's would be
            if name.startswith("="):  # in place of aiohttp's own
                response.headers[name[1:]] = value or ""
            else:
                response.headers.add(name, response.headers[name] if value is None else value)

    web_app = web.Application()
    web_app.on_response_prepare.append(add_headers)
    web_app.router.add_get("/ws", endpoint)
    sock = listening_socket()
    with LoopThread() as lt:
        runner = web.AppRunner(web_app, handle_signals=False, shutdown_timeout=0.1)
        lt.run(runner.setup())
        lt.run(web.SockSite(runner, sock).start())
        try:
            yield f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"
        finally:
            lt.run(runner.cleanup())
            sock.close()


# Hypercorn (wsproto underneath; permessage-deflate taken whenever the client offers it)

def asgi_netra(app: NetraApp, *, subprotocol: str | None = None,
               headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    """The netra app as a bare ASGI application: `websocket.accept` with `subprotocol` and extra `headers`."""

    class AsgiConn:
        def __init__(self, receive: Any, send: Any) -> None:
            self.receive, self.send = receive, send

        async def send_text(self, text: str, pieces: int = 1) -> None:
            await self.send({"type": "websocket.send", "text": text})

        async def send_bytes(self, data: bytes) -> None:
            await self.send({"type": "websocket.send", "bytes": data})

        async def ping(self) -> None:  # ASGI has no ping: the server's own (websocket_ping_interval)
            return None

        async def recv(self) -> str | None:
            msg = await self.receive()
            if msg["type"] != "websocket.receive":
                return None
            return msg.get("text") if msg.get("text") is not None else (msg.get("bytes") or b"").decode("utf-8",
                                                                                                       "replace")

        async def close(self, code: int) -> None:
            await self.send({"type": "websocket.close", "code": code, "reason": "going"})

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        if scope["path"] != "/ws":
            await send({"type": "websocket.close", "code": 1008})
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": headers or []})
        with contextlib.suppress(Exception):
            await app.serve(AsgiConn(receive, send))

    return asgi


@contextlib.contextmanager
def serve_hypercorn(app: NetraApp, *, ping_interval: float | None = None, subprotocol: str | None = None,
                    headers: list[tuple[bytes, bytes]] | None = None) -> Iterator[str]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = listening_socket()
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn's from here on: it closes it
    config.graceful_timeout = 0.1  # open WebSockets a test left are not waited for
    config.websocket_ping_interval = ping_interval
    config.accesslog = config.errorlog = None

    async def event() -> asyncio.Event:
        return asyncio.Event()

    with LoopThread() as lt:
        stop = lt.run(event())
        done = asyncio.run_coroutine_threadsafe(
            serve(asgi_netra(app, subprotocol=subprotocol, headers=headers), config, shutdown_trigger=stop.wait),
            lt.loop)
        try:
            yield f"ws://127.0.0.1:{port}/ws"
        finally:
            lt.loop.call_soon_threadsafe(stop.set)
            done.result(10)
