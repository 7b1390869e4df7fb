"""Netra servers written from README.md and docs/protocol.md alone (not from agentsim's code), each judged by
`chatprobe run --record` (the CLI, `--json`), `chatprobe check` of that recording and `chatprobe proxy` in front of
the same server: the three must agree with each other and with the contract.

CONFORMING servers use what the document allows and agentsim does not do: `type` last and unknown fields, JSON
whitespace and escapes, messages in many fragments with pings between, the server's own JSON pings and heartbeats,
several chats interleaved on one connection, parallel tool calls closed in reverse order, calls with no
`tool_call_id`, the first event at 1.9 s, a frame of exactly 4 MiB and a message of exactly 4,096 fragments, ids of
exactly 1,024 characters, optional fields left out, the oldest and newest shapes, a resume after the server drops the
connection. Every chat must pass, and the counts add up.

FAULTY servers each break one rule of docs/protocol.md on one chat; that chat must fail with that rule (live, offline
and behind the proxy alike), no traceback, no hang.

Raw RFC 6455 servers (tests/integration/outside_servers.py) on 127.0.0.1 in a thread of their own; every wait has a
deadline (the scenario's, `InThread`'s, the proxy sink's).

FAILED on the code before this file, each with what was wrong:
- test_a_server_that_handles_errors_wrong_is_r13[an-invalid-frame-answered-with-a-run]: a run naming no thread or
  message that a server started in answer to a `send_raw:` probe was adopted as the probe's own run (the probe was a
  chat "waiting for a run"): R13 alone, the R8 docs/protocol.md promises for it unsaid, live and offline.
- test_a_message_the_server_refuses_is_that_chats_error_and_the_counts_add_up[out-of-order-naming-*]: a rejection
  (QUOTA_EXCEEDED) of a chat's message was charged to the oldest chat waiting on the connection whatever message or
  thread it named: a server refusing the second of two parallel messages before the first one's run started had the
  first chat `error` and the refused one `incomplete` (R9, R10), a correct server failing two chats.
- test_what_the_agui_checks_load_is_loaded_before_a_chat_is_timed, and
  test_a_conforming_agui_sse_server_passes_every_chat[first-event-at-1.8s] when it is the process's first AG-UI
  test: the AG-UI schema (ag_ui.core, about a second of imports) was loaded on the first AG-UI event, inside the event
  loop, stalling the chats in flight: a server answering every chat at 1.9 s failed one with R9.
- test_a_conforming_agui_sse_server_passes_every_chat[an-event-of-exactly-4-MiB]: the SSE line limit counted the
  `data: ` before an event's JSON, so an event of exactly 4 MiB (which passes in one WebSocket frame) was an R12 and
  ended its stream (incomplete).
- tests/harness/test_checker.py::test_events_received_past_the_deadline_come_after_its_verdict: what this module's 4 MiB
  runs showed on a loaded machine: a live client that read a run's terminal event after the deadline passed the chat,
  and `check` of its recording judged it at its deadline (R10).
"""
from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from harness.checker import ChatResult
from harness.cli import main
from harness.profiles import load_profile
from harness.scenario import Scenario
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, start_proxy

from .hostile_ws import frame as server_frame
from .outside_servers import InThread, RawSseServer, RawWsServer, WsConn

pytestmark = pytest.mark.timeout(60)

USER = "u-ünïcode-☃"


# -- the wire ------------------------------------------------------------------------------------------------------

def ws_frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """One unmasked server frame (hostile_ws.frame, payload first)."""
    return server_frame(opcode, payload, fin)


