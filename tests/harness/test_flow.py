"""The chat flow as a pure state machine: feed it times, connection states and events; check what it asks for."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from harness.backoff import BACKOFF_FIRST
from harness.checker import ConnectionChecker, Expectations
from harness.events import DEFAULT_REQUIRED, Event, Frame, Role
from harness.flow import (
    CLOSE,
    CONNECT,
    DEFAULTS,
    DROP,
    STOPPED_NOTE,
    ChatFlow,
    ChatOptions,
    Finish,
    FrameRouter,
    Reconnect,
    Send,
    Wait,
    lost_note_for,
    takes_attempt,
)
from harness.profiles import load_profile
from harness.scenario import ChatCall, ChatGroup, RawCall, Scenario
from harness.sinks import Sink

EXP = Expectations(required=frozenset(DEFAULT_REQUIRED), first_event_limit=2.0, deadline=10.0, stall_limit=30.0)
INVALID = Expectations(required=frozenset(), deadline=5.0, expect_error="invalid_input")
ROLES = [Role.AGENT_STARTED, Role.AGENT_THINKING, Role.TOOL_EXECUTING, Role.TOOL_COMPLETED, Role.PARTIAL_RESULT,
         Role.AGENT_COMPLETED]


@dataclass
class FakeLink:
    generation: int = 0
    closed: bool = True
    ended_note: str = ""
    stream_per_chat: bool = False
    closed_by_client: bool = False
    closed_clean: bool = False
    close_code: int | None = None
    closed_at: float = float("-inf")  # when the client saw it end; -inf: before anything the flow was told


class Recorder(Sink):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def chat_started(self, scenario):
        self.calls.append(("started",))

    def chat_finished(self, result):
        self.calls.append(("finished", result.outcome.value))

    def chat_abandoned(self, scenario):
        self.calls.append(("abandoned",))

    def connection_attempt(self, scenario, result):
        self.calls.append(("connection", result))

    def reconnect(self, scenario, result):
        self.calls.append(("reconnect", result))

    def count(self, name: str) -> int:
        return sum(c[0] == name for c in self.calls)


def make(probe: bool = False, **options) -> tuple[ChatFlow, Recorder, FakeLink]:
    sink = Recorder()
    router = FrameRouter(load_profile("netra"), ConnectionChecker(None), sink, "s")
    if probe:
        flow = ChatFlow.invalid_input(router, "not json", INVALID, now=0.0)
    else:
        flow = ChatFlow.chat(router, "hi", EXP, user_id="u1", now=0.0, options=ChatOptions(client_run_id=True, **options))
    return flow, sink, FakeLink()


def start(flow: ChatFlow, link: FakeLink, now: float = 0.0) -> Send:
    """Connect (the link starts closed) and send the message; the flow is then following the run."""
    assert flow.next(now, link) == CONNECT
    link.closed, link.generation = False, link.generation + 1
    flow.connected()
    send = flow.next(now, link)
    assert isinstance(send, Send) and send.what in ("message", "raw")
    flow.sent(True)
    return send


def feed(flow: ChatFlow, n: int, t: float, first: int = 0) -> None:
    """Events first+1 … first+n of the chat's run, as the router would route them."""
    tr = flow.tracker
    for i in range(first, first + n):
        role = ROLES[min(i, len(ROLES) - 1)]
        e = Event(role=role, wire_type=role.value, received_at=t, run_id=tr.run_id, seq=i + 1, user_id="u1",
                  thread_id=tr.thread_id)
        if role in (Role.TOOL_EXECUTING, Role.TOOL_COMPLETED):
            e.tool_call_id = "c1"
            e.span = ("tool call", "open" if role is Role.TOOL_EXECUTING else "close", "c1")
        tr.feed(e)


def test_a_chat_connects_sends_waits_until_its_deadline_and_passes_after_the_settle_window():
    flow, sink, link = make(settle=0.5)
    send = start(flow, link, now=1.0)
    assert send.frame["payload"]["content"] == "hi" and flow.tracker.sent_at == 1.0
    assert flow.next(1.1, link) == Wait(11.0)  # sent at 1.0, deadline 10 s
    feed(flow, 6, 1.2)
    assert flow.next(1.2, link) == Wait(1.7)  # the settle window after the terminal event
    assert flow.next(1.5, link) == Wait(1.7)
    done = flow.next(1.7, link)
    assert isinstance(done, Finish) and done.result.outcome.value == "passed"
    assert sink.calls == [("started",), ("finished", "passed")]
    assert flow.next(2.0, link) == done  # finished for good, reported once
    assert sink.count("finished") == 1


def test_a_provisional_verdict_while_settling_judges_nothing_and_a_late_event_still_fails_the_chat():
    flow, sink, link = make(settle=0.5, overlap_settle=True)
    start(flow, link)
    feed(flow, 6, 0.2)
    assert flow.next(0.2, link) == Wait(0.7) and flow.settling
    early = flow.provisional(0.3)
    assert early.outcome.value == "passed"
    assert not flow.tracker.judged and sink.count("finished") == 0  # judged once, when the window ends
    feed(flow, 1, 0.4, first=1)  # a late agent_thinking, seq 2 again: an R7 duplicate (a copy is judged by R7 alone)
    assert flow.next(0.4, link) == Wait(0.7)
    done = flow.next(0.7, link)
    assert isinstance(done, Finish) and done.result.outcome.value == "failed"
    assert {v.rule.value for v in done.result.violations} == {"R7"}
    assert early.outcome.value == "passed" and sink.calls == [("started",), ("finished", "failed")]


