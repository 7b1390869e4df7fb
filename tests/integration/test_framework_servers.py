"""Agent chat servers written from docs/protocol.md alone (not agentsim's code) on the web frameworks a team would use,
driven as a user drives them: `chatprobe run` of the built-in scenarios, `chatprobe check` of its recording, and
`chatprobe proxy` in front.

- netra on Starlette under uvicorn (its `websockets-sansio` backend: the other two are tests/integration/ws_stacks.py's)
  and on aiohttp, each checking an HS256 JWT from the `Authorization` header or from the `jwt-auth` /
  `jwt.<base64url(JWT)>` subprotocol pair (selecting `jwt-auth`), with JSON pings and resume;
- AG-UI over FastAPI's own server-sent events (`response_class=fastapi.sse.EventSourceResponse` and `yield`, its
  `: ping` keep-alive comments), which tests/integration/sse_stacks.py's stacks do not cover.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from harness.cli import main

from .asgi import uvicorn_on_loopback
from .ws_stacks import LoopThread, listening_socket

pytestmark = pytest.mark.timeout(60)

SECRET = "framework-servers-secret-0123456789abcdef"

Send = Callable[[str], Awaitable[None]]
Recv = Callable[[], Awaitable[str | None]]


def token_user(authorization: str | None, offered: list[str]) -> tuple[str | None, str | None, str]:
    """(the user an HS256 JWT with `exp` names, the subprotocol to select, the token), as docs/protocol.md's Connection says: a
    bearer header, else `jwt-auth` with `jwt.<base64url(JWT)>` (or the JWT itself after `jwt.`); (None, None) when
    refused."""
    token: str | None = None
    chosen: str | None = None
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
    elif "jwt-auth" in offered:
        chosen = "jwt-auth"
        for p in offered:
            if p.startswith("jwt."):
                raw = p[4:]
                with contextlib.suppress(ValueError):
                    raw = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
                token = raw if raw.count(".") == 2 else p[4:]
    if token is None:
        return None, None, ""
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": ["exp"]})
    except jwt.PyJWTError:
        return None, None, ""
    return str(claims["sub"]), chosen, token


class Run:
    def __init__(self, run_id: str, thread_id: str, user: str, message_id: str | None) -> None:
        self.run_id, self.thread_id, self.user, self.message_id = run_id, thread_id, user, message_id
        self.events: list[str] = []
        self.send: Send | None = None
        self.resumed = asyncio.Event()


class NetraServer:
    """One netra server, whatever framework carries it: a welcome, each `user_message` answered by a run (a tool call
    per `#tools=N`, two chunks), JSON pings answered, a run resumed from `last_seq` by its own user on a new connection
    (else RESUME_UNKNOWN_RUN). With `echo`, a run's first thought quotes the signature of the user's token (a server's
debug output). With `hold_after`, a run whose message says `#hold` stops after that many events until
    it is resumed (a user who left mid-run and came back, with no timing to guess)."""

    def __init__(self, hold_after: int | None = None, echo: bool = False) -> None:
        self.hold_after, self.echo = hold_after, echo
        self.runs: dict[tuple[str, str], Run] = {}
        self.tokens: list[str] = []  # with `echo`, each token a connection authenticated with, its signature echoed

    async def serve(self, user: str, send: Send, recv: Recv, token: str = "") -> None:
        lock = asyncio.Lock()
        self.tokens.append(token)
        tasks: set[asyncio.Task[None]] = set()

        async def say_text(text: str) -> None:
            async with lock:
                await send(text)

        async def say(obj: dict[str, Any]) -> None:
            await say_text(json.dumps(obj))

        await say({"type": "connection_established", "data": {"connection_id": uuid.uuid4().hex, "user_id": user,
                   "server_time": "2026-12-05T00:00:00Z"}, "timestamp": time.time()})
        mine: list[Run] = []
        try:
            while (incoming := await recv()) is not None:
                try:
                    msg = json.loads(incoming)
                except ValueError:
                    msg = None
                kind = msg.get("type") if isinstance(msg, dict) else None
                p = msg.get("payload") if isinstance(msg, dict) and isinstance(msg.get("payload"), dict) else {}
                if kind == "ping":
                    await say({"type": "pong", "data": {"timestamp": time.time()}})
                elif kind in ("pong", "heartbeat", "heartbeat_ack", "ack"):
                    continue
                elif kind == "user_message" and str(p.get("content") or "").strip():
                    run = Run(p.get("run_id") or f"r-{uuid.uuid4().hex[:12]}",
                              p.get("thread_id") or f"t-{uuid.uuid4().hex[:8]}", user, p.get("message_id"))
                    self.runs[(user, run.run_id)] = run
                    run.send = say_text
                    mine.append(run)
                    task = asyncio.ensure_future(self.play(run, str(p["content"]), token.rpartition(".")[2]))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif kind == "resume" and (run := self.runs.get((user, str(p.get("run_id"))))) is not None:
                    async with lock:
                        run.send = say_text
                        for ev in [e for i, e in enumerate(run.events, 1) if i > int(p.get("last_seq") or 0)]:
                            await send(ev)
                    mine.append(run)
                    run.resumed.set()
                elif kind == "resume":
                    await say({"type": "error_message", "error_code": "RESUME_UNKNOWN_RUN", "run_id": p.get("run_id"),
                               "error_message": "no such run"})
                else:
                    await say({"type": "error_message", "error_code": "INVALID_MESSAGE", "error_message": "?"})
        finally:
            for run in mine:
                if run.send is say_text:
                    run.send = None

    async def play(self, run: Run, text: str, signature: str = "") -> None:
        tools = next((int(w[7:]) for w in text.split() if w.startswith("#tools=") and w[7:].isdigit()), 1)
        head = {"run_id": run.run_id, "thread_id": run.thread_id, "user_id": run.user}
        events: list[tuple[str, dict[str, Any]]] = [("agent_started", {"agent_name": "fw", "message_id": run.message_id}),
                                                    ("agent_thinking", {"thought": "hm", "step_number": 1})]
        if self.echo:
            events[1][1]["thought"] = f"checked your token (signature {signature})"
        for i in range(tools):
            events += [("tool_executing", {"tool_name": "calc", "tool_call_id": f"c-{i}", "parameters": {}}),
                       ("tool_completed", {"tool_name": "calc", "tool_call_id": f"c-{i}", "result": i,
                                           "duration_ms": 1.0, "success": True})]
        events += [("agent_thinking", {"thought": "so", "step_number": 2}),
                   ("partial_result", {"content": "part ü", "is_complete": False}),
                   ("partial_result", {"content": " two", "is_complete": True}),
                   ("agent_completed", {"result": "ok", "duration_ms": 2.0})]
        for seq, (kind, payload) in enumerate(events, 1):
            if seq - 1 == self.hold_after and "#hold" in text:
                await asyncio.wait_for(run.resumed.wait(), 10)
            frame = json.dumps({"type": kind, **head, "seq": seq, "timestamp": time.time(), "payload": payload},
                               ensure_ascii=False)
            run.events.append(frame)
            if run.send is not None:
                with contextlib.suppress(Exception):  # the user went away: the run goes on, for a resume
                    await run.send(frame)
            await asyncio.sleep(0)  # wait-ok: a yield, so runs on one connection interleave


def starlette_app(server: NetraServer) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def endpoint(ws: WebSocket) -> None:
        user, chosen, token = token_user(ws.headers.get("authorization"), list(ws.scope.get("subprotocols", [])))
        if user is None:
            await ws.close(code=1008)  # before accept: uvicorn answers the upgrade with 403
            return
        await ws.accept(subprotocol=chosen)

        async def recv() -> str | None:
            m = await ws.receive()
            if m["type"] == "websocket.disconnect":
                return None
            return m["text"] if m.get("text") is not None else "binary"

        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await server.serve(user, ws.send_text, recv, token)

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)])


@contextlib.contextmanager
def serve_uvicorn(server: NetraServer, ws: str) -> Iterator[str]:
    with uvicorn_on_loopback(starlette_app(server), force_exit=True, ws=ws, log_level="critical") as port:
        yield f"ws://127.0.0.1:{port}/ws"


@contextlib.contextmanager
def serve_aiohttp(server: NetraServer) -> Iterator[str]:
    from aiohttp import WSMsgType, web

    async def endpoint(request: web.Request) -> web.StreamResponse:
        offered = [p.strip() for h in request.headers.getall("Sec-WebSocket-Protocol", []) for p in h.split(",")]
        user, chosen, token = token_user(request.headers.get("Authorization"), offered)
        if user is None:
            raise web.HTTPUnauthorized()
        ws = web.WebSocketResponse(protocols=(chosen,) if chosen else ())
        await ws.prepare(request)

        async def recv() -> str | None:
            m = await ws.receive()
            return str(m.data) if m.type == WSMsgType.TEXT else "binary" if m.type == WSMsgType.BINARY else None

        with contextlib.suppress(ConnectionError):
            await server.serve(user, ws.send_str, recv, token)
        return ws

    app = web.Application()
    app.router.add_get("/ws", endpoint)
    sock = listening_socket()
    with LoopThread() as lt:
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        lt.run(runner.setup())
        lt.run(web.SockSite(runner, sock).start())
        try:
            yield f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"
        finally:
            lt.run(runner.cleanup())
            sock.close()


STACKS = {
    "uvicorn-websockets-sansio": lambda s: serve_uvicorn(s, "websockets-sansio"),
    "uvicorn-wsproto": lambda s: serve_uvicorn(s, "wsproto"),
    "aiohttp": serve_aiohttp,
}


def chats(report: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """(scenario, outcome, rules) of every chat of a JSON report, and no violation of a connection's own."""
    doc = json.loads(report.read_text())
    assert not [s["connection_violations"] for s in doc["scenarios"] if s["connection_violations"]], doc
    return sorted((s["scenario"], c["outcome"], tuple(sorted({v["rule"] for v in c["violations"]})))
                  for s in doc["scenarios"] for c in s["chats"])


