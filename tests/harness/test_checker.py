"""Unit tests of every rule of the pure checker (R1–R13), one behaviour each."""
from __future__ import annotations

import dataclasses

import msgspec

from harness.checker import ChatTracker, ConnectionChecker, Expectations, abandon, judge_followups
from harness.events import Frame, Outcome, Role, Rule, SessionError
from harness.profiles import load_profile

from .runs import EXP, ev, judge, rules, valid_run


def test_valid_run_passes_with_timings():
    res = judge(valid_run(tools=2, thinks=2, chunks=3))
    assert res.outcome is Outcome.PASSED, res.violations
    assert res.violations == [] and res.missing == []
    assert res.time_to_first_event == 0.05
    assert res.duration == valid_run(tools=2, thinks=2, chunks=3)[-1].received_at
    assert set(res.event_delays) == {Role.AGENT_STARTED, Role.AGENT_THINKING, Role.TOOL_EXECUTING,
                                     Role.TOOL_COMPLETED, Role.PARTIAL_RESULT, Role.AGENT_COMPLETED}



def test_a_verdict_fills_chat_result_by_its_fields_order():
    """ChatTracker._make passes ChatResult's fields by position: RESULT_FIELDS is their order, and a verdict holds
    each value where its name says."""
    from harness.checker import RESULT_FIELDS, ChatResult

    names = [f.name for f in dataclasses.fields(ChatResult)]
    assert names[:len(RESULT_FIELDS)] == list(RESULT_FIELDS)
    assert all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(ChatResult)[len(RESULT_FIELDS):])
    t = ChatTracker("c9", EXP, 1.0, scenario="sc", thread_id="t1", run_id="r1")
    t.reconnect_tried(False)
    t.reconnect_tried(True)
    t.reconnected(True)
    for e in valid_run(chunks=2, gap=0.25, start=1.25):  # (times exact in binary)
        t.feed(e)
    res = t.finish(9.0, note="said")
    assert (res.chat_id, res.scenario, res.outcome, res.sent_at, res.run_id, res.thread_id) == (
        "c9", "sc", Outcome.PASSED, 1.0, "r1", "t1")
    assert res.time_to_first_event == 0.25 and res.duration == 1.75
    assert (res.reconnect_attempts, res.reconnect_failures, res.reconnects) == (2, 1, ["resumed"])
    assert (res.error, res.error_kind, res.note, res.events_received) == (None, None, "said", 7)
    assert res.event_counts[Role.PARTIAL_RESULT] == 2 and res.event_delays[Role.AGENT_STARTED] == 0.25
    assert (res.violations, res.missing, res.warnings, res.violations_not_listed) == ([], [], [], {})
    assert res.events is t.events and (res.parent_run_id, res.further_run, res.abandoned_at) == (None, False, None)


def test_r1_first_event_must_be_agent_started():
    run = valid_run()
    run[0], run[1] = run[1], run[0]
    res = judge(run)
    assert "R1" in rules(res)
    assert [v.event_index for v in res.violations if v.rule == "R1"] == [0]


def test_r2_missing_required_role_counts_as_missing_events():
    run = [e for e in valid_run() if e.role is not Role.TOOL_COMPLETED]
    for i, e in enumerate(run):
        e.seq = i + 1
    exp = dataclasses.replace(EXP, spans_must_close=frozenset())
    res = judge(run, exp)
    assert rules(res) == {"R2"}
    assert res.missing == [Role.TOOL_COMPLETED]
    assert res.outcome is Outcome.FAILED


def test_r2_streaming_requires_partial_result():
    run = [e for e in valid_run(chunks=0)]
    exp = dataclasses.replace(EXP, required=EXP.required | {Role.PARTIAL_RESULT})
    res = judge(run, exp)
    assert res.missing == [Role.PARTIAL_RESULT] and "R2" in rules(res)


def test_r3_second_terminal():
    run = valid_run()
    run.append(ev(Role.AGENT_COMPLETED, len(run) + 1, 1.0))
    res = judge(run)
    assert rules(res) == {"R3"}


def test_r4_event_after_terminal():
    run = valid_run()
    run.append(ev(Role.PARTIAL_RESULT, len(run) + 1, 1.0))
    res = judge(run)
    assert rules(res) == {"R4"}
    assert res.violations[0].event_index == len(run) - 1


