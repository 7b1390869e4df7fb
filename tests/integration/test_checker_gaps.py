"""Rules whose every branch a test holds: each raw server here breaks (or keeps) one rule at its edge, over a real
socket (or, for what only a watcher sees, a recording `chatprobe check` reads), and the verdict must be exactly what
docs/protocol.md says. Each case is one a small change to harness/checker.py or harness/flow.py let through while
every other test still passed."""
from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.server import serve

from harness.checker import MAX_OPEN_SPANS, MAX_SEQS_AHEAD
from harness.events import Outcome
from harness.offline import check_files
from harness.profiles import load_profile
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.sinks import Sink
from harness.targets import Target

from .test_misbehaving_server import WELCOME, quick, resume_unknown, run_against


def ev(kind: str, seq: int, run_id: str = "r1", **payload) -> str:
    return json.dumps({"type": kind, "run_id": run_id, "seq": seq, "payload": payload})


def clean_run(mid: str, start: int = 1) -> list[str]:
    """started, thinking, a tool call, completed: every role netra requires, seqs from `start`."""
    return [ev("agent_started", start, message_id=mid), ev("agent_thinking", start + 1),
            ev("tool_executing", start + 2, tool_name="calc", tool_call_id="t1"),
            ev("tool_completed", start + 3, tool_name="calc", tool_call_id="t1"),
            ev("agent_completed", start + 4, result="42")]


async def test_a_recoverable_error_as_the_first_event_is_r1():
    # R1 allows a *fatal* error first (the run failed before it started); a recoverable one is no start of a run.
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        await ws.send(ev("agent_error", 1, is_recoverable=True, error_message="warming up"))
        for frame in clean_run(mid, start=2):
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler)
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and r.rule_counts() == {"R1": 1}, r.violations
    assert r.violations[0].event_index == 0 and "not agent_started" in r.violations[0].reason


async def test_an_agent_started_after_the_terminal_event_is_r4_not_a_second_start():
    # "A second agent_started before the terminal event is an R1": after it, it is an event after the end (R4) only.
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        for frame in [*clean_run(mid), ev("agent_started", 6)]:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler, quick(expect={"deadline": "2s", "first_event_limit": "1s", "settle": "0.5s"}))
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and r.rule_counts() == {"R4": 1}, r.violations


async def test_another_event_under_a_used_seq_is_judged_by_every_rule_not_only_r7():
    # A duplicate seq whose event is not a copy of the one that had it (another wire type) is an R7 and is judged as
    # any event: a tool_completed under the tool_executing's seq closes a call already closed (R5).
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        *head, done = clean_run(mid)
        for frame in [*head, ev("tool_completed", 3, tool_name="calc", tool_call_id="t1"), done]:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler)
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and r.rule_counts() == {"R7": 1, "R5": 1}, r.violations
    assert "received twice" in next(v.reason for v in r.violations if v.rule == "R7")


async def test_an_error_under_a_used_seq_that_turns_fatal_is_no_copy_and_ends_the_run():
    # The same wire type under the same seq, but fatal where the first was recoverable: no copy of it (another
    # terminality), so the run ends there (R13, an unexpected fatal error) besides the R7, not left to its deadline.
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        for frame in [ev("agent_started", 1, message_id=mid), ev("agent_thinking", 2),
                      ev("agent_error", 3, is_recoverable=True, error_message="retrying"),
                      ev("agent_error", 3, is_recoverable=False, error_message="gave up")]:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler)
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and r.rule_counts() == {"R7": 1, "R13": 1}, r.violations
    assert r.duration is not None and r.duration < 1.0, r


async def test_a_seq_below_the_first_is_one_r7_not_also_a_lost_event():
    # docs/protocol.md R7: "a run 0, 2, 3 is that one R7, not a second one for seq 1 never arrived".
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        for frame in [ev("agent_started", 0, message_id=mid), *clean_run(mid, start=1)[1:]]:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler)
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and r.rule_counts() == {"R7": 1}, r.violations
    assert "seq 0 is not a positive sequence number" in r.violations[0].reason


