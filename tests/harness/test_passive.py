"""The one road for chats the harness watches rather than plays (the proxy, recordings): PassiveChats' timing and
the routing rules a watcher needs (a client that names no ids, a resume, a session error), with real profile decodes."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from harness.checker import KEEP_FINISHED, ChatTracker, ConnectionChecker, Expectations
from harness.events import DEFAULT_REQUIRED, Outcome
from harness.flow import PassiveChats, verdict_due
from harness.profiles import load_profile

NETRA = load_profile("netra")
EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0)
RUN = ["agent_started", "agent_thinking", "tool_executing", "tool_completed", "agent_completed"]


def frame(kind: str, run: str = "r1", seq: int | None = None, **payload) -> str:
    body = {"run_id": run, **payload}
    if seq is not None:
        body["seq"] = seq
    if kind.startswith("tool_"):
        body.setdefault("tool_call_id", "t1")
    return json.dumps({"type": kind, "payload": body})


def feed(checker: ConnectionChecker, kinds: list[str], start: float, run: str = "r1") -> float:
    t = start
    for i, kind in enumerate(kinds, 1):
        t += 0.01
        decoded = NETRA.decode(frame(kind, run, seq=i), t)
        checker.route(decoded)  # type: ignore[arg-type]
    return t


def test_a_chat_is_judged_settle_after_its_terminal_event_and_not_before():
    checker = ConnectionChecker(None, events_name_run=True)
    chat = ChatTracker("c1", EXP, 0.0)
    checker.add(chat)
    watch = PassiveChats(checker, settle=0.5)
    assert watch.next_due() == 10.0  # only the deadline, until the run ends
    end = feed(checker, RUN, 0.0)
    assert verdict_due(chat, 0.5) == watch.next_due() == end + 0.5
    assert watch.due(end + 0.4) == []
    (result,) = watch.due(end + 0.5)
    assert result.outcome is Outcome.PASSED and chat.judged and watch.next_due() is None


def test_a_late_event_within_the_settle_window_fails_the_chat():
    checker = ConnectionChecker(None)
    chat = ChatTracker("c1", EXP, 0.0)
    checker.add(chat)
    watch = PassiveChats(checker, settle=0.5)
    end = feed(checker, RUN, 0.0)
    checker.route(NETRA.decode(frame("partial_result", seq=99), end + 0.1))  # type: ignore[arg-type]
    (result,) = watch.due(end + 1)
    assert [v.rule for v in result.violations if v.rule == "R4"]


def test_a_run_with_no_terminal_event_is_judged_at_its_deadline():
    checker = ConnectionChecker(None)
    checker.add(ChatTracker("c1", EXP, 0.0))
    watch = PassiveChats(checker, settle=0.5)
    feed(checker, RUN[:3], 0.0)
    assert watch.due(9.9) == []
    (result,) = watch.due(10.0)
    assert result.outcome is Outcome.INCOMPLETE and any(v.rule == "R10" for v in result.violations)


def test_the_user_leaving_mid_run_is_an_abandonment_the_server_closing_a_lost_run():
    for by_client, outcome in ((True, Outcome.PASSED), (False, Outcome.INCOMPLETE)):
        checker = ConnectionChecker(None)
        checker.add(ChatTracker("c1", EXP, 0.0))
        feed(checker, RUN[:2], 0.0)
        ((result, abandoned),) = PassiveChats(checker, 0.1).closed(1.0, by_client=by_client)
        assert abandoned is by_client and result.outcome is outcome


def test_a_client_that_sends_no_ids_is_not_cross_talk():
    """The server names the run; the client's request named nothing: the run answers the oldest waiting chat."""
    checker = ConnectionChecker(None, events_name_run=True)
    first, second = ChatTracker("c1", EXP, 0.0), ChatTracker("c2", EXP, 0.001)
    checker.add(first)
    checker.add(second)
    feed(checker, RUN, 0.0, run="server-run-1")
    feed(checker, RUN, 0.1, run="server-run-2")
    assert first.run_id == "server-run-1" and second.run_id == "server-run-2"
    assert checker.foreign == 0
    assert first.finish(1.0).passed and second.finish(1.0).passed


def test_a_run_naming_another_thread_is_still_cross_talk():
    checker = ConnectionChecker(None, events_name_run=True)
    chat = ChatTracker("c1", EXP, 0.0, thread_id="mine")
    checker.add(chat)
    checker.route(NETRA.decode(frame("agent_started", run="r-x", thread_id="theirs"), 0.1))  # type: ignore[arg-type]
    assert checker.foreign == 1 and any(v.rule == "R8" for v in chat.violations)


def test_an_event_naming_no_run_is_foreign_where_every_event_names_one():
    checker = ConnectionChecker(None, events_name_run=True)
    chat = ChatTracker("c1", EXP, 0.0)
    checker.add(chat)
    checker.route(NETRA.decode(json.dumps({"type": "agent_thinking", "payload": {}}), 0.1))  # type: ignore[arg-type]
    assert any(v.rule == "R8" and "no run" in v.reason for v in chat.violations)