def test_r5_completion_without_open_call_and_call_left_open():
    run = valid_run()
    run[3].tool_call_id = "other"
    run[3].span = ("tool call", "close", "other")
    res = judge(run)
    reasons = [v.reason for v in res.violations if v.rule == "R5"]
    assert any("not open" in r for r in reasons)
    assert any("still open" in r for r in reasons)


def test_r5_pairs_by_tool_name_without_ids():
    run = valid_run(tools=2)
    for e in run:
        if e.span:
            e.span = (e.span[0], e.span[1], "calculator")
    assert judge(run).outcome is Outcome.PASSED


def test_r6_thinking_before_tool_and_relaxation():
    run = valid_run(thinks=0)
    assert "R6" in rules(judge(run))
    relaxed = dataclasses.replace(EXP, thinking_before_tool=False, required=EXP.required - {Role.AGENT_THINKING})
    assert judge(run, relaxed).outcome is Outcome.PASSED


def test_r7_gap_duplicate_out_of_order():
    gap = valid_run(thinks=2)
    del gap[2]  # seq 3 lost
    res = judge(gap)
    assert any(v.rule == "R7" and "seq 3 never arrived" in v.reason for v in res.violations)
    dup = valid_run()
    dup.insert(2, msgspec.structs.replace(dup[1]))
    assert any(v.rule == "R7" and "twice" in v.reason for v in judge(dup).violations)
    swapped = valid_run(thinks=2)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    res = judge(swapped)
    assert any(v.rule == "R7" and "out of order" in v.reason for v in res.violations)
    assert not any("never arrived" in v.reason for v in res.violations)


def test_r7_without_seq_falls_back_to_content():
    run = valid_run()
    for e in run:
        e.seq = None
    assert judge(run).outcome is Outcome.PASSED


def test_r8_foreign_user_and_foreign_run_are_cross_talk():
    conn = ConnectionChecker(user_id="u1")
    chat = ChatTracker("c1", EXP, 0.0, thread_id="t1", run_id="r1")
    conn.add(chat)
    conn.route(ev(Role.AGENT_STARTED, 1, 0.1))
    assert conn.route(ev(Role.AGENT_STARTED, 1, 0.2, run="r-other", user="u2", thread="t9")) is None
    assert conn.route(ev(Role.AGENT_STARTED, 1, 0.3, run="r-other", user="u1", thread="t9")) is None
    assert conn.foreign == 2
    assert [v.rule for v in chat.violations] == ["R8", "R8"]


def test_server_assigned_run_id_correlates_by_message_id():
    conn = ConnectionChecker(user_id="u1")
    chat = ChatTracker("c1", EXP, 0.0, thread_id=None, message_id="m-1")
    conn.add(chat)
    first = ev(Role.AGENT_STARTED, 1, 0.1, run="srv-7", thread=None)
    first.message_id = "m-1"
    assert conn.route(first) is chat
    assert chat.run_id == "srv-7"
    assert conn.route(ev(Role.AGENT_THINKING, 2, 0.2, run="srv-7", thread=None)) is chat


def test_r9_first_event_late_and_never():
    run = valid_run(start=2.5)
    res = judge(run)
    assert "R9" in rules(res)
    res = judge([], now=61.0)
    assert {"R9", "R10"} <= rules(res)
    assert res.outcome is Outcome.INCOMPLETE


def test_r10_deadline_incomplete_counts_every_unseen_role_missing():
    run = valid_run()[:3]
    res = judge(run, now=60.0)
    assert res.outcome is Outcome.INCOMPLETE
    assert "R10" in rules(res)
    assert set(res.missing) == {Role.TOOL_COMPLETED, Role.AGENT_COMPLETED}


def test_r11_stall_between_events():
    run = valid_run()
    for e in run[3:]:
        e.received_at += 31.0
    res = judge(run)
    assert rules(res) == {"R11"}


def test_r12_malformed_frames_on_the_connection():
    conn = ConnectionChecker(user_id="u1")
    chat = ChatTracker("c1", EXP, 0.0, thread_id="t1", run_id="r1")
    conn.add(chat)
    conn.on_malformed(Frame("malformed", detail="not JSON"), 0.2)
    for e in valid_run():
        conn.route(e)
    res = chat.finish(1.0)
    assert rules(res) == {"R12"} and conn.malformed == 1


