"""AG-UI rules the `agui` check set learned from spec 1.1: the *_CHUNK shorthand expanded into its triad (first
chunk, continuations, lanes, conflicting repeats, no mixing with *_START), the timestamp's JSON type, and the
RUN_STARTED.input echo; each against a real loopback AG-UI server (HTTP POST + SSE) streaming hand-written frames."""
from __future__ import annotations

import pytest

from harness.events import Outcome, Rule
from harness.payload_checks import MAX_LANES, AguiRunChecks

from .servers import AguiSSEServer
from .test_agui_payload import AGUI, TS, chat, judged_as, offering, raw


def run(*frames: dict):
    """RUN_STARTED, these frames (each a dict, sent as written), RUN_FINISHED."""
    def script(inp):
        yield raw({"type": "RUN_STARTED", "threadId": inp.thread_id, "runId": inp.run_id})
        for f in frames:
            yield raw(f)
        yield raw({"type": "RUN_FINISHED", "threadId": inp.thread_id, "runId": inp.run_id})
    return script


def text(delta=None, **kw) -> dict:
    return {"type": "TEXT_MESSAGE_CHUNK", **({"delta": delta} if delta is not None else {}), **kw}


def tool(delta=None, **kw) -> dict:
    return {"type": "TOOL_CALL_CHUNK", **({"delta": delta} if delta is not None else {}), **kw}


def result(cid="c1") -> dict:
    return {"type": "TOOL_CALL_RESULT", "messageId": f"r-{cid}", "toolCallId": cid, "content": "1"}


SUB1 = {"type": "SUBAGENT_STARTED", "subagentRunId": "sa1", "name": "one"}
SUB2 = {"type": "SUBAGENT_STARTED", "subagentRunId": "sa2", "name": "two"}
END1 = {"type": "SUBAGENT_FINISHED", "subagentRunId": "sa1"}
END2 = {"type": "SUBAGENT_FINISHED", "subagentRunId": "sa2"}