def test_a_chat_on_an_open_connection_sends_at_once_and_registers_with_the_checker():
    flow, sink, link = make(settle=0)
    link.closed, link.generation = False, 3
    send = flow.next(0.0, link)
    assert isinstance(send, Send) and send.what == "message"
    assert flow.tracker in flow.router.checker.active()
    flow.sent(True)
    feed(flow, 6, 0.1)
    assert isinstance(flow.next(0.1, link), Finish)  # no settle window


def test_the_settle_window_ends_early_when_the_connection_closes():
    flow, _, link = make(settle=5)
    start(flow, link)
    feed(flow, 6, 0.2)
    assert flow.next(0.2, link) == Wait(5.2)
    link.closed = True
    assert flow.next(0.3, link).result.outcome.value == "passed"


ERROR_EXP = Expectations(required=frozenset({Role.AGENT_STARTED, Role.AGENT_COMPLETED}), deadline=10.0,
                         expect_error="recoverable")


def erred(settle: float, at: float) -> tuple[ChatFlow, FakeLink]:
    """A chat expecting a recoverable error, sent at 0, whose run erred and completed at `at`."""
    router = FrameRouter(load_profile("netra"), ConnectionChecker(None), Recorder(), "s")
    flow = ChatFlow.chat(router, "hi", ERROR_EXP, user_id="u1", now=0.0,
                         options=ChatOptions(client_run_id=True, settle=settle))
    link = FakeLink()
    start(flow, link)
    tr = flow.tracker
    for seq, role in enumerate([Role.AGENT_STARTED, Role.ERROR_EVENT, Role.AGENT_COMPLETED], 1):
        tr.feed(Event(role=role, wire_type=role.value, received_at=at, run_id=tr.run_id, seq=seq, user_id="u1",
                      thread_id=tr.thread_id, recoverable=True))
    return flow, link


@pytest.mark.parametrize("settling", [True, False], ids=["settling", "stepped-after-the-close"])
@pytest.mark.parametrize("closed_at,r13", [(0.249, True), (0.25, True), (0.251, False)])
def test_a_close_at_the_edge_of_the_settle_window_is_judged_by_when_it_came_not_when_the_chat_was_stepped(
        settling, closed_at, r13):
    # FAILED before: a busy machine steps a chat late. Its settle window (0.2 + 0.05) ended at 0.25; the close came at
    # `closed_at`; the chat was stepped at 0.4, the connection closed by then. R13 went by whether the link was closed
    # when stepped: a close after the window's end was R13 (settling), one within it, before the chat's first step
    # after its terminal event, was not. `check` judges the recorded close time against the window's end.
    flow, link = erred(0.05, 0.2)
    if settling:
        assert flow.next(0.2, link) == Wait(0.25) and flow.settling
    link.closed, link.closed_at = True, closed_at
    result = flow.next(0.4, link).result
    assert ("R13" in {v.rule for v in result.violations}) is r13, result.violations
    assert result.outcome.value == ("failed" if r13 else "passed")


def test_a_probe_answered_and_then_closed_past_its_settle_window_passes_however_late_it_is_stepped():
    # FAILED before: the probe was R13 whenever the link was closed when stepped, also when the close came after its
    # window had ended (`check`: a pass).
    flow, _, link = make(probe=True)
    start(flow, link)
    flow.tracker.error_frame(Frame("error", error_code="INVALID_MESSAGE"), 0.2)
    link.closed, link.closed_at = True, 0.2 + DEFAULTS.settle + 0.001
    assert flow.next(0.5, link).result.outcome.value == "passed"


def test_no_terminal_by_the_deadline_is_judged_incomplete_r10():
    flow, sink, link = make()
    start(flow, link)
    feed(flow, 2, 0.1)
    assert flow.next(9.99, link) == Wait(10.0)
    result = flow.next(10.0, link).result
    assert result.outcome.value == "incomplete" and "R10" in {v.rule for v in result.violations}


def test_connect_failure_is_an_error_verdict_of_that_kind():
    flow, sink, link = make()
    assert flow.next(0.0, link) == CONNECT
    flow.connect_failed("refused", "connection refused")
    done = flow.next(0.1, link)
    assert done.result.outcome.value == "error" and done.result.error_kind == "refused"
    assert sink.calls == [("started",), ("finished", "error")]


def test_a_message_that_cannot_be_sent_is_send_failed_or_the_connect_kind_when_sending_connects():
    flow, _, link = make()
    flow.next(0.0, link)
    flow.connected()
    flow.next(0.0, link)
    flow.sent(False)
    assert flow.next(0.0, link).result.error_kind == "send_failed"

    flow, sink, link = make()
    flow.next(0.0, link)
    flow.connected()
    flow.next(0.0, link)
    flow.sent(False, "refused", "no server")
    assert flow.next(0.0, link).result.error_kind == "refused"
    assert ("connection", "refused") in sink.calls
    assert flow.tracker not in flow.router.checker.active()  # never reached the server


