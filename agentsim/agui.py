"""agentsim speaking AG-UI: a RunAgentInput in, the run's AG-UI events out, over HTTP POST + Server-Sent Events
(h11 on `url`) or WebSocket (`ws_url`), with the same scripts, seeded faults and ground-truth log as the netra mode.

The events are encoded here as JSON objects (camelCase, as the AG-UI schema names them), not with the ag-ui-protocol
models, so that faults can put on the wire what those models would refuse to build.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

import h11
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .agent import Script, build_script
from .faults import AGUI_ONLY, FaultSpec, FaultSpecError
from .server import EXIT_CODE_FAULT, GroundTruth, SimConfig, verify_token, ws_logger

logger = logging.getLogger("agentsim")

AGUI_PATHS = ("/", "/agent", "/ws", "/websocket")
# A request head or body larger than this is refused (413); slow clients get this long to send it.
REQUEST_TIMEOUT = 10.0
SEND_TIMEOUT = 10.0

# Faults of the AG-UI mode: the generic ones (docs in faults.py), applied to AG-UI events, and those of AG-UI's own
# rules. A ROLE names the AG-UI event that carries it (tool_completed: TOOL_CALL_RESULT…).
AGUI_FAULTS = ("drop", "delay_first", "duplicate", "stall", "close", "malformed", "after_terminal", "refuse", "exit",
               "exit_after", *AGUI_ONLY)
ROLE_EVENT = {"agent_started": "RUN_STARTED", "agent_thinking": "REASONING_MESSAGE_START",
              "tool_executing": "TOOL_CALL_START", "tool_completed": "TOOL_CALL_RESULT",
              "partial_result": "TEXT_MESSAGE_CONTENT", "agent_completed": "RUN_FINISHED", "agent_error": "RUN_ERROR"}


def check_agui_faults(faults: list[FaultSpec]) -> None:
    """Raises FaultSpecError for a fault the AG-UI mode does not have (crosstalk, swap, oversized: netra only)."""
    for f in faults:
        if f.name not in AGUI_FAULTS:
            raise FaultSpecError(f"{f.text or f.name!r}: fault {f.name!r} is netra-only "
                                 f"(the ag-ui protocol has: {', '.join(AGUI_FAULTS)})")


@dataclass
class Slot:
    """One AG-UI event of a run's plan: which step of the script makes it, and its type."""

    step: int
    type: str
    make: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]  # (step payload, run context) -> event fields


def _ms() -> int:
    return int(time.time() * 1000)


def plan_events(script: Script) -> list[Slot]:
    """The AG-UI events a netra script becomes, in order (known before the run, so faults can be placed)."""
    slots: list[Slot] = []
    add = slots.append
    partials = sum(1 for s in script.steps if s.role == "partial_result")
    seen_partial = thinking = 0
    for i, step in enumerate(script.steps):
        role = step.role
        if role == "agent_started":
            add(Slot(i, "RUN_STARTED", lambda p, c: {"threadId": c["thread_id"], "runId": c["run_id"]}))
            add(Slot(i, "STATE_SNAPSHOT", lambda p, c: {"snapshot": {"tools": []}}))
        elif role == "agent_thinking":
            thinking += 1
            for slot in _reasoning(i, f"think-{thinking}"):
                add(slot)
        elif role == "tool_executing":
            add(Slot(i, "TOOL_CALL_START", lambda p, c: {"toolCallId": p["tool_call_id"], "toolCallName": p["tool_name"]}))
            add(Slot(i, "TOOL_CALL_ARGS", lambda p, c: {"toolCallId": p["tool_call_id"], "delta": json.dumps(p["parameters"])}))
            add(Slot(i, "TOOL_CALL_END", lambda p, c: {"toolCallId": p["tool_call_id"]}))
        elif role == "tool_completed":
            add(Slot(i, "TOOL_CALL_RESULT", lambda p, c: {"messageId": f"result-{p['tool_call_id']}",
                                                          "toolCallId": p["tool_call_id"], "content": str(p["result"])}))
            add(Slot(i, "STATE_DELTA", lambda p, c: {"delta": [{"op": "add", "path": "/tools/-", "value": p["tool_name"]}]}))
        elif role == "agent_error":
            if step.build({}).get("is_recoverable"):
                add(Slot(i, "CUSTOM", lambda p, c: {"name": "tool_error", "value": p["error_message"]}))
            else:
                add(Slot(i, "RUN_ERROR", lambda p, c: {"message": p["error_message"], "code": p["error_type"]}))
        elif role == "partial_result":
            seen_partial += 1
            if seen_partial == 1:
                add(Slot(i, "TEXT_MESSAGE_START", lambda p, c: {"messageId": c["answer_id"], "role": "assistant"}))
            add(Slot(i, "TEXT_MESSAGE_CONTENT", lambda p, c: {"messageId": c["answer_id"], "delta": p["content"] or "…"}))
            if seen_partial == partials:
                add(Slot(i, "TEXT_MESSAGE_END", lambda p, c: {"messageId": c["answer_id"]}))
        elif role == "agent_completed":
            add(Slot(i, "RUN_FINISHED", lambda p, c: {"threadId": c["thread_id"], "runId": c["run_id"]}))
    return slots


