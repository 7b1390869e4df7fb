"""Multi-run AG-UI streams over real loopback SSE and WebSocket: a RUN_STARTED with a new runId after the run closed
(RUN_FINISHED or RUN_ERROR; with or without parentRunId, spec 1.1) is a further run judged as its own chat of the same
user; another RUN_STARTED inside a run is R1 whatever its runId, never cross-talk."""
from __future__ import annotations

import json

from ag_ui.core import (
    RunAgentInput,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)

from harness.checker import ChatResult, ChatTracker, ConnectionChecker, judge_followups
from harness.client import Session
from harness.events import Outcome, Rule
from harness.flow import ChatOptions
from harness.offline import check_files
from harness.profiles import load_profile
from harness.scenario import Expect, Scenario
from harness.sinks import Sink
from harness.targets import Target

from .servers import AguiSSEServer, Pause, WsServer

AGUI = load_profile("ag-ui")
TS = 1_700_000_000_000


class Collector(Sink):
    def __init__(self) -> None:
        self.started = 0
        self.results: list[ChatResult] = []

    def chat_started(self, scenario: str) -> None:
        self.started += 1

    def chat_finished(self, result: ChatResult) -> None:
        self.results.append(result)


async def chat(url: str, settle: float = 0.05) -> tuple[ChatResult, Collector]:
    sink = Collector()
    target = Target(url=url, profile=AGUI, name="t")
    session = Session(target, "u1", "t", sink, connect_timeout=5)
    try:
        result = await session.chat("book it", Scenario(name="t", expect=Expect(deadline=10)).expectations(AGUI),
                                    ChatOptions(settle=settle))
    finally:
        await session.close()
    return result, sink


def text(mid: str) -> list:
    return [TextMessageStartEvent(message_id=mid, timestamp=TS),
            TextMessageContentEvent(message_id=mid, delta="ok", timestamp=TS), TextMessageEndEvent(message_id=mid, timestamp=TS)]


def hitl(inp: RunAgentInput, *, parent: str | None = "own", pause: float = 0.0, second_ends: bool = True,
         second_id: str = "run-2"):
    """A run, then in the same response a further run continuing it (parentRunId), as a human-in-the-loop server
    answers an approval."""
    yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
    yield from text("a1")
    yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
    if pause:
        yield Pause(pause)
    yield RunStartedEvent(thread_id=inp.thread_id, run_id=second_id, timestamp=TS,
                          parent_run_id=inp.run_id if parent == "own" else parent)
    yield ToolCallStartEvent(tool_call_id="c1", tool_call_name="book", timestamp=TS)
    yield ToolCallEndEvent(tool_call_id="c1", timestamp=TS)
    yield ToolCallResultEvent(message_id="r1", tool_call_id="c1", content="booked", timestamp=TS)
    yield from text("a2")
    if second_ends:
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=second_id, timestamp=TS)


def rules(result: ChatResult) -> list[Rule]:
    return [v.rule for v in result.violations]


async def test_a_run_continuing_the_finished_one_is_a_chat_of_its_own_over_sse():
    async with AguiSSEServer(hitl) as server:
        result, sink = await chat(server.url)
    assert result.outcome is Outcome.PASSED, result.violations
    assert [r.outcome for r in sink.results] == [Outcome.PASSED, Outcome.PASSED], [r.violations for r in sink.results]
    first, second = sink.results
    assert second.run_id == "run-2" and second.parent_run_id == first.run_id and second.thread_id == first.thread_id
    assert second.chat_id == f"{first.chat_id}.1" and len(second.events) == 8 and len(first.events) == 5
    # One chat started (the one the client asked for); the further run is reported, counted in it (fold_further).
    assert sink.started == 1 and sum(not r.further_run for r in sink.results) == 1
    assert second.to_dict()["parent_run_id"] == first.run_id


async def test_the_same_over_websocket():
    def script(request: dict):
        for ev in hitl(RunAgentInput.model_validate(request)):
            yield ev.model_dump_json(by_alias=True, exclude_none=True)

    async with WsServer(script) as server:
        _, sink = await chat(server.url)
    assert [r.outcome for r in sink.results] == [Outcome.PASSED, Outcome.PASSED], [r.violations for r in sink.results]


