"""What an open chat costs the process: no reference cycle (freed without the garbage collector), no container it has not
written, and a connection's membership test that scans no more than a few chats."""
from __future__ import annotations

import gc
import types
from typing import Any

from harness.checker import KEEP_FINISHED, MAX_VIOLATIONS_KEPT, SMALL_CONNECTION, ChatTracker, ConnectionChecker
from harness.events import Role, kept_bytes

from .runs import EXP, ev, valid_run

# The containers a chat makes only when it first writes one.
LAZY = ("violations", "warnings", "reconnects", "seqs_above", "open_spans", "overflow")
# …and those only a further run of the stream (tests/profiles/test_agui_multirun.py) or a flood past the kept events
# (test_checker.py) makes.
RARE = ("followups", "unkept_counts", "roles_past_kept")


def _reaches(start: object, target: object) -> bool:
    """Whether `target` is reachable from `start` through instance references (classes, modules and functions are
    shared by every chat, and reach everything: not followed)."""
    seen: set[int] = set()
    todo: list[Any] = list(gc.get_referents(start))
    while todo:
        obj = todo.pop()
        if obj is target:
            return True
        if id(obj) in seen or isinstance(obj, (type, types.ModuleType, types.FunctionType)):
            continue
        seen.add(id(obj))
        todo.extend(gc.get_referents(obj))
    return False


def _busy_chat() -> ChatTracker:
    """A chat that wrote every container it has: violations past the listing cap, a warning, a gap in its seqs, a
    span left open, a reconnect."""
    chat = ChatTracker("c1", EXP, 0.0, thread_id="t1", run_id="r1")
    for e in valid_run()[:2]:
        chat.feed(e)
    chat.feed(ev(Role.TOOL_EXECUTING, 9, 0.3, call="open"))
    for _ in range(MAX_VIOLATIONS_KEPT + 3):
        chat.malformed("junk", 0.4)
    chat._warn(chat.violations[0].rule, "advice", 0)
    chat.reconnected(resumed=False)
    return chat


def test_a_chat_in_any_state_is_no_reference_cycle() -> None:
    fresh = ChatTracker("c0", EXP, 0.0)
    open_chat = ChatTracker("c1", EXP, 0.0, run_id="r1")
    open_chat.feed(valid_run()[0])
    done = ChatTracker("c2", EXP, 0.0, thread_id="t1", run_id="r1")
    for e in valid_run():
        done.feed(e)
    done.finish(1.0)
    busy = _busy_chat()
    busy.finish(1.0)
    for chat in (fresh, open_chat, done, busy):
        assert chat.root is chat and not _reaches(chat, chat), chat.chat_id


def test_chats_are_freed_without_the_garbage_collector() -> None:
    conn = ConnectionChecker(user_id="u1")
    for i in range(50):
        chat = ChatTracker(f"c{i}", EXP, 0.0, thread_id="t1", run_id=f"r{i}")
        conn.add(chat)
        for e in valid_run():
            e.run_id = f"r{i}"
            conn.route(e)
        chat.finish(1.0)
    gc.collect()
    was = gc.isenabled()
    gc.disable()
    try:
        del conn, chat
        assert gc.collect() == 0  # reference counting freed them all: nothing was left for the collector
    finally:
        if was:
            gc.enable()


def test_an_open_chat_holds_only_the_containers_it_wrote_and_never_writes_a_shared_one() -> None:
    open_chat = ChatTracker("c1", EXP, 0.0, run_id="r1")
    open_chat.feed(valid_run()[0])
    other = ChatTracker("c2", EXP, 0.0)
    for name in LAZY + RARE:  # not made: the same empty object every chat starts with
        assert getattr(open_chat, name) is getattr(other, name) and not getattr(open_chat, name), name
    busy = _busy_chat()
    for name in LAZY:
        assert getattr(busy, name) is not getattr(other, name) and getattr(busy, name), name
    # Writing one chat's containers left the empty ones every other chat shares empty: a later chat is clean.
    later = ChatTracker("c3", EXP, 0.0, thread_id="t1", run_id="r1")
    for e in valid_run():
        later.feed(e)
    res = later.finish(1.0)
    assert res.passed and res.violations == [] and res.warnings == [] and res.reconnects == []
    assert res.violations_not_listed == {} and not later.open_spans and not later.seqs_above
    assert busy.finish(1.0).violations_not_listed == {"R12": 3}


