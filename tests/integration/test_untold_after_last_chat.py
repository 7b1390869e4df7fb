"""Another user's event on a connection after its user's last chat was judged, with no chat after it on that
connection: the connection's own R8, counted by every driver (`chatprobe run` and `monitor`, the Locust user's client,
`chatprobe proxy`, `chatprobe check` of a recording) in the violations (metrics, reports, the `violations` objective),
in no chat. A raw netra server (tests/integration/outside_servers.py) answers a chat correctly, then, once the chat was
judged, sends an event naming another user: while the user thinks before a chat that never comes (the run stops), or
just before it closes the idle connection.

FAILED on the code before this file, each with what was wrong: such an event was kept for the next chat the connection
would carry (ConnectionChecker.untold) and dropped with the connection when none came: no violation anywhere,
chatprobe_rule_violations_total{rule="R8"} at 0 (ChatEventIsolationBreach silent), `run` and `check` exit 0, the proxy's
recording of that connection not kept.
- test_another_users_event_after_the_last_chat_is_the_connections_own_r8_in_run_and_check[*]: run and check passed.
- test_the_proxy_counts_another_users_event_after_the_users_last_chat: the proxy's R8 stayed at 0, its recording gone.
- test_the_locust_users_client_reports_another_users_event_after_the_last_chat: the gevent client said nothing.
- test_chatprobe_run_json_and_check_fail_on_another_users_event_after_the_last_chat: exit 0, no R8 in either report.
"""
from __future__ import annotations

import asyncio
import json
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect

from harness.checker import ChatResult
from harness.cli import main
from harness.events import Event, Outcome, Violation
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.results import exit_code
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.sinks import Fanout, Sink
from harness.targets import Target
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, start_proxy

from .hostile_ws import frame
from .outside_servers import InThread, RawWsServer, WsConn

pytestmark = pytest.mark.timeout(120)

USER, OTHER = "u-1", "u-2"
WELCOME = {"type": "connection_established", "data": {"connection_id": "c", "user_id": USER}}
FOREIGN = {"type": "partial_result", "run_id": "run-of-someone-else", "thread_id": "t-x", "user_id": OTHER, "seq": 1,
           "payload": {"content": "someone else's words"}}
CLOSE_1000 = frame(0x8, struct.pack("!H", 1000))
NETRA = load_profile("netra")


def run_frames(p: dict[str, Any]) -> list[dict[str, Any]]:
    """A clean netra run answering the message `p`."""
    run_id = p.get("run_id") or f"run-{p['message_id']}"
    call = {"tool_name": "calc", "tool_call_id": "c0"}
    steps: list[tuple[str, dict[str, Any]]] = [
        ("agent_started", {"message_id": p["message_id"]}), ("agent_thinking", {"thought": "t"}),
        ("tool_executing", call), ("tool_completed", {**call, "result": 1}), ("partial_result", {"content": "x"}),
        ("agent_completed", {"result": "ok"})]
    return [{"type": kind, "run_id": run_id, "thread_id": p["thread_id"], "user_id": USER, "seq": seq,
             "payload": fields} for seq, (kind, fields) in enumerate(steps, 1)]


@dataclass
class IdleLeak:
    """Each user_message answered with a clean run. On the first connection, after its first run: once `go` is set (a
    test sets it when that chat was judged) or, without one, `delay` seconds later, another user's event, then (with
    `close`) the connection's close (1000), in one TCP write."""

    close: bool
    go: asyncio.Event | None = None
    delay: float = 0.0
    connections: int = 0
    tasks: list[asyncio.Task] = field(default_factory=list)

    async def handler(self, conn: WsConn) -> None:
        self.connections += 1
        leak = self.connections == 1
        await conn.send(WELCOME)
        try:
            while (raw := await conn.recv()) is not None:
                msg = json.loads(raw)
                if msg.get("type") != "user_message" or conn.closed:
                    continue
                for f in run_frames(msg["payload"]):
                    await conn.send(f)
                if leak:
                    leak = False
                    self.tasks.append(asyncio.ensure_future(self._leak(conn)))
        finally:
            for task in self.tasks:
                task.cancel()

    async def _leak(self, conn: WsConn) -> None:
        if self.go is not None:
            await self.go.wait()
        else:
            await asyncio.sleep(self.delay)  # wait-ok: the server's pace (after the chat's settle window)
        data = frame(0x1, json.dumps(FOREIGN).encode())
        async with conn.lock:
            if conn.closed:
                return
            if self.close:
                data += CLOSE_1000
                conn.closed = True
            conn.writer.write(data)
            await conn.writer.drain()


def r8(registry: CollectorRegistry, target: str, scenario: str, source: str) -> float | None:
    return registry.get_sample_value("chatprobe_rule_violations_total", {
        "rule": "R8", "target": target, "scenario": scenario, "source": source})


def outcomes(registry: CollectorRegistry, target: str, scenario: str, source: str) -> dict[str, float | None]:
    return {o.value: registry.get_sample_value("chatprobe_chats_total", {
        "outcome": o.value, "target": target, "scenario": scenario, "source": source}) for o in Outcome}