async def test_a_further_run_starting_within_the_settle_window_is_followed_to_its_end():
    # After a terminal event the client listens `settle` seconds (expect.settle) for late events and further runs; a
    # further run that starts within it is followed to its own end, however long it takes.
    async with AguiSSEServer(lambda inp: hitl(inp, pause=0.3)) as server:
        _, sink = await chat(server.url, settle=1.0)
    assert [r.outcome for r in sink.results] == [Outcome.PASSED, Outcome.PASSED], [r.violations for r in sink.results]


async def test_a_further_run_after_the_settle_window_is_not_waited_for():
    async with AguiSSEServer(lambda inp: hitl(inp, pause=1.0)) as server:
        first, sink = await chat(server.url, settle=0.05)
    assert first.outcome is Outcome.PASSED and len(sink.results) == 1


async def test_a_further_run_cut_short_by_the_end_of_the_stream_is_incomplete():
    async with AguiSSEServer(lambda inp: hitl(inp, second_ends=False)) as server:
        first, sink = await chat(server.url)
    second = sink.results[1]
    assert second.outcome is Outcome.INCOMPLETE and "ended before this run's terminal event" in second.note
    # The chat the client asked for is its stream's verdict (fold_further): the user saw a run cut short on it.
    assert first.outcome is Outcome.INCOMPLETE and not first.violations and "further run" in first.note


async def test_a_second_run_started_inside_a_run_is_r1_whatever_its_run_id():
    def script(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
        yield RunStartedEvent(thread_id=inp.thread_id, run_id="another", timestamp=TS)
        yield from text("a1")
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)

    async with AguiSSEServer(script) as server:
        result, _ = await chat(server.url)
    assert rules(result) == [Rule.R1], result.violations
    assert "second agent_started" in result.violations[0].reason


async def test_a_new_run_without_parent_run_id_after_the_end_is_a_chat_of_its_own():
    # Spec 1.1, Runs and Steps: after a run closes "A producer MAY emit RUN_STARTED to begin a new run on the same
    # stream"; parentRunId names a spawning run, it is no condition for a further run.
    async with AguiSSEServer(lambda inp: hitl(inp, parent=None)) as server:
        result, sink = await chat(server.url)
    assert [r.outcome for r in sink.results] == [Outcome.PASSED, Outcome.PASSED], [r.violations for r in sink.results]


async def test_a_new_run_naming_another_parent_is_a_chat_of_its_own_too():
    async with AguiSSEServer(lambda inp: hitl(inp, parent="somebody-else")) as server:
        result, sink = await chat(server.url)
    assert [r.outcome for r in sink.results] == [Outcome.PASSED, Outcome.PASSED], [r.violations for r in sink.results]


async def test_after_a_run_error_a_new_run_is_a_chat_of_its_own():
    # The state diagram of spec 1.1: Failed --> Active: RUN_STARTED (a new run). The failed run stays failed.
    def script(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
        yield RunErrorEvent(message="boom", timestamp=TS)
        yield RunStartedEvent(thread_id=inp.thread_id, run_id="run-2", parent_run_id=inp.run_id, timestamp=TS)
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id="run-2", timestamp=TS)

    async with AguiSSEServer(script) as server:
        result, sink = await chat(server.url)
    assert rules(result) == [Rule.R13], result.violations
    assert [r.outcome for r in sink.results] == [Outcome.FAILED, Outcome.PASSED], [r.violations for r in sink.results]


async def test_the_same_run_started_again_after_its_end_is_after_terminal_not_cross_talk():
    def script(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)

    async with AguiSSEServer(script) as server:
        result, sink = await chat(server.url)
    assert len(sink.results) == 1 and Rule.R4 in rules(result) and Rule.R8 not in rules(result)