def test_a_chat_judged_before_any_event_shares_its_event_list_with_its_verdict() -> None:
    chat = ChatTracker("c1", EXP, 0.0, run_id="r1")
    res = chat.finish(100.0)
    assert res.events == [] and res.events is chat.events
    chat.feed(valid_run()[0])  # a late event: shown with the verdict, as for a chat that had events
    assert len(res.events) == 1


def test_membership_survives_prune_and_discard() -> None:
    conn = ConnectionChecker(user_id="u1")
    chats = []
    for i in range(3 * KEEP_FINISHED):
        chat = ChatTracker(f"c{i}", EXP, 0.0, thread_id=f"t{i}", run_id=f"r{i}")
        conn.add(chat)
        chat.finish(1.0)
        chats.append(chat)
    conn.add(ChatTracker("trigger", EXP, 0.0))  # over the prune mark: the oldest judged chats are forgotten
    kept, forgotten = conn.chats[0], chats[0]
    assert forgotten not in conn.chats and len(conn.chats) <= 2 * KEEP_FINISHED
    n = len(conn.chats)
    conn.add(kept)  # still here: not added twice
    assert len(conn.chats) == n
    conn.add(forgotten)  # forgotten by the prune: added again
    assert conn.chats[-1] is forgotten and len(conn.chats) == n + 1
    conn.discard(forgotten)
    assert forgotten not in conn.chats
    conn.add(forgotten)  # discarded: added again, once
    assert conn.chats.count(forgotten) == 1


def test_active_chats_are_the_unfinished_ones_through_prune_and_discard() -> None:
    """active() skips the chats it already found finished (a chat never stops being done or judged); what it answers
    is still every chat not done and not judged, in order, after chats finish out of order, a prune and a discard."""
    conn = ConnectionChecker(user_id="u1")

    def expected() -> list[ChatTracker]:
        return [c for c in conn.chats if not c.done and c._result is None]

    chats = [ChatTracker(f"c{i}", EXP, 0.0, thread_id=f"t{i}", run_id=f"r{i}") for i in range(3 * KEEP_FINISHED)]
    for chat in chats[:5]:
        conn.add(chat)
    chats[1].finish(1.0)  # out of order: the first is still open, so nothing is skipped yet
    assert conn.active() == [chats[0], chats[2], chats[3], chats[4]] == expected()
    chats[0].finish(1.0)
    for e in valid_run():  # its terminal event: done, not yet judged
        chats[2].feed(e)
    assert chats[2].done and chats[2].result is None
    assert conn.active() == expected() and chats[0] not in conn.active()
    for chat in chats[5:]:
        conn.add(chat)
        assert conn.active()[-1] is chat
        chat.finish(1.0)
        assert conn.active() == expected()
    conn.add(last := ChatTracker("last", EXP, 0.0))  # over the prune mark: the chats list is rebuilt
    assert conn.active() == expected() and last in conn.active()
    open_one = conn.active()[0]
    conn.discard(open_one)
    assert conn.active() == expected() and open_one not in conn.active()
    conn.add(again := ChatTracker("again", EXP, 0.0))
    assert conn.active() == expected() and conn.active()[-1] is again
    for chat in conn.active():
        chat.finish(1.0)
    assert conn.active() == [] == expected()