def fragments(data: bytes, pieces: int, *, ping: bool = False) -> bytes:
    """One text message in `pieces` frames (text, then continuations), a WebSocket ping between two if asked."""
    size, extra = divmod(len(data), pieces)
    assert size, (len(data), pieces)
    cuts = [i * size + min(i, extra) for i in range(pieces + 1)]
    parts = [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    out = b""
    for i, part in enumerate(parts):
        out += ws_frame(part, 0x1 if i == 0 else 0x0, fin=i == len(parts) - 1)
        if ping and i < len(parts) - 1:
            out += ws_frame(b"are you there", 0x9)
    return out


@dataclass
class Raw:
    """Bytes written as they are (already WebSocket-framed)."""
    data: bytes


@dataclass
class Wait:
    seconds: float


ABORT = "abort"  # drop the TCP connection, no closing handshake

Action = dict[str, Any] | Raw | Wait | str
Encode = Callable[[dict[str, Any]], bytes]


def plain(ev: dict[str, Any]) -> bytes:
    return ws_frame(json.dumps(ev).encode())


def run_events(p: dict[str, Any], *, user: str | None = USER, tools: int = 1, chunks: int = 1,
               seq: bool = True, text: str = "part") -> list[dict[str, Any]]:
    """A clean run answering message payload `p`, as docs/protocol.md's 'Server to client' shows it."""
    run_id = p.get("run_id") or f"r-{p['message_id']}"
    steps: list[tuple[str, dict[str, Any]]] = [("agent_started", {"agent_name": "a", "message_id": p["message_id"]}),
                                               ("agent_thinking", {"thought": "hm", "step_number": 1})]
    for i in range(tools):
        call = {"tool_name": "calculator", "tool_call_id": f"c-{i}"}
        steps += [("tool_executing", {**call, "parameters": {"x": i}}),
                  ("tool_completed", {**call, "result": i, "duration_ms": 1.5, "success": True})]
    steps += [("partial_result", {"content": f"{text} {i}", "is_complete": False}) for i in range(chunks)]
    steps.append(("agent_completed", {"result": "done", "duration_ms": 3.0}))
    out = []
    for n, (kind, payload) in enumerate(steps, 1):
        ev: dict[str, Any] = {"type": kind, "run_id": run_id, "thread_id": p["thread_id"], "timestamp": 1764000000.5,
                              "payload": payload}
        if user is not None:
            ev["user_id"] = user
        if seq:
            ev["seq"] = n
        out.append(ev)
    return out


Answer = Callable[[dict[str, Any], int], list[Action]]


def clean(p: dict[str, Any], n: int) -> list[Action]:
    return list(run_events(p))


@dataclass
class Netra:
    """A netra server: a welcome, each `user_message` answered by `answer(payload, n)` (n from 1, across the server's
    connections), a JSON ping with a pong, a resume with the run's events past `last_seq` (or RESUME_UNKNOWN_RUN)."""

    answer: Answer = clean
    encode: Encode = plain
    welcome: dict[str, Any] | bytes | None = field(default_factory=lambda: {
        "type": "connection_established", "data": {"connection_id": "c-1", "user_id": USER,
                                                   "server_time": "2026-12-04T00:00:00Z"}, "timestamp": 1.5})
    invalid: Callable[[str], dict[str, Any]] = lambda why: {"type": "error_message", "error_code": "INVALID_MESSAGE",
                                                             "error_message": why}
    messages: int = 0
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # run id → its events, for a resume
    received: list[str] = field(default_factory=list)  # the client's frames' types

    async def handler(self, conn: WsConn) -> None:
        if isinstance(self.welcome, bytes):
            conn.writer.write(self.welcome)
        elif self.welcome is not None:
            conn.writer.write(self.encode(self.welcome))
        tasks = []
        while (raw := await conn.recv()) is not None:
            try:
                msg = json.loads(raw)
            except ValueError:
                msg = None
            kind = msg.get("type") if isinstance(msg, dict) else None
            self.received.append(str(kind))
            if kind not in ("ping", "pong", "resume", "user_message") or (
                    kind == "user_message" and not (msg.get("payload") or {}).get("content")):
                conn.writer.write(self.encode(self.invalid(f"cannot take {raw[:40]!r}")))
            elif kind == "ping":
                conn.writer.write(self.encode({"type": "pong", "data": {"timestamp": 1.0}}))
            elif kind == "resume":
                tasks.append(asyncio.create_task(self.resume(conn, msg["payload"])))
            elif kind == "user_message":
                self.messages += 1
                tasks.append(asyncio.create_task(self.play(conn, self.answer(msg["payload"], self.messages))))
        for task in tasks:
            task.cancel()

    async def play(self, conn: WsConn, actions: list[Action]) -> None:
        for action in actions:  # the whole run is known: a resume gets what the connection did not
            if isinstance(action, dict) and "seq" in action and "run_id" in action:
                events = self.runs.setdefault(action["run_id"], [])
                if action not in events:
                    events.append(action)
        for action in actions:
            if conn.closed:
                return
            if isinstance(action, Wait):
                await asyncio.sleep(action.seconds)  # wait-ok: the server's pace
            elif isinstance(action, Raw):
                conn.writer.write(action.data)
            elif action == ABORT:
                conn.abort()
                return
            else:
                assert isinstance(action, dict)
                conn.writer.write(self.encode(action))
            await asyncio.sleep(0)  # wait-ok: a yield, each action its own turn, so runs on one connection interleave

    async def resume(self, conn: WsConn, p: dict[str, Any]) -> None:
        events = self.runs.get(p["run_id"])
        if events is None:
            conn.writer.write(self.encode({"type": "error_message", "error_code": "RESUME_UNKNOWN_RUN",
                                           "run_id": p["run_id"], "error_message": "unknown run"}))
            return
        await self.play(conn, [e for e in events if e["seq"] > p["last_seq"]])


# -- the three judges ----------------------------------------------------------------------------------------------

Verdict = tuple[str, tuple[str, ...]]


class KeptSink(MetricsSink):
    """The proxy's verdicts, kept; `wait_for(n)` waits (bounded) until n chats were judged."""

    def __init__(self) -> None:
        super().__init__(ChatMetrics(CollectorRegistry()), "up", "live")
        self.results: list[ChatResult] = []
        self.cond = threading.Condition()

    def chat_finished(self, result: ChatResult) -> None:
        with self.cond:
            self.results.append(result)
            self.cond.notify_all()
        super().chat_finished(result)

    def wait_for(self, n: int, timeout: float) -> list[ChatResult]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.results) >= n, timeout)
            return list(self.results)


def chat_verdicts(doc: dict[str, Any]) -> tuple[list[Verdict], dict[str, Any]]:
    (sc,) = doc["scenarios"]
    stats = sc["stats"]
    # the counts add up: every chat has one outcome, and the rules counted are the chats' plus the connections' own
    assert stats["chats"] == sum(stats["outcomes"].values()) == len(sc["chats"]), stats
    counted: dict[str, int] = dict(stats["connection_violations"])
    for chat in sc["chats"]:
        for v in chat["violations"]:
            counted[v["rule"]] = counted.get(v["rule"], 0) + 1
    assert counted == stats["violations"], (counted, stats["violations"])
    return sorted((c["outcome"], tuple(sorted({v["rule"] for v in c["violations"]}))) for c in sc["chats"]), stats


def judge(tmp_path: Path, make: Callable[[], Netra], scenario: dict[str, Any], *,
          proxy: bool = True) -> dict[str, list[Verdict]]:
    """Each chat's (outcome, rules) by `chatprobe run` (CLI, recorded), `chatprobe check` of that recording and the
    proxy (in front of a fresh server, a `chatprobe run` through it); `run` and `check` exit alike."""
    sc = {"name": "independent", "users": 1, "connect_timeout": "3s", **scenario}
    sc["expect"] = {"deadline": "4s", "settle": "0.1s", **scenario.get("expect", {})}
    path = tmp_path / "scenario.yaml"
    path.write_text(json.dumps(sc))
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    with InThread(RawWsServer(make().handler)) as ws:
        code = main(["run", "--target", ws.url, "--auth", "none", str(path), "--record", str(rec),
                     "--json", str(live), "-q"])
    assert code in (0, 1), code
    code2 = main(["check", str(rec), "--scenario", str(path), "--json", str(offline), "-q"])
    assert code2 == code, (code, code2)
    out: dict[str, list[Verdict]] = {}
    out["run"], stats = chat_verdicts(json.loads(live.read_text()))
    out["check"], _ = chat_verdicts(json.loads(offline.read_text()))
    if proxy:
        out["proxy"] = through_proxy(tmp_path, make, path, stats["chats"])
    return out