async def test_the_further_run_inherits_what_the_first_one_knew():
    # The second run answers a tool call the first one left to the application: a known call, not "never started".
    def script(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
        yield ToolCallStartEvent(tool_call_id="c9", tool_call_name="approve", timestamp=TS)
        yield ToolCallEndEvent(tool_call_id="c9", timestamp=TS)
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS, outcome={
            "type": "interrupt", "interrupts": [{"id": "i1", "reason": "approval", "toolCallId": "c9"}]})
        yield RunStartedEvent(thread_id=inp.thread_id, run_id="run-2", parent_run_id=inp.run_id, timestamp=TS)
        yield ToolCallResultEvent(message_id="r9", tool_call_id="c9", content="approved", timestamp=TS)
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id="run-2", timestamp=TS)

    async with AguiSSEServer(script) as server:
        _, sink = await chat(server.url)
    assert [r.outcome for r in sink.results] == [Outcome.PASSED, Outcome.PASSED], [r.violations for r in sink.results]


async def test_a_run_started_under_another_id_than_the_client_sent_is_its_run_with_a_warning():
    def script(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id="server-chosen", timestamp=TS)
        yield from text("a1")
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id="server-chosen", timestamp=TS)

    async with AguiSSEServer(script) as server:
        result, sink = await chat(server.url)
    assert result.outcome is Outcome.PASSED and len(sink.results) == 1, result.violations
    assert [w.rule for w in result.warnings] == [Rule.R8] and "'server-chosen', not the run id" in result.warnings[0].reason


def test_a_further_runs_terminal_event_read_past_its_deadline_is_r10_live_as_in_check(tmp_path):
    # A further run whose RUN_FINISHED was received past its deadline (timed from the end of the run before it): a
    # busy live client reads it before its timer judges the run, and the receipt time decides, as `chatprobe check`
    # of the recording decides from the same times: R10, the event a warning after the verdict. Live it passed.
    t0 = 1_764_639_000.0
    request = {"threadId": "t1", "runId": "r1", "state": {}, "messages": [{"id": "m1", "role": "user", "content": "hi"}],
               "tools": [], "context": [], "forwardedProps": {}}

    def run(t: float, run_id: str, parent: str | None = None) -> list[tuple[float, dict]]:
        started = {"type": "RUN_STARTED", "threadId": "t1", "runId": run_id} | ({"parentRunId": parent} if parent else {})
        mid = f"a-{run_id}"
        return [(t, started), (t + 0.01, {"type": "TEXT_MESSAGE_START", "messageId": mid, "role": "assistant"}),
                (t + 0.02, {"type": "TEXT_MESSAGE_CONTENT", "messageId": mid, "delta": "ok"}),
                (t + 0.03, {"type": "TEXT_MESSAGE_END", "messageId": mid})]

    first_end = t0 + 0.2
    received = [*run(t0 + 0.1, "r1"), (first_end, {"type": "RUN_FINISHED", "threadId": "t1", "runId": "r1"}),
                *run(first_end + 0.01, "r2", "r1"),
                (first_end + 1.5, {"type": "RUN_FINISHED", "threadId": "t1", "runId": "r2"})]  # its deadline: +1 s
    received = [(t, frame | {"timestamp": TS}) for t, frame in received]
    recording = tmp_path / "late.jsonl"
    recording.write_text("".join(json.dumps(r) + "\n" for r in [
        {"t": t0, "dir": "send", "conn": "c1", "frame": request},
        *({"t": t, "dir": "recv", "conn": "c1", "frame": json.dumps(frame)} for t, frame in received),
        {"t": first_end + 1.6, "dir": "close", "conn": "c1"}]))
    scenario = Scenario(name="t", expect=Expect(deadline=1, first_event_limit=1))
    [checked] = check_files([recording], AGUI, scenario)

    # Live: the client's checker takes each event at its receipt time, and the late timer judges the chat then.
    checker = ConnectionChecker("u1", events_name_run=AGUI.events_name_run, further_runs=AGUI.further_runs)
    chat = ChatTracker("c1", scenario.expectations(AGUI), t0, scenario="t", thread_id="t1", message_id="m1", run_id="r1")
    checker.add(chat)
    for t, frame in received:
        checker.route(AGUI.decode(json.dumps(frame), t))
    late = first_end + 1.7
    live = [*judge_followups(chat, late), chat.finish(late)]

    def verdicts(results: list[ChatResult]) -> list[tuple[bool, str, list[Rule], list[Rule]]]:
        return sorted((r.further_run, r.outcome.value, rules(r), [w.rule for w in r.warnings]) for r in results)

    assert verdicts(checked.results) == [(False, "incomplete", [Rule.R10], []),
                                         (True, "incomplete", [Rule.R10], [Rule.R10])], checked.results
    assert verdicts(live) == verdicts(checked.results)


