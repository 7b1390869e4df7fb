"""AG-UI over HTTP POST + Server-Sent Events served by stacks a team would deploy, not framed by hand: sse-starlette's
`EventSourceResponse` on uvicorn (its ping comments, CRLF or LF, `id:`/`event:`/`retry:`, JSON split over `data:`
lines), aiohttp's `StreamResponse` (gzip by `enable_compression`) and aiohttp-sse's `sse_response` (its pings),
Flask's streamed generator under werkzeug's and waitress's WSGI servers; and a raw asyncio HTTP server for the
wire those stacks can produce that no one stack shows together (an HTTP/1.0 body ended by the close, chunks of a
byte or two that cut an event anywhere: inside `data:`, inside a UTF-8 character, between CR and LF; lone-CR line
ends; gzip in chunks of a byte).

One agent (`Agent`) answers every stack's requests: the request's last message picks its run (`Agent.answer`), a
list of actions each stack writes its own way (an AG-UI event as the stack sends one, a comment, raw bytes where the
stack lets them through, a wait). Each stack runs in a thread of its own on 127.0.0.1, a port the OS picks;
`serve(...)` is a context manager giving the URL, every start and stop bounded.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .asgi import uvicorn_on_loopback
from .ws_stacks import LoopThread, raw_asyncio_on_loopback


@dataclass
class Raw:
    """Bytes written as they are, where the stack lets a handler write bytes (not through its event encoder)."""
    data: bytes


@dataclass
class Comment:
    text: str


@dataclass
class Wait:
    seconds: float


class AgentCrashed(Exception):
    """What `Crash` raises in the stack's handler, mid-stream."""


@dataclass
class Crash:
    """The handler raises, mid-stream (a model's exception no one caught): the stack ends the response as it does."""


Action = dict[str, Any] | Raw | Comment | Wait | Crash
Answer = Callable[[dict[str, Any], str], list[Action]]

TS = 1_764_800_000_000
TEXT = "Grüße ☃ — 😀 ok"  # two-, three- and four-byte UTF-8 characters, for chunks to cut


def run_events(inp: dict[str, Any]) -> list[dict[str, Any]]:
    """A conforming run answering the RunAgentInput `inp`: a step, a tool call and its result, a streamed text whose
    deltas are not ASCII."""
    t, r = inp["threadId"], inp["runId"]
    return [
        {"type": "RUN_STARTED", "threadId": t, "runId": r, "timestamp": TS},
        {"type": "STEP_STARTED", "stepName": "answer"},
        {"type": "TOOL_CALL_START", "toolCallId": "c1", "toolCallName": "calc"},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "c1", "delta": '{"x": "☃"}'},
        {"type": "TOOL_CALL_END", "toolCallId": "c1"},
        {"type": "TOOL_CALL_RESULT", "messageId": "t1", "toolCallId": "c1", "content": "42 ✓"},
        {"type": "TEXT_MESSAGE_START", "messageId": "m1", "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": TEXT[:7]},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": TEXT[7:]},
        {"type": "TEXT_MESSAGE_END", "messageId": "m1"},
        {"type": "STEP_FINISHED", "stepName": "answer"},
        {"type": "RUN_FINISHED", "threadId": t, "runId": r, "timestamp": TS + 1},
    ]


def lively(inp: dict[str, Any], text: str) -> list[Action]:
    """The conforming run with a keep-alive comment first and a comment between events."""
    out: list[Action] = [Comment("keep-alive")]
    for i, ev in enumerate(run_events(inp)):
        out += [ev] if i % 3 else [ev, Comment("tick")]
    return out


@dataclass
class Agent:
    """The AG-UI agent every stack serves: `answer(input, message text)` is the run's actions."""

    answer: Answer = lively
    requests: list[dict[str, Any]] = field(default_factory=list)

    def actions(self, body: bytes) -> list[Action]:
        inp = json.loads(body)
        self.requests.append(inp)
        content = inp["messages"][-1].get("content") if inp.get("messages") else ""
        return self.answer(inp, content if isinstance(content, str) else "")


# -- how a stack writes an event ------------------------------------------------------------------------------------