def test_r13_expected_error_arrives_and_connection_stays_open():
    exp = dataclasses.replace(EXP, expect_error="recoverable")
    run = valid_run()
    err = ev(Role.ERROR_EVENT, None, 0.075, recoverable=True)
    run.insert(4, err)
    for i, e in enumerate(run):
        e.seq = i + 1
    assert judge(run, exp).outcome is Outcome.PASSED
    missing_error = judge(valid_run(), exp)
    assert "R13" in rules(missing_error)
    t = ChatTracker("c1", exp, 0.0, run_id="r1")
    for e in run:
        t.feed(e)
    t.connection_lost(1.0)
    assert "R13" in rules(t.finish(1.0))


def test_r13_fatal_error_expected_and_unexpected():
    fatal = [ev(Role.AGENT_STARTED, 1, 0.1), ev(Role.AGENT_THINKING, 2, 0.2), ev(Role.ERROR_EVENT, 3, 0.3)]
    exp = dataclasses.replace(EXP, expect_error="fatal")
    assert judge(fatal, exp).outcome is Outcome.PASSED
    res = judge(fatal)
    assert rules(res) == {"R13"}
    assert res.missing == []  # the user was told: an error is not a blank screen


def test_invalid_input_probe():
    exp = Expectations(required=frozenset(), expect_error="invalid_input", deadline=5.0)
    t = ChatTracker("c1", exp, 0.0)
    assert not t.done
    t.error_frame(Frame("error", error_code="INVALID_MESSAGE"), 0.01)
    assert t.done and t.finish(0.1).outcome is Outcome.PASSED
    t2 = ChatTracker("c2", exp, 0.0)
    assert "R13" in rules(t2.finish(5.0))


def test_abandon_judges_only_what_arrived():
    t = ChatTracker("c1", EXP, 0.0, run_id="r1")
    for e in valid_run()[:2]:
        t.feed(e)
    res = abandon(t, 0.5)
    assert res.outcome is Outcome.PASSED and res.missing == [] and "abandoned" in res.note


def test_lost_connection_is_incomplete_without_deadline_violation():
    t = ChatTracker("c1", EXP, 0.0, run_id="r1")
    for e in valid_run()[:3]:
        t.feed(e)
    res = t.finish(1.0, lost=True, note="connection lost")
    assert res.outcome is Outcome.INCOMPLETE and "R10" not in rules(res)
    assert Role.AGENT_COMPLETED in res.missing


def test_connection_memory_is_bounded_and_resume_does_not_duplicate():
    from harness.checker import KEEP_FINISHED

    conn = ConnectionChecker(user_id="u1")
    for i in range(10 * KEEP_FINISHED):
        chat = ChatTracker(f"c{i}", EXP, 0.0, thread_id=f"t{i}", run_id=f"r{i}")
        conn.add(chat)
        conn.add(chat)  # re-registered after a reconnect
        for e in valid_run():
            e.run_id, e.thread_id = f"r{i}", f"t{i}"
            conn.route(e)
        chat.finish(1.0)
    assert len(conn.chats) <= 2 * KEEP_FINISHED
    assert len(conn.by_run) <= 2 * KEEP_FINISHED and len(conn.by_thread) <= 2 * KEEP_FINISHED
    assert conn.foreign == 0
    # A late event of a recent run is still that run's (R4), not cross-talk.
    last = conn.chats[-1]
    late = ev(Role.PARTIAL_RESULT, 99, 2.0, run=last.run_id, thread=last.thread_id)
    assert conn.route(late) is last


def test_r5_open_call_at_a_fatal_error_is_not_a_pairing_violation():
    run = [ev(Role.AGENT_STARTED, 1, 0.1), ev(Role.AGENT_THINKING, 2, 0.2),
           ev(Role.TOOL_EXECUTING, 3, 0.3, call="c1"), ev(Role.ERROR_EVENT, 4, 0.4)]
    exp = dataclasses.replace(EXP, expect_error="fatal")
    assert judge(run, exp).outcome is Outcome.PASSED
    completed = run[:3] + [ev(Role.AGENT_COMPLETED, 4, 0.4)]
    assert "R5" in rules(judge(completed))


def test_huge_seq_is_counted_not_enumerated():
    run = valid_run()
    run[2].seq = 10**12
    for i, e in enumerate(run[3:], start=1):
        e.seq = 10**12 + i
    res = judge(run)
    gap = [v for v in res.violations if v.rule == "R7" and "never arrived" in v.reason]
    assert gap and "in all" in gap[0].reason  # bounded work: a count, the first few listed