async def test_tools_before_any_thinking_are_one_r6_however_many():
    # R6 asks for thinking before the *first* tool_executing: two calls before it are one order fault, counted once
    # (chatprobe_rule_violations_total must not grow with the number of tools).
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        for frame in [ev("agent_started", 1, message_id=mid),
                      ev("tool_executing", 2, tool_name="calc", tool_call_id="t1"),
                      ev("tool_completed", 3, tool_name="calc", tool_call_id="t1"),
                      ev("tool_executing", 4, tool_name="search", tool_call_id="t2"),
                      ev("tool_completed", 5, tool_name="search", tool_call_id="t2"),
                      ev("agent_thinking", 6), ev("agent_completed", 7, result="42")]:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler)
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and r.rule_counts() == {"R6": 1}, r.violations
    assert r.violations[0].event_index == 1


async def test_a_fatal_error_does_not_meet_an_expected_recoverable_one():
    # R13: the expected error must be of the kind expected; a run that dies where the step expected it to recover
    # and go on fails (the reverse is test_protocol_gaps' test_a_recoverable_error_does_not_meet_an_expected_fatal_one).
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        for frame in [ev("agent_started", 1, message_id=mid), ev("agent_thinking", 2),
                      ev("agent_error", 3, is_recoverable=False, error_message="tool failed")]:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler, quick(steps=[{"chat": {"expect_error": "recoverable"}}]))
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and r.rule_counts() == {"R13": 1}, r.violations
    assert "a recoverable error was expected, the error was fatal" in r.violations[0].reason


async def test_a_silence_ended_by_a_dropped_connection_is_incomplete_with_no_rule_broken():
    # docs/protocol.md, When the network misbehaves: a drop mid-run that no resume brings back is `incomplete` with no
    # rule broken; the silence before the drop is no stall (R11) held against the verdict of a lost run.
    async def handler(ws):
        await ws.send(WELCOME)
        msg = json.loads(await ws.recv())
        if msg["type"] == "resume":
            await ws.send(resume_unknown(msg["payload"]["run_id"]))
            await ws.wait_closed()
            return
        await ws.send(ev("agent_started", 1, message_id=msg["payload"]["message_id"]))
        await asyncio.sleep(0.4)  # wait-ok: the silence under test, past the 0.1 s stall limit
        await ws.close(1011, "crash")

    run = await run_against(handler, quick(expect={"deadline": "3s", "first_event_limit": "1s", "stall_limit": "0.1s",
                                                   "settle": "0.05s"}))
    (r,) = run.results
    assert r.outcome is Outcome.INCOMPLETE and not r.violations, r.violations
    assert r.reconnects == ["lost"] and "RESUME_UNKNOWN_RUN" in r.note, r


async def test_two_calls_of_one_tool_without_ids_may_be_open_at_once_and_each_close_closes_one():
    # R5 keys a netra tool call by its tool_name when it has no tool_call_id: two calls of one tool may then be open
    # at once (no R5), and each tool_completed closes one of them (the second close is no "not open").
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        for frame in [ev("agent_started", 1, message_id=mid), ev("agent_thinking", 2),
                      ev("tool_executing", 3, tool_name="calc"), ev("tool_executing", 4, tool_name="calc"),
                      ev("tool_completed", 5, tool_name="calc"), ev("tool_completed", 6, tool_name="calc"),
                      ev("agent_completed", 7, result="42")]:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler)
    (r,) = run.results
    assert r.outcome is Outcome.PASSED and not r.violations, r.violations


async def test_an_expected_error_that_never_comes_is_a_missing_role_too():
    # R2: a step that expects an error requires error_event besides R13's "never arrived": the chat misses an event,
    # which the missing-events share (and its alert) counts.
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        for frame in clean_run(mid):
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler, quick(steps=[{"chat": {"expect_error": "recoverable"}}]))
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and r.rule_counts() == {"R13": 1, "R2": 1}, r.violations
    assert [m.value for m in r.missing] == ["error_event"], r.missing