def through_proxy(tmp_path: Path, make: Callable[[], Netra], path: Path, chats: int) -> list[Verdict]:
    profile = load_profile("netra")
    sc = Scenario.model_validate(json.loads(path.read_text()))
    kept = KeptSink()
    hosted = InThread(RawWsServer(make().handler))
    with hosted as ws:
        live = LiveChats(profile, kept, sc.expectations(profile), "live", sc.expect.settle)
        front = asyncio.run_coroutine_threadsafe(start_proxy(Proxy(ws.url.rsplit("/", 1)[0], live), "127.0.0.1", 0),
                                                 hosted.loop).result(10)
        # the user behind the proxy waits a second longer than the proxy's deadline: one who closes the tab before
        # the proxy's deadline leaves the chat (abandoned, judged on what arrived), which is not what is tested here
        player = json.loads(path.read_text())
        player["expect"]["deadline"] = sc.expect.deadline + 1
        played = tmp_path / "player.yaml"
        played.write_text(json.dumps(player))
        try:
            port = front.sockets[0].getsockname()[1]
            code = main(["run", "--target", f"ws://127.0.0.1:{port}/ws", "--auth", "none", str(played), "-q",
                         "--json", str(tmp_path / "played.json")])
            assert code in (0, 1), code
            results = kept.wait_for(chats, 10)
        finally:
            hosted.loop.call_soon_threadsafe(front.close)
    return sorted((r.outcome.value, tuple(sorted(r.rule_counts()))) for r in results)


PASS: Verdict = ("passed", ())


# -- conforming servers --------------------------------------------------------------------------------------------

def reordered(ev: dict[str, Any]) -> bytes:
    """`type` last, unknown fields at the root and under `payload`, pretty-printed with every JSON blank (space, tab,
    CR, LF) around it, non-ASCII escaped as \\uXXXX."""
    body = {k: v for k, v in ev.items() if k != "type"}
    body["x-trace"] = {"span": [1, 2.5e3, None, True], "note": "ünknown"}
    if isinstance(body.get("payload"), dict):
        body["payload"] = {**body["payload"], "x_unknown": "☃"}
    body["type"] = ev["type"]
    text = json.dumps(body, indent="\t", ensure_ascii=True).replace("\n", "\r\n")
    return ws_frame((" \n\t" + text + "\r\n ").encode())


def in_pieces(ev: dict[str, Any]) -> bytes:
    """Each message in 5 fragments (fewer when short) with a WebSocket ping between two of them (RFC 6455 5.4)."""
    data = json.dumps(ev, ensure_ascii=False).encode()
    return fragments(data, min(5, len(data)), ping=True)


def chatty(p: dict[str, Any], n: int) -> list[Action]:
    """A run with the server's own JSON ping, a heartbeat and an ack between its events."""
    events = run_events(p, chunks=3)
    extras: list[Action] = [{"type": "ping"}, {"type": "heartbeat", "data": {"t": 1}}, {"type": "ack"},
                            {"type": "system_message", "data": {"event": "maintenance_notice"}},
                            {"type": "agent_update", "data": {"status": "busy"}}]
    out: list[Action] = []
    for i, ev in enumerate(events):
        out.append(ev)
        if i < len(extras):
            out.append(extras[i])
    return out


def parallel_tools(p: dict[str, Any], n: int) -> list[Action]:
    """Three calls in flight at once, closed in reverse order; two of them named by tool only (no tool_call_id)."""
    run = run_events(p, tools=0, chunks=1)
    base = {k: v for k, v in run[0].items() if k not in ("type", "payload", "seq")}
    calls = [{"tool_name": "search", "tool_call_id": "c-a"}, {"tool_name": "calculator"}, {"tool_name": "weather"}]
    middle = ([{**base, "type": "tool_executing", "payload": {**c, "parameters": {}}} for c in calls]
              + [{**base, "type": "tool_completed", "payload": {**c, "result": "ok"}} for c in reversed(calls)])
    events = run[:2] + middle + run[2:]
    for i, ev in enumerate(events, 1):
        ev["seq"] = i
    return list(events)


def first_event_at(delay: float) -> Answer:
    def answer(p: dict[str, Any], n: int) -> list[Action]:
        return [Wait(delay), *run_events(p)]
    return answer


EXACTLY_4MIB = 4 * 1024 * 1024


def at_the_limits(p: dict[str, Any], n: int) -> list[Action]:
    """A partial_result frame of exactly 4 MiB, a message in exactly 4,096 fragments, ids of exactly 1,024 characters
    (one of them 1,024 `☃`, 3,072 bytes), a timestamp string of exactly 64 characters."""
    events = run_events(p, chunks=2)
    tool_id, tool_name = "i" * 1024, "☃" * 1024
    for ev in events:
        if ev["type"].startswith("tool_"):
            ev["payload"].update(tool_call_id=tool_id, tool_name=tool_name)
    events[1]["timestamp"] = "2026-12-04T00:00:00." + "0" * 43 + "Z"
    assert len(events[1]["timestamp"]) == 64
    out: list[Action] = []
    for ev in events:
        if ev["type"] == "partial_result" and ev["payload"]["content"] == "part 0":
            ev["payload"]["content"] = ""
            pad = EXACTLY_4MIB - len(json.dumps(ev).encode())
            ev["payload"]["content"] = "x" * pad
            data = json.dumps(ev).encode()
            assert len(data) == EXACTLY_4MIB
            out.append(Raw(ws_frame(data)))
        elif ev["type"] == "partial_result":
            ev["payload"]["content"] = "y" * 10_000
            out.append(Raw(fragments(json.dumps(ev).encode(), 4096)))
        else:
            out.append(ev)
    return out


def sparse(p: dict[str, Any], n: int) -> list[Action]:
    """Every optional field left out: no seq, no timestamp, no user id, no thread id, no tool_call_id, no payload
    details; the oldest shape (run_id under `payload`, `sender: null`), `stream_chunk` and `agent_response`."""
    run_id = f"r-{p['message_id']}"
    kinds = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "stream_chunk", "agent_response"]
    out: list[Action] = []
    for kind in kinds:
        payload: dict[str, Any] = {"run_id": run_id}
        if kind.startswith("tool_"):
            payload["tool_name"] = "calculator"
        if kind == "agent_started":
            payload["message_id"] = p["message_id"]
        if kind == "stream_chunk":
            payload["content"] = "x"
        out.append({"type": kind, "payload": payload, "sender": None})
    return out


def flat_newest(p: dict[str, Any], n: int) -> list[Action]:
    """The newest shape: every field flat at the root; the agent bridge's ISO timestamp, details under `data`."""
    out: list[Action] = []
    for i, ev in enumerate(run_events(p)):
        payload = ev.pop("payload")
        if i % 2:
            ev.update(payload)
        else:
            ev["data"] = payload
            ev["timestamp"] = "2026-12-04T12:00:00.123+00:00"
        out.append(ev)
    return out