def test_non_positive_seq_is_a_seq_violation():
    run = valid_run()
    run[0].seq = 0
    assert any(v.rule == "R7" and "not a positive" in v.reason for v in judge(run).violations)


def test_flood_keeps_bounded_lists_and_exact_counts():
    from harness.checker import MAX_EVENTS_KEPT, MAX_VIOLATIONS_KEPT

    t = ChatTracker("c1", EXP, 0.0, run_id="r1")
    n = MAX_EVENTS_KEPT + 500
    t.feed(ev(Role.AGENT_STARTED, None, 0.01))
    for _ in range(n):
        t.feed(ev(Role.AGENT_THINKING, None, 0.02))
    for _ in range(MAX_VIOLATIONS_KEPT + 50):
        t.malformed("junk", 0.03)
    res = t.finish(60.0)
    assert len(res.events) == MAX_EVENTS_KEPT and res.events_received == n + 1
    assert res.event_counts[Role.AGENT_THINKING] == n
    assert len(res.violations) <= MAX_VIOLATIONS_KEPT + 5
    assert res.rule_counts()["R12"] == MAX_VIOLATIONS_KEPT + 50


def test_second_agent_started_and_reopened_span():
    run = valid_run()
    run.insert(2, ev(Role.AGENT_STARTED, None, 0.055))
    for e in run:
        e.seq = None
    assert any("second agent_started" in v.reason for v in judge(run).violations)
    twice = valid_run(tools=1)
    dup = ev(Role.TOOL_EXECUTING, None, twice[2].received_at, call="c0")
    twice.insert(3, dup)
    for e in twice:
        e.seq = None
    assert any(v.rule == "R5" and "again" in v.reason for v in judge(twice).violations)


def test_fatal_error_as_first_event_is_not_r1():
    res = judge([ev(Role.ERROR_EVENT, 1, 0.1)], dataclasses.replace(EXP, expect_error="fatal"))
    assert res.outcome is Outcome.PASSED, res.violations


def test_seq_memory_stays_bounded_in_order_and_when_a_server_skips_forever():
    from harness.checker import MAX_SEQS_AHEAD

    t = ChatTracker("c1", EXP, 0.0, run_id="r1")
    for i in range(1, 50_001):
        t.feed(ev(Role.AGENT_THINKING, i, 0.01))
    assert t.seq_low == 50_000 and not t.seqs_above  # in order: nothing remembered but a number
    skip = ChatTracker("c2", EXP, 0.0, run_id="r1")
    for i in range(2, 4 * MAX_SEQS_AHEAD, 2):  # every other seq lost
        skip.feed(ev(Role.AGENT_THINKING, i, 0.01))
    assert len(skip.seqs_above) <= MAX_SEQS_AHEAD
    assert any("stopped tracking" in v.reason for v in skip.violations)


def test_seq_that_is_not_an_integer_is_r12_and_no_lost_event():
    from harness.profiles import load_profile

    profile = load_profile("netra")
    e = profile.decode('{"type": "agent_started", "run_id": "r1", "seq": "3"}', 0.1)
    assert e.seq is None and e.bad_seq == '"3", a string: a seq must be a JSON integer (1, 2, 3, …)'
    run = valid_run()
    run[1].seq, run[1].bad_seq = None, "2.0, a number with a fraction or an exponent: a seq must be …"
    [v] = judge(run).violations  # malformed (R12), not a seq 2 lost or out of order (R7)
    assert v.rule == "R12" and "seq 2.0, a number with a fraction or an exponent" in v.reason, v
    run = valid_run()
    run[1].seq, run[1].bad_seq, run[2].seq = None, "true, a boolean", None  # two seqs missing, one unreadable
    rules = sorted((v.rule.value, v.reason) for v in judge(run).violations)
    assert [r for r, _ in rules] == ["R12", "R7"] and "never arrived" in rules[1][1] and "1 event(s)" in rules[1][1]