# name: (script, profile, rule or None for a stream that keeps the rules, words of the reason)
CASES = {
    # the first chunk carries the item's id (and a call's name)
    "a first TEXT_MESSAGE_CHUNK without messageId": (run(text("hi")), AGUI, "R5", "without messageId continues no"),
    "a first TOOL_CALL_CHUNK without toolCallName": (
        run(tool("{}", toolCallId="c1"), result()), AGUI, "R12", "has no toolCallName"),
    "a continuation after a state event ended the chunk stream": (
        run(tool("{}", toolCallId="c1", toolCallName="calc"), {"type": "STATE_SNAPSHOT", "snapshot": {}}, tool("{}"),
            result()), AGUI, "R5", "TOOL_CALL_CHUNK without toolCallId continues no open chunk stream"),
    "a continuation after a step ended the chunk stream": (
        run(text("a", messageId="m1"), {"type": "STEP_STARTED", "stepName": "s"}, text("b"),
            {"type": "STEP_FINISHED", "stepName": "s"}), AGUI, "R5", "without messageId"),
    # a continuation repeats what the first chunk established, with the same value
    "a continuation claiming another role": (
        run(text("a", messageId="m1"), text("b", role="user")), AGUI, "R12", "says role 'user'"),
    "a continuation naming another tool": (
        run(tool('{"x":', toolCallId="c1", toolCallName="calc"), tool("1}", toolCallName="other"), result()), AGUI,
        "R12", "says toolCallName 'other'"),
    # the two spellings do not mix within one item
    "a chunk continuing a TEXT_MESSAGE_START message": (
        run({"type": "TEXT_MESSAGE_START", "messageId": "m1"}, text("x", messageId="m1"),
            {"type": "TEXT_MESSAGE_END", "messageId": "m1"}), AGUI, "R5", "which TEXT_MESSAGE_START already opened"),
    "a chunk continuing a TOOL_CALL_START call": (
        run({"type": "TOOL_CALL_START", "toolCallId": "c1", "toolCallName": "calc"},
            tool("{}", toolCallId="c1", toolCallName="calc"), {"type": "TOOL_CALL_END", "toolCallId": "c1"}, result()),
        AGUI, "R5", "which TOOL_CALL_START already opened"),
    # the expanded call's arguments are judged at its synthesized end, like TOOL_CALL_ARGS at TOOL_CALL_END
    "a chunked backend call without its result": (
        run(tool("{}", toolCallId="c1", toolCallName="calc")), AGUI, "R5", "has no TOOL_CALL_RESULT"),
    # lanes: with parallel subagents an unattributed continuation has no unique referent
    "an unattributed continuation with two subagent streams open": (
        run(SUB1, SUB2, text("a", messageId="m1", subagentRunId="sa1"), text("b", messageId="m2", subagentRunId="sa2"),
            text("c"), END1, END2), AGUI, "R5", "is ambiguous"),
    "a continuation attributed to a subagent with no stream open": (
        run(SUB1, text("a", messageId="m1"), text("b", subagentRunId="sa1"), END1), AGUI, "R5",
        "continues no chunk stream of subagent 'sa1'"),
    "a subagentRunId that is a list, a chunk stream open": (
        run(text("a", messageId="m1"), {"type": "STATE_SNAPSHOT", "snapshot": {}, "subagentRunId": ["x"]}), AGUI,
        "R12", "subagentRunId"),  # the schema's R12, and no traceback from the lane lookup
    # timestamps are JSON integers (pydantic's lax mode would take these)
    "a timestamp sent as a string": (
        run({"type": "CUSTOM", "name": "n", "value": 1, "timestamp": "1700000000000"}), AGUI, "R12",
        "field 'timestamp': '1700000000000' is a JSON string"),
    "a timestamp sent as a boolean": (
        run({"type": "CUSTOM", "name": "n", "value": 1, "timestamp": True}), AGUI, "R12", "is a JSON boolean"),
    # streams that keep the rules
    "a MESSAGES_SNAPSHOT restating a streamed message and leaving out another (the spec allows both)": (
        run({"type": "TEXT_MESSAGE_START", "messageId": "m1"}, {"type": "TEXT_MESSAGE_CONTENT", "messageId": "m1",
                                                                  "delta": "draft"},
            {"type": "TEXT_MESSAGE_END", "messageId": "m1"}, text("gone", messageId="m2"),
            {"type": "MESSAGES_SNAPSHOT", "messages": [{"id": "m1", "role": "assistant", "content": "final"}]}),
        AGUI, None, ""),
    "timestamps that go back (informational: arrival order is the protocol's order)": (
        run({"type": "CUSTOM", "name": "a", "value": 1, "timestamp": TS + 5000},
            {"type": "CUSTOM", "name": "b", "value": 2, "timestamp": 1_700_000}), AGUI, None, ""),
    "spec 1.1's chunked tool call, ended by RUN_FINISHED": (
        run(tool('{"q":', toolCallId="c1", toolCallName="calc"), tool(" 1}")), offering("calc"), None, ""),
    "a chunked call whose parentMessageId names no message": (
        run(tool("{}", toolCallId="c1", toolCallName="calc", parentMessageId="m0"), result()), AGUI, "advice R5",
        "parentMessageId 'm0'"),
    "a chunked call in pieces, then its result": (
        run(tool("{", toolCallId="c1", toolCallName="calc"), tool('"x": 1'), tool(""), tool("}"), result()), AGUI,
        None, ""),
    "a chunked call under a chunked message": (
        run(text("Let me", messageId="m1"), text(" check."), tool("{", toolCallId="c1", toolCallName="calc",
                                                                    parentMessageId="m1"), tool("}"), result()),
        AGUI, None, ""),
    "chunks around RAW and ACTIVITY events, which end nothing": (
        run(text("a", messageId="m1"), {"type": "RAW", "event": {"x": 1}},
            {"type": "ACTIVITY_SNAPSHOT", "messageId": "p1", "activityType": "PLAN", "content": {}}, text("b"),
            text(metadata={"finishReason": "stop"})), AGUI, None, ""),
    "two chunked messages, the second ending the first": (
        run(text("a", messageId="m1"), text("b"), text("c", messageId="m2"), text("d")), AGUI, None, ""),
    "a chunked message reopened after a state event (spec 1.1 allows reopening)": (
        run(text("a", messageId="m1"), {"type": "STATE_SNAPSHOT", "snapshot": {}}, text("b", messageId="m1")), AGUI,
        None, ""),
    "a chunked call reopened after a state event (spec 1.1 allows reopening)": (
        run(tool('{"x": 1}', toolCallId="c1", toolCallName="calc"), {"type": "STATE_SNAPSHOT", "snapshot": {}},
            tool(toolCallId="c1", toolCallName="calc"), result()), AGUI, None, ""),
    "a repeat with the same values": (
        run(text("a", messageId="m1", role="assistant", name="bot"), text("b", messageId="m1", role="assistant",
                                                                           name="bot")), AGUI, None, ""),
    "a subagent's stream continued unattributed (the sole open one)": (
        run(SUB1, text("a", messageId="m1", subagentRunId="sa1"), text("b"), END1), AGUI, None, ""),
    "the parent's stream continued while a subagent streams too": (
        run(SUB1, text("a", messageId="m1"), text("b", messageId="m2", subagentRunId="sa1"), text("c"), END1,
            text("d")), AGUI, None, ""),
    "reasoning chunks closed by REASONING_END": (
        run({"type": "REASONING_START", "messageId": "r1"}, {"type": "REASONING_MESSAGE_CHUNK", "messageId": "rm1",
                                                              "delta": "hmm"},
            {"type": "REASONING_MESSAGE_CHUNK", "delta": " ok"}, {"type": "REASONING_END", "messageId": "r1"}), AGUI,
        None, ""),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_chunk_and_envelope_rules(case):
    await judged_as(*CASES[case])


async def test_chunked_arguments_that_are_not_json_are_advice():
    """At the synthesized end, as at TOOL_CALL_END: "completeness, not validity" (spec 1.1). A warning; the chat
    passes."""
    async with AguiSSEServer(run(tool('{"x": ', toolCallId="c1", toolCallName="calc"), tool("1"), result())) as server:
        result_ = await chat(server.url)
    assert result_.outcome is Outcome.PASSED and result_.violations == [], result_.violations
    assert [w.rule for w in result_.warnings] == [Rule.R12], result_.warnings
    assert "the TOOL_CALL_CHUNK deltas do not concatenate to valid JSON" in result_.warnings[0].reason


async def test_run_started_input_naming_another_run_is_advice():
    def script(inp):
        echo = {"threadId": inp.thread_id, "runId": "someone-elses", "messages": [], "state": {}, "tools": [],
                "context": [], "forwardedProps": {}}
        yield raw({"type": "RUN_STARTED", "threadId": inp.thread_id, "runId": inp.run_id, "input": echo})
        yield raw({"type": "RUN_FINISHED", "threadId": inp.thread_id, "runId": inp.run_id})

    async with AguiSSEServer(script) as server:
        result_ = await chat(server.url)
    assert result_.outcome is Outcome.PASSED and result_.violations == []
    assert [w.rule for w in result_.warnings] == [Rule.R12]
    assert "RUN_STARTED.input.runId 'someone-elses' is not the run's own runId" in result_.warnings[0].reason


async def test_run_started_input_echoing_the_request_is_quiet():
    def script(inp):
        yield raw({"type": "RUN_STARTED", "threadId": inp.thread_id, "runId": inp.run_id,
                   "input": inp.model_dump(by_alias=True, exclude_none=True)})
        yield raw({"type": "RUN_FINISHED", "threadId": inp.thread_id, "runId": inp.run_id})

    async with AguiSSEServer(script) as server:
        result_ = await chat(server.url)
    assert result_.outcome is Outcome.PASSED and result_.violations == [] and result_.warnings == []
    assert server.requests[0]["runId"] == result_.run_id


def test_chunk_lanes_stay_bounded_against_a_flooding_server():
    """Open chunk streams count in the run's ids (MAX_REMEMBERED_BYTES), which pass before MAX_LANES streams are open:
    the rest are not tracked, said once, and an id-less chunk continuing one of them is no violation."""
    from harness.events import Event
    from harness.payload_checks import MAX_REMEMBERED_BYTES

    checks = AguiRunChecks()
    findings = []
    for i in range(MAX_LANES + 50):
        ev = Event(role=None, wire_type="TEXT_MESSAGE_CHUNK", received_at=0.0,
                   payload={"type": "TEXT_MESSAGE_CHUNK", "messageId": f"m{i}", "delta": "x",
                            "subagentRunId": f"sa{i}", "timestamp": TS})
        findings += checks.event(ev)
    findings += checks.event(Event(role=None, wire_type="TEXT_MESSAGE_CHUNK", received_at=0.0, payload={
        "type": "TEXT_MESSAGE_CHUNK", "delta": "x", "subagentRunId": f"sa{MAX_LANES}", "timestamp": TS}))
    assert len(checks.lanes) < MAX_LANES and checks.id_bytes <= MAX_REMEMBERED_BYTES
    assert [f.warning for f in findings] == [True] and "ids passed" in findings[0].reason


async def test_chunk_lanes_of_huge_subagent_run_ids_stay_bounded_in_bytes():
    """A lane's key is cut as ids are: 200 open chunk streams, each under a distinct 256 KiB subagentRunId, over a
    real SSE stream, kept 50 MiB for the run before; now a few MiB at the peak (the frames in flight)."""
    import tracemalloc

    big = 256 * 1024
    frames = [text("x", messageId=f"m{i}", subagentRunId=f"{i:06d}" + "s" * big) for i in range(200)]
    frames.append(text("y", subagentRunId="000007" + "s" * big))  # a continuation finds its lane by the cut key
    async with AguiSSEServer(run(*frames)) as server:
        tracemalloc.start()
        try:
            result_ = await chat(server.url)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result_.outcome is Outcome.PASSED, result_.violations
    assert peak < 20 * 1024 * 1024, peak