def recoverable_then_done(p: dict[str, Any], n: int) -> list[Action]:
    """A recoverable error in the middle, as an `error_message` frame naming the run, then the run completes."""
    events = run_events(p)
    err = {"type": "error_message", "run_id": events[0]["run_id"], "thread_id": p["thread_id"], "user_id": USER,
           "error_code": "TOOL_FAILED", "error_message": "retrying", "is_recoverable": True}
    events.insert(3, err)
    for i, ev in enumerate(events, 1):
        ev["seq"] = i
    return list(events)


def drops_mid_run(p: dict[str, Any], n: int) -> list[Action]:
    """The first run: three events, then the TCP connection dropped (a deploy); the resume replays the rest."""
    events = run_events(p, chunks=2)
    if n == 1:
        return [*events[:3], Wait(0.05), ABORT, *events[3:]]  # the rest goes to the resume
    return list(events)


def welcome_variant() -> dict[str, Any]:
    return {"type": "system_message", "data": {"event": "connection_established", "connection_id": "c-9"}}


CONFORMING: dict[str, tuple[Callable[[], Netra], dict[str, Any], int]] = {
    "reordered-fields-extras-blanks-escapes": (lambda: Netra(encode=reordered), {"chats_per_user": 2}, 2),
    "fragments-with-pings-between": (lambda: Netra(encode=in_pieces), {"chats_per_user": 2}, 2),
    "server-pings-heartbeats-acks-mid-run": (lambda: Netra(chatty), {"chats_per_user": 2}, 2),
    "three-chats-interleaved-on-one-connection": (
        lambda: Netra(chatty), {"chats_per_user": 6, "parallel_chats": 3, "client_run_id": True}, 6),
    "parallel-tool-calls-closed-in-reverse": (lambda: Netra(parallel_tools), {"chats_per_user": 2,
                                                                              "parallel_chats": 2}, 2),
    "first-event-at-1.9s": (lambda: Netra(first_event_at(1.9)), {"chats_per_user": 1}, 1),
    "sizes-at-the-limits": (lambda: Netra(at_the_limits), {"chats_per_user": 1}, 1),
    "optional-fields-omitted-oldest-shape": (lambda: Netra(sparse, welcome=welcome_variant()),
                                             {"chats_per_user": 2, "expect": {"required": [
                                                 "agent_started", "agent_thinking", "tool_executing",
                                                 "tool_completed", "agent_completed"]}}, 2),
    "newest-and-bridge-shapes": (lambda: Netra(flat_newest), {"chats_per_user": 2}, 2),
    "recoverable-error-message-then-completion": (lambda: Netra(recoverable_then_done), {"chats_per_user": 2}, 2),
    "several-users-at-once": (lambda: Netra(chatty), {"users": 3, "chats_per_user": 2}, 6),
    "drops-mid-run-and-resumes": (lambda: Netra(drops_mid_run), {"chats_per_user": 2, "client_run_id": True}, 2),
}


def nested_seq_and_ids(p: dict[str, Any], n: int) -> list[Action]:
    """`seq`, `run_id` and `user_id` under `data` (fields are looked up at the root, then `payload`, then `data`); an
    int millisecond timestamp; a `null` seq on a heartbeat; the run's start naming its thread only (no message id)."""
    out: list[Action] = []
    for ev in run_events(p):
        ev["payload"].pop("message_id", None)
        data = {**ev.pop("payload"), "seq": ev.pop("seq"), "run_id": ev.pop("run_id"), "user_id": ev.pop("user_id")}
        out += [{**ev, "timestamp": 1764000000123, "data": data}, {"type": "heartbeat", "seq": None}]
    return out


def emoji_and_escapes(ev: dict[str, Any]) -> bytes:
    """Non-BMP characters as JSON surrogate-pair escapes, `/` escaped as `\\/`."""
    return ws_frame(json.dumps(ev, ensure_ascii=True).replace("/", "\\/").encode())


def emoji_run(p: dict[str, Any], n: int) -> list[Action]:
    events = run_events(p, chunks=2)
    for ev in events:
        if ev["type"] == "partial_result":
            ev["payload"]["content"] = "😀 a/b \u2028 \x00 ☃"
    return list(events)


CONFORMING.update({
    "fields-under-data-thread-only-start": (lambda: Netra(nested_seq_and_ids), {"chats_per_user": 4,
                                                                                "parallel_chats": 2}, 4),
    "surrogate-pair-escapes": (lambda: Netra(emoji_run, encode=emoji_and_escapes), {"chats_per_user": 1}, 1),
})


# -- faulty servers: one fault each --------------------------------------------------------------------------------

