"""Property-based tests: generated valid runs always pass; each kind of mutation is caught by its rule."""
from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.checker import ChatTracker, ConnectionChecker
from harness.events import Outcome, Role

from .runs import EXP, ev, judge, rules

FAST = settings(max_examples=150, deadline=None)


@st.composite
def valid_runs(draw, with_seq: bool = True):
    """agent_started, thinking, interleaved (possibly concurrent) tool calls with thinking, chunks, completed."""
    roles: list[tuple[Role, str | None]] = [(Role.AGENT_STARTED, None), (Role.AGENT_THINKING, None)]
    open_calls: list[str] = []
    n_calls = draw(st.integers(1, 4))
    started = 0
    while started < n_calls or open_calls:
        choices = []
        if started < n_calls:
            choices.append("open")
        if open_calls:
            choices.append("close")
        choices.append("think")
        action = draw(st.sampled_from(choices))
        if action == "open":
            cid = f"c{started}"
            started += 1
            open_calls.append(cid)
            roles.append((Role.TOOL_EXECUTING, cid))
        elif action == "close":
            cid = open_calls.pop(draw(st.integers(0, len(open_calls) - 1)))
            roles.append((Role.TOOL_COMPLETED, cid))
        else:
            roles.append((Role.AGENT_THINKING, None))
    roles += [(Role.PARTIAL_RESULT, None)] * draw(st.integers(0, 3))
    roles.append((Role.AGENT_COMPLETED, None))
    gaps = draw(st.lists(st.floats(0.0, 2.0), min_size=len(roles), max_size=len(roles)))
    t = draw(st.floats(0.0, 1.9))
    events = []
    for i, ((role, call), g) in enumerate(zip(roles, gaps, strict=True)):
        if i:
            t += g
        events.append(ev(role, i + 1 if with_seq else None, t, call=call))
    return events


@FAST
@given(valid_runs())
def test_valid_runs_always_pass(run):
    res = judge(run)
    assert res.outcome is Outcome.PASSED, res.violations
    assert res.missing == []


@FAST
@given(valid_runs(with_seq=False))
def test_valid_runs_without_seq_pass(run):
    assert judge(run).outcome is Outcome.PASSED


@FAST
@given(valid_runs(), st.data())
def test_dropped_event_is_caught_by_seq(run, data):
    i = data.draw(st.integers(0, len(run) - 1))
    dropped = run[:i] + run[i + 1:]
    res = judge(dropped, now=EXP.deadline)
    assert res.outcome is not Outcome.PASSED
    if i == len(run) - 1:  # the terminal event itself: the chat never ends
        assert res.outcome is Outcome.INCOMPLETE and "R10" in rules(res)
        assert Role.AGENT_COMPLETED in res.missing
    else:
        assert "R7" in rules(res)


@FAST
@given(valid_runs(), st.data())
def test_duplicated_event_is_caught(run, data):
    i = data.draw(st.integers(0, len(run) - 1))
    dup = msgspec.structs.replace(run[i], received_at=run[i].received_at)
    mutated = run[: i + 1] + [dup] + run[i + 1:]
    res = judge(mutated)
    assert "R7" in rules(res)
    assert any("twice" in v.reason for v in res.violations)


@FAST
@given(valid_runs(), st.data())
def test_swapped_events_are_caught(run, data):
    i = data.draw(st.integers(0, len(run) - 2))
    mutated = list(run)
    a, b = mutated[i], mutated[i + 1]
    mutated[i] = msgspec.structs.replace(b, received_at=a.received_at)
    mutated[i + 1] = msgspec.structs.replace(a, received_at=b.received_at)
    res = judge(mutated)
    assert "R7" in rules(res), res.violations
    assert any("out of order" in v.reason for v in res.violations)


@FAST
@given(valid_runs(), st.data(), st.sampled_from(list(Role)))
def test_foreign_event_is_cross_talk(run, data, role):
    i = data.draw(st.integers(0, len(run)))
    conn = ConnectionChecker(user_id="u1")
    chat = ChatTracker("c1", EXP, 0.0, thread_id="t1", run_id="r1")
    conn.add(chat)
    foreign_user = data.draw(st.booleans())
    intruder = ev(role, 1, run[min(i, len(run) - 1)].received_at, run="r-theirs",
                  user="u2" if foreign_user else "u1", thread="t-theirs")
    for e in run[:i] + [intruder] + run[i:]:
        conn.route(e)
    res = chat.finish(run[-1].received_at + 1)
    assert "R8" in rules(res)
    assert conn.foreign == 1


@FAST
@given(valid_runs(), st.sampled_from([Role.AGENT_THINKING, Role.PARTIAL_RESULT, Role.TOOL_EXECUTING]),
       st.floats(0.0, 1.0))
def test_late_event_after_terminal(run, role, delay):
    late = ev(role, len(run) + 1, run[-1].received_at + delay, call="late")
    res = judge(run + [late])
    assert rules(res) == {"R4"}


@FAST
@given(st.lists(st.tuples(st.sampled_from([*Role, None]), st.booleans()), max_size=14), st.integers(0, 3))
def test_verdict_delays_counts_and_missing_are_those_of_the_events_fed(stream, keep_first):
    """Each role's first time up to the terminal event, every event by role and the required roles missing, in
    ALL_ROLES' order, are what the events say: kept or not (past the byte budget), after the terminal one or not."""
    from collections import Counter

    from harness.checker import MAX_KEPT_BYTES
    from harness.events import ALL_ROLES, Event

    fed = []
    for i, (role, recoverable) in enumerate(stream):
        e = (Event(None, "TEXT_MESSAGE_START", 0.1 * (i + 1), run_id="r1") if role is None
             else ev(role, None, 0.1 * (i + 1), call=f"c{i}", recoverable=recoverable))
        if i == keep_first and len(stream) > 4:
            e.nbytes = MAX_KEPT_BYTES  # the events after it are counted, not kept
        fed.append(e)
    chat = ChatTracker("c1", EXP, 0.0, thread_id="t1", run_id="r1")
    for e in fed:
        chat.feed(e)
    res = chat.finish(10.0)
    end = next((i for i, e in enumerate(fed) if e.terminal), len(fed) - 1)
    delays: dict[Role, float] = {}
    for e in fed[:end + 1]:
        if e.role is not None:
            delays.setdefault(e.role, e.received_at)
    assert list(res.event_delays.items()) == list(delays.items())
    counts = Counter(e.role for e in fed if e.role is not None)
    assert res.event_counts == counts and list(res.event_counts) == list(counts)
    terminal = fed[end] if fed and fed[end].terminal else None
    required = EXP.required if terminal is None or terminal.role is not Role.ERROR_EVENT else frozenset()
    assert res.missing == [r for r in ALL_ROLES if r in required and r not in delays]