def _reasoning(step: int, mid: str) -> list[Slot]:
    return [Slot(step, "REASONING_MESSAGE_START", lambda p, c: {"messageId": mid, "role": "reasoning"}),
            Slot(step, "REASONING_MESSAGE_CONTENT", lambda p, c: {"messageId": mid, "delta": p["thought"]}),
            Slot(step, "REASONING_MESSAGE_END", lambda p, c: {"messageId": mid})]


@dataclass
class Planned:
    """A fault planned for an AG-UI run, and where in its slots it strikes."""

    spec: FaultSpec
    position: int  # index into the slots (-1: after the terminal event)


# Where each AG-UI rule's fault strikes: the first event of this type (the fault is not applied without one).
_TARGET = {"drop_result": "TOOL_CALL_RESULT", "bad_args": "TOOL_CALL_ARGS", "bad_state_delta": "STATE_SNAPSHOT",
           "empty_delta": "TEXT_MESSAGE_CONTENT", "result_before_end": "TOOL_CALL_END",
           "orphan_result": "TOOL_CALL_RESULT", "unknown_parent": "TOOL_CALL_START", "reused_id": "TEXT_MESSAGE_START",
           "second_start": "RUN_STARTED", "missing_field": "TOOL_CALL_START", "chunk_without_id": "TEXT_MESSAGE_END",
           "string_timestamp": "STATE_SNAPSHOT"}


def plan_agui_faults(specs: list[FaultSpec], slots: list[Slot], rng: random.Random) -> list[Planned]:
    """Which faults hit this run and where; two draws per fault whatever happens, as the netra planner does."""
    out: list[Planned] = []
    n = len(slots)
    types = [s.type for s in slots]
    for spec in specs:
        if spec.name in ("refuse", "exit_after"):
            continue
        hit = rng.random() < spec.rate
        pick = rng.random()
        if not hit or n == 0:
            continue
        name = spec.name
        if name in _TARGET:
            if _TARGET[name] not in types:
                continue
            pos = types.index(_TARGET[name])
        elif name in ("drop", "duplicate") and spec.arg:
            wanted = ROLE_EVENT.get(spec.arg, spec.arg)
            if wanted not in types:
                continue
            pos = types.index(wanted)
        elif name in ("drop", "duplicate"):
            pos = int(pick * n)
        elif name == "delay_first":
            pos = 0
        elif name == "after_terminal":
            pos = -1
        else:  # mid-run (stall, close, malformed, bad_sse_line, exit): after an event, with one still to come
            pos = 0 if n < 3 else 1 + int(pick * (n - 2))
        out.append(Planned(spec, pos))
    return out