@pytest.mark.parametrize("auth", ["header", "subprotocol"])
def test_built_in_scenarios_pass_against_uvicorns_sansio_backend_live_and_in_check(tmp_path, monkeypatch, auth):
    monkeypatch.setenv("FW_SECRET", SECRET)
    rec = tmp_path / "rec"
    with serve_uvicorn(NetraServer(), "websockets-sansio") as url:
        code = main(["run", "--target", url, "--jwt-secret-env", "FW_SECRET", "--auth", auth, "basic", "reconnection",
                     "--record", str(rec), "--json", str(tmp_path / "run.json"), "-q"])
    assert code == 0, chats(tmp_path / "run.json")
    assert main(["check", str(rec), "--json", str(tmp_path / "check.json"), "-q"]) == 0
    live, offline = chats(tmp_path / "run.json"), chats(tmp_path / "check.json")
    assert len(live) == 16 and [c[1:] for c in live] == [c[1:] for c in offline] == [("passed", ())] * 16, live


def minted(user: str, iat: int) -> str:
    return jwt.encode({"sub": user, "iat": iat, "exp": iat + 3600}, SECRET, algorithm="HS256")


def as_subprotocols(token: str) -> list[str]:
    """`--auth subprotocol`'s pair, as chatprobe's clients and a browser send it (docs/protocol.md)."""
    return ["jwt-auth", "jwt." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")]


@pytest.mark.parametrize("stack", ["uvicorn-wsproto", "aiohttp"])
@pytest.mark.parametrize("auth", ["header", "subprotocol"])
def test_a_user_who_resumes_under_a_token_minted_anew_is_the_same_user_behind_the_proxy(stack, auth):
    """FAILED-ON-ORIGINAL (subprotocol: the resumed run's events an R8 on the user's next chat, 'of a run this client
    did not start'): a user leaves mid-run and comes back on a new connection with a token minted anew (its `iat` a
    second later, as `chatprobe run --jwt-secret-env` mints one per connection), resumes the run and sends another
    chat. Its identity is the JWT's user (iss, sub) whichever way the token comes; the proxy read a `jwt.` subprotocol's
    token only as it is, never base64url-encoded as docs/protocol.md gives it and chatprobe's clients send it, so the
    encoded token's digest made each connection another user's. (`chatprobe run` of the reconnection scenario through
    the proxy met it whenever a reconnection crossed a second.)"""
    from websockets.asyncio.client import connect

    from harness.profiles import load_profile
    from harness.scenario import Scenario
    from monitors.proxy import LiveChats, Proxy, start_proxy

    from .test_independent_servers import KeptSink

    profile = load_profile("netra")
    scenario = Scenario.model_validate({"name": "live", "expect": {"deadline": "5s", "settle": "0.1s"}})
    kept = KeptSink()
    first, again = minted("alice", int(time.time()) - 10), minted("alice", int(time.time()) - 9)
    assert first != again

    def credentials(token: str) -> dict[str, Any]:
        if auth == "header":
            return {"additional_headers": {"Authorization": f"Bearer {token}"}}
        return {"subprotocols": as_subprotocols(token)}

    async def user(url: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with asyncio.timeout(15):
            async with connect(url, **credentials(first)) as ws:  # type: ignore[arg-type]
                assert json.loads(await ws.recv())["type"] == "connection_established"
                await ws.send(json.dumps({"type": "user_message", "payload": {
                    "content": "What is 2 + 2? #hold", "thread_id": "t-1", "message_id": "m-1"}}))
                seen = [json.loads(await ws.recv()) for _ in range(3)]  # the server holds the run there
            async with connect(url, **credentials(again)) as ws:  # type: ignore[arg-type]
                assert json.loads(await ws.recv())["type"] == "connection_established"
                await ws.send(json.dumps({"type": "resume", "payload": {"run_id": seen[-1]["run_id"],
                                                                        "last_seq": seen[-1]["seq"]}}))
                while seen[-1]["type"] != "agent_completed":
                    seen.append(json.loads(await ws.recv()))
                await ws.send(json.dumps({"type": "user_message", "payload": {
                    "content": "And 3 + 3?", "thread_id": "t-2", "message_id": "m-2"}}))
                nxt = [json.loads(await ws.recv())]
                while nxt[-1]["type"] != "agent_completed":
                    nxt.append(json.loads(await ws.recv()))
            return seen, nxt[-1]

    with STACKS[stack](NetraServer(hold_after=3)) as url, LoopThread() as lt:
        live = LiveChats(profile, kept, scenario.expectations(profile), "live", scenario.expect.settle)
        front = lt.run(start_proxy(Proxy(url.rsplit("/", 1)[0], live), "127.0.0.1", 0))
        try:
            seen, last = asyncio.run(user(f"ws://127.0.0.1:{front.sockets[0].getsockname()[1]}/ws"))
            results = kept.wait_for(2, 10)
        finally:
            lt.loop.call_soon_threadsafe(front.close)
    assert [e["seq"] for e in seen] == list(range(1, 9)) and last["type"] == "agent_completed"
    verdicts = sorted((r.outcome.value, tuple(sorted(r.rule_counts())), r.reconnects) for r in results)
    # the run resumed is the user's own, whole; the next chat has no other user's events
    assert verdicts == [("passed", (), [])] * 2, [(r.outcome, r.violations) for r in results]


@pytest.mark.parametrize("auth", ["header", "subprotocol"])
def test_a_token_the_server_echoes_is_in_no_recording_of_the_proxy(tmp_path, auth):
    """FAILED-ON-ORIGINAL (subprotocol: the signature in the proxy's recording as the server sent it): the server quotes
    the signature of the user's JWT in a thought. The proxy scrubs a connection's credentials from what it records;
    for a `jwt.<base64url(JWT)>` subprotocol it knew the encoded form only, never the token the server decodes from
    it, so a part of that token went unscrubbed (a bearer header's token is known whole, and every run of it)."""
    from websockets.asyncio.client import connect

    from harness.profiles import load_profile
    from harness.recorder import Recorder
    from harness.scenario import Scenario
    from monitors.proxy import LiveChats, Proxy, start_proxy

    from .test_independent_servers import KeptSink

    profile = load_profile("netra")
    scenario = Scenario.model_validate({"name": "live", "expect": {"deadline": "5s", "settle": "0.1s"}})
    kept, server = KeptSink(), NetraServer(echo=True)
    # minted here, not by `chatprobe run`, whose own tokens the process's scrubber knows whatever the proxy does
    token = minted("carol", int(time.time()))
    offer: dict[str, Any] = ({"additional_headers": {"Authorization": f"Bearer {token}"}} if auth == "header"
                             else {"subprotocols": as_subprotocols(token)})

    async def user(url: str) -> str:
        async with asyncio.timeout(15), connect(url, **offer) as ws:
            assert json.loads(await ws.recv())["type"] == "connection_established"
            await ws.send(json.dumps({"type": "user_message", "payload": {"content": "What is 2 + 2?"}}))
            seen = [json.loads(await ws.recv())]
            while seen[-1]["type"] != "agent_completed":
                seen.append(json.loads(await ws.recv()))
            return str(seen[-1]["type"])

    with serve_uvicorn(server, "websockets-sansio") as url, LoopThread() as lt:
        live = LiveChats(profile, kept, scenario.expectations(profile), "live", scenario.expect.settle,
                         Recorder(tmp_path / "proxied", keep_all=True))
        front = lt.run(start_proxy(Proxy(url.rsplit("/", 1)[0], live), "127.0.0.1", 0))
        try:
            last = asyncio.run(user(f"ws://127.0.0.1:{front.sockets[0].getsockname()[1]}/ws"))
            results = kept.wait_for(1, 10)
        finally:
            lt.loop.call_soon_threadsafe(front.close)
    assert last == "agent_completed" and [r.outcome.value for r in results] == ["passed"]
    assert server.tokens == [token]
    signature = token.rpartition(".")[2]
    recorded = "".join(f.read_text() for f in (tmp_path / "proxied").rglob("*") if f.is_file())
    assert "checked your token (signature " in recorded and len(signature) > 20
    assert signature not in recorded and signature[:16] not in recorded


# -- AG-UI over FastAPI's own server-sent events ---------------------------------------------------------------------

@contextlib.contextmanager
def serve_fastapi_sse(agent: Any, ping: float = 0.01) -> Iterator[str]:
    """`@app.post(..., response_class=fastapi.sse.EventSourceResponse)` yielding `ServerSentEvent`s (data as JSON,
    `event:` and `id:` lines), FastAPI's `: ping` comment whenever the generator is idle for `ping` seconds."""
    import fastapi.routing
    from fastapi import Body, FastAPI
    from fastapi.sse import EventSourceResponse, ServerSentEvent

    from .sse_stacks import Comment, Raw, played

    app = FastAPI()

    async def endpoint(inp: dict[str, Any] = Body(...)) -> AsyncIterator[ServerSentEvent]:
        n = 0
        async for a in played(agent.actions(json.dumps(inp).encode())):
            if isinstance(a, Raw):
                yield ServerSentEvent(raw_data=a.data.decode("utf-8", "replace"))
            elif isinstance(a, Comment):
                yield ServerSentEvent(comment=a.text)
            else:
                n += 1
                yield ServerSentEvent(data=a, event=a.get("type"), id=str(n))

    app.post("/agent", response_class=EventSourceResponse)(endpoint)
    interval = fastapi.routing._PING_INTERVAL  # type: ignore[attr-defined]
    fastapi.routing._PING_INTERVAL = ping  # type: ignore[attr-defined]  # "importable so tests can monkeypatch it"
    try:
        with uvicorn_on_loopback(app, log_level="critical", timeout_graceful_shutdown=1) as port:
            yield f"http://127.0.0.1:{port}/agent"
    finally:
        fastapi.routing._PING_INTERVAL = interval  # type: ignore[attr-defined]


def test_ag_ui_on_fastapis_own_server_sent_events_by_every_road(tmp_path):
    from .sse_stacks import Wait, judge, lively, run_events

    def answer(inp: dict[str, Any], text: str) -> list[Any]:
        ev = run_events(inp)
        if "#unpaired" in text:  # TOOL_CALL_END missing
            return [*ev[:4], *ev[5:]]
        if "#silent" in text:  # only FastAPI's ping comments, past the deadline
            return [Wait(2.5)]
        return lively(inp, text)

    got = judge(tmp_path, serve_fastapi_sse, answer, ["one", "two #unpaired", "three #silent", "four"],
                expect={"deadline": "2s", "first_event_limit": "1s"})
    want = [("passed", ()), ("failed", ("R5",)), ("incomplete", ("R10", "R9")), ("passed", ())]
    assert got == {"run": want, "check": want}, got
