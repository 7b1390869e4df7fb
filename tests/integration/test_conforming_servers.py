"""Netra servers written from docs/protocol.md alone, unlike agentsim in how they use what the document allows, and
subtly faulty twins; each judged three ways that must agree: `chatprobe run --record` (run_scenario with the target's
recorder), `chatprobe check` of that recording (check_files), and `chatprobe proxy` in front of the same server with a
client playing the scenario through it (LiveChats: the proxy's own verdicts). Raw RFC 6455 servers on asyncio
streams (tests/integration/outside_servers.py) on 127.0.0.1, in the test's own event loop; every wait bounded.

FAILED on the code before this file, each with what was wrong:
- test_correct_servers_pass_everywhere[run-and-close-in-one-write-*]: the server streams a run and closes the idle
  connection (1001) in one TCP write; the client's next message found the connection closed and was sent on a new one,
  but `--record` had written it as sent on the old one: `check` warned the message crossed the close (R13) and, with
  client run ids, judged it a lost run (incomplete, exit 1) where `run` passed every chat. Through the proxy, the
  client's next message went on the old connection: the proxy passed the server's close on only once its relays had
  ended, a few turns after the run's last event, and the client counted the message sent again (R13) on chats 2 and 3
  where `run` passed them (the "client" verdicts); once the proxy read the messages that crossed a close
  (proxy._read_out), it judged them so too.
- test_correct_servers_pass_everywhere[closes-on-the-next-message-client-run-id]: the server closes an idle
  connection (1000) as the next message arrives (it crossed the close) and answers the client's resume of that run
  with RESUME_UNKNOWN_RUN (it never took the message): a run without an id was sent again, one with an id ended
  `incomplete` (run, check and proxy), a false failure of a correct server.
- test_an_agui_websocket_request_that_crossed_the_close_is_sent_again_everywhere: the same over AG-UI's WebSocket,
  which names every run and has no resume frame: never sent again, `incomplete` everywhere.
- test_incidents_with_no_chat_on_screen_fail_the_next_chat[*]: another user's event (or a malformed frame) that came
  while no chat was on screen (between chats, once the last one was judged; or right after the welcome) was charged
  to nobody: cross-talk passed unseen by run, check and proxy alike (agentsim's crosstalk fault with a think time:
  4 of 5 delivered events missed).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from harness.checker import ChatResult
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.results import exit_code
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.targets import Target
from monitors.metrics import ChatMetrics, MetricsSink
from monitors.proxy import LiveChats, Proxy, start_proxy

from .hostile_ws import frame as server_frame
from .outside_servers import RawWsServer, WsConn

pytestmark = pytest.mark.timeout(120)

USER = "u-1"


def frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """One unmasked server frame (hostile_ws.frame, payload first)."""
    return server_frame(opcode, payload, fin)


def text(obj: Any) -> bytes:
    return frame(json.dumps(obj, ensure_ascii=False).encode())


CLOSE_1000, CLOSE_1001 = frame(struct.pack("!H", 1000), 0x8), frame(struct.pack("!H", 1001), 0x8)


def run_frames(p: dict[str, Any], *, tools: int = 1) -> list[dict[str, Any]]:
    """A clean run answering the message `p` (its run id the client's, else one made of its message id)."""
    run_id = p.get("run_id") or f"run-{p['message_id']}"
    steps: list[tuple[str, dict[str, Any]]] = [("agent_started", {"message_id": p["message_id"]}),
                                               ("agent_thinking", {"thought": "t"})]
    for i in range(tools):
        call = {"tool_name": "calc", "tool_call_id": f"c{i}"}
        steps += [("tool_executing", call), ("tool_completed", {**call, "result": 1})]
    steps += [("partial_result", {"content": "x"}), ("agent_completed", {"result": "ok"})]
    return [{"type": kind, "run_id": run_id, "thread_id": p["thread_id"], "user_id": USER, "seq": seq,
             "payload": fields} for seq, (kind, fields) in enumerate(steps, 1)]


@dataclass
class Server:
    """A netra server on raw frames: the welcome, each user_message answered by `answer`, a resume of a run it does not
    hold answered RESUME_UNKNOWN_RUN (it keeps no run past its end), a JSON ping with a pong."""

    answer: Callable[[WsConn, dict[str, Any], int, "Server"], Awaitable[None]]
    welcome: bytes = field(default_factory=lambda: text({"type": "connection_established",
                                                         "data": {"connection_id": "c", "user_id": USER}}))
    messages: int = 0
    busy: int = 0  # runs being played

    async def handler(self, conn: WsConn) -> None:
        conn.writer.write(self.welcome)
        tasks = []
        while (raw := await conn.recv()) is not None:
            msg = json.loads(raw)
            kind = msg.get("type")
            if kind == "ping":
                conn.writer.write(text({"type": "pong"}))
            elif kind == "resume":
                conn.writer.write(text({"type": "error_message", "error_code": "RESUME_UNKNOWN_RUN",
                                        "run_id": msg["payload"]["run_id"], "error_message": "no such run"}))
            elif kind == "user_message" and not conn.closed:
                self.messages += 1
                tasks.append(asyncio.create_task(self._play(conn, msg["payload"], self.messages)))
        for task in tasks:
            task.cancel()

    async def _play(self, conn: WsConn, p: dict[str, Any], n: int) -> None:
        self.busy += 1
        try:
            await self.answer(conn, p, n, self)
        finally:
            self.busy -= 1


# -- how a server answers ------------------------------------------------------------------------------------------

async def paced(conn: WsConn, p: dict[str, Any], n: int, server: Server) -> None:
    """Each event in a TCP write of its own, a little apart."""
    for f in run_frames(p):
        conn.writer.write(text(f))
        await asyncio.sleep(0.003)  # wait-ok: the server's pace


async def run_and_close_in_one_write(conn: WsConn, p: dict[str, Any], n: int, server: Server) -> None:
    """The whole run and, the connection then being idle, its close (1001): one TCP write."""
    data = b"".join(text(f) for f in run_frames(p))
    if server.busy == 1:
        data += CLOSE_1001
        conn.closed = True
    conn.writer.write(data)


async def closes_on_the_second_message(conn: WsConn, p: dict[str, Any], n: int, server: Server) -> None:
    """Closes the idle connection (1000) as the second message arrives, without answering it (the message crossed
    the close: RFC 6455 reads nothing after it); answers every other one."""
    if n == 2:
        conn.writer.write(CLOSE_1000)
        conn.closed = True
        return
    await paced(conn, p, n, server)


def then(first: Callable[..., Awaitable[None]], after: Callable[[WsConn, dict[str, Any], int], bytes | None],
         delay: float = 0.0) -> Callable[..., Awaitable[None]]:
    """`first`, then, `delay` later, what `after` writes (None: nothing)."""
    async def answer(conn: WsConn, p: dict[str, Any], n: int, server: Server) -> None:
        await first(conn, p, n, server)
        data = after(conn, p, n)
        if data is not None:
            await asyncio.sleep(delay)  # wait-ok: the server sends it once the chat was judged
            conn.writer.write(data)
    return answer


FOREIGN = text({"type": "partial_result", "run_id": "run-of-someone-else", "thread_id": "t-x", "user_id": "u-2",
                "seq": 1, "payload": {"content": "someone else's words"}})


# -- the three judges ----------------------------------------------------------------------------------------------

Verdict = tuple[str, tuple[tuple[str, int], ...], tuple[str, ...]]


def verdict(r: ChatResult) -> Verdict:
    return (r.outcome.value, tuple(sorted(r.rule_counts().items())), tuple(sorted({w.rule.value for w in r.warnings})))


class Kept(MetricsSink):
    def __init__(self) -> None:
        super().__init__(ChatMetrics(CollectorRegistry()), "up", "live")
        self.results: list[ChatResult] = []
        self.judged = asyncio.Event()

    def chat_finished(self, result: ChatResult) -> None:
        self.results.append(result)
        self.judged.set()
        super().chat_finished(result)


async def judged_three_ways(make: Callable[[], Any], *, profile_name: str = "netra", client: bool = False,
                            **scenario: Any) -> dict[str, list[Verdict]]:
    """Each chat's verdict by `run` (recorded), by `check` of its recording and by the proxy (a fresh server each
    time: `make().handler`), sorted; the exit codes of `run` and `check` must agree. `client`: the verdicts of the
    client that played through the proxy too ("client"), which sees the server as `run` did (the proxy passes on what
    came in one write of the server's without a gap for the client to send into)."""
    profile = load_profile(profile_name)
    sc = Scenario.model_validate({"name": "conform", "users": 1, "connect_timeout": "2s",
                                  "expect": {"deadline": "3s", "settle": "0.1s"}, **scenario})
    out: dict[str, list[Verdict]] = {}
    # Each road's hang guard: past the deadlines the scenario gives its chats (one user's one after another), never
    # below them (a run of 30,000 frames given 60 s took over 30 s through the proxy on a loaded machine)
    guard = max(30.0, sc.chats_per_user * sc.expect.deadline + 10)
    with tempfile.TemporaryDirectory() as rec:
        server = RawWsServer(make().handler)
        await server.start()
        try:
            async with asyncio.timeout(guard):
                live = await run_scenario(sc, Target(url=server.url, profile=profile, name="raw",
                                                     recorder=Recorder(rec)))
        finally:
            assert server.server is not None
            server.server.close()
        [offline] = check_files([rec], profile, sc)
    assert exit_code([offline]) == exit_code([live])
    out["run"] = sorted(verdict(r) for r in live.results)
    out["check"] = sorted(verdict(r) for r in offline.results)

    server = RawWsServer(make().handler)
    await server.start()
    kept = Kept()
    proxy = await start_proxy(Proxy(server.url.rsplit("/", 1)[0], LiveChats(profile, kept, sc.expectations(profile),
                                                                            "live", sc.expect.settle)),
                              "127.0.0.1", 0)
    try:
        async with asyncio.timeout(guard):
            played = await run_scenario(sc, Target(url=f"ws://127.0.0.1:{proxy.sockets[0].getsockname()[1]}/ws",
                                                   profile=profile, name="proxy"))
        with contextlib.suppress(TimeoutError):  # a chat the proxy does not judge shows in the comparison
            async with asyncio.timeout(5):
                while len(kept.results) < len(played.results):  # each chat the proxy saw, judged
                    kept.judged.clear()
                    await kept.judged.wait()
    finally:
        proxy.close()
        assert server.server is not None
        server.server.close()
    out["proxy"] = sorted(verdict(r) for r in kept.results)
    if client:
        out["client"] = sorted(verdict(r) for r in played.results)
    return out


PASS: Verdict = ("passed", (), ())
SENT_AGAIN: Verdict = ("passed", (), ("R13",))  # the message crossed the server's close: sent again, and said

CORRECT = {
    # events in writes of their own, or all at once with the idle connection's close (1001) after them
    "paced": (paced, {}, [PASS] * 3),
    "run-and-close-in-one-write": (run_and_close_in_one_write, {}, [PASS] * 3),
    "run-and-close-in-one-write-client-run-id": (run_and_close_in_one_write, {"client_run_id": True}, [PASS] * 3),
    # an idle connection closed (1000) as the next message came: sent again on a new connection, with a warning
    "closes-on-the-next-message": (closes_on_the_second_message, {}, [PASS, PASS, SENT_AGAIN]),
    "closes-on-the-next-message-client-run-id": (closes_on_the_second_message, {"client_run_id": True},
                                                 [PASS, PASS, SENT_AGAIN]),
}


@pytest.mark.parametrize("name", list(CORRECT))
async def test_correct_servers_pass_everywhere(name):
    answer, options, expected = CORRECT[name]
    got = await judged_three_ways(lambda: Server(answer), chats_per_user=3, client=True, **options)
    assert got == {"run": expected, "check": expected, "proxy": expected, "client": expected}, got


def _agui_run(thread: str, run: str, message: str) -> list[dict[str, Any]]:
    """A correct AG-UI run of one assistant message, as the AG-UI servers here answer a request."""
    return [{"type": "RUN_STARTED", "threadId": thread, "runId": run},
            {"type": "TEXT_MESSAGE_START", "messageId": message, "role": "assistant"},
            {"type": "TEXT_MESSAGE_CONTENT", "messageId": message, "delta": "hi"},
            {"type": "TEXT_MESSAGE_END", "messageId": message},
            {"type": "RUN_FINISHED", "threadId": thread, "runId": run}]


@dataclass
class AguiServer:
    """AG-UI over WebSocket (no welcome, no resume frame): each RunAgentInput answered with a run, but the second one
    meets the idle connection's close (1000), unanswered."""

    requests: int = 0

    async def handler(self, conn: WsConn) -> None:
        while (raw := await conn.recv()) is not None:
            msg = json.loads(raw)
            self.requests += 1
            if self.requests == 2:
                conn.writer.write(CLOSE_1000)
                conn.closed = True
                continue
            run, thread, message = msg["runId"], msg["threadId"], f"a-{self.requests}"
            for f in _agui_run(thread, run, message):
                conn.writer.write(text(f))
                await asyncio.sleep(0.003)  # wait-ok: the server's pace


async def test_an_agui_websocket_request_that_crossed_the_close_is_sent_again_everywhere():
    # AG-UI names every run from the client and has no resume frame: a request that crossed the server's close before
    # any event could not be resumed, and was never sent again (run, check and proxy: `incomplete`).
    got = await judged_three_ways(AguiServer, chats_per_user=3, profile_name="ag-ui")
    expected = [PASS, PASS, SENT_AGAIN]
    assert got == {"run": expected, "check": expected, "proxy": expected}, got


def between_chats(data: bytes) -> Callable[..., Awaitable[None]]:
    """After the first run, once its chat was judged (settle 0.1 s) and while the user thinks (0.6 s), `data` (were it
    to come a little before or after, a chat in flight or settling would take it: the verdicts are the same)."""
    return then(paced, lambda conn, p, n: data if n == 1 else None, delay=0.3)


def after_the_welcome(data: bytes) -> Callable[[], Server]:
    """`data` in the same TCP write as the welcome, before the client could send anything."""
    return lambda: Server(paced, welcome=text({"type": "connection_established",
                                               "data": {"connection_id": "c", "user_id": USER}}) + data)


INCIDENTS = {
    "another-users-event-between-chats": (lambda: Server(between_chats(FOREIGN)), "R8", "0.6s"),
    "another-users-heartbeat-between-chats": (
        lambda: Server(between_chats(text({"type": "heartbeat", "user_id": "u-2", "data": {}}))), "R8", "0.6s"),
    "a-malformed-frame-between-chats": (lambda: Server(between_chats(text({"type": "agent_reflecting"}))), "R12",
                                        "0.6s"),
    "another-users-event-after-the-welcome": (after_the_welcome(FOREIGN), "R8", "0s"),
}


@pytest.mark.parametrize("name", list(INCIDENTS))
async def test_incidents_with_no_chat_on_screen_fail_the_next_chat(name):
    # docs/protocol.md, R8 and R12: charged to the chats in flight, else the one listening out its settle window, else
    # the next chat the connection carries: whether it came a moment before or after a verdict decides nothing.
    make, rule, think = INCIDENTS[name]
    got = await judged_three_ways(make, chats_per_user=2, think_time=think)
    expected = sorted([("failed", ((rule, 1),), ()), PASS])
    assert got == {"run": expected, "check": expected, "proxy": expected}, got


@dataclass
class AguiLateServer:
    """AG-UI over WebSocket: each request answered with a clean run; after the first, once its chat was judged (settle
    0.1 s) and while the user thinks (0.6 s), one more TEXT_MESSAGE_CONTENT of that run (AG-UI's events name no run)."""

    requests: int = 0

    async def handler(self, conn: WsConn) -> None:
        while (raw := await conn.recv()) is not None:
            msg = json.loads(raw)
            self.requests += 1
            run, thread, message = msg["runId"], msg["threadId"], f"a-{self.requests}"
            for f in _agui_run(thread, run, message):
                conn.writer.write(text(f))
            if self.requests == 1:
                await asyncio.sleep(0.3)  # wait-ok: the server's pace
                conn.writer.write(text({"type": "TEXT_MESSAGE_CONTENT", "messageId": message, "delta": "late"}))


async def test_a_late_agui_event_between_chats_is_no_cross_talk_of_the_next_chat():
    # An AG-UI event names no run: on a connection of one user with no chat in flight, one that came after the last
    # chat's verdict is a late event of that chat (a warning on it), not another user's event. It was charged to the
    # next chat as an R8 (cross-talk), failing a chat the server answered correctly.
    got = await judged_three_ways(AguiLateServer, chats_per_user=2, profile_name="ag-ui", think_time="0.6s")
    for way, verdicts in got.items():
        assert all(v[0] == "passed" for v in verdicts), (way, got)