async def test_another_users_event_on_the_chats_own_run_is_r8_without_an_r7_gap():
    # docs/protocol.md R8: such an event is no event of any run, but when it names the run of a chat it was recorded on
    # and a seq, that seq counts as received, so the run shows no lost event (R7) for what the R8 says already.
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        leaked = json.dumps({"type": "partial_result", "run_id": "r1", "seq": 2, "user_id": "someone-else",
                             "payload": {"content": "someone else's answer"}})
        for frame in [ev("agent_started", 1, message_id=mid), leaked, *clean_run(mid, start=2)[1:]]:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler)
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and r.rule_counts() == {"R8": 1}, r.violations


async def test_a_malformed_frame_while_the_chat_listens_out_its_settle_window_is_that_chats_r12():
    # docs/protocol.md R12: a malformed frame is recorded on every chat in flight "or the latest one while it listens
    # out its settle window": the user was still looking at that answer.
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        for frame in [*clean_run(mid), "not json {"]:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler, quick(expect={"deadline": "3s", "first_event_limit": "1s", "settle": "0.5s"}))
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and r.rule_counts() == {"R12": 1}, r.violations
    assert "malformed frame" in r.violations[0].reason


async def test_an_event_as_the_connections_first_frame_is_an_answer_and_the_next_chats_r8():
    # The client waits for a first frame before it sends: an event is one (the server spoke), not "no welcome". Another
    # run's event before the connection's first chat is that chat's R8 (docs/protocol.md R8: before the first chat).
    async def handler(ws):
        await ws.send(ev("agent_thinking", 7, run_id="someone-elses-run"))
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        for frame in clean_run(mid):
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler)
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and r.rule_counts() == {"R8": 1}, (r.outcome, r.error, r.violations)


def _resumed_with_last_seq_1(tmp_path, replayed: list[str]):
    """`chatprobe check` of a recording: the chat had seqs 1-3 on connection a, which ended; its client resumed the run
    on b saying it had seq 1 (a watcher sees a client say less than the chat had), and b received `replayed`."""
    def recv(t: float, conn: str, frame: str) -> dict:
        return {"t": t, "dir": "recv", "conn": conn, "frame": frame}

    records = [{"t": 100.0, "dir": "send", "conn": "a", "frame": {"type": "user_message", "payload": {
                   "content": "hi", "thread_id": "t1", "message_id": "m1", "run_id": "r1"}}},
               *(recv(100.1 + i / 100, "a", f) for i, f in enumerate(clean_run("m1")[:3])),
               {"t": 100.2, "dir": "close", "conn": "a"},
               {"t": 100.3, "dir": "send", "conn": "b", "frame": {"type": "resume", "payload": {
                   "run_id": "r1", "last_seq": 1}}},
               *(recv(100.4 + i / 100, "b", f) for i, f in enumerate(replayed))]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    scenario = Scenario(name="t", expect={"settle": "0.05s", "deadline": "10s", "first_event_limit": "1s"})
    [checked] = check_files([path], load_profile("netra"), scenario)
    [chat] = checked.results
    return chat


def test_a_replay_at_or_below_the_last_seq_the_client_said_it_had_is_r7_for_a_watcher(tmp_path):
    # docs/protocol.md R7, across a resume: a resume carrying {last_seq} tells the server what the client had, so a
    # replayed event at or below it is the server's duplicate (R7), while the copies past it, which the client asked
    # for, are not judged again.
    chat = _resumed_with_last_seq_1(tmp_path, clean_run("m1"))  # seq 1 again, then 2, 3 asked for, then 4, 5
    assert chat.outcome is Outcome.FAILED and chat.rule_counts() == {"R7": 1}, chat.violations
    assert "seq 1 received twice" in chat.violations[0].reason and chat.reconnects == ["resumed"]


def test_a_copy_sent_again_after_the_replay_ended_is_r7_for_a_watcher(tmp_path):
    # The replay ends at the first event past the highest seq the chat had: a copy of seq 3 after seq 4 is no replay
    # the client asked for but a duplicate (R7).
    run = clean_run("m1")
    chat = _resumed_with_last_seq_1(tmp_path, [run[1], run[2], run[3], run[2], run[4]])
    assert chat.outcome is Outcome.FAILED and chat.rule_counts() == {"R7": 1}, chat.violations
    assert "seq 3 received twice" in chat.violations[0].reason