def renumber(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, ev in enumerate(events, 1):
        ev["seq"] = i
    return events


def fault(edit: Callable[[list[dict[str, Any]], dict[str, Any]], list[Action]]) -> Callable[[], Netra]:
    """A server whose every run is `edit`ed from a clean one."""
    return lambda: Netra(lambda p, n: edit(run_events(p), p))


def without(kind: str) -> Callable[[], Netra]:
    return fault(lambda evs, p: list(renumber([e for e in evs if e["type"] != kind])))


def swapped(i: int, j: int) -> Callable[[], Netra]:
    def edit(evs: list[dict[str, Any]], p: dict[str, Any]) -> list[Action]:
        evs[i], evs[j] = evs[j], evs[i]
        return list(renumber(evs))
    return fault(edit)


def patched(index: int, **changes: Any) -> Callable[[], Netra]:
    def edit(evs: list[dict[str, Any]], p: dict[str, Any]) -> list[Action]:
        evs[index].update(changes)
        return list(evs)
    return fault(edit)


def inserted(index: int, make: Callable[[list[dict[str, Any]], dict[str, Any]], Action]) -> Callable[[], Netra]:
    def edit(evs: list[dict[str, Any]], p: dict[str, Any]) -> list[Action]:
        out: list[Action] = list(evs)
        out.insert(index, make(evs, p))
        return out
    return fault(edit)


def fatal_error(evs: list[dict[str, Any]], p: dict[str, Any]) -> dict[str, Any]:
    return {**{k: v for k, v in evs[0].items() if k != "payload"}, "type": "agent_error", "seq": 3,
            "payload": {"error_message": "boom", "error_type": "x", "is_recoverable": False, "severity": "critical"}}


def error_then_more(evs: list[dict[str, Any]], p: dict[str, Any]) -> list[Action]:
    return [evs[0], evs[1], fatal_error(evs, p), *renumber_from(evs[2:], 4)]


def renumber_from(evs: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    for i, ev in enumerate(evs, start):
        ev["seq"] = i
    return evs


def other_users_event(evs: list[dict[str, Any]], p: dict[str, Any]) -> dict[str, Any]:
    return {"type": "partial_result", "run_id": "r-someone-else", "thread_id": "t-else", "user_id": "u-2", "seq": 1,
            "payload": {"content": "another user's words"}}


def frame_action(data: bytes) -> Callable[[list[dict[str, Any]], dict[str, Any]], Action]:
    return lambda evs, p: Raw(data)


def oversize(evs: list[dict[str, Any]], p: dict[str, Any]) -> Action:
    ev = {**evs[1], "seq": 99, "payload": {"thought": ""}}
    ev["payload"]["thought"] = "x" * (EXACTLY_4MIB + 1 - len(json.dumps(ev).encode()))
    data = json.dumps(ev).encode()
    assert len(data) == EXACTLY_4MIB + 1
    return Raw(ws_frame(data))


def too_many_fragments(evs: list[dict[str, Any]], p: dict[str, Any]) -> Action:
    ev = {**evs[1], "seq": 99, "payload": {"thought": "y" * 10_000}}
    return Raw(fragments(json.dumps(ev).encode(), 4097))


def close_mid_chat(evs: list[dict[str, Any]], p: dict[str, Any]) -> list[Action]:
    return [*evs[:3], Raw(ws_frame(struct.pack("!H", 1011) + b"crashed", 0x8)), ABORT]


def late_first(delay: float) -> Callable[[], Netra]:
    return lambda: Netra(lambda p, n: [Wait(delay), *run_events(p)])


def stalls(evs: list[dict[str, Any]], p: dict[str, Any]) -> list[Action]:
    return [*evs[:3], Wait(0.6), *evs[3:]]


def never_ends(evs: list[dict[str, Any]], p: dict[str, Any]) -> list[Action]:
    return list(evs[:-1])


def binary(ev: dict[str, Any]) -> bytes:
    return ws_frame(json.dumps(ev).encode(), 0x2) if ev.get("type") == "partial_result" else plain(ev)


def raw_text(data: bytes) -> Callable[[list[dict[str, Any]], dict[str, Any]], Action]:
    return lambda evs, p: Raw(ws_frame(data))


# name: (server, scenario expect, the culprit chat's (outcome, rules))
FAULTY: dict[str, tuple[Callable[[], Netra], dict[str, Any], Verdict]] = {
    "R1-started-not-first": (swapped(0, 1), {}, ("failed", ("R1",))),
    "R1-second-started": (inserted(3, lambda evs, p: {**evs[0], "seq": 4}), {}, ("failed", ("R1", "R7"))),
    "R2-missing-partial-result": (without("partial_result"), {"streaming": True}, ("failed", ("R2",))),
    "R3-two-completions": (inserted(len(run_events({"message_id": "m", "thread_id": "t"})),
                                    lambda evs, p: {**evs[-1], "seq": len(evs) + 1}), {}, ("failed", ("R3",))),
    "R4-event-after-completion": (inserted(99, lambda evs, p: {**evs[-2], "seq": len(evs) + 1}), {},
                                  ("failed", ("R4",))),
    "R4-fatal-error-then-more-events": (fault(error_then_more), {}, ("failed", ("R13", "R3", "R4"))),
    "R5-tool-never-completed": (without("tool_completed"), {"required": ["agent_started", "agent_completed"]},
                                ("failed", ("R5",))),
    "R5-completion-of-no-call": (patched(3, payload={"tool_name": "calculator", "tool_call_id": "c-other"}), {},
                                 ("failed", ("R5",))),
    "R6-tool-before-thinking": (swapped(1, 2), {}, ("failed", ("R6",))),
    "R7-duplicate-seq": (inserted(3, lambda evs, p: dict(evs[2])), {}, ("failed", ("R7",))),
    "R7-gap": (patched(4, seq=9), {}, ("failed", ("R7",))),
    "R8-another-users-event": (inserted(2, other_users_event), {}, ("failed", ("R8",))),
    "R8-another-user-in-the-run": (patched(4, user_id="u-2"), {}, ("failed", ("R8",))),
    "R8-another-thread-in-the-run": (patched(2, thread_id="t-other"), {}, ("failed", ("R8",))),
    "R8-event-naming-no-run": (inserted(2, lambda evs, p: {k: v for k, v in {**evs[1], "seq": 3}.items()
                                                           if k != "run_id"}), {}, ("failed", ("R8",))),
    "R9-first-event-at-2.1s": (late_first(2.1), {}, ("failed", ("R9",))),
    "R10-no-terminal": (fault(never_ends), {"deadline": "0.8s"}, ("incomplete", ("R10",))),
    "R11-stall": (fault(stalls), {"stall_limit": "0.3s"}, ("failed", ("R11",))),
    "R12-malformed-json": (inserted(2, raw_text(b'{"type": "agent_thinking", ')), {}, ("failed", ("R12",))),
    "R12-not-an-object": (inserted(2, raw_text(b'["agent_thinking"]')), {}, ("failed", ("R12",))),
    "R12-unknown-type": (inserted(2, lambda evs, p: {**evs[1], "type": "agent_reflecting"}), {},
                         ("failed", ("R12",))),
    "R12-bad-utf8": (inserted(2, raw_text(b'{"type": "heartbeat", "x": "\xff\xfe"}')), {},
                     ("failed", ("R12",))),
    # the partial_result in a binary frame is no event: its seq is missing (R7)
    "R12-binary-frame": (lambda: Netra(encode=binary), {}, ("failed", ("R12", "R7"))),
    "R12-oversize-frame": (inserted(2, lambda evs, p: oversize(evs, p)), {}, ("failed", ("R12",))),
    "R12-4097-fragments": (inserted(2, too_many_fragments), {}, ("failed", ("R12",))),
    "R12-id-of-1025": (patched(2, payload={"tool_name": "calculator", "tool_call_id": "i" * 1025}), {},
                       ("failed", ("R12", "R5"))),
    "R12-timestamp-of-65": (patched(1, timestamp="2" * 65), {}, ("failed", ("R12",))),
    "R12-seq-1.0": (patched(1, seq=2.0), {}, ("failed", ("R12",))),
    "R13-unexpected-fatal-error": (fault(lambda evs, p: [evs[0], evs[1], fatal_error(evs, p)]), {},
                                   ("failed", ("R13",))),
    "lost-connection-mid-chat": (fault(close_mid_chat), {"deadline": "1s"}, ("incomplete", ())),
}


# -- errors: expected ones, and frames the server must refuse ------------------------------------------------------

def with_directives(p: dict[str, Any], n: int) -> list[Action]:
    """agentsim's directives, as the errors scenario uses them: `#fail-tool` a recoverable error (as an `error`
    frame, details under `data`) and the run goes on; `#fail-agent` a fatal one as the very first event (`error_event`,
    details under `payload`), which ends the run."""
    events = run_events(p)
    head = {k: v for k, v in events[0].items() if k not in ("type", "payload", "seq")}
    if "#fail-agent" in p["content"]:
        return [{**head, "type": "error_event", "seq": 1,
                 "payload": {"error_message": "the agent failed", "is_recoverable": False}}]
    if "#fail-tool" in p["content"]:
        events.insert(4, {**head, "type": "error", "data": {"error_message": "tool failed", "is_recoverable": True}})
        renumber(events)  # type: ignore[arg-type]
    return list(events)


def invalid_under_payload(why: str) -> dict[str, Any]:
    return {"type": "error_message", "payload": {"error_code": "INVALID_MESSAGE", "error_message": why},
            "timestamp": "2026-12-04T00:00:00Z"}


@pytest.mark.parametrize("invalid", ["at-the-root", "under-payload"])
def test_the_errors_scenario_passes_against_a_server_written_from_the_docs(tmp_path, invalid):
    # the built-in `errors` scenario, named, runs against any target: expected errors, and the server's refusals of
    # frames that are not JSON, have no type, an empty message or an unknown type, the connection staying open
    def make() -> Netra:
        server = Netra(with_directives)
        if invalid == "under-payload":
            server.invalid = invalid_under_payload
        return server
    live, rec = tmp_path / "live.json", tmp_path / "rec"
    with InThread(RawWsServer(make().handler)) as ws:
        code = main(["run", "errors", "--target", ws.url, "--auth", "none", "--record", str(rec), "--json", str(live),
                     "-q"])
    verdicts, stats = chat_verdicts(json.loads(live.read_text()))
    assert (code, verdicts) == (0, [PASS] * 18), (code, verdicts, stats)
    offline = tmp_path / "offline.json"
    assert main(["check", str(rec), "--scenario", "errors", "--json", str(offline), "-q"]) == 0
    assert chat_verdicts(json.loads(offline.read_text()))[0] == verdicts


ERROR_FAULTS: dict[str, tuple[Answer, Callable[[str], dict[str, Any]] | None, str, Verdict]] = {
    # the server's fault, the step's error expected or the frame sent raw, the verdict of that step's chat
    "a-fatal-error-where-a-recoverable-one-is-expected": (
        lambda p, n: with_directives({**p, "content": "#fail-agent"}, n), None,
        '{"chat": {"message": "#fail-tool", "expect_error": "recoverable"}}', ("failed", ("R13",))),
    "no-error-where-one-is-expected": (clean, None, '{"chat": {"message": "#fail-tool", "expect_error": "fatal"}}',
                                       ("failed", ("R13", "R2"))),
    "an-invalid-frame-answered-with-a-run": (
        clean, lambda why: {"type": "agent_started", "run_id": "r-x", "user_id": USER, "seq": 1},
        '{"send_raw": "{\\"type\\": \\"what\\"}"}', ("failed", ("R13", "R8"))),
}


@pytest.mark.parametrize("name", list(ERROR_FAULTS))
def test_a_server_that_handles_errors_wrong_is_r13(tmp_path, name):
    answer, invalid, step, culprit = ERROR_FAULTS[name]

    def make() -> Netra:
        server = Netra(answer)
        if invalid is not None:
            server.invalid = invalid
        return server
    # (the proxy is left out: it watches a user's own client, which plays no scenario's steps)
    got = judge(tmp_path, make, {"steps": [json.loads(step)], "expect": {"deadline": "1s"}}, proxy=False)
    assert got == {way: [culprit] for way in ("run", "check")}, got


# -- timing at the limits, the client's side of the keepalive, rejections -----------------------------------------

def near_limits(p: dict[str, Any], n: int) -> list[Action]:
    """Gaps of 0.4 s under a 0.6 s stall limit, the terminal event at about 1.2 s of a 1.6 s deadline."""
    events = run_events(p)
    return [events[0], Wait(0.4), events[1], Wait(0.4), *events[2:-1], Wait(0.4), events[-1]]


CONFORMING.update({
    "stalls-and-deadline-just-within": (lambda: Netra(near_limits),
                                        {"chats_per_user": 1, "expect": {"stall_limit": "0.6s", "deadline": "1.6s"}}, 1),
})


def test_the_client_answers_the_servers_json_ping_with_a_pong(tmp_path):
    server = Netra(chatty)
    with InThread(RawWsServer(server.handler)) as ws:
        code = main(["run", "--target", ws.url, "--auth", "none", "basic", "-q"])
    assert code == 0
    assert "pong" in server.received, server.received


def test_credentials_refused_with_auth_failed_exit_2(tmp_path):
    # docs/protocol.md: AUTH_FAILED then close 1008 is an `auth_failed` connection; README: exit 2 when the server
    # rejected the credentials of every chat
    refusal = plain({"type": "error_message", "error_code": "AUTH_FAILED", "error_message": "bad token"}) + ws_frame(
        struct.pack("!H", 1008) + b"auth", 0x8)
    out = tmp_path / "out.json"
    with InThread(RawWsServer(Netra(welcome=refusal).handler)) as ws:
        code = main(["run", "--target", ws.url, "--auth", "none", "basic", "-q", "--json", str(out)])
    (sc,) = json.loads(out.read_text())["scenarios"]
    assert code == 2, code
    assert [(c["outcome"], c["error_kind"]) for c in sc["chats"]] == [("error", "auth_failed")], sc["chats"]


def quota(rejected: int, *, naming: str | None) -> Answer:
    """Rejects the `rejected`th message at once (QUOTA_EXCEEDED, naming its message id or thread id, or nothing);
    every other one gets its run 0.05 s later (so a rejection of a later message comes before an earlier one's run)."""
    def answer(p: dict[str, Any], n: int) -> list[Action]:
        if n == rejected:
            frame = {"type": "error_message", "error_code": "QUOTA_EXCEEDED", "error_message": "one run at a time"}
            if naming is not None:
                frame["payload"] = {naming: p[naming]}
            return [frame]
        return [Wait(0.05), *run_events(p)]
    return answer


@pytest.mark.parametrize("server", ["out-of-order-naming-the-message", "out-of-order-naming-the-thread",
                                    "in-order-naming-nothing"])
def test_a_message_the_server_refuses_is_that_chats_error_and_the_counts_add_up(tmp_path, server):
    # docs/protocol.md: a connection-level error answering a message is that chat's outcome `error` (no run started).
    # With two chats waiting, a rejection that names the message (or thread) it answers is that chat's: it was charged
    # to the oldest waiting chat whatever it named, so the other chat's run, coming later, found its chat ended and
    # the chat actually rejected waited for its deadline (incomplete, R9 + R10). One naming nothing is the oldest's.
    answer = {"out-of-order-naming-the-message": quota(2, naming="message_id"),
              "out-of-order-naming-the-thread": quota(2, naming="thread_id"),
              "in-order-naming-nothing": quota(1, naming=None)}[server]
    got = judge(tmp_path, lambda: Netra(answer), {"chats_per_user": 2, "parallel_chats": 2}, proxy=False)
    assert got == {way: [("error", ()), PASS] for way in ("run", "check")}, got


@dataclass
class ReplaysTooMuch(Netra):
    """Answers a resume with the run from the event the client said it had (`seq >= last_seq`): one duplicate."""

    async def resume(self, conn: WsConn, p: dict[str, Any]) -> None:
        await self.play(conn, [e for e in self.runs[p["run_id"]] if e["seq"] >= p["last_seq"]])


FAULTY["R7-resume-replays-an-event-the-client-had"] = (lambda: ReplaysTooMuch(drops_mid_run), {}, ("failed", ("R7",)))


# -- AG-UI over HTTP POST + Server-Sent Events ---------------------------------------------------------------------

def agui_run(request: dict[str, Any]) -> list[dict[str, Any]]:
    """A run as the AG-UI spec shows one: a step, reasoning, two tool calls in flight at once (one by the chunk
    shorthand), a text message by START/CONTENT/END and one by chunks."""
    thread, run = request["threadId"], request["runId"]
    return [
        {"type": "RUN_STARTED", "threadId": thread, "runId": run, "timestamp": 1764000000000},
        {"type": "STEP_STARTED", "stepName": "plan"},
        {"type": "REASONING_START", "messageId": "r1"},
        {"type": "REASONING_MESSAGE_START", "messageId": "r1", "role": "reasoning"},
        {"type": "REASONING_MESSAGE_CONTENT", "messageId": "r1", "delta": "thinking…"},
        {"type": "REASONING_MESSAGE_END", "messageId": "r1"},
        {"type": "REASONING_END", "messageId": "r1"},
        {"type": "STEP_FINISHED", "stepName": "plan"},
        {"type": "TOOL_CALL_START", "toolCallId": "t1", "toolCallName": "search", "parentMessageId": "m1"},
        {"type": "TOOL_CALL_START", "toolCallId": "t2", "toolCallName": "calc"},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "t2", "delta": "{\"x\": "},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "t1", "delta": "{\"q\": \"☃\"}"},
        {"type": "TOOL_CALL_ARGS", "toolCallId": "t2", "delta": "1}"},
        {"type": "TOOL_CALL_END", "toolCallId": "t2"},
        {"type": "TOOL_CALL_END", "toolCallId": "t1"},
        {"type": "TOOL_CALL_RESULT", "messageId": "res2", "toolCallId": "t2", "content": "1", "role": "tool"},
        {"type": "TOOL_CALL_RESULT", "messageId": "res1", "toolCallId": "t1", "content": "snow", "role": "tool"},
        {"type": "TEXT_MESSAGE_START", "messageId": "m1", "role": "assistant"},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "Hello 😀"},
        {"type": "TEXT_MESSAGE_END", "messageId": "m1"},
        {"type": "TEXT_MESSAGE_CHUNK", "messageId": "m2", "role": "assistant", "delta": "and "},
        {"type": "TEXT_MESSAGE_CHUNK", "delta": "more"},
        {"type": "CUSTOM", "name": "x-vendor", "value": {"any": [1, None]}},
        {"type": "RUN_FINISHED", "threadId": thread, "runId": run, "result": None},
    ]