class Watch(Sink):
    """The run's verdicts and connection violations as they come: `go` at the first verdict (the server's cue), `stop`
    (the run's) at the other user's event reaching the client (`stop_on` "foreign") or at the connection's own
    violation ("connection")."""

    def __init__(self, go: asyncio.Event, stop: asyncio.Event, stop_on: str) -> None:
        self.go, self.stop, self.stop_on = go, stop, stop_on
        self.results: list[ChatResult] = []
        self.connection: list[Violation] = []

    def chat_finished(self, result: ChatResult) -> None:
        self.results.append(result)
        self.go.set()

    def event_received(self, scenario: str, event: Event) -> None:
        if event.user_id == OTHER and self.stop_on == "foreign":
            self.stop.set()

    def connection_violation(self, scenario: str, violation: Violation) -> None:
        self.connection.append(violation)
        if self.stop_on == "connection":
            self.stop.set()


@pytest.mark.parametrize("how", ["the-run-stops-while-the-user-thinks", "the-server-closes-the-idle-connection"])
async def test_another_users_event_after_the_last_chat_is_the_connections_own_r8_in_run_and_check(tmp_path, how):
    # The user thinks before a second chat that never comes: the run stops (its Ctrl-C) once the other user's event
    # reached the client, or, the server closing the connection after that event, once the connection's own R8 was
    # reported (on the old code nothing reports it: the run then ends at its max_duration with no R8).
    close = how == "the-server-closes-the-idle-connection"
    go, stop = asyncio.Event(), asyncio.Event()
    watch = Watch(go, stop, "connection" if close else "foreign")
    registry = CollectorRegistry()
    metrics = MetricsSink(ChatMetrics(registry), "raw", "synthetic")
    sc = Scenario.model_validate({"name": "idle", "users": 1, "chats_per_user": 2, "think_time": "60s",
                                  "max_duration": "15s", "connect_timeout": "5s",
                                  "expect": {"settle": "0.05s", "deadline": "5s"}})
    server = RawWsServer(IdleLeak(close=close, go=go).handler)
    await server.start()
    rec = tmp_path / "rec"
    try:
        async with asyncio.timeout(60):
            live = await run_scenario(sc, Target(url=server.url, profile=NETRA, name="raw", recorder=Recorder(rec)),
                                      Fanout([watch, metrics]), stop=stop)
    finally:
        assert server.server is not None
        server.server.close()
    assert live.stopped_by == "interrupted"  # not its max_duration: the R8 (or the event) came, and the run stopped
    # One chat, passed: no chat made up for the R8, no chat's verdict changed by it.
    assert [r.outcome for r in watch.results] == [Outcome.PASSED]
    assert live.stats.chats == 1 and live.stats.outcomes[Outcome.PASSED] == 1
    assert [(v.rule, v.event_index) for v in watch.connection] == [("R8", None)]
    assert "another user" in watch.connection[0].reason
    assert live.stats.violations == live.stats.connection_violations == {"R8": 1}
    assert [(v.rule, v.reason) for v in live.connection_violations] == [(v.rule, v.reason) for v in watch.connection]
    assert not live.passed and [o.name for o in live.failed_objectives] == ["violations.max"]
    assert exit_code([live]) == 1
    assert r8(registry, "raw", "idle", "synthetic") == 1  # what ChatEventIsolationBreach reads
    assert outcomes(registry, "raw", "idle", "synthetic") == {"passed": 1, "failed": 0, "incomplete": 0, "error": 0}

    # `chatprobe check` of the recording: the same, by the recorded times.
    [offline] = check_files([rec], NETRA, sc)
    assert offline.stats.chats == 1 and offline.stats.outcomes[Outcome.PASSED] == 1
    assert offline.stats.violations == offline.stats.connection_violations == {"R8": 1}
    assert [(v.rule, v.reason) for v in offline.connection_violations] == [
        (v.rule, v.reason) for v in live.connection_violations]
    assert exit_code([offline]) == exit_code([live])


class ProxyWatch(MetricsSink):
    """The proxy's sink on a registry of the test's own: `judged` at the first verdict, `routed` once the proxy routed
    the other user's event, `told` at the connection's own violation."""

    def __init__(self) -> None:
        super().__init__(ChatMetrics(CollectorRegistry()), "up", "live")
        self.judged, self.routed, self.told = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def chat_finished(self, result: ChatResult) -> None:
        super().chat_finished(result)
        self.judged.set()

    def event_received(self, scenario: str, event: Event) -> None:
        if event.user_id == OTHER:
            self.routed.set()

    def connection_violation(self, scenario: str, violation: Violation) -> None:
        super().connection_violation(scenario, violation)
        self.told.set()


