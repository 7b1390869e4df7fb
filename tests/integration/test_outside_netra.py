"""An outside evaluator's netra servers (tests/integration/outside_servers.py: raw RFC 6455, no agentsim), written
from docs/protocol.md alone, in styles agentsim does not use: every message cut into continuation frames with
WebSocket pings between the pieces, `{"type":"ping"}` and heartbeats mid-chat, each event in one of the three shapes
the doc lists (flat, agent bridge with an ISO timestamp and details under `data`, oldest under `payload`), three
chats interleaved on one connection, unicode ids, a recoverable error then a completion, a resume after the server
drops the connection. A conformant server must pass every chat; each variant breaks exactly one rule on exactly one
chat (`#culprit` in its message) and must be reported as that rule on that chat and nothing on the others. Every
run is recorded and `chatprobe check` of the recording must give the same verdicts.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main

from .outside_servers import InThread, RawWsServer, WsConn

USER = "ü-user-☃"
PACE = 0.01  # the server's pace between two events of a run


@dataclass
class Run:
    run_id: str
    thread_id: str
    message_id: str | None
    text: str
    frames: list[dict[str, Any]] = field(default_factory=list)


def iso() -> str:
    return datetime.now(UTC).isoformat()


def event(style: int, type_: str, run: Run, seq: int | None, **details: Any) -> dict[str, Any]:
    """One event in one of the shapes docs/protocol.md lists ('Variants the netra profile accepts')."""
    seq_part = {} if seq is None else {"seq": seq}
    if style == 0:  # newest: every field flat at the root, an epoch timestamp
        return {"type": type_, "run_id": run.run_id, "thread_id": run.thread_id, **seq_part,
                "timestamp": time.time(), **details}
    if style == 1:  # agent bridge: run id, user, ISO timestamp at the root, details under data
        return {"type": type_, "run_id": run.run_id, "user_id": USER, "timestamp": iso(),
                "data": {"thread_id": run.thread_id, **seq_part, **details}}
    # oldest shape, but with seq: everything under payload, sender null
    return {"type": type_, "payload": {"run_id": run.run_id, "thread_id": run.thread_id, **seq_part, **details},
            "sender": None, "timestamp": time.time()}


def script(run: Run, index: int) -> list[Any]:
    """The run's frames as (type, details) items; `#recover` adds a recoverable error that the run survives."""
    call = f"c-ü-{index}"
    items: list[Any] = [
        ("agent_started", {"agent_name": "café_agent", "message_id": run.message_id}),
        ("agent_thinking", {"thought": "multiplier 17 × 23", "step_number": 1}),
        ("tool_executing", {"tool_name": "calculator", "tool_call_id": call, "parameters": {"expr": "17*23"}}),
    ]
    if "#slow" in run.text:
        items.append(("pause", 1.2))  # a slow tool, within the stall limit
    if "#recover" in run.text:
        items.append(("agent_error", {"error_message": "calculator slow, retrying", "error_type": "ToolTimeout",
                                      "is_recoverable": True, "severity": "warning"}))
    items += [
        ("tool_completed", {"tool_name": "calculator", "tool_call_id": call, "result": 391, "duration_ms": 3.5,
                            "success": True}),
        ("agent_thinking", {"thought": "now the capital", "step_number": 2}),
        ("partial_result", {"content": "17 × 23 = 391; ", "is_complete": False}),
        ("partial_result", {"content": "Paris.", "is_complete": True}),
        ("agent_completed", {"result": "391, Paris", "duration_ms": 40.0}),
    ]
    return items


# A fault edits the culprit's items; "pause" items make the server wait (a slow agent).
Fault = Callable[[list[Any]], list[Any]]


def _swap(i: int, j: int) -> Fault:
    def f(items: list[Any]) -> list[Any]:
        items = list(items)
        items[i], items[j] = items[j], items[i]
        return items
    return f


def _drop(type_: str) -> Fault:
    return lambda items: [it for it in items if not (isinstance(it, tuple) and it[0] == type_)]


def _patch(index: int, **changes: Any) -> Fault:
    def f(items: list[Any]) -> list[Any]:
        items = list(items)
        t, d = items[index]
        items[index] = (t, {**d, **changes})
        return items
    return f