def lost(flow, link, now):
    """The connection's loss noticed at `now`: the first attempt waits a fully jittered moment, [0, BACKOFF_FIRST)
    (harness/backoff.py: users a server dropped together do not all come back at that instant); woken then, the
    chat's Reconnect."""
    wait = flow.next(now, link)
    assert isinstance(wait, Wait) and now <= wait.until < now + BACKOFF_FIRST, wait
    action = flow.next(wait.until, link)
    assert isinstance(action, Reconnect), action
    return action


def attempted(flow, ok, now):
    """The driver's part of a Reconnect (Session._reconnect): the attempt taken (takes_attempt), made, its outcome."""
    retries = flow.retries
    assert retries.take(retries.attempts - 1 if retries.pending else retries.attempts)
    flow.reconnected(ok, now)


def test_disconnect_after_drops_once_then_reconnects_and_resumes_from_the_last_seq():
    flow, sink, link = make(disconnect_after=2, settle=0)
    start(flow, link)
    feed(flow, 2, 0.1)
    assert flow.next(0.1, link) == DROP
    link.closed = True
    assert lost(flow, link, 0.2).generation == 1
    attempted(flow, True, 0.2)
    link.closed, link.generation = False, 2
    resume = flow.next(0.3, link)
    assert isinstance(resume, Send) and resume.what == "resume"
    assert resume.frame["payload"]["last_seq"] == 2 and resume.frame["payload"]["run_id"] == flow.tracker.run_id
    flow.sent(True)
    assert flow.next(0.3, link) == Wait(10.0)  # not dropped a second time
    feed(flow, 4, 0.4, first=2)
    result = flow.next(0.4, link).result
    assert result.outcome.value == "passed" and result.reconnects == ["resumed"]
    assert ("reconnect", "resumed") in sink.calls


def test_a_resume_that_brings_nothing_back_is_lost():
    flow, sink, link = make(settle=0)
    start(flow, link)
    feed(flow, 2, 0.1)
    link.closed = True
    assert lost(flow, link, 0.2).generation == 1
    attempted(flow, True, 0.2)
    link.closed, link.generation = False, 2
    flow.next(0.2, link)
    flow.sent(True)
    link.closed = True  # gone again before any event: the first resume lost the run, and no more tries
    assert lost(flow, link, 0.3).generation == 2
    assert flow.tracker.reconnects == ["lost"] and ("reconnect", "lost") in sink.calls


def test_reconnect_gives_up_after_max_reconnects_and_judges_the_chat_lost():
    flow, sink, link = make(max_reconnects=1, settle=0)
    start(flow, link)
    feed(flow, 1, 0.1)
    link.closed = True
    lost(flow, link, 0.2)
    attempted(flow, True, 0.2)
    link.closed, link.generation = False, 2
    flow.next(0.2, link)
    flow.sent(True)
    feed(flow, 1, 0.3, first=1)
    link.closed = True
    result = flow.next(0.4, link).result
    assert result.outcome.value == "incomplete" and result.note == "connection lost mid-run"
    assert result.reconnects == ["resumed"]


def test_failed_reconnect_is_reported_lost_and_ends_the_chat():
    flow, sink, link = make(max_reconnect_attempts=1)
    start(flow, link)
    feed(flow, 1, 0.1)
    link.closed = True
    lost(flow, link, 0.2)
    attempted(flow, False, 0.2)
    result = flow.next(0.3, link).result
    assert result.outcome.value == "incomplete"
    assert result.note == "connection lost mid-run and reconnecting failed"
    assert result.reconnects == ["lost"] and sink.calls[-2:] == [("reconnect", "lost"), ("finished", "incomplete")]


def test_a_failed_reconnect_is_tried_again_with_backoff_until_one_connects():
    """A lost connection whose first reconnects are refused (a server restarting): each failure waits a capped,
    jittered exponential backoff (harness/backoff.py), then tries again; the attempts and failures show on the chat."""
    flow, sink, link = make(settle=0)
    start(flow, link)
    feed(flow, 1, 0.1)
    link.closed = True
    now = 0.2
    action = lost(flow, link, now)
    waits = []
    for i in range(3):
        if i:
            action = flow.next(now, link)
        assert isinstance(action, Reconnect) and action.generation == 1 and action.by == 10.0  # the chat's deadline
        assert takes_attempt(action, link.generation, link.closed) is True  # the driver makes it
        assert action.will_retry(now) is True  # what a recording's close record says, asked first at the failure
        flow.reconnected(False, now)
        wait = flow.next(now, link)
        assert isinstance(wait, Wait) and now < wait.until
        waits.append(wait.until - now)
        assert flow.next(wait.until - 0.001, link) == wait  # woken early: still waiting
        now = wait.until
    assert 0.05 <= waits[0] <= 0.1 and 0.1 <= waits[1] <= 0.2 and 0.2 <= waits[2] <= 0.4  # doubled, jittered
    assert isinstance(flow.next(now, link), Reconnect)
    attempted(flow, True, now)
    link.closed, link.generation = False, 2
    assert flow.next(now, link).what == "resume"
    flow.sent(True)
    assert flow.next(now, link) == Wait(10.0)  # the chat's own deadline again
    feed(flow, 5, now + 0.1, first=1)
    result = flow.next(now + 0.1, link).result
    assert result.outcome.value == "passed" and result.reconnects == ["resumed"]
    assert (result.reconnect_attempts, result.reconnect_failures) == (4, 3)
    assert sink.count("reconnect") == 1


