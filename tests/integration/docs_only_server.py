"""A netra-dialect chat server written from docs/protocol.md and README.md only, by a team that is not agentsim's.

It makes the legal choices agentsim does not: fields in another order and unknown fields beside them, UUID run ids
of its own, fragmented messages, `{"type":"ping"}` and `heartbeat` frames and WebSocket pings between events, the
older `system_message` welcome, fields under `data` or flat at the root, ISO timestamps, two tool calls open at once,
long unicode partial results written with `\\uXXXX` surrogate escapes, runs of several chats interleaved on one
connection, a resume that replays from `last_seq` and goes on live, a close 1000/1001 when the connection idles, and
a close written in the same write as the terminal event. `bugs` adds one fault a real server ships.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import hmac
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

# The variants a test may turn on (all legal per docs/protocol.md).
VARIANTS = ("fragment", "pings", "system_welcome", "data_layout", "flat_layout", "iso_time", "interleave_tools",
            "unicode", "big", "idle_close", "close_after_terminal", "escaped_json", "uuid_ids", "extra_fields",
            "ws_pings", "alt_names", "recoverable_error", "oldest", "numeric_ids", "restart_mid_run", "quota")

BUGS = ("drop_event", "reorder", "other_user", "late_first", "dup_seq", "after_terminal", "error_no_code",
        "drop_no_resume", "fatal_no_code", "binary_event", "no_message_id")


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def verify_jwt(token: str, secret: str) -> str | None:
    """HS256 JWT with `sub` and `exp` (as the docs say the reference requires): the user, or None."""
    try:
        head, body, sig = token.split(".")
        want = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(want, _b64d(sig)):
            return None
        if json.loads(_b64d(head)).get("alg") != "HS256":
            return None
        claims = json.loads(_b64d(body))
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp < datetime.datetime.now(datetime.UTC).timestamp():
            return None
        sub = claims.get("sub")
        return sub if isinstance(sub, str) and sub else None
    except (ValueError, TypeError, json.JSONDecodeError):
        return None


@dataclass
class Run:
    run_id: str
    user: str
    thread_id: str
    message_id: str | None
    events: list[str] = field(default_factory=list)   # the wire text of each event, seq = index + 1
    conn: Conn | None = None
    done: bool = False


class Conn:
    def __init__(self, srv: DocsServer, ws: ServerConnection, user: str) -> None:
        self.srv = srv
        self.ws = ws
        self.user = user
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.live: set[str] = set()     # run ids streaming to this connection
        self.idle_handle: asyncio.TimerHandle | None = None

    def put(self, item: Any) -> None:
        self.queue.put_nowait(item)

    async def writer(self) -> None:
        rnd = self.srv.rnd
        while True:
            item = await self.queue.get()
            if item is None:
                return
            kind, text = item
            if kind == "close":
                await self.ws.close(text, "idle" if text == 1001 else "bye")
                return
            if kind == "binary":
                await self.ws.send(text.encode())
                continue
            if kind == "terminal_close":
                # the terminal event and the close frame in one write to the socket
                async with self.ws.send_context():
                    self.ws.protocol.send_text(text.encode())
                    self.ws.protocol.send_close(1000, "done")
                    self.ws.transport.write(b"".join(self.ws.protocol.data_to_send()))
                return
            if kind == "drop":
                self.ws.transport.abort()
                return
            if "pings" in self.srv.variants and rnd.random() < 0.3:
                await self.ws.send(rnd.choice(['{"type":"ping"}', '{"type":"heartbeat","data":{"n":1}}',
                                               '{"type":"ack"}', '{"type":"heartbeat_ack"}',
                                               '{"data":{"status":"working"},"type":"agent_update"}',
                                               '{"type":"system_message","data":{"event":"note","text":"hi"}}']))
            if "ws_pings" in self.srv.variants and rnd.random() < 0.3:
                await self.ws.ping(b"odd")
            if "fragment" in self.srv.variants and len(text) > 8:
                cut = sorted(rnd.sample(range(1, len(text)), min(5, len(text) - 1)))
                parts = [text[a:b] for a, b in zip([0, *cut], [*cut, len(text)], strict=True)]
                await self.ws.send(iter(parts))
            else:
                await self.ws.send(text)

    def arm_idle(self) -> None:
        if "idle_close" not in self.srv.variants or self.live:
            return
        if self.idle_handle:
            self.idle_handle.cancel()
        self.idle_handle = asyncio.get_running_loop().call_later(
            self.srv.idle_close_after, lambda: self.put(("close", self.srv.rnd.choice([1000, 1001]))))


class DocsServer:
    def __init__(self, secret: str, *, variants: tuple[str, ...] = (), bug: str | None = None, seed: int = 28,
                 step: float = 0.003, idle_close_after: float = 0.05, late_first: float = 0.8,
                 big_size: int = 600_000) -> None:
        assert all(v in VARIANTS for v in variants), variants
        assert bug is None or bug in BUGS, bug
        self.secret = secret
        self.variants = set(variants)
        self.bug = bug
        self.rnd = random.Random(seed)
        self.step = step
        self.idle_close_after = idle_close_after
        self.late_first = late_first
        self.big_size = big_size
        self.runs: dict[tuple[str, str], Run] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self._server: Any = None
        self._n = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def __aenter__(self) -> DocsServer:
        self._server = await serve(self._handler, "127.0.0.1", 0, process_request=self._process_request,
                                   select_subprotocol=self._select_subprotocol, max_size=2 ** 22,
                                   ping_interval=None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in list(self.tasks):
            t.cancel()
        self._server.close()
        await self._server.wait_closed()

    # -- handshake -----------------------------------------------------------------------------------------------
    def _process_request(self, conn: ServerConnection, req: Request) -> Response | None:
        if req.path.split("?")[0] not in ("/ws", "/websocket"):
            return conn.respond(404, "not found\n")
        return None

    def _select_subprotocol(self, conn: ServerConnection, offered: Any) -> str | None:
        return "jwt-auth" if "jwt-auth" in offered else None

    def _user(self, headers: Headers) -> str | None:
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return verify_jwt(auth[7:].strip(), self.secret)
        for p in headers.get_all("Sec-WebSocket-Protocol"):
            for name in p.split(","):
                name = name.strip()
                if name.startswith("jwt."):
                    tok = name[4:]
                    with contextlib.suppress(ValueError, UnicodeDecodeError):
                        if tok.count(".") != 2:
                            tok = _b64d(tok).decode()
                    return verify_jwt(tok, self.secret)
        return None

    # -- frames --------------------------------------------------------------------------------------------------
    def _now(self) -> Any:
        t = datetime.datetime.now(datetime.UTC)
        return t.isoformat() if "iso_time" in self.variants else t.timestamp()

    def _dump(self, obj: dict[str, Any]) -> str:
        return json.dumps(obj, ensure_ascii="escaped_json" in self.variants, separators=(",", ":"))

    def _event(self, run: Run, etype: str, body: dict[str, Any], *, user: str | None = None,
               seq: int | None = None) -> str:
        seq = len(run.events) + 1 if seq is None else seq
        head: dict[str, Any] = {"run_id": run.run_id, "thread_id": run.thread_id, "user_id": user or run.user,
                                "seq": seq, "timestamp": self._now()}
        if "extra_fields" in self.variants:
            body = {**body, "x_trace": {"span": uuid.uuid4().hex, "tags": ["a", 1, None]}, "x_cost": 0.0012}
        if "alt_names" in self.variants:
            etype = {"agent_completed": "agent_response", "partial_result": "stream_chunk"}.get(etype, etype)
        if "oldest" in self.variants:
            # the oldest shape: run and thread inside payload, no seq, a sender
            return self._dump({"type": etype, "payload": {**body, "run_id": run.run_id, "thread_id": run.thread_id},
                               "sender": None, "timestamp": head["timestamp"]})
        if "flat_layout" in self.variants:
            frame = {**body, **head, "type": etype}        # type last, everything at the root
        elif "data_layout" in self.variants:
            frame = {"data": body, **head, "type": etype}
        else:
            frame = {"payload": body, "seq": head.pop("seq"), **head, "type": etype}
        if "extra_fields" in self.variants:
            frame["server_version"] = "docs-only/1.0"
        return self._dump(frame)

    def _emit(self, run: Run, text: str, *, record: bool = True, kind: str = "text") -> None:
        if record:
            run.events.append(text)
        if run.conn is not None:
            run.conn.put((kind, text))

    # -- the agent ----------------------------------------------------------------------------------------------
    def _script(self, run: Run, content: str) -> list[tuple[str, dict[str, Any]]]:
        started = {"agent_name": "docs28_agent", "message_id": run.message_id}
        if self.bug == "no_message_id":
            started.pop("message_id")
        out: list[tuple[str, dict[str, Any]]] = [("agent_started", started),
                                                 ("agent_thinking", {"thought": "planning", "step_number": 1})]
        calls: list[tuple[str, Any]] = [("calculator", "c-1"), ("lookup", "c-2")]
        if "numeric_ids" in self.variants:
            calls = [("calculator", 1), ("lookup", 2)]
        if "interleave_tools" in self.variants:
            out += [("tool_executing", {"tool_name": n, "tool_call_id": i, "parameters": {"q": content[:40]}})
                    for n, i in calls]
            out += [("tool_completed", {"tool_name": n, "tool_call_id": i, "result": {"ok": 1}, "duration_ms": 1.5,
                                        "success": True}) for n, i in reversed(calls)]
        else:
            for n, i in calls:
                out.append(("tool_executing", {"tool_name": n, "tool_call_id": i, "parameters": {"q": content[:40]}}))
                out.append(("tool_completed", {"tool_name": n, "tool_call_id": i, "result": 391, "duration_ms": 2,
                                               "success": True}))
        if "recoverable_error" in self.variants:
            out.append(("agent_error", {"error_message": "retrying the lookup", "error_type": "ToolTimeout",
                                        "is_recoverable": True, "severity": "warning"}))
        out.append(("agent_thinking", {"thought": "writing", "step_number": 2}))
        chunk = "part "
        if "unicode" in self.variants:
            chunk = "Résultat 😀 — 𝄞 ☃ \u2028 ok \"quoted\" \\ "
        if "big" in self.variants:
            # about big_size bytes of frame as written (escaped or not): under the 4 MiB limit
            written = len(json.dumps(chunk, ensure_ascii="escaped_json" in self.variants).encode())
            chunk = chunk * (self.big_size // written)
        for _ in range(3):
            out.append(("partial_result", {"content": chunk, "is_complete": False}))
        out.append(("agent_completed", {"result": "391; Paris", "duration_ms": 12.0}))
        return out

    async def _agent(self, run: Run, content: str) -> None:
        script = self._script(run, content)
        if self.bug == "late_first":
            await asyncio.sleep(self.late_first)
        for i, (etype, body) in enumerate(script):
            last = i == len(script) - 1
            if self.bug == "error_no_code" and i == 3:
                # an error_message frame naming the run and no code: the run's (fatal) error_event
                self._emit(run, self._dump({"error_message": "the model is overloaded", "run_id": run.run_id,
                                            "seq": len(run.events) + 1, "type": "error_message"}))
                run.done = True
                break
            if self.bug == "fatal_no_code" and i == 3:
                self._emit(run, self._event(run, "agent_error", {"error_message": "boom", "is_recoverable": False}))
                run.done = True
                break
            if self.bug == "drop_event" and etype == "tool_completed" and body["tool_call_id"] in ("c-1", 1):
                run.events.append("")          # its seq is used, the frame never sent
                continue
            if self.bug == "binary_event" and etype == "tool_completed" and body["tool_call_id"] in ("c-1", 1):
                self._emit(run, self._event(run, etype, body), kind="binary")
                continue
            if self.bug == "reorder" and i == 2:
                a = self._event(run, etype, body)
                b = self._event(run, script[i + 1][0], script[i + 1][1], seq=len(run.events) + 2)
                run.events.append(a)
                self._emit(run, b)
                if run.conn is not None:
                    run.conn.put(("text", a))
                continue
            if self.bug == "reorder" and i == 3:
                continue
            if self.bug == "drop_no_resume" and i == 3:
                run.done = True
                self.runs.pop((run.user, run.run_id), None)
                if run.conn is not None:
                    run.conn.put(("drop", ""))
                return
            text = self._event(run, etype, body)
            if "restart_mid_run" in self.variants and i == 3 and run.conn is not None:
                # a rolling deploy: the connection closed with 1012 mid-run, the run goes on for a resume
                conn = run.conn
                run.conn = None
                conn.live.discard(run.run_id)
                conn.put(("close", 1012))
            if last:
                run.done = True
                conn = run.conn
                if conn is not None:
                    conn.live.discard(run.run_id)
                if "close_after_terminal" in self.variants and conn is not None and not conn.live:
                    self._emit(run, text, kind="terminal_close")
                else:
                    self._emit(run, text)
                    if conn is not None:
                        conn.arm_idle()
            else:
                self._emit(run, text)
            if self.bug == "other_user" and i == 2:
                other = Run(f"docs28-{uuid.uuid4().hex[:10]}", "mallory-28", "th-mallory", None)
                self._emit(run, self._event(other, "agent_thinking", {"thought": "not yours"}, seq=4), record=False)
            if self.bug == "dup_seq" and i == 2:
                self._emit(run, text, record=False)
            await asyncio.sleep(self.step)
        if self.bug == "after_terminal" and run.done:
            self._emit(run, self._event(run, "partial_result", {"content": "late", "is_complete": True}))

    # -- connection ----------------------------------------------------------------------------------------------
    def _error(self, code: str | None, msg: str, **extra: Any) -> str:
        obj: dict[str, Any] = {"error_message": msg, **extra, "type": "error_message"}
        if code:
            obj = {"error_code": code, **obj}
        return self._dump(obj)

    async def _handler(self, ws: ServerConnection) -> None:
        user = self._user(ws.request.headers) if ws.request else None
        if user is None:
            await ws.send(self._error("AUTH_FAILED", "bad token"))
            await ws.close(1008, "auth")
            return
        conn = Conn(self, ws, user)
        self._n += 1
        cid = str(uuid.uuid4())
        if "system_welcome" in self.variants:
            welcome = {"data": {"event": "connection_established", "connection_id": cid, "user_id": user},
                       "type": "system_message"}
        else:
            welcome = {"data": {"server_time": datetime.datetime.now(datetime.UTC).isoformat(),
                                "user_id": user, "connection_id": cid, "features": ["resume"]},
                       "type": "connection_established", "timestamp": self._now()}
        conn.put(("text", self._dump(welcome)))
        writer = asyncio.create_task(conn.writer())
        try:
            async for raw in ws:
                self._on_frame(conn, raw)
        except Exception:  # a peer that vanished
            pass
        finally:
            if conn.idle_handle:
                conn.idle_handle.cancel()
            for run in self.runs.values():
                if run.conn is conn:
                    run.conn = None
            conn.put(None)
            with contextlib.suppress(Exception):
                await writer

    def _on_frame(self, conn: Conn, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            conn.put(("text", self._error("INVALID_MESSAGE", "binary frames are not taken")))
            return
        try:
            msg = json.loads(raw)
        except json.JSONDecodeError:
            conn.put(("text", self._error("INVALID_MESSAGE", "not JSON")))
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            conn.put(("text", self._error("INVALID_MESSAGE", "no type")))
            return
        t = msg["type"]
        payload = msg.get("payload") if isinstance(msg.get("payload"), dict) else {}
        if t == "ping":
            conn.put(("text", self._dump({"data": {"timestamp": self._now()}, "type": "pong"})))
        elif t in ("pong", "heartbeat", "heartbeat_ack", "ack"):
            return
        elif t in ("user_message", "start_agent", "chat"):
            self._start(conn, payload)
        elif t == "resume":
            self._resume(conn, payload)
        else:
            conn.put(("text", self._error("INVALID_MESSAGE", f"unknown type {t[:40]}")))

    def _start(self, conn: Conn, p: dict[str, Any]) -> None:
        content = next((p[k] for k in ("content", "user_request", "message") if isinstance(p.get(k), str)), "")
        mid = p.get("message_id") if isinstance(p.get("message_id"), str) else None
        if not content:
            conn.put(("text", self._error("INVALID_MESSAGE", "empty message", message_id=mid)))
            return
        rid = p.get("run_id") if isinstance(p.get("run_id"), str) else None
        if rid and (conn.user, rid) in self.runs and not self.runs[(conn.user, rid)].done:
            conn.put(("text", self._error("INVALID_MESSAGE", "run id in use", run_id=rid)))
            return
        if "quota" in self.variants and conn.live:
            # one run at a time per user: a later message refused, named by its message_id (under data)
            conn.put(("text", self._dump({"data": {"message_id": mid, "retry_after": 1}, "error_code": "QUOTA_EXCEEDED",
                                          "error_message": "one run at a time", "type": "error_message"})))
            return
        rid = rid or (str(uuid.uuid4()) if "uuid_ids" in self.variants else f"docs28-{uuid.uuid4().hex[:10]}")
        tid = p.get("thread_id") if isinstance(p.get("thread_id"), str) else f"th-{uuid.uuid4()}"
        if conn.idle_handle:
            conn.idle_handle.cancel()
            conn.idle_handle = None
        run = Run(rid, conn.user, tid, mid, conn=conn)
        self.runs[(conn.user, rid)] = run
        conn.live.add(rid)
        task = asyncio.create_task(self._agent(run, content))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _resume(self, conn: Conn, p: dict[str, Any]) -> None:
        rid = p.get("run_id")
        last = p.get("last_seq")
        run = self.runs.get((conn.user, rid)) if isinstance(rid, str) else None
        if run is None:
            conn.put(("text", self._error("RESUME_UNKNOWN_RUN", "unknown run", run_id=rid)))
            return
        last = last if isinstance(last, int) and not isinstance(last, bool) else 0
        if conn.idle_handle:
            conn.idle_handle.cancel()
            conn.idle_handle = None
        # replay seq > last_seq, then keep the run live here; both in one step so no event slips between
        for text in run.events[last:]:
            if text:
                conn.put(("text", text))
        if not run.done:
            run.conn = conn
            conn.live.add(run.run_id)
        else:
            conn.arm_idle()