def test_a_connection_with_few_chats_makes_no_membership_set_and_keeps_no_emptied_table() -> None:
    conn = ConnectionChecker(user_id="u1")
    other = ConnectionChecker(user_id="u2")
    chat = ChatTracker("c1", EXP, 0.0, thread_id="t1", message_id="m1")  # the server names the run
    conn.add(chat)
    assert chat in conn.unnamed.values() and conn.unnamed is not other.unnamed
    first = valid_run()[0]
    first.thread_id = "t1"
    assert conn.route(first) is chat and chat.run_id == "r1"
    # Adopted: it waits for its run no more, and the table it waited in is the empty one every connection shares.
    assert not conn.unnamed and conn.unnamed is other.unnamed
    assert conn._members is None  # one chat: looked for in the list
    chats = [chat] + [ChatTracker(f"c{i}", EXP, 0.0, run_id=f"r{i}") for i in range(2, SMALL_CONNECTION + 3)]
    for c in chats:
        conn.add(c)
        conn.add(c)  # a second add (after a reconnect) never duplicates it, list or set
        assert conn.chats.count(c) == 1
        assert (conn._members is None) == (len(conn.chats) <= SMALL_CONNECTION)
    assert conn.chats == chats and conn._members == set(chats)
    conn.discard(chats[-1])
    assert chats[-1] not in conn.chats and chats[-1] not in conn._members
    conn.add(chats[-1])
    assert conn.chats.count(chats[-1]) == 1


def test_a_kept_event_holds_the_chats_the_connections_and_its_roles_strings_not_copies() -> None:
    conn = ConnectionChecker(user_id="".join(["u", "1"]))  # built: not the literal "u1" the events carry
    chat = ChatTracker("c1", EXP, 0.0, thread_id="".join(["t", "1"]), run_id="r1", message_id="".join(["m", "1"]))
    conn.add(chat)
    first, second = valid_run()[:2]
    first.message_id = "m1"
    first.wire_type = "".join(["agent_", "started"])  # as a decoder makes it: a string of its own
    first.nbytes = 321
    assert first.user_id == conn.user_id and first.user_id is not conn.user_id
    assert first.thread_id == chat.thread_id and first.thread_id is not chat.thread_id
    assert conn.route(first) is chat
    assert first.user_id is conn.user_id and first.thread_id is chat.thread_id and first.message_id is chat.message_id
    assert first.wire_type is Role.AGENT_STARTED.value
    assert chat.kept_bytes == 321 and first.nbytes == 0  # the decoder's measure, counted once, not kept
    second.thread_id = "t2"  # another thread inside this client's run: R8, and the event keeps what it said
    assert conn.route(second) is chat and second.thread_id == "t2"
    assert [v.rule.value for v in chat.violations] == ["R8"]
    assert chat.kept_bytes == 321 + kept_bytes(second)


def test_event_counts_are_exact_for_kept_and_unkept_events_and_no_role() -> None:
    from collections import Counter

    from harness.checker import MAX_KEPT_BYTES
    from harness.events import Event

    chat = ChatTracker("c1", EXP, 0.0, thread_id="t1", run_id="r1")
    fed = valid_run()[:-1]
    fed += [Event(None, "TEXT_MESSAGE_START", 0.5, run_id="r1")] * 3
    fed += [ev(Role.PARTIAL_RESULT, None, 0.6)]
    big = ev(Role.PARTIAL_RESULT, None, 0.7)
    big.nbytes = MAX_KEPT_BYTES  # fills the byte budget: the events after it are counted, not kept
    fed += [big] + [ev(Role.PARTIAL_RESULT, None, 0.8)] * 4 + [ev(Role.TOOL_COMPLETED, None, 0.8, call="x")]
    fed += [ev(Role.AGENT_COMPLETED, None, 0.9)]
    for e in fed:
        chat.feed(e)
    res = chat.finish(1.0)
    assert len(res.events) < len(fed) and res.events_received == len(fed)
    assert res.event_counts == {r: n for r, n in Counter(e.role for e in fed).items() if r is not None}
    assert None not in res.event_counts