async def test_a_rejection_naming_a_later_message_ends_that_chat_not_the_oldest_waiting_one():
    # docs/protocol.md: an error_message that names the message it answers is that chat's; the earlier chat, whose run
    # the server then starts, is judged by its run (a server checking quotas as messages arrive refuses out of order).
    async def handler(ws):
        await ws.send(WELCOME)
        first = json.loads(await ws.recv())["payload"]
        second = json.loads(await ws.recv())["payload"]
        await ws.send(json.dumps({"type": "error_message", "error_code": "QUOTA_EXCEEDED",
                                  "error_message": "too many runs", "message_id": second["message_id"]}))
        for frame in clean_run(first["message_id"]):
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler, quick(chats_per_user=2, parallel_chats=2,
                                           expect={"deadline": "2s", "first_event_limit": "1s", "settle": "0.05s"}))
    outcomes = sorted((r.outcome.value, r.error_kind or "") for r in run.results)
    assert outcomes == [("error", "rejected"), ("passed", "")], [(r.outcome, r.error, r.violations) for r in run.results]


async def test_a_finished_run_is_judged_after_its_settle_window_not_at_its_deadline():
    # The chat's flow is woken by its terminal event: the verdict comes `settle` after it, however far the deadline.
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        for frame in clean_run(mid):
            await ws.send(frame)
        await ws.wait_closed()

    loop = asyncio.get_running_loop()
    began = loop.time()
    run = await run_against(handler, quick(expect={"deadline": "60s", "first_event_limit": "1s", "settle": "0.05s"}))
    assert [r.outcome for r in run.results] == [Outcome.PASSED]
    assert loop.time() - began < 10, "the chat waited for its deadline: its flow was not woken by the terminal event"


async def test_an_unnamed_rejection_is_the_waiting_chats_not_an_older_one_whose_run_started():
    # Servers answer messages in order: an error_message naming no message is the oldest chat still waiting for its
    # run's first event; a chat whose run has started is no longer waiting for one.
    async def handler(ws):
        await ws.send(WELCOME)
        first = json.loads(await ws.recv())["payload"]
        await ws.recv()
        run = clean_run(first["message_id"])
        await ws.send(run[0])
        await ws.send(json.dumps({"type": "error_message", "error_code": "SERVER_BUSY", "error_message": "busy"}))
        for frame in run[1:]:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler, quick(chats_per_user=2, parallel_chats=2,
                                           expect={"deadline": "2s", "first_event_limit": "1s", "settle": "0.05s"}))
    outcomes = sorted((r.outcome.value, r.error_kind or "") for r in run.results)
    assert outcomes == [("error", "rejected"), ("passed", "")], [(r.outcome, r.error, r.violations) for r in run.results]


def test_a_client_closing_after_the_run_ended_is_no_abandonment_for_a_watcher(tmp_path):
    # A chat whose client closes its connection mid-run is abandoned (judged on what arrived, nothing owed); one whose
    # run had ended (its terminal event came, the settle window still open) is judged as any finished run: here it
    # missed its tool call (R2), which a tab closed a moment later must not hide. `chatprobe check` of such a recording
    # judges it as the proxy does (tests/monitors/test_proxy_client_left_resume.py, the same case live).
    run = clean_run("m1")
    records = [{"t": 100.0, "dir": "send", "conn": "a", "frame": {"type": "user_message", "payload": {
                   "content": "hi", "thread_id": "t1", "message_id": "m1", "run_id": "r1"}}},
               *({"t": 100.1 + i / 100, "dir": "recv", "conn": "a", "frame": f}
                 for i, f in enumerate([run[0], run[1], ev("agent_completed", 3, result="42")])),
               {"t": 100.14, "dir": "close", "conn": "a", "by": "client"}]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    scenario = Scenario(name="t", expect={"settle": "0.5s", "deadline": "10s", "first_event_limit": "1s"})
    [checked] = check_files([path], load_profile("netra"), scenario)
    [chat] = checked.results
    assert chat.outcome is Outcome.FAILED and chat.rule_counts() == {"R2": 1}, (chat.note, chat.violations)
    assert chat.abandoned_at is None and "abandoned" not in chat.note