def test_huge_fields_are_an_r12_and_kept_truncated():
    checker = ConnectionChecker(None)
    chat = ChatTracker("c1", EXP, 0.0)
    checker.add(chat)
    big = "x" * 4_000_000
    checker.route(NETRA.decode(json.dumps({"type": "agent_started", "payload": {"run_id": "r1", "timestamp": big}}), 0.1))  # type: ignore[arg-type]
    (event,) = chat.events
    assert len(str(event.server_time)) < 100
    assert any(v.rule == "R12" and "timestamp" in v.reason for v in chat.violations)


def test_client_frames_are_told_apart_by_the_profile():
    request = NETRA.decode_client(json.dumps({"type": "user_message", "payload": {"content": "hi", "thread_id": "t1"}}))
    resume = NETRA.decode_client(json.dumps({"type": "resume", "payload": {"run_id": "r9", "last_seq": 3}}))
    other = NETRA.decode_client(json.dumps({"type": "pong"}))
    assert (request.kind, request.thread_id) == ("request", "t1")
    assert (resume.kind, resume.run_id) == ("resume", "r9")
    assert other.kind == "other" and NETRA.decode_client("{").kind == "malformed"


def test_a_request_carrying_the_chats_ids_where_no_event_does_is_read_where_the_template_puts_them():
    # A2A's JSON-RPC request names its context and message under params.message; its events under result: the
    # watcher (the proxy, `chatprobe check`) reads the request's ids where the request template puts them.
    a2a = load_profile(str(Path(__file__).resolve().parents[2] / "docs" / "profiles" / "a2a.yaml"))
    sent = a2a.decode_client(json.dumps({"jsonrpc": "2.0", "id": "m1", "method": "message/stream", "params": {
        "message": {"kind": "message", "role": "user", "messageId": "m1", "contextId": "t1",
                    "parts": [{"kind": "text", "text": "hi"}]}}}))
    assert (sent.kind, sent.thread_id, sent.message_id, sent.run_id) == ("request", "t1", "m1", None)
    # Where the events' fields find an id in the client's frame, they win (netra's thread at the root, not payload's).
    both = NETRA.decode_client(json.dumps({"type": "user_message", "thread_id": "t1", "payload": {"thread_id": "t2"}}))
    assert both.thread_id == "t1"


AGUI = load_profile("ag-ui")


def agui_run_named_late(run: str) -> list[str]:
    """An AG-UI stream whose first event comes before RUN_STARTED (an R1), so before anything names the run."""
    return [json.dumps(f) for f in (
        {"type": "TEXT_MESSAGE_START", "messageId": "a1", "role": "assistant"},
        {"type": "RUN_STARTED", "threadId": "t-1", "runId": run},
        {"type": "TEXT_MESSAGE_CONTENT", "messageId": "a1", "delta": "x"},
        {"type": "TEXT_MESSAGE_END", "messageId": "a1"},
        {"type": "RUN_FINISHED", "threadId": "t-1", "runId": run})]


def test_a_run_named_after_its_first_events_is_its_chats_whether_the_client_named_it_or_not():
    """The one adoption rule: a chat that named no run takes the first run named to it even after events that named
    none (as `chatprobe check` does for a stream recorded without its request), so the same stream gets the same
    verdict whether the client sent the run id or not: its R1, and no cross-talk."""
    exp = dataclasses.replace(EXP, required=frozenset())
    verdicts = []
    for sent_run in ("r-1", None):
        checker = ConnectionChecker(None)
        chat = ChatTracker("c1", exp, 0.0, run_id=sent_run)
        checker.add(chat)
        for i, f in enumerate(agui_run_named_late("r-1")):
            assert checker.route(AGUI.decode(f, 0.1 + i / 100)) is chat  # type: ignore[arg-type]
        assert checker.foreign == 0 and chat.run_id == "r-1"
        result = chat.finish(1.0)
        verdicts.append((result.outcome, sorted(v.rule for v in result.violations)))
    assert verdicts[0] == verdicts[1] == (Outcome.FAILED, ["R1"])


def test_a_done_or_judged_chat_adopts_no_run_and_the_waiting_index_stays_bounded():
    checker = ConnectionChecker(None, events_name_run=True)
    for i in range(20 * KEEP_FINISHED):
        chat = ChatTracker(f"c{i}", EXP, float(i))
        checker.add(chat)
        chat.finish(float(i) + 1)  # judged without a run (a client that gave up): nothing more is its
    assert len(checker.unnamed) <= 2 * KEEP_FINISHED
    checker.route(NETRA.decode(frame("agent_started", run="late"), 9e3))  # type: ignore[arg-type]
    assert checker.foreign == 1 and not checker.unnamed