def test_reconnect_attempts_are_bounded_by_count_and_by_time():
    """A server that never comes back: the chat is lost after max_reconnect_attempts, or once the next attempt would
    start past reconnect_timeout after the loss (or the chat's deadline), never later."""
    flow, sink, link = make(settle=0, max_reconnect_attempts=3)
    start(flow, link)
    feed(flow, 1, 0.1)
    link.closed = True
    now, attempts = 0.2, 0
    while not isinstance(action := flow.next(now, link), Finish):
        if isinstance(action, Wait):
            now = action.until
            continue
        attempts += 1
        attempted(flow, False, now)
    assert attempts == 3 and action.result.reconnects == ["lost"]
    assert action.result.note == "connection lost mid-run and reconnecting failed"
    assert (action.result.reconnect_attempts, action.result.reconnect_failures) == (3, 3)

    flow, sink, link = make(settle=0, reconnect_timeout=1.0)
    start(flow, link)
    feed(flow, 1, 0.1)
    link.closed = True
    now, attempts = 0.2, 0
    while not isinstance(action := flow.next(now, link), Finish):
        if isinstance(action, Wait):
            now = action.until
            continue
        attempts += 1
        assert action.by == 1.2 and now < 1.2  # no attempt starts past the give-up time
        attempted(flow, False, now)
    assert 2 <= attempts < 10 and now < 1.2 and action.result.note == "connection lost mid-run and reconnecting failed"


def test_a_chat_backing_off_reconnects_at_once_when_another_chat_reconnected():
    flow, _, link = make(settle=0)
    start(flow, link)
    feed(flow, 1, 0.1)
    link.closed = True
    lost(flow, link, 0.2)
    attempted(flow, False, 0.2)
    assert isinstance(flow.next(0.2, link), Wait)
    link.closed, link.generation = False, 2  # another chat of the connection reconnected it
    action = flow.next(0.21, link)
    assert isinstance(action, Reconnect)
    flow.reconnected(True, 0.21, attempted=False)
    assert flow.next(0.21, link).what == "resume"
    assert flow.tracker.reconnect_tries == (1, 1)


def test_no_reconnect_when_told_not_to_and_the_transports_note_is_kept():
    flow, _, link = make(reconnect=False)
    start(flow, link)
    feed(flow, 1, 0.1)
    link.closed, link.ended_note = True, "the server ended the event stream"
    result = flow.next(0.2, link).result
    assert result.outcome.value == "incomplete" and result.note == "the server ended the event stream"
    assert lost_note_for("", False) == "connection lost mid-run before the run had an id to resume"
    assert lost_note_for("", False, dialect_resumes=False, close_code=1006) == \
        "connection lost mid-run (WebSocket close code 1006: dropped without a close frame); the dialect has no resume"
    assert lost_note_for("", True, close_code=4000) == "connection lost mid-run (WebSocket close code 4000)"


def test_another_chat_reconnecting_is_noticed_by_the_generation():
    flow, _, link = make()
    start(flow, link)
    link.generation = 2  # closed and reopened by a chat in parallel
    assert flow.next(0.2, link).generation == 1


def test_resume_unknown_run_ends_the_chat():
    flow, _, link = make()
    start(flow, link)
    feed(flow, 1, 0.1)
    flow.router.resume_unknown = {flow.tracker.run_id}
    result = flow.next(0.2, link).result
    assert "RESUME_UNKNOWN_RUN" in result.note and result.outcome.value == "incomplete"


def test_abandon_after_closes_then_judges_only_what_arrived():
    flow, sink, link = make(abandon_after=3)
    start(flow, link)
    feed(flow, 2, 0.1)
    assert flow.next(0.1, link) == Wait(10.0)
    feed(flow, 1, 0.2, first=2)
    assert flow.next(0.2, link) == CLOSE
    link.closed = True
    result = flow.next(0.3, link).result
    assert result.outcome.value == "passed" and result.note == "abandoned by the client after 3 events"
    assert sink.calls[-2:] == [("abandoned",), ("finished", "passed")]