class Out(Protocol):
    """Where a run's events go: an SSE response or a WebSocket. False: the client is gone."""

    connection_id: str

    async def event(self, data: str) -> bool: ...

    async def raw(self, data: str | bytes) -> bool: ...

    async def bad_line(self) -> bool: ...  # a stream line that is no frame of the transport (a fault)

    async def cut(self, abort: bool) -> None: ...


class SSEOut:
    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter, connection_id: str) -> None:
        self.conn, self.writer, self.connection_id = conn, writer, connection_id

    async def _write(self, data: bytes) -> bool:
        try:
            self.writer.write(self.conn.send(h11.Data(data=data)) or b"")
            async with asyncio.timeout(SEND_TIMEOUT):
                await self.writer.drain()
            return True
        except (ConnectionError, TimeoutError, h11.LocalProtocolError, RuntimeError):
            # RuntimeError: uvloop's transports raise it for a write after the client went (asyncio's ignore it).
            self.writer.transport.abort()
            return False

    async def event(self, data: str) -> bool:
        return await self._write(f"data: {data}\n\n".encode())

    async def raw(self, data: str | bytes) -> bool:
        body = data if isinstance(data, bytes) else data.encode()
        return await self._write(b"data: " + body.replace(b"\n", b" ") + b"\n\n")

    async def bad_line(self) -> bool:
        # An event sent without its `data:` field name: not an SSE field, the event it carried is lost.
        return await self._write(b'{"type":"CUSTOM","name":"lost","value":1}\n\n')

    async def cut(self, abort: bool) -> None:
        self.writer.transport.abort()


class WSOut:
    def __init__(self, ws: ServerConnection, connection_id: str) -> None:
        self.ws, self.connection_id = ws, connection_id

    async def raw(self, data: str | bytes) -> bool:
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                await self.ws.send(data)
            return True
        except (ConnectionClosed, TimeoutError):
            self.ws.transport.abort()
            return False

    async def event(self, data: str) -> bool:
        return await self.raw(data)

    async def bad_line(self) -> bool:
        return await self.raw("event: not-a-frame")

    async def cut(self, abort: bool) -> None:
        if abort:
            self.ws.transport.abort()
        else:
            await self.ws.close(1001, "agentsim fault: close")


MALFORMED: dict[str, str | bytes] = {
    "notjson": '{"type": "TEXT_MESSAGE_CONTENT", "delta": unterminated',
    "binary": b"\x00\xffagentsim binary frame\x00",
    "notype": json.dumps({"delta": "agentsim malformed frame: no type"}),
    "unknowntype": json.dumps({"type": "ZZ_AGENTSIM_UNKNOWN"}),
}