def test_event_delays_are_each_roles_first_time_up_to_the_terminal_event_kept_or_not() -> None:
    from harness.checker import MAX_KEPT_BYTES

    sent = 1.0
    chat = ChatTracker("c1", EXP, sent, thread_id="t1", run_id="r1")
    big = ev(Role.AGENT_THINKING, None, 1.375)
    big.nbytes = MAX_KEPT_BYTES  # the events after it are not kept
    fed = [ev(Role.AGENT_STARTED, None, 1.125), ev(Role.AGENT_THINKING, None, 1.25), big,
           ev(Role.TOOL_EXECUTING, None, 1.5, call="a"), ev(Role.TOOL_EXECUTING, None, 1.75, call="b"),
           ev(Role.TOOL_COMPLETED, None, 2.0, call="a"), ev(Role.TOOL_COMPLETED, None, 2.0, call="b"),
           ev(Role.AGENT_COMPLETED, None, 3.0),
           ev(Role.ERROR_EVENT, None, 4.0, recoverable=True)]  # after the terminal event: an R4, no delay
    for e in fed:
        chat.feed(e)
    res = chat.finish(5.0)
    assert len(res.events) == 3
    assert res.event_delays == {Role.AGENT_STARTED: 0.125, Role.AGENT_THINKING: 0.25, Role.TOOL_EXECUTING: 0.5,
                                Role.TOOL_COMPLETED: 1.0, Role.AGENT_COMPLETED: 2.0}
    assert list(res.event_delays) == [Role.AGENT_STARTED, Role.AGENT_THINKING, Role.TOOL_EXECUTING,
                                      Role.TOOL_COMPLETED, Role.AGENT_COMPLETED]
    assert res.missing == [] and "R4" in {v.rule for v in res.violations}
    kept_only = ChatTracker("c2", EXP, sent, thread_id="t1", run_id="r1")
    for e in fed[:2] + fed[3:]:
        kept_only.feed(e)
    assert kept_only.finish(5.0).event_delays == res.event_delays


def test_a_connection_carrying_one_chat_indexes_it_without_a_dict() -> None:
    conn = ConnectionChecker(user_id="u1")
    chat = ChatTracker("c1", EXP, 0.0, thread_id="t1", run_id="r1", message_id="m1")
    conn.add(chat)
    conn.add(chat)  # again, after a reconnect
    for index in (conn.by_run, conn.by_message, conn.by_thread):
        assert index._many is None and len(index) == 1
    first = valid_run()[0]
    assert conn.route(first) is chat
    second = ChatTracker("c2", EXP, 0.0, thread_id="t2", run_id="r2")
    conn.add(second)  # a second key: now a dict, holding both
    assert conn.by_run._many == {"r1": chat, "r2": second} and conn.by_message._many is None
    assert conn.by_thread.get("t2") is second and conn.by_thread.get("t1") is chat


def test_a_chat_index_answers_as_a_dict_would() -> None:
    import random

    from harness.checker import ChatIndex

    rng = random.Random(7)
    chats = [ChatTracker(f"c{i}", EXP, 0.0) for i in range(3)]
    for _ in range(200):
        index, model = ChatIndex(), {}
        for _ in range(rng.randrange(1, 12)):
            key = rng.choice(["a", "b", "c", ""])
            op = rng.random()
            if op < 0.6:
                chat = rng.choice(chats)
                index[key] = chat
                model[key] = chat
            elif key in model:
                assert key in index
                del index[key]
                del model[key]
            else:
                assert key not in index
                try:
                    del index[key]
                except KeyError:
                    pass
                else:
                    raise AssertionError("deleted a key it does not hold")
            assert len(index) == len(model) and sorted(index.items()) == sorted(model.items())
            for k in ("a", "b", "c", "", "zz"):
                assert index.get(k) is model.get(k) and (k in index) == (k in model)