class _Counted(Sink):
    """What a sink is told of chats started and judged: the counters that must add up (started = judged + in flight)."""

    def __init__(self) -> None:
        self.started = 0
        self.judged: list = []

    def chat_started(self, scenario: str) -> None:
        self.started += 1

    def chat_finished(self, result) -> None:
        self.judged.append(result)


async def test_a_message_sent_again_after_the_servers_clean_close_is_one_chat_started():
    # The message crossed the server's closing handshake before any event: it is sent again once on a new connection,
    # as the same chat (an R13 warning says so), counted started once, so started = judged still adds up.
    connections = []

    async def handler(ws):
        connections.append(ws)
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        if len(connections) == 1:
            await ws.close(1000)
            return
        for frame in clean_run(mid):
            await ws.send(frame)
        await ws.wait_closed()

    sink = _Counted()
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="raw")
        async with asyncio.timeout(15):
            run = await run_scenario(quick(), target, sink)
    (r,) = run.results
    assert r.outcome is Outcome.PASSED and any(w.rule == "R13" for w in r.warnings), (r.violations, r.warnings)
    assert len(connections) == 2 and sink.started == len(sink.judged) == 1, (sink.started, sink.judged)


@pytest.mark.parametrize("allowed", [{}, {"reconnect": False}, {"max_reconnects": 0}])
async def test_a_message_whose_resend_cannot_connect_is_still_one_chat_started(allowed):
    # The message crossed the server's clean close; every new connection to send it again is refused (HTTP 503): the
    # chat ends as an error of the last one, counted started once (it was counted when its message first left).
    # docs/protocol.md: where reconnecting is allowed (the default) that connection is tried again with the
    # reconnect's backoff until the chat's deadline, each attempt counted as a reconnect attempt; with `max_reconnects:
    # 0`, which allows none, one connection is tried, as before; with `reconnect: false` the message is not sent again
    # at all: the chat is judged at the close, `incomplete`, on its one connection.
    attempts = []

    def refuse_the_second(connection, request):
        attempts.append(request.path)
        if len(attempts) > 1:
            return connection.respond(503, "restarting\n")
        return None

    async def handler(ws):
        await ws.send(WELCOME)
        await ws.recv()
        await ws.close(1000)

    sink = _Counted()
    async with serve(handler, "127.0.0.1", 0, compression=None, process_request=refuse_the_second) as server:
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="raw")
        async with asyncio.timeout(15):
            run = await run_scenario(quick(**allowed), target, sink)
    (r,) = run.results
    if allowed == {"reconnect": False}:
        assert r.outcome is Outcome.INCOMPLETE and len(attempts) == 1, (r.outcome, r.error_kind, r.error, attempts)
        assert sink.started == len(sink.judged) == 1, (sink.started, sink.judged)
        return
    assert r.outcome is Outcome.ERROR and r.error_kind == "refused", (r.outcome, r.error_kind, r.error, attempts)
    if allowed:
        assert len(attempts) == 2 and r.reconnect_attempts == r.reconnect_failures == 0, (attempts, r)
    else:
        # the first connection and at least two refused ones, each a failed reconnect attempt of the chat
        assert len(attempts) >= 3 and r.reconnect_attempts == r.reconnect_failures == len(attempts) - 1, (attempts, r)
    assert sink.started == len(sink.judged) == 1, (sink.started, sink.judged)