def test_invalid_input_probe_passes_on_the_error_and_fails_when_the_connection_closes():

    flow, sink, link = make(probe=True)
    send = start(flow, link)
    assert send == Send("not json", "raw")
    assert flow.next(0.1, link) == Wait(5.0)
    flow.tracker.error_frame(Frame("error", error_code="INVALID_MESSAGE"), 0.2)
    # Answered: the settle window listens for the connection's end (it must stay open), then the verdict.
    assert flow.next(0.2, link) == Wait(0.2 + DEFAULTS.settle) and flow.settling
    assert flow.next(0.2 + DEFAULTS.settle, link).result.outcome.value == "passed"

    flow, _, link = make(probe=True)
    start(flow, link)
    flow.tracker.error_frame(Frame("error", error_code="INVALID_MESSAGE"), 0.2)
    link.closed = True
    result = flow.next(0.2, link).result
    assert result.outcome.value == "failed" and "R13" in {v.rule for v in result.violations}

    # The server closes just after answering, within the settle window: R13 as well.
    flow, _, link = make(probe=True)
    start(flow, link)
    flow.tracker.error_frame(Frame("error", error_code="INVALID_MESSAGE"), 0.2)
    assert isinstance(flow.next(0.2, link), Wait)
    link.closed = True
    result = flow.next(0.25, link).result
    assert result.outcome.value == "failed" and "R13" in {v.rule for v in result.violations}

    flow, _, link = make(probe=True)
    start(flow, link)
    assert flow.next(5.0, link).result.outcome.value == "failed"  # no answer by the deadline


def test_stopped_from_outside_is_still_judged_once():
    # While connecting, its message never sent: no chat (neither started nor judged; nothing of it reached the server
    # or a recording of the run). On the code before: an `error` chat, "stopped before the connection was open".
    flow, sink, link = make()
    assert flow.next(0.0, link) == CONNECT
    assert flow.stopped(0.1) is None and flow.stopped(0.2) is None and flow.left(0.3) is None
    assert sink.calls == []
    flow, sink, link = make()
    assert flow.left(0.1) is None and sink.calls == []  # the same for the load generator leaving

    # While connecting to send its message again (the server closed the connection as it went, before any event of
    # its run): a chat, stopped mid-run. On the code before: an `error` chat.
    sink = Recorder()
    flow = ChatFlow.chat(FrameRouter(load_profile("netra"), ConnectionChecker(None), sink, "s"), "hi", EXP,
                         user_id="u1", now=0.0)  # no run id of the client's: nothing to resume
    link = FakeLink()
    start(flow, link)
    link.closed, link.closed_clean = True, True
    # Sent again on a new connection, opened as a lost one is reconnected: first a jittered wait (ReconnectRetries).
    assert isinstance(flow.next(0.2, link), Wait) and flow.backing_off
    result = flow.stopped(0.3)
    assert result.outcome.value == "incomplete" and result.note == "stopped before the chat ended"
    assert [w.rule for w in result.warnings] == ["R13"]  # "sent again"
    assert sink.calls == [("started",), ("finished", "incomplete")]

    flow, sink, link = make()
    start(flow, link)
    feed(flow, 2, 0.1)
    result = flow.stopped(0.5)
    assert result.outcome.value == "incomplete" and result.note == "stopped before the chat ended"
    assert flow.stopped(0.6) is result and sink.count("finished") == 1
    assert isinstance(flow.next(0.7, link), Finish)

    flow, sink, link = make(probe=True)
    start(flow, link)
    assert flow.stopped(0.5).note == "stopped before the answer"


def test_left_by_the_load_generator_is_an_abandonment():
    flow, sink, link = make()
    start(flow, link)
    feed(flow, 2, 0.1)
    result = flow.left(0.5)
    assert result.outcome.value == "passed" and result.note == STOPPED_NOTE
    assert sink.calls == [("started",), ("abandoned",), ("finished", "passed")]
    assert flow.left(0.6) is result and sink.count("finished") == 1


def test_an_outcome_reported_out_of_turn_is_refused():
    flow, _, link = make()
    with pytest.raises(RuntimeError):
        flow.connected()
    start(flow, link)
    with pytest.raises(RuntimeError):
        flow.reconnected(True, 0.0)


# -- the user script --

PROFILE = load_profile("netra")


def test_user_script_steps_repeat_and_number_chats():
    sc = Scenario.model_validate({"name": "x", "messages": ["a", "b", "c"], "steps": [
        {"chat": {"repeat": 2}}, {"send_raw": "oops", "repeat": 2}, {"chat": {"message": "own", "abandon_after": 3}},
        {"chat": {}},
    ]})
    items = list(sc.user_script(PROFILE).plan())
    kinds = [type(i) for i in items]
    assert kinds == [ChatCall, ChatCall, RawCall, RawCall, ChatCall, ChatCall]
    assert [i.content for i in items if isinstance(i, ChatCall)] == ["a", "b", "own", "a"]
    assert items[4].options.abandon_after == 3 and items[0].options.abandon_after is None
    assert items[2].raw == "oops" and items[2].expectations.expect_error == "invalid_input"