def event_text(ev: dict[str, Any], n: int, sep: str = "\n", *, fields: bool = True, pretty: bool = False) -> str:
    """One event as `text/event-stream`: `id:`, `event:` and (first event) `retry:` lines when `fields`, the JSON on one
    `data:` line or, `pretty`, over several."""
    data = json.dumps(ev, ensure_ascii=False, indent=1 if pretty else None)
    head = f"id: {n}{sep}event: {ev.get('type')}{sep}" + (f"retry: 3000{sep}" if n == 1 else "") if fields else ""
    return head + "".join(f"data: {line}{sep}" for line in data.split("\n")) + sep


async def played(actions: list[Action]) -> AsyncIterator[Action]:
    """The actions in order, the waits taken."""
    for a in actions:
        if isinstance(a, Wait):
            await asyncio.sleep(a.seconds)  # wait-ok: the agent's think time
        elif isinstance(a, Crash):
            raise AgentCrashed("the model failed")
        else:
            yield a


# -- sse-starlette on uvicorn ---------------------------------------------------------------------------------------

def starlette_app(agent: Agent, *, sep: str | None, ping: float | None, pretty: bool) -> Any:
    from sse_starlette import EventSourceResponse, ServerSentEvent
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    async def endpoint(request: Request) -> Any:
        actions = agent.actions(await request.body())

        async def events() -> AsyncIterator[Any]:
            n = 0
            async for a in played(actions):
                if isinstance(a, Raw):
                    yield a.data
                elif isinstance(a, Comment):
                    yield ServerSentEvent(comment=a.text, sep=sep)
                else:
                    n += 1
                    yield ServerSentEvent(json.dumps(a, ensure_ascii=False, indent=1 if pretty else None), id=str(n),
                                          event=a.get("type"), retry=3000 if n == 1 else None, sep=sep)

        return EventSourceResponse(events(), sep=sep, ping=ping)

    return Starlette(routes=[Route("/agent", endpoint, methods=["POST"])])


@contextlib.contextmanager
def serve_sse_starlette(agent: Agent, *, sep: str | None = None, ping: float | None = None,
                        pretty: bool = False) -> Iterator[str]:
    with uvicorn_on_loopback(starlette_app(agent, sep=sep, ping=ping, pretty=pretty), log_level="critical",
                             timeout_graceful_shutdown=1) as port:
        yield f"http://127.0.0.1:{port}/agent"


@contextlib.contextmanager
def serve_hypercorn(agent: Agent, *, sep: str | None = None, ping: float | None = None) -> Iterator[str]:
    """The same sse-starlette app under hypercorn (HTTP/1.1 over h11)."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn's from here on: it closes it
    config.graceful_timeout = 1
    config.accesslog = config.errorlog = None
    with LoopThread() as lt:
        stop = lt.run(_event())
        done = asyncio.run_coroutine_threadsafe(
            serve(starlette_app(agent, sep=sep, ping=ping, pretty=False), config, shutdown_trigger=stop.wait), lt.loop)
        try:
            yield f"http://127.0.0.1:{port}/agent"
        finally:
            lt.loop.call_soon_threadsafe(stop.set)
            done.result(10)


async def _event() -> asyncio.Event:
    return asyncio.Event()


# -- aiohttp ----------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def serve_aiohttp(agent: Agent, *, style: str) -> Iterator[str]:
    """aiohttp's server: `sse` (aiohttp-sse's sse_response, its ping every 10 ms), `stream` (a StreamResponse written
    by hand, chunked), `gzip` (the same with enable_compression: gzip when the client offers it)."""
    from aiohttp import web

    async def endpoint(request: web.Request) -> web.StreamResponse:
        actions = agent.actions(await request.read())
        if style == "sse":
            from aiohttp_sse import sse_response

            async with sse_response(request, ping_interval=0.01, allow_all_methods=True) as sse:
                n = 0
                async for a in played(actions):
                    if isinstance(a, Raw):
                        await sse.write(a.data)
                    elif isinstance(a, Comment):
                        await sse.write(f": {a.text}\r\n\r\n".encode())
                    else:
                        n += 1
                        await sse.send(json.dumps(a, ensure_ascii=False, indent=1), id=str(n), event=a.get("type"),
                                       retry=3000 if n == 1 else None)
            return sse
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        if style == "gzip":
            response.enable_compression(web.ContentCoding.gzip)
        await response.prepare(request)
        n = 0
        async for a in played(actions):
            if isinstance(a, Raw):
                await response.write(a.data)
            elif isinstance(a, Comment):
                await response.write(f": {a.text}\n".encode())
            else:
                n += 1
                await response.write(event_text(a, n).encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/agent", endpoint)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    with LoopThread() as lt:
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        lt.run(runner.setup())
        lt.run(web.SockSite(runner, sock).start())
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}/agent"
        finally:
            lt.run(runner.cleanup())
            sock.close()


# -- Flask under a WSGI server ----------------------------------------------------------------------------------------

def flask_app(agent: Agent) -> Any:
    import time

    from flask import Flask, Response, request, stream_with_context

    app = Flask("agui")

    @app.post("/agent")
    def endpoint() -> Response:
        actions = agent.actions(request.get_data())

        def events() -> Iterator[bytes]:
            n = 0
            for a in actions:
                if isinstance(a, Wait):
                    time.sleep(a.seconds)  # wait-ok: the agent's think time
                elif isinstance(a, Crash):
                    raise AgentCrashed("the model failed")
                elif isinstance(a, Raw):
                    yield a.data
                elif isinstance(a, Comment):
                    yield f": {a.text}\n\n".encode()
                else:
                    n += 1
                    yield event_text(a, n, fields=n % 2 == 0).encode()

        return Response(stream_with_context(events()), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache"})

    return app


@contextlib.contextmanager
def serve_werkzeug(agent: Agent, *, http10: bool = False) -> Iterator[str]:
    """Flask's app under werkzeug's threaded server: HTTP/1.1 (a body without a length is sent chunked) or, `http10`,
    HTTP/1.0 (the body ends with the connection)."""
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        if http10:
            protocol_version = "HTTP/1.0"

        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    server = make_server("127.0.0.1", 0, flask_app(agent), threaded=True, request_handler=Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/agent"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        assert not thread.is_alive(), "werkzeug did not stop"


@contextlib.contextmanager
def serve_waitress(agent: Agent) -> Iterator[str]:
    """Flask's app under waitress."""
    from waitress.server import create_server

    server = create_server(flask_app(agent), host="127.0.0.1", port=0, threads=4,
                           channel_timeout=10)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}/agent"
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=5)
        thread.join(10)
        assert not thread.is_alive(), "waitress did not stop"