FAULTS: dict[str, tuple[Fault, dict[str, Any]]] = {
    # thinking first, then started: the first event is not agent_started
    "R1": (_swap(0, 1), {}),
    # no text at all while the scenario asks for streaming
    "R2": (_drop("partial_result"), {}),
    # the completion twice
    "R3": (lambda items: items + [items[-1]], {}),
    # a stray partial result right after the completion
    "R4": (lambda items: items + [("partial_result", {"content": "late", "is_complete": True})], {}),
    # the tool call is closed under another id than it opened
    "R5": (_patch(3, tool_call_id="c-other"), {}),
    # the tool runs before any thinking
    "R6": (lambda items: [items[0], items[2], items[3], items[1], *items[4:]], {}),
    # a seq is skipped (the server lost an event)
    "R7": ("skip-seq", {}),  # type: ignore[dict-item]
    # an event of the run names another thread
    "R8": (_patch(4, thread_id="t-someone-else"), {}),
    # a slow start
    "R9": (lambda items: [("pause", 1.5), *items], {"first_event_limit": "0.7s"}),
    # never completes
    "R10": (lambda items: items[:-1], {"deadline": "2500ms"}),
    # stalls mid-run
    "R11": (lambda items: [*items[:3], ("pause", 1.5), *items[3:]], {"stall_limit": "0.7s"}),
    # an event whose timestamp is over 64 characters
    "R12": ("long-timestamp", {}),  # type: ignore[dict-item]
    # the run fails although no error was expected
    "R13": (lambda items: [*items[:-1], ("agent_error", {"error_message": "model down", "error_type": "Upstream",
                                                         "is_recoverable": False, "severity": "critical"})], {}),
}


@dataclass
class Netra:
    """The outside evaluator's netra server; `fault` breaks one rule on the chat whose message says `#culprit`."""

    fault: str | None = None
    batch: int = 3  # wait for this many messages (at most 1 s), then run them interleaved
    fragments: int = 3
    seq_from: int = 1
    drop_after: int | None = None  # abort the TCP connection after this many events of the culprit's run
    replay_from_last_seq: bool = False  # resume replays from last_seq itself instead of after it (a duplicate)
    run_id_for_all: str | None = None  # assign this run id to every run (a server that reuses its run ids)
    late_after_settle: float | None = None  # send a stray event of the culprit's run this long after it completed
    aliases: bool = False  # the other names the doc accepts: stream_chunk, agent_response, error, error_message
    by_thread: bool = False  # the older welcome; runs named by thread only (no message_id), the last message's first
    runs: dict[str, Run] = field(default_factory=dict)
    threads: dict[str, str] = field(default_factory=dict)  # thread id -> message text
    dropped: bool = False
    counter: int = 0

    async def handle(self, conn: WsConn) -> None:
        welcome = {"connection_id": f"conn-{id(conn)}", "user_id": USER, "server_time": iso()}
        if self.by_thread:
            await self.send(conn, {"type": "system_message", "data": {"event": "connection_established", **welcome}})
        else:
            await self.send(conn, {"type": "connection_established", "data": welcome, "timestamp": time.time()})
        inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def read() -> None:
            while (text := await conn.recv()) is not None:
                frame = json.loads(text)
                if frame.get("type") == "ping":
                    await self.send(conn, {"type": "pong", "data": {"timestamp": time.time()}})
                elif frame.get("type") in ("user_message", "resume"):
                    await inbox.put(frame)
            await inbox.put(None)

        reader = asyncio.create_task(read())
        tasks: list[asyncio.Task[None]] = []
        try:
            while True:
                first = await inbox.get()
                if first is None:
                    break
                batch = [first]
                deadline = asyncio.get_running_loop().time() + 1.0
                while len(batch) < self.batch and first["type"] == "user_message":
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(inbox.get(), left)
                    except TimeoutError:
                        break
                    if nxt is None:
                        break
                    batch.append(nxt)
                for frame in reversed(batch) if self.by_thread else batch:
                    tasks.append(asyncio.create_task(self.play(conn, frame)))
        finally:
            for t in tasks:
                t.cancel()
            reader.cancel()

    async def send(self, conn: WsConn, frame: dict[str, Any]) -> None:
        await conn.send(frame, pieces=self.fragments, ping_between=self.fragments > 1)

    def new_run(self, p: dict[str, Any]) -> Run:
        self.counter += 1
        run_id = p.get("run_id") or self.run_id_for_all or f"rün-✓-{self.counter}"
        run = Run(run_id, p["thread_id"], None if self.by_thread else p.get("message_id"), p["content"])
        self.threads[run.thread_id] = run.text
        index = self.counter
        items = script(run, index)
        culprit = "#culprit" in run.text
        fault = FAULTS[self.fault][0] if culprit and self.fault else None
        if callable(fault):
            items = fault(items)
        seq = self.seq_from
        for n, item in enumerate(items):
            if item[0] == "pause":
                run.frames.append({"pause": item[1]})
                continue
            type_, details = item
            if fault == "skip-seq" and n == 4:
                seq += 1
            if self.aliases:
                type_ = {"partial_result": "stream_chunk", "agent_completed": "agent_response",
                         "agent_error": "error_message" if index % 2 else "error"}.get(type_, type_)
            frame = event((index + n) % 3, type_, run, seq, **details)
            if fault == "long-timestamp" and n == 2:
                frame["timestamp"] = iso() + "+" * 80
            run.frames.append(frame)
            seq += 1
        self.runs[run.run_id] = run
        return run

    async def play(self, conn: WsConn, frame: dict[str, Any]) -> None:
        p = frame["payload"]
        if frame["type"] == "resume":
            run = self.runs[p["run_id"]]
            last = int(p["last_seq"])
            frames = [f for f in run.frames if "pause" in f or seq_of(f) > last - (1 if self.replay_from_last_seq else 0)]
        else:
            run = self.new_run(p)
            frames = run.frames
        culprit = "#culprit" in run.text
        sent = 0
        for n, f in enumerate(frames):
            if "pause" in f:
                await asyncio.sleep(f["pause"])  # wait-ok: a scripted slow agent
                continue
            await self.send(conn, f)
            sent += 1
            if culprit and self.drop_after == sent and not self.dropped:
                self.dropped = True
                conn.abort()
                return
            if n % 3 == 1:
                await self.send(conn, {"type": "ping"})
                await self.send(conn, {"type": "heartbeat", "data": {"user_id": USER}})
            await asyncio.sleep(PACE)  # wait-ok: a server's pace between events
        if culprit and self.late_after_settle is not None:
            await asyncio.sleep(self.late_after_settle)  # wait-ok: the stray event comes late on purpose
            await self.send(conn, event(0, "partial_result", run, len(run.frames) + self.seq_from,
                                        content="a stray afterthought"))