async def test_a_resume_of_a_run_without_seqs_asks_for_the_events_past_those_the_client_had():
    # A dialect variant with no `seq` (netra's oldest): the resume's last_seq is then the count of events the client
    # had, so a server replaying past it sends only the rest, never the run again from its start (which would be a
    # second agent_started, R1, and a tool call opened twice, R5).
    def bare(kind: str, **payload) -> str:
        return json.dumps({"type": kind, "run_id": "r1", "payload": payload})

    def run_of(mid: str) -> list[str]:
        return [bare("agent_started", message_id=mid), bare("agent_thinking"),
                bare("tool_executing", tool_name="calc", tool_call_id="t1"),
                bare("tool_completed", tool_name="calc", tool_call_id="t1"), bare("agent_completed", result="42")]

    resumes = []

    async def handler(ws):
        await ws.send(WELCOME)
        msg = json.loads(await ws.recv())
        if msg["type"] == "resume":
            resumes.append(msg["payload"])
            for frame in run_of("")[msg["payload"]["last_seq"]:]:
                await ws.send(frame)
            await ws.wait_closed()
            return
        for frame in run_of(msg["payload"]["message_id"])[:3]:
            await ws.send(frame)
        await ws.close(1011, "crash")

    run = await run_against(handler, quick(expect={"deadline": "3s", "first_event_limit": "1s", "settle": "0.05s"}))
    (r,) = run.results
    assert resumes == [{"run_id": "r1", "last_seq": 3}], resumes
    assert r.outcome is Outcome.PASSED and r.reconnects == ["resumed"], (r.violations, r.note)


async def test_a_chat_abandoned_after_a_broken_rule_fails():
    # An abandoned chat is judged on what arrived: nothing more is owed, but a rule already broken (R1 here) stands.
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        for frame in [ev("agent_thinking", 1), ev("agent_started", 2, message_id=mid)]:  # thinking first: R1
            await ws.send(frame)
        await ws.wait_closed()  # the run goes on: the client leaves it after two events

    run = await run_against(handler, quick(steps=[{"chat": {"abandon_after": 2}}]))
    (r,) = run.results
    assert r.abandoned_at is not None and r.outcome is Outcome.FAILED, (r.outcome, r.note, r.violations)
    assert r.rule_counts() == {"R1": 1}, r.violations


async def test_a_new_connections_first_server_ping_is_answered_however_soon_after_the_last_pong():
    # The pong bound (one a PONG_INTERVAL) is a connection's: after a reconnect, a server that pings at once and drops
    # a connection whose ping goes unanswered must get its pong, even within the interval of the last connection's.
    pongs: list[int] = []
    connections = []

    async def handler(ws):
        connections.append(ws)
        n = len(connections)
        await ws.send(WELCOME)
        msg = json.loads(await ws.recv())
        if n == 1:
            mid = msg["payload"]["message_id"]
            await ws.send(ev("agent_started", 1, message_id=mid))
        await ws.send(json.dumps({"type": "ping"}))
        if json.loads(await ws.recv()) == {"type": "pong"}:
            pongs.append(n)
        if n == 1:
            await ws.close(1011, "crash")  # mid-run: the client reconnects and resumes at once
            return
        for frame in clean_run("")[1:]:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler, quick(expect={"deadline": "3s", "first_event_limit": "1s", "settle": "0.05s"}))
    (r,) = run.results
    assert pongs == [1, 2], pongs
    assert r.outcome is Outcome.PASSED and r.reconnects == ["resumed"], (r.violations, r.note)