def test_foreign_events_kept_for_a_later_resume_hold_no_payload() -> None:
    """Another run's events that reach a connection before any chat are kept (the first INCIDENTS_EACH) for the next
    chat added there (ConnectionChecker.untold: R8), a new one or one resumed there. They kept their payload: 16 AG-UI
    deltas of 1 MiB held 16 MiB per connection (64 at the frame limit). Only what the R8 says of them is kept."""
    import json
    import tracemalloc

    from harness.profiles import load_profile

    agui = load_profile("ag-ui")
    frame = json.dumps({"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1", "delta": "x" * (1 << 20),
                        "runId": "someone-elses", "threadId": "t9"})
    checker = ConnectionChecker("u1", further_runs=True)
    agui.decode(frame, 0.0)  # the decoder is compiled on first use: not counted
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(16):
            assert checker.route(agui.decode(frame, 0.0)) is None
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(checker.untold) == 16
    assert held < 1 << 20, f"{held} bytes held"
    resumed = ChatTracker("c1", EXP, 0.0, run_id="r1")
    checker.add(resumed)
    assert [v.rule.value for v in resumed.violations] == ["R8"] * 16
    assert "TEXT_MESSAGE_CONTENT" in resumed.violations[0].reason


def test_what_no_chat_was_told_is_the_connections_own_at_its_end_and_bounded() -> None:
    """Another user's events after a connection's last chat was judged, a flood of them, and no chat after: its end
    reports the first INCIDENTS_EACH as its own violations (ConnectionChecker.ended), once; a connection keeps no more
    of them however many come (reasons only). They were dropped with the connection."""
    checker = ConnectionChecker("u1", events_name_run=True)
    chat = ChatTracker("c1", EXP, 0.0, run_id="r1", thread_id="t1")
    checker.add(chat)
    for e in valid_run():
        checker.route(e)
    chat.finish(1.0)
    for i in range(1_000):
        assert checker.route(ev(Role.PARTIAL_RESULT, i + 1, 2.0, run="someone-elses", user="u2")) is None
    assert len(checker.untold) == 16 and checker.foreign == 1_000
    told = checker.ended()
    assert [(v.rule.value, v.event_index) for v in told] == [("R8", None)] * 16
    assert "another user" in told[0].reason
    assert checker.ended() == [] and not checker.untold  # reported once
    assert chat.result is not None and chat.result.passed  # no chat's verdict changed


def test_events_are_never_walked_by_the_garbage_collector():
    """A run keeps every judged chat's events (the report lists them, late events join them): as objects the collector
    tracks, each young collection walked them (vs_k6's 5,000 chats: 40,000 events, ~2.6% of the run's CPU in 16
    collections, BENCHMARKS.md). An Event holds no reference back to anything that holds it, so it is not tracked:
    made by the decoder's fast path, by its exact decode (a frame of another shape), or by hand."""
    from harness.events import Event
    from harness.profiles import load_profile

    dec = load_profile("netra")._decoder
    frame = ('{"type":"tool_executing","run_id":"r1","seq":2,"thread_id":"t1",'
             '"payload":{"tool_call_id":"c1","tool_name":"search"}}')
    odd = '{"type":"tool_executing","run_id":"r1","seq":2,"payload":{"tool_call_id":"c1","tool_name":"search"},"x":[1]}'
    fast, exact, by_hand = dec.decode(frame, 1.0), dec.decode(odd, 1.0), Event(Role.AGENT_STARTED, "agent_started", 1.0)
    for event in (fast, exact, by_hand, dec.decode_exact(frame, 1.0)):
        assert isinstance(event, Event), event
        assert not gc.is_tracked(event), event
    assert fast == dec.decode_exact(frame, 1.0)
    chat = ChatTracker("c1", EXP, 0.0, thread_id="t1", run_id="r1")
    for event in valid_run():
        chat.feed(event)
    res = chat.finish(10.0)
    assert res.events and not any(gc.is_tracked(e) for e in res.events)