def seq_of(frame: dict[str, Any]) -> int:
    for c in (frame, frame.get("payload") or {}, frame.get("data") or {}):
        if "seq" in c:
            return int(c["seq"])
    raise AssertionError(frame)


SCENARIO = """\
name: judge-netra
users: 1
client_run_id: {client_run_id}
chats_per_user: {chats}
parallel_chats: {parallel}
messages: ["chat zero, 17 × 23?", "chat one #culprit", "chat two #recover {slow}"]
expect:
  streaming: true
  settle: 0.3s
{expect}
"""


def verdicts(doc: dict[str, Any], threads: dict[str, str]) -> dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """Each chat's outcome, rules and warning rules, by its message text."""
    (scenario,) = doc["scenarios"]
    out: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
    for chat in scenario["chats"]:
        text = threads.get(chat["thread_id"], f"unknown thread {chat['thread_id']!r}")
        out[text] = (chat["outcome"], tuple(sorted({v["rule"] for v in chat["violations"]})),
                     tuple(sorted({w["rule"] for w in chat["warnings"]})))
    return out


def run_and_check(tmp_path: Path, server: Netra, *, chats: int = 3, parallel: int = 3,
                  expect: dict[str, Any] | None = None, slow: bool = False,
                  client_run_id: bool = False) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """`chatprobe run --record` against the server, then `chatprobe check` of the recording: both verdicts."""
    body = "".join(f"  {k}: {v}\n" for k, v in (expect or {}).items())
    scenario = tmp_path / "judge.yaml"
    scenario.write_text(SCENARIO.format(chats=chats, parallel=parallel, expect=body, slow="#slow" if slow else "",
                                        client_run_id=str(client_run_id).lower()))
    live, offline, rec = tmp_path / "live.json", tmp_path / "offline.json", tmp_path / "rec"
    with InThread(RawWsServer(server.handle)) as ws:
        code = main(["run", "--target", ws.url, "--auth", "none", str(scenario), "--record", str(rec),
                     "--json", str(live), "-q"])
    assert code in (0, 1), code
    code2 = main(["check", str(rec), "--scenario", str(scenario), "--json", str(offline), "-q"])
    assert code2 == code, (code, code2)
    live_doc, offline_doc = json.loads(live.read_text()), json.loads(offline.read_text())
    return verdicts(live_doc, server.threads), verdicts(offline_doc, server.threads), live_doc["scenarios"][0]["chats"]


def test_conformant_server_passes_every_chat_live_and_offline(tmp_path):
    server = Netra()
    live, offline, chats = run_and_check(tmp_path, server)
    assert live == offline
    assert set(live) == {"chat zero, 17 × 23?", "chat one #culprit", "chat two #recover "}, live
    assert {v[:2] for v in live.values()} == {("passed", ())}, live
    recover = next(c for c in chats if "#recover" in server.threads[c["thread_id"]])
    assert "agent_error" in [e["wire_type"] for e in recover["events"]]
    # the three chats really were interleaved: a chat's events are not all before another's
    starts = sorted((c["events"][0]["t"], c["events"][-1]["t"]) for c in chats)
    assert starts[1][0] < starts[0][1], starts