def test_user_script_chats_per_user_sequential_or_a_parallel_group_numbered_across_plays():
    sc = Scenario.model_validate({"name": "x", "chats_per_user": 3, "messages": ["a", "b"]})
    script = sc.user_script(PROFILE)
    assert [c.content for c in script.plan()] == ["a", "b", "a"]
    assert [c.content for c in script.plan()] == ["b", "a", "b"]  # the next play goes on numbering
    par = Scenario.model_validate({"name": "x", "chats_per_user": 5, "parallel_chats": 2}).user_script(PROFILE)
    assert list(par.plan()) == [ChatGroup(5, 2)]
    call = par.chat()
    assert call.options == ChatOptions(client_run_id=False, disconnect_after=None, abandon_after=None,
                                       reconnect=True, max_reconnects=3, settle=0.1, overlap_settle=True)


def test_welcome_outcome_classifies_the_handshake_and_reports_it():
    sink = Recorder()
    router = FrameRouter(PROFILE, ConnectionChecker(None), sink, "s")
    assert router.welcome_outcome(True, False, None, 5) == ("ok", "")
    kind, reason = router.welcome_outcome(False, False, None, 5)
    assert kind == "protocol_error" and reason.startswith("no welcome frame within 5s")
    assert router.closed_refusing(1008, 0.0, by_client=False)  # every driver, at the close, before welcome_outcome
    assert router.welcome_outcome(True, True, 1008, 5) == ("auth_failed",
                                                           "the server rejected the credentials (close code 1008)")
    router.new_connection()
    assert not router.closed_refusing(1011, 0.0, by_client=False)
    assert router.welcome_outcome(True, True, 1011, 5) == ("protocol_error", "closed before the welcome frame (code 1011)")
    router.new_connection()
    router.on_frame('{"type": "error_message", "error_code": "AUTH_FAILED", "error_message": "no"}', 0.0)
    assert router.welcome_outcome(True, False, None, 5)[0] == "auth_failed"
    assert [c[1] for c in sink.calls] == ["ok", "protocol_error", "auth_failed", "protocol_error", "auth_failed"]


def test_a_close_read_with_the_welcome_is_told_as_after_it():
    router = FrameRouter(PROFILE, ConnectionChecker(None), Recorder(), "s")
    router.on_frame('{"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}}', 0.0)
    assert router.welcome_outcome(True, True, 1000, 5) == ("protocol_error",
                                                           "closed right after the welcome frame (code 1000)")


@pytest.mark.parametrize("first", [
    '{"type": "error_message", "error_code": "INVALID_MESSAGE", "error_message": "bad"}',  # a message rejected
    '{"type": "ping"}', '{"type": "mystery"}', "not json", "[DONE]",
])
def test_a_close_of_an_auth_code_after_any_frame_of_the_servers_refuses_no_credentials(first):
    """closed_refusing: 1008/4401/4403 refuse the credentials only when the server said nothing on the connection; any
    frame of its own first (an error, a ping, a type of no list, a malformed frame, a stream-end marker) and the close is
    judged as any other. FAILED on the code before for the error frame, the ping, the unknown and malformed frames and
    the marker: every one was a refusal (only a welcome, an event or AUTH_FAILED counted as the server speaking)."""
    for code in (1008, 4401, 4403):
        router = FrameRouter(PROFILE, ConnectionChecker(None), Recorder(), "s")
        router.on_frame(first, 0.0)
        assert not router.closed_refusing(code, 1.0, by_client=False) and router.auth_failed is None, (first, code)
        kind, reason = router.welcome_outcome(True, True, code, 5)
        assert kind == "protocol_error" and reason.startswith(f"closed before the welcome frame (code {code}"), reason


def test_the_close_before_the_welcome_names_the_error_the_server_sent_before_it():
    router = FrameRouter(PROFILE, ConnectionChecker(None), Recorder(), "s")
    router.on_frame('{"type": "error_message", "error_code": "INVALID_MESSAGE", "error_message": "bad"}', 0.0)
    router.closed_refusing(1008, 1.0, by_client=False)
    assert router.welcome_outcome(True, True, 1008, 5) == (
        "protocol_error", "closed before the welcome frame (code 1008, after the server's error INVALID_MESSAGE)")
    router.new_connection()  # the next connection's error is its own
    assert router.closed_refusing(1008, 2.0, by_client=False)
    assert router.welcome_outcome(True, True, 1008, 5) == ("auth_failed",
                                                           "the server rejected the credentials (close code 1008)")


def test_a_close_the_client_started_is_never_the_server_refusing():
    """However the server answers a close the client started (its own code, or the client's echoed), the client left."""
    router = FrameRouter(PROFILE, ConnectionChecker(None), Recorder(), "s")
    assert not router.closed_refusing(4401, 1.0, by_client=True) and router.auth_failed is None
    assert router.closed_refusing(4401, 1.0, by_client=False)


def test_a_welcome_and_a_1008_read_together_is_no_refusal_the_server_spoke():
    """One place decides a refusal by close (closed_refusing); welcome_outcome reads only its answer. FAILED on the
    code before: welcome_outcome took any 1008/4401/4403 close for a refusal itself, a welcome before it or not."""
    router = FrameRouter(PROFILE, ConnectionChecker(None), Recorder(), "s")
    router.on_frame('{"type": "connection_established", "data": {"connection_id": "c", "user_id": "u"}}', 0.0)
    assert not router.closed_refusing(1008, 0.0, by_client=False)
    assert router.welcome_outcome(True, True, 1008, 5) == ("protocol_error",
                                                           "closed right after the welcome frame (code 1008)")