def sse_varied(events: list[dict[str, Any]]) -> list[bytes]:
    """Every way the SSE specification allows: a BOM, CRLF, LF and CR line ends, comments, `event:`, `id:`, `retry:`,
    `data:` without its space, an event's JSON split over several `data:` lines, pieces cut inside a line and inside a
    UTF-8 character."""
    out = "\ufeff: hello\r\nretry: 1000\r\n\r\n"
    ends = ["\n", "\r\n", "\r"]
    for i, ev in enumerate(events):
        end = ends[i % 3]
        text = json.dumps(ev, ensure_ascii=False, indent=1)
        if i % 4 == 0:
            out += f"event: {ev['type']}{end}id: {i}{end}"
        if i % 2:
            out += "".join(f"data:{line}{end}" for line in text.split("\n"))
        else:
            out += f"data: {json.dumps(ev, ensure_ascii=False)}{end}"
        out += end
        if i % 5 == 0:
            out += f": keep-alive{end}{end}"
    data = out.encode()
    return [data[i:i + 37] for i in range(0, len(data), 37)]  # 37 bytes cut through lines and characters


def sse_plain(events: list[Any]) -> list[bytes]:
    return [(f"data: {e}\n\n" if isinstance(e, str) else f"data: {json.dumps(e)}\n\n").encode() for e in events]