@pytest.mark.parametrize("rule", sorted(FAULTS, key=lambda r: int(r[1:])))
def test_one_broken_rule_is_that_rule_on_that_chat_only(tmp_path, rule):
    live, offline, _ = run_and_check(tmp_path, Netra(fault=rule), expect=FAULTS[rule][1])
    assert live == offline, (live, offline)
    culprit = live.pop("chat one #culprit")
    expected_outcome = "incomplete" if rule == "R10" else "failed"
    assert culprit[:2] == (expected_outcome, (rule,)), culprit
    assert {v[:2] for v in live.values()} == {("passed", ())}, live


def test_seq_from_zero_is_r7_on_every_chat(tmp_path):
    # "seq counts a run's events from 1"; R7: "each is a positive integer": a server counting from 0 breaks R7.
    live, offline, _ = run_and_check(tmp_path, Netra(seq_from=0))
    assert live == offline
    assert {v[:2] for v in live.values()} == {("failed", ("R7",))}, live


def test_resume_after_the_server_drops_the_connection(tmp_path):
    server = Netra(batch=1, drop_after=3)
    live, offline, chats = run_and_check(tmp_path, server, chats=2, parallel=1)
    assert live == offline, (live, offline)
    assert {v[:2] for v in live.values()} == {("passed", ())}, live
    culprit = next(c for c in chats if "#culprit" in server.threads[c["thread_id"]])
    assert culprit["reconnects"] == ["resumed"], culprit


def test_resume_that_replays_the_last_seen_event_is_r7(tmp_path):
    server = Netra(batch=1, drop_after=3, replay_from_last_seq=True)
    live, offline, _ = run_and_check(tmp_path, server, chats=2, parallel=1)
    assert live == offline, (live, offline)
    assert live.pop("chat one #culprit")[:2] == ("failed", ("R7",))
    assert {v[:2] for v in live.values()} == {("passed", ())}, live


def test_stray_event_after_the_settle_window_is_a_warning_on_its_own_chat(tmp_path):
    # settle 0.3 s: the stray comes 0.6 s after the completion, while the next chat (paused 1.2 s) is in flight
    server = Netra(batch=1, late_after_settle=0.6)
    live, offline, _ = run_and_check(tmp_path, server, chats=3, parallel=1, slow=True)
    assert live == offline, (live, offline)
    culprit = live.pop("chat one #culprit")
    assert culprit == ("passed", (), ("R4",)), culprit
    assert {v for v in live.values()} == {("passed", (), ())}, live


def test_run_id_reused_across_sequential_chats(tmp_path):
    # A server that names every run alike, each after the previous one ended: each first event carries the
    # client's message_id, which is how docs/protocol.md says the client correlates a server-assigned run.
    server = Netra(batch=1, run_id_for_all="run-♻")
    live, offline, _ = run_and_check(tmp_path, server, chats=3, parallel=1)
    assert live == offline, (live, offline)
    assert {v[:2] for v in live.values()} == {("passed", ())}, live


@pytest.mark.parametrize("fault", [None, "R13"])
def test_other_wire_names_and_client_run_ids(tmp_path, fault):
    # stream_chunk, agent_response, `error` and an `error_message` naming its run (recoverable under `data`), the
    # client naming each run; three chats interleaved.
    live, offline, _ = run_and_check(tmp_path, Netra(aliases=True, fault=fault), client_run_id=True)
    assert live == offline, (live, offline)
    if fault:
        assert live.pop("chat one #culprit")[:2] == ("failed", (fault,))
    assert {v[:2] for v in live.values()} == {("passed", ())}, live


def test_another_users_event_is_r8_on_the_chat_in_flight_only(tmp_path):
    server = Netra(batch=1)
    original = server.new_run

    def new_run(p: dict[str, Any]) -> Run:
        run = original(p)
        if "#culprit" in run.text:
            run.frames[5] = {**run.frames[5], "user_id": "someone-else"}  # the first partial_result
        return run

    server.new_run = new_run  # type: ignore[method-assign]
    live, offline, _ = run_and_check(tmp_path, server, chats=3, parallel=1)
    assert live == offline, (live, offline)
    culprit = live.pop("chat one #culprit")
    # R8 alone: the event is not taken into the run, but it came, so its seq is no gap (it was R8 and R7)
    assert culprit[:2] == ("failed", ("R8",)), culprit
    assert {v[:2] for v in live.values()} == {("passed", ())}, live


@pytest.mark.parametrize("fault", [None, "R5"])
def test_runs_named_by_thread_only_started_in_reverse_order(tmp_path, fault):
    # The older system_message welcome; agent_started without the message_id, the last message's run first: the
    # client correlates each run by its thread (docs/protocol.md, R8).
    live, offline, _ = run_and_check(tmp_path, Netra(by_thread=True, fault=fault))
    assert live == offline, (live, offline)
    if fault:
        assert live.pop("chat one #culprit")[:2] == ("failed", (fault,))
    assert {v[:2] for v in live.values()} == {("passed", ())}, live