def test_a_ping_flood_gets_at_most_one_pong_per_interval():
    from harness.flow import PONG_INTERVAL

    router = FrameRouter(PROFILE, ConnectionChecker(None), Recorder(), "s")
    replies = [router.on_frame('{"type": "ping"}', i * 0.001)[1] for i in range(2000)]  # 2 s of pings
    sent = [r for r in replies if r is not None]
    assert sent and sent[0] == {"type": "pong"}
    assert len(sent) <= 2.0 / PONG_INTERVAL + 1


# -- a user's conversation across chat steps (`thread: continue`) --

def test_a_conversation_keeps_its_turns_within_the_byte_bound():
    from harness.flow import MAX_HISTORY_BYTES, Conversation

    conv = Conversation()
    assert conv.turn("c0", "t-1", "m-0", "first", continues=False, keep=True) is None  # nothing before a first turn
    conv.heard("c0", "a0", "4")
    conv.heard("c0", "a0", "2")
    conv.heard("someone-else", "x", "not this conversation's")
    history = conv.turn("c1", "t-1", "m-1", "second", continues=True, keep=True)
    assert history == [{"id": "m-0", "role": "user", "content": "first"},
                       {"id": "a0", "role": "assistant", "content": "42"}]
    assert conv.thread_id == "t-1"
    conv.heard("c0", "a0", "late text of the previous turn")  # its chat is no longer the latest turn: not kept
    # A server streaming far more than the bound: the oldest turns go first, a reply is cut short, never held past it.
    big = "é" * 5000  # 10,000 bytes a piece
    for n in range(2, 12):
        conv.heard(f"c{n - 1}", f"a{n - 1}", big)
        conv.heard(f"c{n - 1}", f"a{n - 1}", big)
        history = conv.turn(f"c{n}", "t-1", f"m-{n}", f"turn {n}", continues=True, keep=True)
        assert history is not None
        assert sum(len(m["content"].encode()) for m in history) <= MAX_HISTORY_BYTES
        assert conv.nbytes <= MAX_HISTORY_BYTES
        said = "second" if n == 2 else f"turn {n - 1}"
        assert history[-1]["role"] == "assistant" and history[-2] == {"id": f"m-{n - 1}", "role": "user",
                                                                         "content": said}
    assert all(m["content"] != "first" for m in history)  # the oldest went first
    # A server naming a new message id (of 1,000 bytes) with every one-byte delta: each id counts, the bound holds.
    for i in range(3000):
        conv.heard("c11", f"{i:04d}" + "x" * 996, "y")
    assert conv.nbytes <= MAX_HISTORY_BYTES
    history = conv.turn("c12", "t-1", "m-12", "turn 12", continues=True, keep=True)
    assert history is not None and 0 < sum(len(m["id"]) + len(m["content"].encode()) for m in history) <= MAX_HISTORY_BYTES
    assert len(history) < MAX_HISTORY_BYTES // 1000
    assert conv.nbytes == sum(conv.costs) <= MAX_HISTORY_BYTES
    # A new thread starts the conversation over; a dialect that does not carry history (netra) keeps no messages.
    assert conv.turn("c99", "t-2", "m-99", "hello", continues=False, keep=True) is None
    other = Conversation()
    other.turn("d0", "t-9", "m", "x", continues=False, keep=False)
    other.heard("d0", "a", "y")
    assert other.turn("d1", "t-9", "m2", "z", continues=True, keep=False) is None and other.thread_id == "t-9"


def test_a_user_message_past_the_bound_is_left_out_never_sent_cut_under_its_id():
    """Cut short, it would be another text under the same id: an edit (ag-ui-langgraph reruns the thread from it)."""
    from harness.flow import MAX_HISTORY_BYTES, Conversation

    conv = Conversation()
    conv.turn("c0", "t-1", "m-0", "hi", continues=False, keep=True)
    conv.heard("c0", "a0", "hello")
    big = "x" * MAX_HISTORY_BYTES
    assert conv.turn("c1", "t-1", "m-1", big, continues=True, keep=True) == [
        {"id": "m-0", "role": "user", "content": "hi"}, {"id": "a0", "role": "assistant", "content": "hello"}]
    conv.heard("c1", "a1", "a long one")
    history = conv.turn("c2", "t-1", "m-2", "next", continues=True, keep=True)
    assert history is not None and all(m["id"] != "m-1" for m in history)
    assert history[-1] == {"id": "a1", "role": "assistant", "content": "a long one"}
    assert conv.nbytes == sum(conv.costs) <= MAX_HISTORY_BYTES
    # One that fits is kept whole.
    fits = "y" * (MAX_HISTORY_BYTES - 400)
    conv.turn("c3", "t-1", "m-3", fits, continues=True, keep=True)
    assert conv.turn("c4", "t-1", "m-4", "z", continues=True, keep=True) == [
        {"id": "m-3", "role": "user", "content": fits}]