async def test_the_proxy_counts_another_users_event_after_the_users_last_chat(tmp_path):
    # A real user's tab: one chat, the answer read (the proxy judged the chat), the connection left open; another
    # user's event arrives; the tab closes. The proxy judged the chat `passed` and charged the event to nothing.
    watch = ProxyWatch()
    server = RawWsServer(IdleLeak(close=False, go=watch.judged).handler)
    await server.start()
    rec = tmp_path / "rec"
    sc = Scenario(name="live", expect={"settle": "0.05s"})
    live = LiveChats(NETRA, watch, sc.expectations(NETRA), "live", 0.05, Recorder(rec))
    proxy = await start_proxy(Proxy(server.url.rsplit("/", 1)[0], live), "127.0.0.1", 0)
    try:
        async with asyncio.timeout(30):
            async with connect(f"ws://127.0.0.1:{proxy.sockets[0].getsockname()[1]}/ws") as ws:
                assert json.loads(await ws.recv())["type"] == "connection_established"
                await ws.send(json.dumps({"type": "user_message", "payload": {
                    "content": "hi", "message_id": "m-1", "thread_id": "t-1"}}))
                while json.loads(await ws.recv())["type"] != "agent_completed":
                    pass
                await watch.judged.wait()  # the proxy's verdict: the server's cue
                got = json.loads(await ws.recv())
                assert got["user_id"] == OTHER  # another user's words on this user's screen
                await watch.routed.wait()  # the proxy saw it too (it forwards a frame before judging it)
            await watch.told.wait()  # the tab closed: the connection's own R8
            while live.open:  # the connection's last step (its recording saved) comes right after
                await asyncio.sleep(0.01)  # wait-ok: polled, bounded by the timeout above
    finally:
        proxy.close()
        assert server.server is not None
        server.server.close()
    registry = watch.metrics.registry
    assert r8(registry, "up", "live", "live") == 1
    assert outcomes(registry, "up", "live", "live") == {"passed": 1, "failed": 0, "incomplete": 0, "error": 0}
    # The connection's recording is kept (a failing one), and `check` of it says the same.
    [offline] = check_files([rec], NETRA, sc)
    assert offline.stats.chats == 1 and offline.stats.outcomes[Outcome.PASSED] == 1
    assert offline.stats.violations == offline.stats.connection_violations == {"R8": 1}


def test_the_locust_users_client_reports_another_users_event_after_the_last_chat():
    # The gevent client (SyncSession, the Locust user's) against the same server in a thread: its one chat passes, the
    # other user's event and the close that follow it are reported as the connection's own R8.
    from harness.gevent_client import SyncSession

    class Told(Sink):
        def __init__(self) -> None:
            self.violations: list[Violation] = []
            self.told = threading.Event()

        def connection_violation(self, scenario: str, violation: Violation) -> None:
            self.violations.append(violation)
            self.told.set()

    go = asyncio.Event()  # set from this thread through the server's loop, once the chat's verdict is in
    server = InThread(RawWsServer(IdleLeak(close=True, go=go).handler))
    with server as ws:
        told = Told()
        session = SyncSession(Target(url=ws.url, profile=NETRA, name="raw"), "u", "sync", told, connect_timeout=5)
        try:
            sc = Scenario(name="sync", expect={"settle": "0.05s", "deadline": "5s"})
            result = session.chat("hi", sc.expectations(NETRA))  # returns once judged (its settle window over)
            assert result is not None and result.outcome is Outcome.PASSED, result
            server.loop.call_soon_threadsafe(go.set)
            assert told.told.wait(20), "no connection violation reported"
        finally:
            session.close()
    assert [(v.rule, v.event_index) for v in told.violations] == [("R8", None)]


def test_chatprobe_run_json_and_check_fail_on_another_users_event_after_the_last_chat(tmp_path: Path):
    # What a CI reads: `chatprobe run --json --record` and `chatprobe check --json` of the recording. The server sends
    # the other user's event 0.5 s after the first chat's run (its settle window is 0.05 s) and closes the connection;
    # the user's second chat, 1.5 s of thinking later, goes on a new connection and passes.
    scenario = tmp_path / "idle.yaml"
    scenario.write_text("name: idle\nusers: 1\nchats_per_user: 2\nthink_time: 1.5s\nconnect_timeout: 5s\n"
                        "expect: {settle: 0.05s, deadline: 5s}\n")
    rec, report, offline = tmp_path / "rec", tmp_path / "run.json", tmp_path / "check.json"
    with InThread(RawWsServer(IdleLeak(close=True, delay=0.5).handler)) as ws:
        code = main(["run", str(scenario), "--target", ws.url, "--auth", "none", "--json", str(report),
                     "--record", str(rec), "-q"])
    code2 = main(["check", str(rec), "--scenario", str(scenario), "--json", str(offline), "-q"])
    assert code == code2 == 1
    for path in (report, offline):
        [got] = json.loads(path.read_text())["scenarios"]
        assert not got["passed"], path
        assert got["stats"]["outcomes"] == {"passed": 2, "failed": 0, "incomplete": 0, "error": 0}, path
        assert got["stats"]["violations"] == got["stats"]["connection_violations"] == {"R8": 1}, path
        assert [v["rule"] for v in got["connection_violations"]] == ["R8"], path
        assert "another user" in got["connection_violations"][0]["reason"]
        assert [o["name"] for o in got["objectives"] if not o["ok"]] == ["violations.max"], path