def test_an_event_compares_and_shows_as_before():
    """What an Event's `==` and repr leave out: `nbytes` (what keeping it costs, measured or not) is not compared,
    neither it nor `error_detail` is shown; every other field counts, and an Event is not hashable (it is mutable)."""
    from harness.events import Event

    a = Event(Role.ERROR_EVENT, "error_event", 1.0, run_id="r1", nbytes=300, error_detail="E1: no")
    b = Event(Role.ERROR_EVENT, "error_event", 1.0, run_id="r1", nbytes=0, error_detail="E1: no")
    assert a == b and not a != b
    assert a != Event(Role.ERROR_EVENT, "error_event", 1.0, run_id="r1", error_detail="E2: no")
    assert a != Event(Role.ERROR_EVENT, "error_event", 1.0, run_id="r2", nbytes=300, error_detail="E1: no")
    assert repr(a) == ("Event(role=<Role.ERROR_EVENT: 'error_event'>, wire_type='error_event', received_at=1.0, "
                       "run_id='r1', thread_id=None, user_id=None, message_id=None, seq=None, tool_call_id=None, "
                       "tool_name=None, recoverable=False, span=None, server_time=None, bad_seq=None, oversized=(), "
                       "parent_run_id=None, payload=None, problems=(), advice=())")
    try:
        hash(a)
    except TypeError:
        pass
    else:
        raise AssertionError("an Event is hashable")


def test_a_listing_charges_what_each_event_costs_to_keep_as_its_tracker_counted_it() -> None:
    """results.Listing charges a listed chat's events by the bytes its tracker counted as it kept them
    (ChatResult.events_bytes): each event's kept_bytes, measured by the decoder or not, late events included; a
    listing keeping fewer events sums those it keeps."""
    import orjson

    from harness.checker import MAX_KEPT_BYTES
    from harness.profiles import load_profile
    from harness.results import Listing, ListingBudget

    decode = load_profile("netra")._decoder.decode
    base = {"run_id": "r-1", "thread_id": "t-1", "user_id": "u-1"}
    frames = [
        {"type": "agent_started", "timestamp": "2026-12-05T21:00:00Z", **base},
        {"type": "agent_thinking", "payload": {"message_id": "m-1", "thought": "x"}, **base},
        {"type": "agent_error", "is_recoverable": True, "error_code": "E1", "error_message": "slow", **base},
        {"type": "tool_executing", "payload": {"tool_call_id": "call-7", "tool_name": "calculator"}, **base},
        {"type": "tool_completed", "data": {"tool_call_id": "call-7", "tool_name": "calculator"}, **base},
        {},  # agent_completed with an integer past 64 bits (written below): the exact decoder's
    ]
    huge = '{"type":"agent_completed","seq":' + str(2**70) + ',"run_id":"r-1","thread_id":"t-1","user_id":"u-1"}'
    texts = [orjson.dumps(f).decode() for f in frames[:-1]] + [huge]
    events = [decode(text, 0.1 * (i + 1)) for i, text in enumerate(texts)]
    assert all(e.nbytes for e in events[:5])  # measured by the decoder
    for case in ("measured", "unmeasured"):
        conn = ConnectionChecker(user_id="u-1")
        chat = ChatTracker("c1", EXP, 0.0, thread_id="t-1", run_id="r-1", message_id="m-1")
        conn.add(chat)
        for e in events:
            e = e.__copy__()
            if case == "unmeasured":
                e.nbytes = 0
            conn.route(e)
        res = chat.finish(1.0)
        assert res.events_bytes == sum(kept_bytes(e) for e in res.events) == chat.kept_bytes > 0
        late = events[1].__copy__()
        late.received_at = 2.0
        conn.route(late)  # after the verdict: shown with the chat, and charged
        assert len(res.events) == len(events) + 1
        assert res.events_bytes == sum(kept_bytes(e) for e in res.events)
        listing = Listing(budget=ListingBudget())
        assert listing.add(res) and listing.budget.bytes == res.events_bytes
        fewer = Listing(max_events=2, budget=ListingBudget())
        res.events = list(res.events)
        assert fewer.add(res) and fewer.budget.bytes == sum(kept_bytes(e) for e in res.events[:2]) > 0
    big = ChatTracker("c2", EXP, 0.0, run_id="r-1")
    first, second = valid_run()[:2]
    first.nbytes = MAX_KEPT_BYTES  # the events after it are counted, not kept
    big.feed(first)
    big.feed(second)
    res = big.finish(1.0)
    assert res.events == [first] and res.events_bytes == MAX_KEPT_BYTES