def test_chat_ids_come_from_one_read_of_the_oss_randomness_per_batch_of_chats(monkeypatch):
    """A chat's four ids are random digits read ahead for ID_BATCH chats (a getrandom(2) per chat cost a system call
    each): every chat's still its own, as many random bits each."""
    import os

    import harness.flow as flow

    reads = []
    real = os.urandom

    def counted(n: int) -> bytes:
        reads.append(n)
        return real(n)

    monkeypatch.setattr(os, "urandom", counted)
    monkeypatch.setattr(flow, "_random_ids", [])
    chats = [flow.new_tracker(EXP, "s", 0.0, True) for _ in range(2 * flow.ID_BATCH)]
    assert len(reads) <= 2
    for ids in (c.thread_id for c in chats), (c.message_id for c in chats), (c.run_id for c in chats):
        seen = list(ids)
        assert len(set(seen)) == len(seen) and all(i is not None and len(i) == 14 for i in seen)


def test_a_forked_child_never_reuses_the_ids_its_parent_read_ahead():
    import os

    import harness.flow as flow

    flow.new_tracker(EXP, "s", 0.0, False)  # the parent has ids read ahead
    if not flow._random_ids:
        flow.new_tracker(EXP, "s", 0.0, False)
    ahead = set(flow._random_ids)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next chat's digits, to the parent
        try:
            os.write(write_end, (flow.new_tracker(EXP, "s", 0.0, False).thread_id or "").encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        child = f.read().decode()
    os.waitpid(pid, 0)
    assert child.startswith("t-") and not any(d.startswith(child[2:]) for d in ahead)


def test_runs_a_connection_follows_across_resumes_are_bounded_at_the_cap_exactly():
    """flow.Resumes remembers at most MAX_RESUMES_FOLLOWED runs moved away (let go, or judged where their client left
    them) and as many replays under way: past it the oldest goes, the latest are all kept."""
    from harness.checker import ChatTracker
    from harness.flow import MAX_RESUMES_FOLLOWED, Resumes

    checker = ConnectionChecker(EXP)
    resumes = Resumes()
    for n in range(MAX_RESUMES_FOLLOWED + 1):
        chat = ChatTracker(f"c{n}", EXP, 0.0, run_id=f"gone-{n}")
        checker.add(chat)
        resumes.let_go(checker, chat)
    assert len(resumes.moved) == MAX_RESUMES_FOLLOWED and "gone-0" not in resumes.moved
    for n in range(MAX_RESUMES_FOLLOWED + 1):
        resumes.ignore(f"left-{n}")
    assert len(resumes.moved) == MAX_RESUMES_FOLLOWED and list(resumes.moved)[0] == "left-1"
    for n in range(MAX_RESUMES_FOLLOWED + 1):
        chat = ChatTracker(f"r{n}", EXP, 0.0, run_id=f"back-{n}")
        chat.max_seq = 5
        resumes.resumed_here(chat, f"back-{n}", last_seq=2)
    assert len(resumes.replay) == MAX_RESUMES_FOLLOWED and "back-0" not in resumes.replay


def test_a_replayed_event_at_the_seq_the_client_said_it_had_is_judged_not_skipped():
    """docs/protocol.md: the server replays only what is past the resume's `last_seq`, so a copy of the event at that
    seq itself is the server's duplicate (R7), judged; a copy of one past it is what the client asked for, skipped."""
    import json

    from harness.checker import ChatTracker
    from harness.flow import Resumes

    netra = load_profile("netra")

    def frame(seq: int, kind: str = "agent_thinking") -> str:
        return json.dumps({"type": kind, "run_id": "r1", "seq": seq, "payload": {}})

    chat = ChatTracker("c1", EXP, 0.0, run_id="r1")
    chat.feed(netra.decode(frame(1, "agent_started"), 0.1))
    for seq in range(2, 6):
        chat.feed(netra.decode(frame(seq), 0.1 + seq / 100))
    resumes = Resumes()
    resumes.resumed_here(chat, "r1", last_seq=3)
    assert not resumes.skips(netra.decode(frame(3), 1.0))  # at what the client had: the server's duplicate
    assert resumes.skips(netra.decode(frame(4), 1.0))  # past it: the replay the client asked for


def test_resumes_awaited_and_runs_the_server_did_not_know_are_bounded_at_the_cap_exactly():
    """A connection awaits the answers of at most MAX_RESUME_UNKNOWN resumes, and remembers as many runs the server
    said it did not know (RESUME_UNKNOWN_RUN): past the cap the oldest goes, the latest are all kept."""
    from harness.flow import MAX_RESUME_UNKNOWN

    router = FrameRouter(load_profile("netra"), ConnectionChecker(None), Sink(), "s")
    for n in range(MAX_RESUME_UNKNOWN + 1):
        router.resume_sent(f"r-{n}", None)
    assert router.awaiting is not None and len(router.awaiting) == MAX_RESUME_UNKNOWN and "r-0" not in router.awaiting
    for n in range(MAX_RESUME_UNKNOWN + 1):
        router._unknown_run(f"u-{n}")
    unknown = router.resume_unknown
    assert unknown is not None and len(unknown) == MAX_RESUME_UNKNOWN and "u-0" not in unknown and "u-1" in unknown
