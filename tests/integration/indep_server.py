"""A netra agent chat server a second team wrote from README.md and docs/protocol.md alone, on the `websockets`
library's asyncio server, in its own style: its own field order (`seq` first, `type` late), fields the document does
not name (`x-srv`, `trace`), UUID connection and run ids, `call_<hex>` tool call ids, millisecond timestamps, every
event sent as a WebSocket message in three fragments with a pause between them (a message split across time).

Its auth is the document's: `Authorization: Bearer <JWT>` or the subprotocols `jwt-auth` + `jwt.<base64url(JWT)>`
(the JWT itself after `jwt.` too), HS256, `sub` the user, `exp` required; no credentials at all is HTTP 401 at the
upgrade, a token it cannot take an `AUTH_FAILED` frame and close 1008. Resume as the document describes: a
`resume` of one of the user's runs replays its events past `last_seq` and the run goes on live on the new
connection; another user's run, or one it never had, is `RESUME_UNKNOWN_RUN` naming the run.

`faults` switches on the bugs such servers ship (`FAULTS` names each); each strikes every run.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import jwt
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

FAULTS = {
    "event-after-completed": "a partial_result after agent_completed",
    "completed-without-executing": "a tool_completed of a call that never started (no tool_executing)",
    "lost-tool-completed": "one tool_completed numbered and never sent",
    "seq-gap": "the counter skips a number",
    "seq-repeat": "the counter fails to move once: two events under one seq",
    "first-event-late": "the first event after 2.2 s",
    "other-users-event": "a partial_result of another user's run on this socket",
    "run-id-per-connection": "every run on a connection under one run id, also two at once",
    "error-then-completed": "a fatal agent_error, then agent_completed",
    "completed-twice": "agent_completed, then again under the next seq",
    "completed-resent": "agent_completed sent twice, the same frame (a retried send)",
    "thinking-after-completed": "an agent_thinking after agent_completed",
    "resume-skips-one": "a resume replays from last_seq + 2 (one event lost)",
    "resume-from-last": "a resume replays from last_seq (one event again)",
    "close-without-completed": "closes the connection (1000) after the answer, without agent_completed",
    "two-events-concatenated": "two events in one WebSocket message, JSON objects back to back",
    "two-events-newline": "two events in one WebSocket message, newline separated",
    "never-answers": "takes the message and sends nothing",
    "seq-per-connection": "one seq counter per connection, not per run",
    "closes-after-fatal-error": "closes the connection (1011) right after a fatal agent_error",
    "closes-after-invalid": "answers an invalid frame INVALID_MESSAGE, then closes the connection (1008)",
    "ignores-invalid": "answers an invalid frame with nothing",
    "broadcast": "sends every event to every open connection, whoever's",
}

# what a correct server may do all the same
CONDUCT = {
    "drops-mid-run": "drops each run's connection (TCP, no closing handshake) after its third event, once",
    "goes-away-mid-run": "closes each run's connection with 1001 after its third event, once (a deploy)",
    "pings-often": "WebSocket pings every 20 ms, the connection dropped when a pong takes over 5 s",
    "goes-away-at-once": "closes the connection with 1001 on the first message it gets, before any event (a deploy)",
    "numeric-run-ids": "run ids as JSON integers",
    "closes-after-each-run": "closes the connection (1000) right after each agent_completed",
    "selects-no-subprotocol": "takes the token from the subprotocols offered, and selects none of them",
    "selects-token-subprotocol": "selects the token's own subprotocol (jwt.<...>), not jwt-auth",
    "lazy-auth": "welcomes every connection, checks the token at each message (AUTH_FAILED, close 1008)",
    "lazy-auth-stays-open": "as lazy-auth, but answers each message AUTH_FAILED and keeps the connection open",
}

OTHER_USER = "u-tenant-b"


def _b64url_decode(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Run:
    run_id: str | int
    user: str
    thread_id: str | None
    message_id: str | None
    conn: Conn | None
    events: list[str] = field(default_factory=list)  # every frame sent, its seq its index + 1
    live: bool = True


class Conn:
    """One client connection: an ordered queue of outgoing work, written by one task."""

    def __init__(self, ws: ServerConnection, user: str, fragment_pause: float) -> None:
        self.ws = ws
        self.user = user
        self.pause = fragment_pause
        self.out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.open = True
        self.seq = 0  # the seq-per-connection bug's counter

    def send(self, text: str) -> None:
        if self.open:
            self.out.put_nowait(("text", text))

    def close(self, code: int) -> None:
        if self.open:
            self.out.put_nowait(("close", code))

    def abort(self) -> None:
        if self.open:
            self.out.put_nowait(("abort", None))

    async def _pieces(self, text: str) -> Any:
        third = max(1, len(text) // 3)
        for i, start in enumerate(range(0, len(text), third)):
            if i:
                await asyncio.sleep(self.pause)  # wait-ok: the server's pace, a message split across time
            yield text[start:start + third]

    async def writer(self) -> None:
        try:
            while True:
                kind, arg = await self.out.get()
                if kind == "close":
                    self.open = False
                    await self.ws.close(arg)
                    return
                if kind == "abort":
                    self.open = False
                    self.ws.transport.abort()
                    return
                await self.ws.send(self._pieces(arg))
        except ConnectionClosed:
            self.open = False


@dataclass
class IndepServer:
    secret: str
    faults: frozenset[str] = frozenset()
    step: float = 0.01  # between two events of a run
    fragment_pause: float = 0.002
    runs: dict[tuple[str, str], Run] = field(default_factory=dict)  # (user, str(run id))
    conns: set[Conn] = field(default_factory=set)  # the broadcast bug's audience
    messages: int = 0
    server: Server | None = None
    port: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS) - set(CONDUCT)
        assert not unknown, unknown

    # -- the handshake ------------------------------------------------------------------------------------------

    def _token(self, headers: Headers) -> str | None:
        auth = headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        offered = [p.strip() for h in headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",")]
        if "jwt-auth" in offered:
            for p in offered:
                if p.startswith("jwt."):
                    rest = p[4:]
                    if rest.count(".") == 2:
                        return rest  # the JWT itself
                    with contextlib.suppress(ValueError, UnicodeDecodeError):
                        return _b64url_decode(rest)
        return None

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?")[0] not in ("/ws", "/websocket"):
            return conn.respond(HTTPStatus.NOT_FOUND, "no such path\n")
        if self._token(request.headers) is None:
            return conn.respond(HTTPStatus.UNAUTHORIZED, "credentials required\n")
        return None

    def _select(self, conn: ServerConnection, offered: Any) -> Any:
        if "selects-no-subprotocol" in self.faults:
            return None
        if "selects-token-subprotocol" in self.faults:
            return next((p for p in offered if p.startswith("jwt.")), None)
        return "jwt-auth" if "jwt-auth" in offered else None

    def _user(self, token: str) -> str | None:
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"], options={"require": ["exp", "sub"]})
        except jwt.PyJWTError:
            return None
        sub = claims.get("sub")
        return sub if isinstance(sub, str) and sub else None

    # -- a connection -------------------------------------------------------------------------------------------

    async def handler(self, ws: ServerConnection) -> None:
        token = self._token(ws.request.headers) if ws.request else None
        user = self._user(token) if token else None
        refused = user is None
        if refused and self.faults & {"lazy-auth", "lazy-auth-stays-open"}:
            user = "anonymous"
        elif refused:
            await ws.send(json.dumps({"error_message": "token refused", "error_code": "AUTH_FAILED",
                                      "type": "error_message"}))
            await ws.close(1008, "auth")
            return
        conn = Conn(ws, user, self.fragment_pause)
        self.conns.add(conn)
        writer = asyncio.create_task(conn.writer())
        conn.send(json.dumps({"timestamp": time.time(), "x-srv": {"build": "indep-1"},
                              "data": {"server_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                       "user_id": user, "connection_id": str(uuid.uuid4())},
                              "type": "connection_established"}))
        tasks: set[asyncio.Task[None]] = set()
        conn_run_id = str(uuid.uuid4())
        try:
            async for raw in ws:
                if isinstance(raw, bytes):
                    self._invalid(conn, "binary frames are not taken")
                    continue
                try:
                    msg = json.loads(raw)
                except ValueError:
                    self._invalid(conn, "not JSON")
                    continue
                kind = msg.get("type") if isinstance(msg, dict) else None
                payload = msg.get("payload") if isinstance(msg, dict) else None
                payload = payload if isinstance(payload, dict) else {}
                if kind == "ping":
                    conn.send(json.dumps({"data": {"timestamp": time.time()}, "type": "pong"}))
                elif kind in ("pong", "heartbeat", "heartbeat_ack", "ack"):
                    pass
                elif kind == "resume":
                    self._resume(conn, payload)
                elif refused:
                    conn.send(json.dumps({"error_message": "token refused", "error_code": "AUTH_FAILED",
                                          "type": "error_message"}))
                    if "lazy-auth-stays-open" not in self.faults:
                        conn.close(1008)
                elif kind in ("user_message", "start_agent", "chat"):
                    text = payload.get("content") or payload.get("user_request") or payload.get("message")
                    if not isinstance(text, str) or not text:
                        self._invalid(conn, "a chat needs its text")
                        continue
                    run = self._start(conn, payload, conn_run_id)
                    if run is not None and "goes-away-at-once" in self.faults and self.messages == 1:
                        conn.close(1001)
                        run.conn = None  # the run goes on; a resume picks it up
                    if run is not None:
                        task = asyncio.create_task(self._play(run, text))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                else:
                    self._invalid(conn, "unknown or missing type")
        except ConnectionClosed:
            pass
        finally:
            self.conns.discard(conn)
            conn.open = False
            for run in self.runs.values():
                if run.conn is conn:
                    run.conn = None  # the run goes on; a resume picks it up
            writer.cancel()

    def _invalid(self, conn: Conn, why: str) -> None:
        if "ignores-invalid" in self.faults:
            return
        conn.send(json.dumps({"error_code": "INVALID_MESSAGE", "error_message": why, "type": "error_message"}))
        if "closes-after-invalid" in self.faults:
            conn.close(1008)

    def _start(self, conn: Conn, p: dict[str, Any], conn_run_id: str) -> Run | None:
        self.messages += 1
        asked = p.get("run_id")
        if "run-id-per-connection" in self.faults:
            run_id = conn_run_id
        elif isinstance(asked, str) and asked:
            live = self.runs.get((conn.user, str(asked)))
            if live is not None and live.live:
                conn.send(json.dumps({"error_code": "INVALID_MESSAGE", "error_message": "run id in use",
                                      "type": "error_message", "message_id": p.get("message_id")}))
                return None
            run_id = asked
        elif "numeric-run-ids" in self.faults:
            run_id = 1000 + self.messages
        else:
            run_id = str(uuid.uuid4())
        thread = p.get("thread_id") if isinstance(p.get("thread_id"), str) else None
        message = p.get("message_id") if isinstance(p.get("message_id"), str) else None
        run = Run(run_id, conn.user, thread, message, conn)
        self.runs[(conn.user, str(run_id))] = run
        return run

    def _resume(self, conn: Conn, p: dict[str, Any]) -> None:
        run_id, last = p.get("run_id"), p.get("last_seq")
        run = self.runs.get((conn.user, str(run_id))) if isinstance(run_id, (str, int)) else None
        if run is None:
            conn.send(json.dumps({"run_id": run_id, "error_code": "RESUME_UNKNOWN_RUN",
                                  "error_message": "no such run", "type": "error_message"}))
            return
        start = last if isinstance(last, int) and not isinstance(last, bool) and last >= 0 else 0
        if "resume-skips-one" in self.faults:
            start += 1
        elif "resume-from-last" in self.faults:
            start = max(0, start - 1)
        for frame in run.events[start:]:
            conn.send(frame)
        run.conn = conn

    # -- a run --------------------------------------------------------------------------------------------------

    def _frame(self, run: Run, kind: str, seq: int | None, payload: dict[str, Any],
               user: str | None = None) -> str:
        out: dict[str, Any] = {}
        if seq is not None:
            out["seq"] = seq
        out["payload"] = payload
        out["trace"] = {"span": uuid.uuid4().hex[:16]}
        out["type"] = kind
        out["run_id"] = run.run_id
        if run.thread_id is not None:
            out["thread_id"] = run.thread_id
        out["user_id"] = user or run.user
        out["timestamp"] = _now_ms()
        return json.dumps(out, ensure_ascii=False)

    def _emit(self, run: Run, text: str, *, number: bool = True) -> None:
        if number:
            run.events.append(text)
        if "broadcast" in self.faults:
            for other in list(self.conns):
                other.send(text)
        elif run.conn is not None:
            run.conn.send(text)

    def _script(self, run: Run, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
        tools = int(m.group(1)) if (m := re.search(r"#tools=(\d+)", text)) else 1
        chunks = int(m.group(1)) if (m := re.search(r"#chunks=(\d+)", text)) else 2
        tools, chunks = min(tools, 10), max(1, min(chunks, 50))
        started: dict[str, Any] = {"agent_name": "indep-agent"}
        if run.message_id is not None:
            started["message_id"] = run.message_id
        yield "agent_started", started
        yield "agent_thinking", {"step_number": 1, "thought": "Reading the question…"}
        for i in range(tools):
            call = {"tool_call_id": f"call_{uuid.uuid4().hex[:12]}", "tool_name": ["calculator", "search"][i % 2]}
            yield "tool_executing", {**call, "parameters": {"q": text[:40], "i": i}}
            if i == 0 and "#fail-tool" in text:  # README's directive: the first call fails, recoverably
                yield "tool_completed", {**call, "result": None, "success": False, "duration_ms": 1.0}
                yield "agent_error", {"is_recoverable": True, "severity": "warning", "error_type": "ToolError",
                                      "error_message": "the tool timed out; going on without it"}
                continue
            yield "tool_completed", {**call, "result": {"value": i}, "success": True, "duration_ms": 3.5}
            if "#fail-agent" in text:  # README's directive: a fatal error ends the run
                yield "agent_error", {"is_recoverable": False, "severity": "critical", "error_type": "AgentError",
                                      "error_message": "the agent gave up"}
                return
        yield "agent_thinking", {"step_number": 2, "thought": "Putting it together"}
        for i in range(chunks):
            yield "partial_result", {"is_complete": i == chunks - 1, "content": f"Part {i + 1} ✓ "}
        yield "agent_completed", {"duration_ms": 42.0, "result": "Done."}

    async def _play(self, run: Run, text: str) -> None:
        f = self.faults
        if "never-answers" in f:
            return
        if "first-event-late" in f:
            await asyncio.sleep(2.2)  # wait-ok: the server's fault, its first event late
        seq = 0
        steps = list(self._script(run, text))
        held: str | None = None  # a frame held back to share a message with the next one
        dropped_completion = False
        for i, (kind, payload) in enumerate(steps):
            if i:
                await asyncio.sleep(self.step)  # wait-ok: the server's pace between events
            last = i == len(steps) - 1 or kind == "agent_error" and not payload["is_recoverable"]
            if kind == "agent_completed" and "close-without-completed" in f:
                run.live = False
                if run.conn is not None:
                    run.conn.close(1000)
                return
            if kind == "agent_completed" and "error-then-completed" in f:
                seq += 1
                self._emit(run, self._frame(run, "agent_error", seq, {
                    "is_recoverable": False, "severity": "critical", "error_type": "ModelError",
                    "error_message": "the model went away"}))
            if kind == "tool_executing" and "completed-without-executing" in f:
                continue
            seq += 1
            if "seq-per-connection" in f and run.conn is not None:
                run.conn.seq += 1
                seq = run.conn.seq
            if "seq-gap" in f and i == 3:
                seq += 1
            if "seq-repeat" in f and i == 3:
                seq -= 1
            frame = self._frame(run, kind, seq, payload)
            if kind == "tool_completed" and "lost-tool-completed" in f and not dropped_completion:
                dropped_completion = True
                run.events.append(frame)  # numbered, logged, never sent
                continue
            if "two-events-concatenated" in f or "two-events-newline" in f:
                if i == 1:
                    held = frame
                    run.events.append(frame)
                    continue
                if held is not None:
                    run.events.append(frame)
                    glue = "\n" if "two-events-newline" in f else ""
                    if run.conn is not None:
                        run.conn.send(held + glue + frame)
                    held = None
                    continue
            self._emit(run, frame)
            if i == 2 and run.conn is not None and "drops-mid-run" in f:
                run.conn.abort()
            if i == 2 and run.conn is not None and "goes-away-mid-run" in f:
                run.conn.close(1001)
            if kind == "agent_started" and "other-users-event" in f:
                foreign = Run("r-" + uuid.uuid4().hex, OTHER_USER, "t-" + uuid.uuid4().hex, None, None)
                self._emit(run, self._frame(foreign, "partial_result", 2, {"content": "someone else's answer"}),
                           number=False)
            if last:
                run.live = False
                if kind == "agent_error" and "closes-after-fatal-error" in f and run.conn is not None:
                    run.conn.close(1011)
                if "closes-after-each-run" in f and run.conn is not None:
                    run.conn.close(1000)
                if "completed-twice" in f:
                    seq += 1
                    self._emit(run, self._frame(run, kind, seq, payload))
                if "completed-resent" in f:
                    self._emit(run, frame, number=False)
                if "event-after-completed" in f:
                    seq += 1
                    self._emit(run, self._frame(run, "partial_result", seq, {"content": "one more thing"}))
                if "thinking-after-completed" in f:
                    seq += 1
                    self._emit(run, self._frame(run, "agent_thinking", seq, {"thought": "hmm", "step_number": 3}))

    # -- serving ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        # pings-often: a pong owed within 5 s, not 200 ms: a client on a loaded machine (its reads behind the other
        # work in its process) answered late now and then, and a message that crossed the drop was lost (incomplete)
        often = "pings-often" in self.faults
        self.server = await serve(self.handler, "127.0.0.1", 0, process_request=self._process_request,
                                  select_subprotocol=self._select, compression=None,
                                  ping_interval=0.02 if often else None, ping_timeout=5.0 if often else None)
        self.port = next(iter(self.server.sockets)).getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


class Hosted:
    """The server in a thread of its own with its own event loop (`chatprobe`'s CLI runs one of its own): a context
    manager giving the server, started; every start and stop bounded."""

    def __init__(self, server: IndepServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> IndepServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self.server.server is not None
            self.server.server.close()
            await asyncio.wait_for(self.server.server.wait_closed(), 5)
            runs = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in runs:  # runs whose client went away go on until here
                task.cancel()
            await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 5)

        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