def sse_script(edit: Callable[[list[dict[str, Any]]], list[Any]] = lambda evs: evs,
               encode: Callable[[list[Any]], list[bytes]] = sse_plain, first_after: float = 0.0) -> Any:
    async def script(request: dict[str, Any]) -> Any:
        if first_after:
            await asyncio.sleep(first_after)  # wait-ok: the server's pace
        for piece in encode(edit(agui_run(request))):
            yield piece
            await asyncio.sleep(0)  # wait-ok: a yield, each piece in a write of its own
    return script


def sse_judge(tmp_path: Path, script: Any, framing: str = "chunked",
              expect: dict[str, Any] | None = None) -> dict[str, list[Verdict]]:
    sc = {"name": "agui", "users": 2, "chats_per_user": 2, "connect_timeout": "3s",
          "expect": {"deadline": "4s", "settle": "0.1s", "streaming": True, **(expect or {})}}
    path = tmp_path / "agui.yaml"
    path.write_text(json.dumps(sc))
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    with InThread(RawSseServer(script, framing)) as server:
        code = main(["run", "--profile", "ag-ui", "--target", server.url, "--auth", "none", str(path), "--record",
                     str(rec), "--json", str(live), "-q"])
    assert code in (0, 1), code
    code2 = main(["check", str(rec), "--profile", "ag-ui", "--scenario", str(path), "--json", str(offline), "-q"])
    assert code2 == code, (code, code2)
    return {"run": chat_verdicts(json.loads(live.read_text()))[0],
            "check": chat_verdicts(json.loads(offline.read_text()))[0]}


