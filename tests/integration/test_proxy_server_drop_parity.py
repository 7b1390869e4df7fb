"""A server that cuts a connection (a keepalive timeout's close 1011 "keepalive ping timeout", or a TCP drop) while a
client's message crosses it, just before one, or mid-run, behind `chatprobe proxy --record`: the proxy's live verdicts
and counts, `chatprobe check` of the proxy's own recording and `chatprobe run`'s verdicts (the client through the
proxy) are one answer.

What it reproduces, deterministically and without load: tests/integration/test_indep_websockets_server.py's
"pings-often" server (it pinged every 20 ms and, before its pong allowance was raised, dropped a connection whose pong
came 200 ms late) once had the proxy judge a chat `failed` with R12 alone where `check` of the proxy's recording saw
R1, R2, R5, R6, R7, and count a 16th chat where 15 were played. The reconnection scenario's client drops its socket
after the 3rd event and resumes the run on a new connection; when the server cut that resume's connection, the
client resumed a second time, and:

- `check` forgot the run the client had left at its first resume (flow.LeftRuns.take), so the second resume's replay
  was a chat of its own, R1, R2, R5, R7 (R6 when the run's thinking came first), the 16th chat; the proxy, which
  forgot it too, charged that replay to whatever came next (an R12), or — when it had not yet finished with the
  connection the client left (it judged that close only once its close handshakes were over, up to 2 s later, while
  the recording's close record is stamped when the client left) — moved the chat to the resume's connection and
  judged it on three connections' frames where `check` read it as left on the first;
- the proxy's `--record` (not `--record-all`) kept a failing chat's connection carrying the resume of a run whose
  chat the client had left on a connection it did not keep: `check` read the replay as a chat of its own.

FAILED on the code before: resume-crosses-1011 and resume-crosses-drop (a 4th chat at `check`, R1, R2, R5, R7, where
the proxy and the client passed 3), and the kept connections of message-crosses-1011 (the same 4th chat). The other
cases guard the rest of the ground; before-message-1011 failed on it 1 run in 3 (the client's message crossed the
server's close at the proxy, which never read it: the client counted an `incomplete` chat the proxy and its recording
did not have; the proxy now reads what came before its connection to the client closed, proxy._read_out).
"""
from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.scenario import Scenario
from monitors.proxy import LiveChats, LiveConnection, Proxy, start_proxy

from .outside_servers import InThread, RawWsServer, WsConn
from .test_independent_servers import Action, KeptSink, Netra, Verdict, Wait, chat_verdicts, run_events, ws_frame

pytestmark = pytest.mark.timeout(60)

CUT = "cut"  # an action: the server cuts the connection here (Cuts.how)
SCENARIO: dict[str, Any] = {
    "name": "cut", "users": 1, "connect_timeout": "3s",
    # the reconnection scenario's shape: the client drops the socket after the 3rd event and resumes the run
    "steps": [{"chat": {"message": "Compute 3 * 5 #tools=1 #chunks=2", "disconnect_after": 3}},
              {"chat": {"message": "Look up the capital of Chile."}},
              {"chat": {"message": "Look up the capital of Peru."}}],
    "expect": {"deadline": "3s", "settle": "0.1s"}}