def test_rejections_end_waiting_chats_oldest_first():
    conn = ConnectionChecker(user_id="u1")
    chats = [ChatTracker(f"c{i}", EXP, float(i), message_id=f"m{i}") for i in range(3)]
    for c in chats:
        conn.add(c)
    reject = Frame("error", wire_type="error_message", error_code="INVALID_MESSAGE")
    conn.on_error(reject, 5.0)
    assert [c.done for c in chats] == [True, False, False]
    conn.on_error(reject, 5.1)
    conn.on_error(reject, 5.2)
    assert all(c.done for c in chats)
    assert {c.finish(6.0).error_kind for c in chats} == {"rejected"}
    late = ChatTracker("c9", EXP, 6.0, message_id="m9")
    conn.add(late)
    # A session error is no rejection of one message: a RESUME_UNKNOWN_RUN ends no chat waiting for its run...
    netra = load_profile("netra")
    unknown = netra.decode('{"type": "error_message", "error_code": "RESUME_UNKNOWN_RUN", "run_id": "r-x"}', 6.0)
    assert isinstance(unknown, Frame) and unknown.session_error is SessionError.RESUME_UNKNOWN
    conn.on_error(unknown, 6.05)
    assert not late.done
    # ...while refused credentials (AUTH_FAILED after the welcome) refuse every message waiting on the connection:
    # `error`, `auth_failed`, as at the welcome (it waited for the close, then for its deadline, incomplete).
    auth = netra.decode('{"type": "error_message", "payload": {"error_code": "AUTH_FAILED"}}', 6.0)
    assert isinstance(auth, Frame) and auth.session_error is SessionError.AUTH_FAILED
    conn.on_error(auth, 6.1)
    assert late.done
    res = late.finish(6.2)
    assert (res.outcome, res.error_kind, res.error) == (
        Outcome.ERROR, "auth_failed", "the server rejected the credentials (AUTH_FAILED)")