async def test_further_runs_of_one_stream_are_followed_up_to_the_cap_exactly():
    """A stream carries at most MAX_FOLLOWUP_RUNS further runs (checker.py: each is a chat of its own, held with the
    chat that asked): that many each passed and reported; one more is no further run but events after the last one's
    end (R4, R3), so that past the cap a stream no longer grows the chat's list of runs."""
    from harness.checker import MAX_FOLLOWUP_RUNS

    def script(inp: RunAgentInput):
        previous = inp.run_id
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=previous, timestamp=TS)
        yield from text("a0")
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=previous, timestamp=TS)
        for n in range(1, MAX_FOLLOWUP_RUNS + 2):
            yield RunStartedEvent(thread_id=inp.thread_id, run_id=f"run-{n}", parent_run_id=previous, timestamp=TS)
            yield from text(f"a{n}")
            yield RunFinishedEvent(thread_id=inp.thread_id, run_id=f"run-{n}", timestamp=TS)
            previous = f"run-{n}"

    async with AguiSSEServer(script) as server:
        first, sink = await chat(server.url)
    further = [r for r in sink.results if r.further_run]
    assert [r.run_id for r in further] == [f"run-{n}" for n in range(1, MAX_FOLLOWUP_RUNS + 1)]
    assert [r.outcome for r in further[:-1]] == [Outcome.PASSED] * (MAX_FOLLOWUP_RUNS - 1), [r.violations for r in further]
    # The run past the cap is events after the last followed run's end: its R4s and its second terminal event (R3).
    last = further[-1]
    assert last.outcome is Outcome.FAILED and set(rules(last)) == {Rule.R3, Rule.R4}, last.violations
    named = f"further run 'run-{MAX_FOLLOWUP_RUNS}'"
    assert first.outcome is Outcome.FAILED and all(v.reason.startswith(named) for v in first.violations), first.violations


async def test_a_further_runs_violations_past_the_listing_cap_still_add_up_in_the_chat():
    """A further run that breaks a rule more than MAX_VIOLATIONS_KEPT times, after the chat's own run broke it once:
    the chat that asked lists MAX_VIOLATIONS_KEPT violations in all (checker.fold_further) and counts the rest, the
    further run's listed and unlisted ones both, so its rule counts add up to its own and the further run's
    (docs/protocol.md: the rest are counted, so verdicts and metrics stay exact)."""
    from harness.checker import MAX_VIOLATIONS_KEPT

    n = MAX_VIOLATIONS_KEPT + 10

    def script(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
        yield ToolCallEndEvent(tool_call_id="own", timestamp=TS)  # the chat's own run breaks it once
        yield from text("a0")
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS)
        yield RunStartedEvent(thread_id=inp.thread_id, run_id="run-2", parent_run_id=inp.run_id, timestamp=TS)
        for i in range(n):  # the end of a tool call that never started: R5 each
            yield ToolCallEndEvent(tool_call_id=f"x{i}", timestamp=TS)
        yield from text("a1")
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id="run-2", timestamp=TS)

    async with AguiSSEServer(script) as server:
        first, sink = await chat(server.url)
    (second,) = [r for r in sink.results if r.further_run]
    assert second.rule_counts() == {"R5": n}, second.rule_counts()
    assert len(second.violations) == MAX_VIOLATIONS_KEPT
    assert first.outcome is Outcome.FAILED and first.rule_counts() == {"R5": n + 1}, first.rule_counts()
    assert len(first.violations) == MAX_VIOLATIONS_KEPT