@dataclass
class Cuts(Netra):
    """A netra server (test_independent_servers.Netra) that cuts one connection once: `how` is "1011" (a close frame
    1011 "keepalive ping timeout", then the TCP connection closed, as the `websockets` library's keepalive does) or
    "drop" (the TCP connection aborted); `crossing` (a client frame's type and its ordinal among that type's) is the
    frame that arrives as it cuts (never answered); else `after` (message ordinal, event index) cuts right after that
    event of that message's run; `after_replay` cuts right after a resume's replay ended (before the next message)."""

    how: str = "1011"
    crossing: tuple[str, int] | None = None
    after: tuple[int, int] | None = None
    after_replay: bool = False
    seen: Counter[str] = field(default_factory=Counter)
    done: bool = False

    def cut(self, conn: WsConn) -> None:
        self.done = True
        if self.how == "1011":
            conn.writer.write(ws_frame(struct.pack("!H", 1011) + b"keepalive ping timeout", 0x8))
            conn.closed = True
            conn.writer.close()
        else:
            conn.abort()

    async def handler(self, conn: WsConn) -> None:
        recv = conn.recv

        async def crossing() -> str | None:
            raw = await recv()
            if raw is None or self.done or self.crossing is None:
                return raw
            kind = json.loads(raw).get("type")
            self.seen[kind] += 1
            if (kind, self.seen[kind]) == self.crossing:
                self.cut(conn)
                return None
            return raw

        conn.recv = crossing  # type: ignore[method-assign]
        await super().handler(conn)

    async def play(self, conn: WsConn, actions: list[Action]) -> None:
        for action in actions:  # the whole run known, for a resume (as Netra.play), whatever the cut leaves unsent
            if isinstance(action, dict) and "seq" in action and "run_id" in action:
                events = self.runs.setdefault(action["run_id"], [])
                if action not in events:
                    events.append(action)
        for action in actions:
            if action == CUT:
                if not self.done:
                    self.cut(conn)
                    return
                continue
            await super().play(conn, [action])
            if conn.closed:
                return

    async def resume(self, conn: WsConn, p: dict[str, Any]) -> None:
        await super().resume(conn, p)
        if self.after_replay and not self.done and not conn.closed:
            self.cut(conn)  # the replay ended: the client's next message comes to a cut connection

    def answer_of(self, p: dict[str, Any], n: int) -> list[Action]:
        events: list[Action] = list(run_events(p, chunks=2))
        if n == 1:
            # the client drops the socket after the 3rd event (disconnect_after): the run pauses there, so that it
            # never reads the whole run first on a loaded machine; its resume gets the rest at once
            events.insert(3, Wait(2.0))
        if self.after is not None and self.after[0] == n:
            events.insert(self.after[1] + 1, CUT)
        return events


def make(**cut: Any) -> Cuts:
    server = Cuts(**cut)
    server.answer = server.answer_of
    return server


CASES: dict[str, dict[str, Any]] = {
    # the client's resume (after it dropped the socket on purpose) crosses the cut: it resumes again elsewhere
    "resume-crosses-1011": {"how": "1011", "crossing": ("resume", 1)},
    "resume-crosses-drop": {"how": "drop", "crossing": ("resume", 1)},
    # the next chat's message crosses the cut: no event of its run came, and neither close is one a client sends a
    # message again after (docs/protocol.md): incomplete on every road
    "message-crosses-1011": {"how": "1011", "crossing": ("user_message", 2)},
    "message-crosses-drop": {"how": "drop", "crossing": ("user_message", 2)},
    # just before the next message: the resumed run's last event, then the cut
    "before-message-1011": {"how": "1011", "after_replay": True},
    "before-message-drop": {"how": "drop", "after_replay": True},
    # mid-run: after the first event of the second chat's run (resumed by the client)
    "mid-run-1011": {"how": "1011", "after": (2, 0)},
    "mid-run-drop": {"how": "drop", "after": (2, 0)},
}