# -- raw asyncio: the wire variants -----------------------------------------------------------------------------------

@dataclass
class Wire:
    """How the raw server writes the stream: `framing` chunked, close (an HTTP/1.0 body ended by the close) or length;
    `sep` the line end; `piece` the bytes of each write (a chunk of its own when chunked: 1 cuts everything
    anywhere); `gzip` the body gzip-encoded (when offered); `content_type` as sent."""
    framing: str = "chunked"
    sep: str = "\n"
    piece: int = 0
    gzip: bool = False
    pretty: bool = False
    content_type: str = "text/event-stream; charset=utf-8"
    chunk_ext: bytes = b""  # after each chunk's size (`;name=value`, RFC 9112 7.1.1)
    trailer: bytes = b""  # header lines after the last chunk (RFC 9112 7.1.2)


@contextlib.contextmanager
def serve_raw(agent: Agent, wire: Wire) -> Iterator[str]:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
            body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
            actions = agent.actions(body)
            gz = zlib.compressobj(wbits=31) if wire.gzip and "gzip" in headers.get("accept-encoding", "") else None
            status = b"HTTP/1.0 200 OK\r\n" if wire.framing == "close" else b"HTTP/1.1 200 OK\r\n"
            out = status + b"Content-Type: %s\r\nCache-Control: no-cache\r\n" % wire.content_type.encode()
            if gz:
                out += b"Content-Encoding: gzip\r\n"
            parts: list[bytes] = []

            def emit(data: bytes) -> list[bytes]:
                if gz is not None:
                    data = gz.compress(data) + gz.flush(zlib.Z_SYNC_FLUSH)
                step = wire.piece or len(data) or 1
                return [data[i:i + step] for i in range(0, len(data), step)]

            async def send(data: bytes) -> None:
                for p in emit(data):
                    if wire.framing == "length":
                        parts.append(p)
                    elif wire.framing == "chunked":
                        writer.write(b"%X%s\r\n%s\r\n" % (len(p), wire.chunk_ext, p))
                    else:
                        writer.write(p)
                    await writer.drain()

            if wire.framing == "chunked":
                writer.write(out + b"Transfer-Encoding: chunked\r\n\r\n")
            elif wire.framing == "close":
                writer.write(out + b"Connection: close\r\n\r\n")
            n = 0
            async for a in played(actions):
                if isinstance(a, Raw):
                    await send(a.data)
                elif isinstance(a, Comment):
                    await send(f": {a.text}{wire.sep}".encode())
                else:
                    n += 1
                    await send(event_text(a, n, wire.sep, pretty=wire.pretty).encode())
            tail = gz.flush() if gz is not None else b""
            if wire.framing == "length":
                body = b"".join(parts) + tail
                writer.write(out + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            elif wire.framing == "chunked":
                writer.write((b"%x\r\n%s\r\n" % (len(tail), tail) if tail else b"") + b"0\r\n" + wire.trailer
                             + b"\r\n")
            else:
                writer.write(tail)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    with raw_asyncio_on_loopback(client) as port:
        yield f"http://127.0.0.1:{port}/agent"


# -- the judges ----------------------------------------------------------------------------------------------------

Serve = Callable[[Agent], contextlib.AbstractContextManager[str]]
Verdict = tuple[str, tuple[str, ...]]


def judge(tmp_path: Path, serve: Serve, answer: Answer, messages: list[str], *,
          expect: dict[str, Any] | None = None, body: bool = False, users: int = 1) -> dict[str, list[Verdict]]:
    """Each chat's (outcome, rules), in the order of `messages` (sorted when `users` > 1), by every road: `chatprobe
    run --profile ag-ui` (its AG-UI payload checks included), recorded, and `chatprobe check` of that recording; with
    `body`, also `chatprobe check --format sse` of each answer's body saved by hand (`judge_bodies`). `run` and
    `check` exit alike and the counts add up in every report."""
    from harness.cli import main

    from .test_agui_independent import counts_add_up

    steps = [{"chat": {"message": m}} for m in messages]
    sc = {"name": "sse-stacks", "users": users, "connect_timeout": "3s", "steps": steps,
          "expect": {"deadline": "3s", "settle": "0.1s", "streaming": True, **(expect or {})}}
    path = tmp_path / "scenario.yaml"
    path.write_text(json.dumps(sc))
    live, offline, rec = tmp_path / "live.json", tmp_path / "check.json", tmp_path / "rec"
    agent = Agent(answer)
    with serve(agent) as url:
        code = main(["run", "--target", url, "--profile", "ag-ui", "--auth", "none", str(path), "--record", str(rec),
                     "--json", str(live), "-q"])
    assert code in (0, 1), code
    code2 = main(["check", str(rec), "--profile", "ag-ui", "--scenario", str(path), "--json", str(offline), "-q"])
    assert code2 == code, (code, code2)
    out: dict[str, list[Verdict]] = {}
    for road, report in (("run", live), ("check", offline)):
        (doc,) = json.loads(report.read_text())["scenarios"]
        counts_add_up(doc)
        out[road] = [(c["outcome"], tuple(sorted({v["rule"] for v in c["violations"]}))) for c in doc["chats"]]
    assert len(agent.requests) == len(messages) * users, agent.requests
    if body:
        out["body"] = judge_bodies(tmp_path, serve, answer, agent.requests, path)
    return {road: sorted(v) for road, v in out.items()} if users > 1 else out


def judge_bodies(tmp_path: Path, serve: Serve, answer: Answer, requests: list[dict[str, Any]],
                 scenario: Path) -> list[Verdict]:
    """The road of a body saved by hand (`curl -N --compressed` of the same requests, against a fresh server), judged
    by `chatprobe check --format sse`: one chat per body, in order."""
    import httpx

    from harness.cli import main

    files = []
    with serve(Agent(answer)) as url, httpx.Client(timeout=10) as client:
        for i, inp in enumerate(requests):
            f = tmp_path / f"body{i:02d}.sse"
            got = bytearray()
            with client.stream("POST", url, json=inp, headers={"Accept": "text/event-stream"}) as response:
                with contextlib.suppress(httpx.HTTPError):  # what came before a broken end is saved, as by curl
                    for piece in response.iter_bytes():
                        got += piece
            f.write_bytes(bytes(got))
            files.append(str(f))
    report = tmp_path / "body.json"
    code = main(["check", *files, "--format", "sse", "--profile", "ag-ui", "--scenario", str(scenario),
                 "--json", str(report), "-q"])
    assert code in (0, 1), code
    from .test_agui_independent import counts_add_up

    out = []
    for doc in json.loads(report.read_text())["scenarios"]:  # one a body
        counts_add_up(doc)
        out += [(c["outcome"], tuple(sorted({v["rule"] for v in c["violations"]}))) for c in doc["chats"]]
    return out