def _flood(n_chats: int, frames: int) -> tuple[list[ChatTracker], ChatTracker, ConnectionChecker, int]:
    """`n_chats` open chats on one connection, then `frames` junk frames, a chat opened halfway → (the chats, the late
    chat, the connection, how many chats the connection listed while the frames came: the lengths of every list its
    `active()` returned, the steps a flood's work grows with)."""
    class Counted(ConnectionChecker):  # the real connection, the lists its active() returns counted
        listed = 0

        def active(self) -> list[ChatTracker]:
            got = super().active()
            self.listed += len(got)
            return got

    conn = Counted(user_id="u1")
    chats = [ChatTracker(f"c{i}", EXP, 0.0, thread_id=f"t{i}", message_id=f"m{i}") for i in range(n_chats)]
    for chat in chats:
        conn.add(chat)
    junk = Frame("malformed", detail="not JSON")
    late = ChatTracker("late", EXP, 0.2, thread_id="tl", message_id="ml")
    conn.listed = 0
    for _ in range(frames // 2):
        conn.on_malformed(junk, 0.1)
    conn.add(late)
    for _ in range(frames - frames // 2):
        conn.on_malformed(junk, 0.3)
    return chats, late, conn, conn.listed


def test_a_flood_of_malformed_frames_tells_each_open_chat_without_charging_every_frame_to_every_chat():
    """1,000 open chats and 20,000 junk frames: each chat is told (R12), a chat opened during the flood too, and the
    work is not frames x chats: past the first INCIDENTS_EACH frames each open chat is neither charged nor looked at
    again, so the chats the connection lists during the flood are about the INCIDENTS_EACH frames' (each lists every
    open chat to charge it), not 20,000 x 1,000 (every frame listed the open chats to see whether one was on screen)."""
    from harness.checker import INCIDENTS_EACH

    chats, late, conn, listed = _flood(1000, 20_000)
    assert conn.malformed == 20_000

    def charged(chat: ChatTracker) -> int:
        res = chat.finish(10.0)
        return sum(1 for v in res.violations if v.rule is Rule.R12) + res.violations_not_listed.get(Rule.R12, 0)

    assert {charged(c) for c in chats} == {INCIDENTS_EACH}
    assert charged(late) == 1
    assert listed <= 4 * INCIDENTS_EACH * 1001, listed


def test_a_foreign_event_of_an_ended_chats_run_leaves_its_gap_and_charges_the_chat_in_flight():
    """Two chats on one connection; the first's run ends with seq 3 missing, then seq 3 comes naming another user
    while the second is in flight. The R8 goes to the chat on screen (the second); the first, told nothing, keeps its
    R7 gap: filling it there made a chat pass that never received an event of its run."""
    conn = ConnectionChecker(user_id="u1")
    first = ChatTracker("c1", EXP, 0.0, thread_id="t1", run_id="r1")
    second = ChatTracker("c2", EXP, 0.0, thread_id="t2", run_id="r2")
    conn.add(first)
    conn.add(second)
    run = valid_run(thinks=2, chunks=2)
    for e in run:
        if e.seq != 3:
            conn.route(e)
    assert first.done
    conn.route(ev(Role.AGENT_STARTED, 1, 0.05, run="r2", thread="t2"))
    stray = run[2]
    assert stray.seq == 3
    stray.user_id, stray.received_at = "u2", 0.5
    assert conn.route(stray) is None
    result = first.finish(1.0)
    assert [(v.rule, v.reason) for v in result.violations] == [(Rule.R7, "seq 3 never arrived (lost event)")]
    assert [v.rule for v in second.violations] == [Rule.R8]


def test_events_received_past_the_deadline_come_after_its_verdict():
    # A live client busy when a chat's deadline passed (a loaded machine, a long frame to judge) reads the rest of the
    # run only afterwards, stamped past the deadline: it fed them into the verdict and passed a chat whose terminal
    # event it received after its deadline, where `chatprobe check` of the recording judged it at its deadline
    # (incomplete, R10) and showed the later events as warnings. docs/protocol.md R10: within the deadline, else R10.
    exp = dataclasses.replace(EXP, deadline=1.0)
    run = valid_run(gap=0.2)  # seven events, 0.05 s to 1.25 s: the last two past the 1 s deadline
    result = judge(run, exp, now=1.3)
    assert result.outcome is Outcome.INCOMPLETE, result.violations
    assert [v.rule for v in result.violations] == [Rule.R10], result.violations
    assert {w.rule for w in result.warnings} == {Rule.R10}, result.warnings
    assert Role.AGENT_COMPLETED in result.missing, result.missing
    in_time = judge(valid_run(gap=0.1), exp, now=1.3)  # the last at 0.65 s
    assert in_time.outcome is Outcome.PASSED, in_time.violations


def test_a_further_runs_events_received_past_its_deadline_come_after_its_verdict_too():
    # The same for a further run its chat's stream carried (AG-UI): timed from the end of the run before it, judged at
    # its own deadline. A busy live client that read its terminal event only after that deadline passed it, where
    # `chatprobe check` of the recording (the same receipt times) had it incomplete with an R10, and the chat too.
    exp = dataclasses.replace(EXP, deadline=1.0)
    root = ChatTracker("c1", exp, 0.0, thread_id="t1", run_id="r1")
    for e in valid_run():  # 0.05 s to 0.1 s
        root.feed(e)
    further = root.followup("r2")  # timed from 0.1 s: its deadline 1.1 s
    second = [ev(e.role, e.seq, e.received_at + 0.1 + i * 0.2, run="r2", call=e.tool_call_id)
              for i, e in enumerate(valid_run())]  # 0.15 s to 1.2 s: the terminal event alone past 1.1 s
    for e in second:
        further.feed(e)
    [run] = judge_followups(root, 1.3)
    assert run.outcome is Outcome.INCOMPLETE and [v.rule for v in run.violations] == [Rule.R10], run.violations
    assert [w.rule for w in run.warnings] == [Rule.R10] and run.events_received == 5, run.warnings
    result = root.finish(1.3)
    assert result.outcome is Outcome.INCOMPLETE and [v.rule for v in result.violations] == [Rule.R10]

def test_an_event_naming_no_run_with_several_chats_in_flight_and_none_under_way_is_plain_cross_talk():
    """Several chats in flight, none of whose runs has started: an event naming no run and no thread (AG-UI's) is
    another client's (R8, "no run of this client"), not runs that "cannot be told apart" (the reason said "while 0
    runs of this connection are under way" before)."""
    conn = ConnectionChecker(user_id="u1")
    first = ChatTracker("c1", EXP, 0.0, thread_id=None)
    second = ChatTracker("c2", EXP, 0.0, thread_id=None)
    conn.add(first)
    conn.add(second)
    assert conn.route(ev(Role.AGENT_THINKING, None, 0.1, run=None, thread=None)) is None
    reasons = [v.reason for c in (first, second) for v in c.violations if v.rule is Rule.R8]
    assert reasons and all("no run of this client" in r and "under way" not in r for r in reasons), reasons