AGUI_CONFORMING = {
    "every-sse-form-chunked": (sse_script(encode=sse_varied), "chunked", {}),
    "every-sse-form-content-length": (sse_script(encode=sse_varied), "length", {}),
    "every-sse-form-http-1.0-until-close": (sse_script(encode=sse_varied), "close", {}),
    # (each SSE chat's time counts its POST's connection from the chat's send, and the server shares this process: on a
    # loaded machine that is up to 0.2 s; 1.8 s keeps it inside the 2 s limit)
    "first-event-at-1.8s": (sse_script(first_after=1.8), "chunked", {}),
}


def agui_drop(kind: str) -> Callable[[list[dict[str, Any]]], list[Any]]:
    return lambda evs: [e for e in evs if e["type"] != kind]


def agui_insert(at: int, *extra: Any) -> Callable[[list[dict[str, Any]]], list[Any]]:
    return lambda evs: [*evs[:at], *extra, *evs[at:]]


AGUI_FAULTY: dict[str, tuple[Any, Verdict]] = {
    "R1-step-before-run-started": (sse_script(lambda evs: [evs[1], evs[0], *evs[2:]]), ("failed", ("R1",))),
    "R2-no-text": (sse_script(lambda evs: [e for e in evs if not e["type"].startswith("TEXT_")]), ("failed", ("R2",))),
    "R3-two-finishes": (sse_script(lambda evs: [*evs, evs[-1]]), ("failed", ("R3",))),
    "R4-event-after-run-error": (sse_script(lambda evs: [*evs[:5], {"type": "RUN_ERROR", "message": "boom"},
                                                         *evs[5:7]]), ("failed", ("R13", "R4"))),
    "R5-content-of-no-message": (sse_script(agui_insert(3, {"type": "TEXT_MESSAGE_CONTENT", "messageId": "zz",
                                                            "delta": "x"})), ("failed", ("R5",))),
    "R5-tool-call-never-ended": (sse_script(agui_drop("TOOL_CALL_END")), ("failed", ("R5",))),
    "R8-another-thread": (sse_script(lambda evs: [{**evs[0], "threadId": "t-someone-else"}, *evs[1:]]),
                          ("failed", ("R8",))),
    "R9-first-event-at-2.1s": (sse_script(first_after=2.1), ("failed", ("R9",))),
    "R12-malformed-json": (sse_script(encode=lambda evs: sse_plain([*evs[:3], '{"type": "STEP_', *evs[3:]])),
                           ("failed", ("R12",))),
    "R12-unknown-type": (sse_script(agui_insert(2, {"type": "MADE_UP_EVENT"})), ("failed", ("R12",))),
    "stream-cut-before-the-end": (sse_script(lambda evs: evs[:-1]), ("incomplete", ())),
}


def test_what_the_agui_checks_load_is_loaded_before_a_chat_is_timed():
    # The AG-UI schema's models (ag_ui.core: about a second of imports) were loaded on the first AG-UI event, inside
    # the event loop while other chats were in flight: their events waited, and a server answering every chat at 1.9 s
    # failed the chats in flight then (R9), at the start of every run. A fresh process, as `chatprobe run` is: once a
    # connection's router exists (before its first chat is sent), the imports are done.
    probe = ("import sys\n"
             "from harness.checker import ConnectionChecker\n"
             "from harness.flow import FrameRouter\n"
             "from harness.profiles import load_profile\n"
             "from harness.sinks import Sink\n"
             "profile = load_profile('ag-ui')\n"
             "before = 'ag_ui.core' in sys.modules\n"
             "FrameRouter(profile, ConnectionChecker(), Sink(), 'probe')\n"
             "print(before, 'ag_ui.core' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.stdout.split() == ["False", "True"], (done.stdout, done.stderr[-2000:])


def four_mib_data(evs: list[dict[str, Any]]) -> list[Any]:
    """A TEXT_MESSAGE_CONTENT whose JSON (the event's data) is exactly 4 MiB: its `data: ` line is 6 bytes more."""
    big = {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": ""}
    big["delta"] = "z" * (EXACTLY_4MIB - len(json.dumps(big).encode()))
    assert len(json.dumps(big).encode()) == EXACTLY_4MIB
    at = next(i for i, e in enumerate(evs) if e["type"] == "TEXT_MESSAGE_CONTENT")
    return [*evs[:at], big, *evs[at:]]


# (a deadline of its own: the test is of the size limit, and judging four 4 MiB events on a loaded machine is slow)
AGUI_CONFORMING["an-event-of-exactly-4-MiB"] = (sse_script(four_mib_data), "chunked", {"deadline": "30s"})


# -- the judgements (after every table above is complete) ---------------------------------------------------------

@pytest.mark.parametrize("name", list(CONFORMING))
def test_a_conforming_server_passes_every_chat(tmp_path, name):
    make, scenario, chats = CONFORMING[name]
    got = judge(tmp_path, make, scenario)
    assert got == {way: [PASS] * chats for way in ("run", "check", "proxy")}, got


@pytest.mark.parametrize("name", list(FAULTY))
def test_a_faulty_server_is_caught_by_its_rule(tmp_path, name):
    make, expect, culprit = FAULTY[name]
    got = judge(tmp_path, make, {"chats_per_user": 1, "expect": expect})
    assert got == {way: [culprit] for way in ("run", "check", "proxy")}, got


@pytest.mark.parametrize("name", list(AGUI_CONFORMING))
def test_a_conforming_agui_sse_server_passes_every_chat(tmp_path, name):
    script, framing, expect = AGUI_CONFORMING[name]
    got = sse_judge(tmp_path, script, framing, expect)
    assert got == {"run": [PASS] * 4, "check": [PASS] * 4}, got


@pytest.mark.parametrize("name", list(AGUI_FAULTY))
def test_a_faulty_agui_sse_server_is_caught_by_its_rule(tmp_path, name):
    script, culprit = AGUI_FAULTY[name]
    got = sse_judge(tmp_path, script)
    assert got == {"run": [culprit] * 4, "check": [culprit] * 4}, got
