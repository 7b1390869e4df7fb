"""The SyncSession (the Locust user's client) overlapping settle windows against a real server in a thread: the next
chat starts while the last one still listens, a late event of the last one still fails it, its final verdict goes to
the caller's callback once, and close() listens out the windows still open."""
from __future__ import annotations

import json

import pytest

from harness.checker import Expectations
from harness.events import DEFAULT_REQUIRED, Outcome, Rule
from harness.flow import ChatOptions
from harness.gevent_client import SyncSession
from harness.profiles import load_profile
from harness.sinks import Sink
from harness.targets import Target

from .test_sync_session import ServerThread

WELCOME = json.dumps({"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}})
EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=5.0, deadline=10.0)
RUN = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "partial_result", "agent_completed"]


def frame(kind: str, run_id: str, seq: int, message_id: str) -> str:
    payload = {"message_id": message_id, "tool_call_id": "t1", "tool_name": "calc"}
    return json.dumps({"type": kind, "run_id": run_id, "seq": seq, "payload": payload})


class Counts(Sink):
    def __init__(self) -> None:
        self.started = 0
        self.finished: list = []

    def chat_started(self, scenario):
        self.started += 1

    def chat_finished(self, result):
        self.finished.append(result)


async def late_event_server(ws, chats: int = 2) -> None:
    """Run r1 in full; when the second message arrives, first a late agent_thinking of r1 (R4, seq 7), then r2."""
    await ws.send(WELCOME)
    messages = []
    for n in range(1, chats + 1):
        msg = json.loads(await ws.recv())
        mid = msg["payload"]["message_id"]
        messages.append(mid)
        if n == 2:
            await ws.send(frame("agent_thinking", "r1", len(RUN) + 1, messages[0]))
        for seq, kind in enumerate(RUN, 1):
            await ws.send(frame(kind, f"r{n}", seq, mid))
    await ws.wait_closed()


def session_for(url: str, sink: Sink) -> SyncSession:
    return SyncSession(Target(url=url, profile=load_profile("netra"), name="raw"), "u", "overlap", sink,
                       connect_timeout=5)


@pytest.mark.timeout(30)
def test_late_event_after_the_next_chat_started_fails_the_earlier_chat():
    sink, verdicts = Counts(), []
    # A settle window far longer than the exchange: the second message is sent while the first chat still listens.
    options = ChatOptions(settle=2.0, overlap_settle=True)
    with ServerThread(late_event_server) as url:
        session = session_for(url, sink)
        try:
            first = session.chat("one", EXP, options, verdicts.append)
            judged_before_second = len(verdicts)
            second = session.chat("two", EXP, options, verdicts.append)
            assert len(verdicts) < 2  # the second chat listens out its window too
        finally:
            session.close()
    # Both returned at their run's end with no verdict yet; the callback got one final verdict per chat, the first
    # failed by the late event that came after chat two began, the same objects the sink counted.
    assert first is None and second is None and judged_before_second == 0
    assert sink.started == len(sink.finished) == len(verdicts) == 2
    assert {id(r) for r in verdicts} == {id(r) for r in sink.finished}
    by_message = sorted(verdicts, key=lambda r: r.run_id or "")
    assert by_message[0].outcome is Outcome.FAILED, by_message[0].violations
    assert [v.rule for v in by_message[0].violations] == [Rule.R4]
    assert by_message[1].outcome is Outcome.PASSED, by_message[1].violations


@pytest.mark.timeout(30)
def test_without_a_verdict_callback_the_chat_waits_out_its_window():
    sink = Counts()
    with ServerThread(late_event_server) as url:
        session = session_for(url, sink)
        try:
            first = session.chat("one", EXP, ChatOptions(settle=0.3, overlap_settle=True))
            assert first is not None and len(sink.finished) == 1  # judged before chat two was sent
            second = session.chat("two", EXP, ChatOptions(settle=0.3, overlap_settle=True))
        finally:
            session.close()
    assert first.outcome is Outcome.PASSED and second is not None
    assert sink.started == len(sink.finished) == 2


@pytest.mark.timeout(30)
def test_close_listens_out_the_windows_still_open_and_counts_each_chat_once():
    sink, verdicts = Counts(), []
    with ServerThread(lambda ws: late_event_server(ws, chats=1)) as url:
        session = session_for(url, sink)
        try:
            assert session.chat("one", EXP, ChatOptions(settle=0.5, overlap_settle=True), verdicts.append) is None
            assert verdicts == []
        finally:
            session.close()
    assert sink.started == len(sink.finished) == len(verdicts) == 1
    assert verdicts[0].outcome is Outcome.PASSED
    session.close()  # closing again judges nothing twice
    assert len(verdicts) == 1