class AguiSim:
    """agentsim in AG-UI: `async with AguiSim(SimConfig(port=0)) as sim:` then POST to `sim.url` or open `sim.ws_url`."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        check_agui_faults(self.config.faults)
        self.seed = self.config.seed if self.config.seed is not None else random.SystemRandom().getrandbits(48)
        self.gt = GroundTruth(self.config.ground_truth)
        self._http: asyncio.Server | None = None
        self._ws: Server | None = None
        self.port: int | None = None
        self.ws_port: int | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        # Each HTTP connection's handler task, ended by stop() (it may be between two events of a run).
        self._http_tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._requests = 0
        self.chats_started = self.chats_finished = 0
        self._run_faults = [f for f in self.config.faults if f.name not in ("refuse", "exit_after")]
        self._refuse = [f for f in self.config.faults if f.name == "refuse"]
        self._exit_after = [f for f in self.config.faults if f.name == "exit_after"]
        self._runs: set[tuple[str, str]] = set()  # (user, run id) of live runs: a run id in use is refused

    def _host(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"[{host}]" if ":" in host else host

    @property
    def url(self) -> str:
        return f"http://{self._host()}:{self.port}/agent"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host()}:{self.ws_port}/agent"

    async def start(self) -> None:
        self._http = await asyncio.start_server(self._handle_http, self.config.host, self.config.port)
        self.port = self._http.sockets[0].getsockname()[1]
        self._ws = await serve(self._handle_ws, self.config.host, 0, process_request=self._ws_request,
                               max_size=self.config.max_size, compression=None, logger=ws_logger)
        self.ws_port = self._ws.sockets[0].getsockname()[1]
        self.gt.write({"kind": "server_started", "protocol": "ag-ui", "url": self.url, "ws_url": self.ws_url,
                       "seed": self.seed, "faults": [str(f) for f in self.config.faults], "pid": os.getpid()})

    async def stop(self) -> None:
        self._stopping = True
        tasks = [*self._tasks, *self._http_tasks]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._http is not None:
            self._http.close()
            for w in list(self._writers):
                w.transport.abort()
            await asyncio.wait_for(self._http.wait_closed(), timeout=10)
            self._http = None
        if self._ws is not None:
            self._ws.close()
            await asyncio.wait_for(self._ws.wait_closed(), timeout=10)
            self._ws = None
            self.gt.write({"kind": "server_stopped"})
        self.gt.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        assert self._http is not None
        await self._http.serve_forever()

    # ---- admission: auth, refuse, the request ----------------------------------------------------
    def _user(self, authorization: str, query: str) -> tuple[str | None, str]:
        if self.config.no_auth:
            user = next((v for k, _, v in (p.partition("=") for p in query.split("&")) if k == "user"), "")
            return (user[:128] or f"anon-{uuid.uuid4().hex[:12]}"), ""
        if authorization[:7].lower() != "bearer " or not authorization[7:].strip():
            return None, "missing token (send Authorization: Bearer <JWT>)"
        return verify_token(self.config, authorization[7:].strip())

    def _refused(self) -> bool:
        self._requests += 1
        for spec in self._refuse:
            if random.Random(f"{self.seed}|conn|{self._requests}|{spec.text}").random() < spec.rate:
                self.gt.write({"kind": "fault", "fault": "refuse", "arg": None, "run_id": None, "user_id": None,
                               "seq": None, "connection_number": self._requests})
                return True
        return False

    def _input(self, body: bytes) -> tuple[dict[str, Any] | None, str]:
        """The RunAgentInput, checked against the official model, or (None, why not)."""
        from ag_ui.core import RunAgentInput
        from pydantic import ValidationError

        try:
            obj = json.loads(body)
            RunAgentInput.model_validate(obj, by_alias=True, by_name=False)
        except (ValueError, RecursionError) as exc:
            if isinstance(exc, ValidationError):
                first = exc.errors(include_url=False, include_input=False)[0]
                return None, f"not a RunAgentInput: field {'.'.join(map(str, first['loc']))}: {first['msg']}"
            return None, "the body is not JSON"
        if not isinstance(obj, dict):
            return None, "the body is not a JSON object"
        if not isinstance(obj.get("runId"), str) or not obj["runId"] or len(obj["runId"]) > 200:
            return None, "runId must be a short, non-empty string"
        return obj, ""

    # ---- HTTP + SSE ---------------------------------------------------------------------------------
    async def _handle_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._http_tasks.add(task)
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:  # HTTP/1.1 keep-alive: the connection carries its client's next request, as a real
                # server's does (uvicorn, Node); REQUEST_TIMEOUT bounds the wait for each
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    request, body = await self._read_request(conn, reader)
                if request is None:
                    return await self._respond(conn, writer, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, body.decode())
                target = urlsplit(request.target.decode("latin-1"))
                if target.path not in AGUI_PATHS:
                    return await self._respond(conn, writer, HTTPStatus.NOT_FOUND, "agentsim (ag-ui) serves POST /agent")
                if request.method != b"POST":
                    return await self._respond(conn, writer, HTTPStatus.METHOD_NOT_ALLOWED, "POST a RunAgentInput")
                if self._refused():
                    return await self._respond(conn, writer, HTTPStatus.SERVICE_UNAVAILABLE, "agentsim fault: refuse")
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
                user, reason = self._user(headers.get("authorization", ""), target.query)
                if user is None:
                    self.gt.write({"kind": "auth_failed", "connection_id": None, "reason": reason})
                    return await self._respond(conn, writer, HTTPStatus.UNAUTHORIZED, f"authentication failed: {reason}")
                inp, why = self._input(body)
                if inp is None:
                    return await self._respond(conn, writer, HTTPStatus.UNPROCESSABLE_ENTITY, why)
                if (user, inp["runId"]) in self._runs:
                    return await self._respond(conn, writer, HTTPStatus.CONFLICT, "runId already in use")
                writer.write(conn.send(h11.Response(status_code=200, headers=[
                    ("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])) or b"")
                out = SSEOut(conn, writer, f"h-{uuid.uuid4().hex[:16]}")
                await self._run(inp, user, out)
                try:
                    writer.write(conn.send(h11.EndOfMessage()) or b"")
                    await writer.drain()
                except (ConnectionError, h11.LocalProtocolError, RuntimeError):  # RuntimeError: uvloop, client gone
                    return
                if writer.is_closing() or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return  # (a fault cut the stream, or HTTP says the connection ends)
                conn.start_next_cycle()
        except (TimeoutError, ConnectionError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            if not self._stopping or task is None:
                raise
            # Ended by stop() (its server stopping mid-stream: Ctrl-C of `chatprobe run` or `sim`): the connection
            # closes as any the server closes. Ended cancelled, Python 3.11's asyncio streams logged each such handler
            # as "Exception in callback" with a traceback (its done-callback reads the task's exception). The
            # cancellation is stop()'s own, which waits for this end: taken back, the task ends as it returns.
            task.uncancel()
        finally:
            if task is not None:
                self._http_tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[Any, bytes]:
        request = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    raise ConnectionError("the client went away mid-request")
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.config.max_size:
                    return None, f"the body is over {self.config.max_size} bytes".encode()
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the client went away mid-request")

    async def _respond(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: HTTPStatus, text: str) -> None:
        body = json.dumps({"error": text}).encode()
        try:
            writer.write(conn.send(h11.Response(status_code=int(status), headers=[
                ("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")]))
                or b"")
            writer.write(conn.send(h11.Data(data=body)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        except (ConnectionError, h11.LocalProtocolError, RuntimeError):  # RuntimeError: uvloop, client gone
            pass

    # ---- WebSocket ----------------------------------------------------------------------------------
    def _ws_request(self, connection: ServerConnection, request: Any) -> Any:
        parts = urlsplit(request.path)
        if parts.path not in AGUI_PATHS:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found (agentsim ag-ui serves /agent)\n")
        if self._refused():
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "agentsim fault: refuse\n")
        user, reason = self._user(request.headers.get("Authorization", ""), parts.query)
        if user is None:
            self.gt.write({"kind": "auth_failed", "connection_id": None, "reason": reason})
            return connection.respond(HTTPStatus.UNAUTHORIZED, f"authentication failed: {reason}\n")
        return None

    async def _handle_ws(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        parts = urlsplit(ws.request.path)
        user, _ = self._user(ws.request.headers.get("Authorization", ""), parts.query)
        assert user is not None  # admitted by _ws_request
        out = WSOut(ws, f"c-{uuid.uuid4().hex[:16]}")
        self.gt.write({"kind": "connection_opened", "connection_id": out.connection_id, "user_id": user})
        try:
            async for message in ws:
                inp, why = self._input(message.encode() if isinstance(message, str) else message)
                if inp is None or (user, inp["runId"]) in self._runs:
                    # AG-UI has no error frame outside a run: a RUN_ERROR answers the bad input.
                    await out.event(json.dumps({"type": "RUN_ERROR", "message": why or "runId already in use",
                                                "code": "INVALID_INPUT", "timestamp": _ms()}))
                    continue
                task = asyncio.create_task(self._run(inp, user, out))  # runs on one socket may overlap
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except ConnectionClosed:
            pass
        finally:
            self.gt.write({"kind": "connection_closed", "connection_id": out.connection_id, "user_id": user})

    # ---- a run --------------------------------------------------------------------------------------
    async def _run(self, inp: dict[str, Any], user: str, out: Out) -> None:
        run_id, thread_id = inp["runId"], str(inp.get("threadId", ""))
        key = (user, run_id)
        self._runs.add(key)
        messages = [m for m in inp.get("messages") or () if isinstance(m, dict)]
        user_msgs = [m for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str)]
        content = user_msgs[-1]["content"] if user_msgs else "hello"
        message_id = str(user_msgs[-1].get("id", "m")) if user_msgs else "m"
        rng = random.Random(f"{self.seed}|run|{run_id}")
        script = build_script(content, message_id, self.config.think, self.config.tool_latency, rng)
        slots = plan_events(script)
        planned = plan_agui_faults(self._run_faults, slots, rng)
        self.chats_started += 1
        self.gt.write({"kind": "run_started", "protocol": "ag-ui", "run_id": run_id, "user_id": user,
                       "thread_id": thread_id, "message_id": message_id, "connection_id": out.connection_id,
                       "roles": [s.type for s in slots], "faults": [p.spec.name for p in planned]})
        outcome = "cancelled"
        seq = 0
        ctx: dict[str, Any] = {"t0": time.monotonic(), "run_id": run_id, "thread_id": thread_id,
                               "answer_id": f"answer-{run_id[:40]}"}
        at: dict[int, list[Planned]] = {}
        for p in planned:
            at.setdefault(p.position, []).append(p)

        def record(p: Planned, **extra: Any) -> None:
            rec = {"kind": "fault", "fault": p.spec.name, "arg": p.spec.arg, "value": p.spec.value, "run_id": run_id,
                   "user_id": user, "thread_id": thread_id, "seq": seq}
            rec.update(extra)
            self.gt.write(rec)

        async def send(obj: dict[str, Any]) -> bool:
            nonlocal seq
            seq += 1
            ok = await out.event(json.dumps({"timestamp": _ms(), **obj}, separators=(",", ":"), default=str))
            if ok and self.gt.enabled:
                self.gt.write({"kind": "event", "run_id": run_id, "user_id": user, "thread_id": thread_id,
                               "role": obj["type"], "seq": seq, "t": time.time(), "connection_id": out.connection_id})
            return ok

        try:
            payloads: dict[int, dict[str, Any]] = {}
            for i, slot in enumerate(slots):
                here = {p.spec.name: p for p in at.get(i, ())}
                if slot.step not in payloads:
                    step = script.steps[slot.step]
                    delay = step.delay
                    if "delay_first" in here:
                        delay += float(here["delay_first"].spec.value or 0)
                        record(here["delay_first"], duration=here["delay_first"].spec.value)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    payloads[slot.step] = step.build(ctx)
                event = {"type": slot.type, **slot.make(payloads[slot.step], ctx)}
                if not await self._with_faults(event, here, send, record, out):
                    return
                for name in ("stall", "close", "malformed", "bad_sse_line", "exit"):
                    if name in here and not await self._mid_run(name, here[name], record, out, run_id, user):
                        return
            outcome = "failed" if slots and slots[-1].type == "RUN_ERROR" else "completed"
            for p in at.get(-1, ()):
                record(p, role="TEXT_MESSAGE_START")
                await send({"type": "TEXT_MESSAGE_START", "messageId": "late", "role": "assistant"})
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("ag-ui run %s crashed", run_id)
            outcome = "crashed"
        finally:
            self._runs.discard(key)
            self.chats_finished += 1
            self.gt.write({"kind": "run_finished", "run_id": run_id, "user_id": user, "thread_id": thread_id,
                           "outcome": outcome, "last_seq": seq})
        for spec in self._exit_after:
            if self.chats_finished == int(spec.value or 0):
                self._exit({"fault": spec.name, "run_id": run_id, "user_id": user})

    async def _with_faults(self, event: dict[str, Any], here: dict[str, Planned], send: Any, record: Any,
                           out: Out) -> bool:
        """Send one planned event, as the faults planned on it change it; False when the client is gone."""
        t = event["type"]
        if "drop" in here or "drop_result" in here:
            record(here.get("drop") or here["drop_result"], role=t)
            return True
        if "missing_field" in here:
            event.pop("toolCallName", None)
            record(here["missing_field"], role=t)
        if "unknown_parent" in here:
            event["parentMessageId"] = "no-such-message"
            record(here["unknown_parent"], role=t)
        if "bad_args" in here:
            event["delta"] = event["delta"].rstrip("}")  # the last closing brace lost: not JSON any more
            record(here["bad_args"], role=t)
        if "string_timestamp" in here:
            event["timestamp"] = str(_ms())  # the schema's integer, as a string
            record(here["string_timestamp"], role=t)
        if "result_before_end" in here:  # the result before the call's end
            record(here["result_before_end"], role=t)
            if not await send({"type": "TOOL_CALL_RESULT", "messageId": f"early-{event['toolCallId']}",
                               "toolCallId": event["toolCallId"], "content": "too early"}):
                return False
        if not await send(event):
            return False
        if "duplicate" in here:
            record(here["duplicate"], role=t)
            if not await send(dict(event)):
                return False
        extra: list[dict[str, Any]] = []
        if "bad_state_delta" in here:
            extra.append({"type": "STATE_DELTA", "delta": [{"op": "replace", "path": "/nowhere/at/all", "value": 1}]})
        if "empty_delta" in here:
            extra.append({"type": "TEXT_MESSAGE_CONTENT", "messageId": event["messageId"], "delta": ""})
        if "orphan_result" in here:
            extra.append({"type": "TOOL_CALL_RESULT", "messageId": "orphan-result", "toolCallId": "never-started",
                          "content": "?"})
        if "reused_id" in here:
            # The message's id opened again while it is still open: spec 1.1's streaming pattern forbids it ("MUST NOT
            # open an item whose identifier is already open"); reopening a closed one is allowed, so not that.
            extra.append({"type": "TEXT_MESSAGE_START", "messageId": event["messageId"], "role": "assistant"})
        if "chunk_without_id" in here:  # a continuation chunk with no chunk stream open to continue
            extra.append({"type": "TEXT_MESSAGE_CHUNK", "delta": " and more"})
        if "second_start" in here:
            extra.append({"type": "RUN_STARTED", "threadId": event["threadId"], "runId": f"{event['runId']}-again"})
        for name in ("bad_state_delta", "empty_delta", "orphan_result", "reused_id", "second_start", "chunk_without_id"):
            if name in here:
                record(here[name], role=t)
        for obj in extra:
            if not await send(obj):
                return False
        return True

    async def _mid_run(self, name: str, p: Planned, record: Any, out: Out, run_id: str, user: str) -> bool:
        if name == "stall":
            record(p, duration=p.spec.value)
            await asyncio.sleep(float(p.spec.value or 0))
            return True
        if name == "close":
            record(p, connection_ids=[out.connection_id])
            await out.cut(p.spec.arg == "abort")
            return False
        if name == "malformed":
            record(p, connection_ids=[out.connection_id])
            return await out.raw(MALFORMED[p.spec.arg or "notjson"])
        if name == "bad_sse_line":
            record(p, connection_ids=[out.connection_id])
            return await out.bad_line()
        self._exit({"fault": name, "run_id": run_id, "user_id": user})
        return False

    def _exit(self, rec: dict[str, Any]) -> None:
        self.gt.write({"kind": "fault", **rec})
        self.gt.close()
        logger.warning("agentsim fault: exiting the process (%s)", rec.get("fault"))
        os._exit(EXIT_CODE_FAULT)