class Watched(LiveChats):
    """The proxy's chats, and an event set once every connection it opened was closed (its recording saved)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle = threading.Event()
        self.opened = 0

    def connection(self, *args: Any, **kwargs: Any) -> LiveConnection:
        self.opened += 1
        self.idle.clear()
        return super().connection(*args, **kwargs)

    def connection_closed(self, conn: LiveConnection) -> None:
        super().connection_closed(conn)
        if not self.open:
            self.idle.set()


class Counting(KeptSink):
    def __init__(self) -> None:
        super().__init__()
        self.started = 0

    def chat_started(self, scenario: str) -> None:
        self.started += 1
        super().chat_started(scenario)


def through_proxy(tmp_path: Path, cut: dict[str, Any], *, record_all: bool) -> dict[str, Any]:
    """The client (`chatprobe run`) through the proxy in front of a Cuts server: the client's verdicts, the proxy's
    (and how many chats it started and judged), and `check`'s of the proxy's recording."""
    path = tmp_path / "scenario.yaml"
    path.write_text(json.dumps(SCENARIO))
    player = {**SCENARIO, "expect": {**SCENARIO["expect"], "deadline": "4s"}}  # waits past the proxy's deadline
    played_path = tmp_path / "player.yaml"
    played_path.write_text(json.dumps(player))
    profile = load_profile("netra")
    sc = Scenario.model_validate(SCENARIO)
    kept = Counting()
    rec = tmp_path / "proxy-rec"
    server = make(**cut)
    hosted = InThread(RawWsServer(server.handler))
    with hosted as ws:
        live = Watched(profile, kept, sc.expectations(profile), "live", sc.expect.settle,
                       recorder=Recorder(rec, keep_all=record_all))
        front = asyncio.run_coroutine_threadsafe(start_proxy(Proxy(ws.url.rsplit("/", 1)[0], live), "127.0.0.1", 0),
                                                 hosted.loop).result(10)
        try:
            port = front.sockets[0].getsockname()[1]
            code = main(["run", "--target", f"ws://127.0.0.1:{port}/ws", "--auth", "none", str(played_path), "-q",
                         "--json", str(tmp_path / "played.json")])
            assert code in (0, 1), code
            assert live.idle.wait(10), "the proxy did not close every connection"
            played, _ = chat_verdicts(json.loads((tmp_path / "played.json").read_text()))
            results = kept.wait_for(len(played), 10)
        finally:
            hosted.loop.call_soon_threadsafe(front.close)
    assert server.done, "the server never cut a connection"
    assert live.opened >= 3, live.opened  # the client's drop, the cut, and the connections after them
    out: dict[str, Any] = {"played": played, "proxy": sorted((r.outcome.value, tuple(sorted(r.rule_counts())))
                                                            for r in results),
                           "proxy_started": kept.started}
    checked = tmp_path / "proxy-check.json"
    if rec.exists() and any(rec.iterdir()):
        main(["check", str(rec), "--scenario", str(path), "--json", str(checked), "-q"])
        out["check"], _ = chat_verdicts(json.loads(checked.read_text()))
    else:
        out["check"] = []
    return out


PASS: Verdict = ("passed", ())
INCOMPLETE: Verdict = ("incomplete", ())


@pytest.mark.parametrize("case", list(CASES))
def test_a_cut_connection_is_one_answer_live_and_in_the_proxys_recording(tmp_path, case):
    got = through_proxy(tmp_path, CASES[case], record_all=True)
    played = got["played"]
    # the client's own verdicts: each chat passes, but one whose message crossed the cut (no event of its run came,
    # and a 1011 or a drop is no reason to send it again) or whose run the server cut and never went on with
    if case.startswith("message-crosses"):
        assert played == [INCOMPLETE, PASS, PASS], played
    elif not case.startswith("before-message"):  # a message sent as the close came: it may cross it (incomplete)
        assert played == [PASS] * 3, played
    assert got["check"] == got["proxy"], got
    assert got["proxy_started"] == len(got["proxy"]), got  # no chat counted that the proxy did not judge
    if case == "before-message-drop" and len(played) == len(got["proxy"]) + 1:
        # the message the client sent as the server dropped the connection reached the proxy after the proxy had
        # dropped the client's as the server's came: the kernel discarded it; the client counts it, `incomplete`
        # (docs/recordings.md, "Where it can still differ")
        assert sorted([*got["proxy"], INCOMPLETE]) == played, got
    else:
        assert got["proxy"] == played, got


@pytest.mark.parametrize("case", ["resume-crosses-drop", "message-crosses-1011"])
def test_the_connections_the_proxy_keeps_are_judged_as_the_proxy_judged_them(tmp_path, case):
    # --record without --record-all keeps the connections with a chat that did not pass, and the one a chat was left
    # on mid-run by its client: what `check` finds in them is what the proxy judged there, never a chat of its own
    got = through_proxy(tmp_path, CASES[case], record_all=False)
    not_passed = [v for v in got["proxy"] if v != PASS]
    assert [v for v in got["check"] if v != PASS] == not_passed, got
    assert len(got["check"]) <= len(got["proxy"]), got