async def test_events_after_a_verdict_fill_the_chats_caps_and_no_more():
    """A server that goes on sending a judged run's events (here: as the client's next message comes): each shows with
    the chat it belongs to as a warning and a kept event, within that chat's caps (MAX_WARNINGS_KEPT warnings,
    MAX_EVENTS_KEPT events), never without end. The first chat is a few events short of its event cap, so the late
    ones pass it half way: it holds MAX_EVENTS_KEPT events exactly, and MAX_WARNINGS_KEPT warnings."""
    from harness.checker import MAX_EVENTS_KEPT, MAX_WARNINGS_KEPT

    late = MAX_WARNINGS_KEPT + 10
    own = MAX_EVENTS_KEPT - late // 2  # the first chat's own events

    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        *head, done = clean_run(mid)
        thinking = [ev("agent_thinking", 5 + i) for i in range(own - len(head) - 1)]
        for frame in [*head, *thinking, done.replace('"seq": 5', f'"seq": {own}')]:
            await ws.send(frame)
        mid = json.loads(await ws.recv())["payload"]["message_id"]  # chat 1 was judged: its settle window is over
        for frame in [ev("agent_thinking", own + 1 + i) for i in range(late)]:
            await ws.send(frame)
        for frame in clean_run(mid):
            await ws.send(frame.replace('"r1"', '"r2"'))
        await ws.wait_closed()

    # A user who thinks between chats waits the first one's settle window out before the next message.
    run = await run_against(handler, quick(chats_per_user=2, think_time="0.01s",
                                           expect={"deadline": "10s", "first_event_limit": "5s", "settle": "0.05s"}))
    first, second = run.results
    assert first.outcome is Outcome.PASSED and second.outcome is Outcome.PASSED, (first.violations, second.violations)
    assert first.events_received == own and not second.warnings
    assert len(first.events) == MAX_EVENTS_KEPT, len(first.events)
    assert len(first.warnings) == MAX_WARNINGS_KEPT, len(first.warnings)
    assert all(w.rule.value == "R4" and "after the chat was judged" in w.reason for w in first.warnings)


@pytest.mark.parametrize(("ahead", "said"), [(MAX_SEQS_AHEAD, "seq 2 never arrived"),
                                             (MAX_SEQS_AHEAD + 1, "stopped tracking the gaps")],
                         ids=["at-the-cap", "one-past-it"])
async def test_seqs_ahead_of_a_gap_are_tracked_up_to_the_cap_exactly(ahead, said):
    """docs/protocol.md: a chat tracks at most 10,000 `seq` numbers ahead of a gap. seq 2 never comes: with exactly that
    many after it the gap is still tracked (R7, seq 2 lost); with one more the chat stops tracking (R7 says so)."""
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        started, thinking, executing, completed, done = clean_run(mid, start=2)
        await ws.send(started.replace('"seq": 2', '"seq": 1'))
        for frame in [thinking, executing, completed]:
            await ws.send(frame)
        for seq in range(6, ahead + 2):
            await ws.send(ev("agent_thinking", seq))
        await ws.send(done.replace('"seq": 6', f'"seq": {ahead + 2}'))
        await ws.wait_closed()

    run = await run_against(handler, quick(expect={"deadline": "10s", "first_event_limit": "5s", "settle": "0.05s"}))
    (r,) = run.results
    assert r.events_received == ahead + 1
    assert r.rule_counts() == {"R7": 1}, r.violations
    assert said in r.violations[0].reason, r.violations


@pytest.mark.parametrize("spans", [MAX_OPEN_SPANS, MAX_OPEN_SPANS + 1], ids=["at-the-cap", "one-past-it"])
async def test_spans_open_at_once_are_tracked_up_to_the_cap_exactly(spans):
    """docs/protocol.md: a chat tracks at most 1,000 spans open at once. A run that opens exactly that many tool calls
    and closes them all passes; one more is not tracked, and R5 says so."""
    async def handler(ws):
        await ws.send(WELCOME)
        mid = json.loads(await ws.recv())["payload"]["message_id"]
        await ws.send(ev("agent_started", 1, message_id=mid))
        await ws.send(ev("agent_thinking", 2))
        seq = 3
        for kind in ("tool_executing", "tool_completed"):
            for n in range(spans):
                await ws.send(ev(kind, seq, tool_name="calc", tool_call_id=f"t{n}"))
                seq += 1
        await ws.send(ev("agent_completed", seq, result="42"))
        await ws.wait_closed()

    run = await run_against(handler, quick(expect={"deadline": "10s", "first_event_limit": "5s", "settle": "0.05s"}))
    (r,) = run.results
    if spans == MAX_OPEN_SPANS:
        assert r.outcome is Outcome.PASSED, r.violations
    else:
        assert r.outcome is Outcome.FAILED and set(r.rule_counts()) == {"R5"}, r.violations
        assert f"more than {MAX_OPEN_SPANS} spans open at once" in r.violations[0].reason, r.violations
