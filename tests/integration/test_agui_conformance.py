"""chatprobe against independently written, conformant AG-UI servers (the `ag-ui-protocol` package's models and
encoder), over real loopback sockets: HTTP POST + SSE (a hand-written HTTP/1.1 server, and starlette + uvicorn with
chunked transfer encoding) and WebSocket. Each stream is one the AG-UI 1.1 specification allows (or, where a test
says so, one it forbids), and chatprobe must judge it so.

Tests marked FAILED-ON-ORIGINAL failed on the code before this file was added (a false fail, or a false pass);
`xfail(strict=True)` marks what is found and not fixed yet. The others pin valid variations.
"""
from __future__ import annotations

import asyncio
import json
import socket

import pytest
from ag_ui.core import (
    ActivityDeltaEvent,
    ActivitySnapshotEvent,
    AssistantMessage,
    CustomEvent,
    FunctionCall,
    MessagesSnapshotEvent,
    RawEvent,
    ReasoningEncryptedValueEvent,
    ReasoningEndEvent,
    ReasoningMessageChunkEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedEvent,
    RunStartedEvent,
    StateDeltaEvent,
    StateSnapshotEvent,
    StepFinishedEvent,
    StepStartedEvent,
    SubagentErrorEvent,
    SubagentFinishedEvent,
    SubagentStartedEvent,
    TextMessageChunkEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCall,
    ToolCallArgsEvent,
    ToolCallChunkEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    ToolMessage,
    UserMessage,
)
from ag_ui.encoder import EventEncoder

from harness.checker import ChatResult
from harness.client import Session
from harness.events import Outcome, Rule
from harness.flow import ChatOptions
from harness.profiles import load_profile
from harness.scenario import Expect, Scenario
from harness.sinks import Sink
from harness.targets import Target
from tests.profiles.servers import AguiSSEServer, WsServer

AGUI = load_profile("ag-ui")
TS = 1_700_000_000_000  # a timestamp on every event, as the SDK's examples send


class Collector(Sink):
    def __init__(self) -> None:
        self.results: list[ChatResult] = []

    def chat_finished(self, result: ChatResult) -> None:
        self.results.append(result)


async def chat(url: str, *, streaming: bool = False) -> tuple[ChatResult, list[ChatResult]]:
    """One chat (10 s deadline); its result and every run its stream carried, each judged as a chat."""
    sink = Collector()
    session = Session(Target(url=url, profile=AGUI, name="t"), "u1", "t", sink, connect_timeout=5)
    try:
        exp = Scenario(name="t", expect=Expect(deadline=10, streaming=streaming)).expectations(AGUI)
        result = await asyncio.wait_for(session.chat("What is 6 * 7?", exp, ChatOptions(settle=0.1)), 20)
    finally:
        await session.close()
    return result, sink.results


def S(inp: RunAgentInput, run_id: str | None = None, **kw) -> RunStartedEvent:
    return RunStartedEvent(thread_id=inp.thread_id, run_id=run_id or inp.run_id, timestamp=TS, **kw)


def F(inp: RunAgentInput, run_id: str | None = None, **kw) -> RunFinishedEvent:
    return RunFinishedEvent(thread_id=inp.thread_id, run_id=run_id or inp.run_id, timestamp=TS, **kw)


def text(mid: str, *deltas: str, **kw) -> list:
    return [TextMessageStartEvent(message_id=mid, timestamp=TS, **kw),
            *(TextMessageContentEvent(message_id=mid, delta=d, timestamp=TS) for d in deltas or ("ok",)),
            TextMessageEndEvent(message_id=mid, timestamp=TS)]


def call(cid: str, args: str = "{}", result: bool = True, **kw) -> list:
    out = [ToolCallStartEvent(tool_call_id=cid, tool_call_name="calc", timestamp=TS, **kw),
           ToolCallArgsEvent(tool_call_id=cid, delta=args, timestamp=TS), ToolCallEndEvent(tool_call_id=cid, timestamp=TS)]
    if result:
        out.append(ToolCallResultEvent(message_id=f"r-{cid}", tool_call_id=cid, content="42", timestamp=TS))
    return out


async def passes(script, *, streaming: bool = False, runs: int = 1) -> list[ChatResult]:
    """The script's stream over SSE: every run it carries passes, with no violation."""
    async with AguiSSEServer(script) as server:
        _, results = await chat(server.url, streaming=streaming)
    assert [r.outcome for r in results] == [Outcome.PASSED] * runs, [(r.chat_id, r.violations) for r in results]
    return results


async def fails(script, rule: Rule, words: str) -> ChatResult:
    async with AguiSSEServer(script) as server:
        result, _ = await chat(server.url)
    assert result.outcome is Outcome.FAILED, result.violations
    assert any(v.rule is rule and words in v.reason for v in result.violations), result.violations
    return result


# -- several runs on one stream (spec 1.1, Runs and Steps: "Several runs on one stream", "After a run closes") --

async def test_a_new_run_after_the_run_finished_needs_no_parent_run_id():
    """FAILED-ON-ORIGINAL: R4/R3. "A producer MAY emit RUN_STARTED to begin a new run on the same stream"."""
    def script(inp):
        yield S(inp)
        yield from text("a1")
        yield F(inp)
        yield S(inp, "run-2")
        yield from text("a2")
        yield F(inp, "run-2")

    results = await passes(script, runs=2)
    assert results[1].run_id == "run-2" and results[1].chat_id == f"{results[0].chat_id}.1"


async def test_replayed_history_ahead_of_the_requested_run():
    """FAILED-ON-ORIGINAL: R4/R3. "a stream of events carrying one or more runs — the requested run, possibly preceded
    by replayed history", restated as snapshots."""
    def script(inp):
        yield S(inp, "old-1")
        yield MessagesSnapshotEvent(messages=[UserMessage(id="u0", content="earlier"),
                                              AssistantMessage(id="a0", content="earlier answer")], timestamp=TS)
        yield StateSnapshotEvent(snapshot={"turns": 1}, timestamp=TS)
        yield F(inp, "old-1")
        yield S(inp)
        yield StateDeltaEvent(delta=[{"op": "replace", "path": "/turns", "value": 2}], timestamp=TS)
        yield from text("a1", "It is ", "42.")
        yield F(inp)

    first, requested = await passes(script, runs=2)
    assert requested.parent_run_id == first.run_id and requested.chat_id == f"{first.chat_id}.1"
    assert [w.rule for w in first.warnings] == [Rule.R8]  # advice: the replayed run is not the run id the client sent
    assert not requested.violations and not requested.warnings


async def test_a_new_run_after_a_run_error_is_judged_on_its_own():
    """FAILED-ON-ORIGINAL: the new run was R4/R3 of the failed one. Spec 1.1: Failed --> Active: RUN_STARTED."""
    def script(inp):
        yield S(inp)
        yield RunErrorEvent(message="model unavailable", code="UPSTREAM", timestamp=TS)
        yield S(inp, "retry-1")
        yield from text("a1")
        yield F(inp, "retry-1")

    async with AguiSSEServer(script) as server:
        result, results = await chat(server.url)
    assert [v.rule for v in result.violations] == [Rule.R13]  # the run failed, as its RUN_ERROR says
    assert [r.outcome for r in results] == [Outcome.FAILED, Outcome.PASSED], [r.violations for r in results]


async def test_a_late_run_error_after_run_finished_fails_the_run():
    """Pinned: "A producer MAY emit RUN_ERROR after RUN_FINISHED ... A consumer MUST treat the run as failed"."""
    def script(inp):
        yield S(inp)
        yield from text("a1")
        yield F(inp)
        yield RunErrorEvent(message="flush failed", timestamp=TS)

    async with AguiSSEServer(script) as server:
        result, _ = await chat(server.url)
    assert result.outcome is Outcome.FAILED


# -- payload rules the schema or the spec do not make ---------------------------------------------------------------

async def test_empty_text_and_reasoning_deltas_are_keep_alives():
    """FAILED-ON-ORIGINAL: R12. The 1.0 schema: delta "May be the empty string: providers emit empty deltas as
    keep-alives ... rejecting them would kill runs that are working correctly". Advice at most."""
    def script(inp):
        yield S(inp)
        yield ReasoningMessageStartEvent(message_id="r1", timestamp=TS)
        yield ReasoningMessageContentEvent(message_id="r1", delta="", timestamp=TS)
        yield ReasoningMessageEndEvent(message_id="r1", timestamp=TS)
        yield from text("a1", "", "Hello", "")
        yield F(inp)

    (result,) = await passes(script, streaming=True)
    assert all(w.rule is Rule.R12 and "empty delta" in w.reason for w in result.warnings), result.warnings


async def test_parent_message_id_of_an_assistant_message_that_carries_only_tool_calls():
    """FAILED-ON-ORIGINAL: R5. parentMessageId "attaches the call to the assistant message that carries it" (spec 1.1,
    Tool Calls); a message holding only tool calls is never streamed as text (MESSAGES_SNAPSHOT later shows it)."""
    def script(inp):
        yield S(inp)
        yield from call("c1", '{"expr": "6*7"}', parent_message_id="asst-1")
        yield from call("c2", '{"expr": "7*6"}', parent_message_id="asst-1")
        yield MessagesSnapshotEvent(timestamp=TS, messages=[
            UserMessage(id=inp.messages[0].id, content="What is 6 * 7?"),
            AssistantMessage(id="asst-1", tool_calls=[
                ToolCall(id=c, function=FunctionCall(name="calc", arguments="{}")) for c in ("c1", "c2")]),
            ToolMessage(id="r-c1", tool_call_id="c1", content="42"), ToolMessage(id="r-c2", tool_call_id="c2", content="42")])
        yield from text("asst-2", "42")
        yield F(inp)

    await passes(script)


async def test_parent_message_id_of_a_message_streamed_after_the_call():
    """FAILED-ON-ORIGINAL: R5."""
    def script(inp):
        yield S(inp)
        yield ToolCallChunkEvent(tool_call_id="c1", tool_call_name="calc", parent_message_id="m1", delta="{}",
                                 timestamp=TS)
        yield ToolCallResultEvent(message_id="r1", tool_call_id="c1", content="42", timestamp=TS)
        yield TextMessageChunkEvent(message_id="m1", delta="It is 42.", timestamp=TS)
        yield F(inp)

    await passes(script)


async def test_calls_left_in_pending_tool_call_ids_owe_no_result():
    """FAILED-ON-ORIGINAL: R5 "a backend tool ... has no TOOL_CALL_RESULT". Spec 1.1, Tool Calls: a call naming a tool
    the input did not advertise "is not by itself a protocol violation"; pendingToolCallIds names "exactly the tool
    calls the run started and did not answer", left to the application."""
    def script(inp):
        yield S(inp)
        yield from text("a1", "Let me show a chart.")
        yield from call("c1", '{"kind": "bar"}', result=False, parent_message_id="a1")
        yield from call("c2", '{"kind": "pie"}', result=False, parent_message_id="a1")
        yield F(inp, outcome={"type": "success", "pendingToolCallIds": ["c1", "c2"]})

    await passes(script)


async def test_a_pending_list_that_leaves_out_an_unanswered_call_fails():
    """FAILED-ON-ORIGINAL (a false pass for offered tools; here the missing call's reason). "when it does, the list
    MUST contain exactly the tool calls the run started and did not answer"."""
    def script(inp):
        yield S(inp)
        yield from call("c1", result=False)
        yield from call("c2", result=False)
        yield F(inp, outcome={"type": "success", "pendingToolCallIds": ["c1"]})

    await fails(script, Rule.R5, "pendingToolCallIds leaves out tool call 'c2'")


async def test_an_announced_subagent_left_open_at_run_finished_fails():
    """FAILED-ON-ORIGINAL (a false pass): "Every invocation a producer announces MUST be closed, by SUBAGENT_FINISHED or
    SUBAGENT_ERROR, before the run finishes" (spec 1.1, Subagents)."""
    def script(inp):
        yield S(inp)
        yield SubagentStartedEvent(subagent_run_id="sa1", name="researcher", timestamp=TS)
        yield from text("m1", subagent_run_id="sa1")
        yield F(inp)

    await fails(script, Rule.R5, "subagent sa1 still open")


async def test_a_suspended_or_failed_subagent_is_closed():
    def script(inp):
        yield S(inp)
        yield SubagentStartedEvent(subagent_run_id="sa1", name="researcher", timestamp=TS)
        yield SubagentStartedEvent(subagent_run_id="sa2", name="writer", timestamp=TS)
        yield from text("m1", subagent_run_id="sa1")
        yield SubagentFinishedEvent(subagent_run_id="sa1", outcome={"type": "suspended", "interruptIds": []},
                                    timestamp=TS)
        yield SubagentErrorEvent(subagent_run_id="sa2", message="failed", timestamp=TS)
        yield from text("a1")
        yield F(inp)

    await passes(script)


async def test_a_subagent_step_may_share_the_name_of_an_open_parent_step():
    """Was an R5 ('opens step again'): "Steps are per-owner: a parent and a subagent MAY each have a step of the same
    name open at once, and each closes its own" (spec 1.1, Subagents, Ownership)."""
    def script(inp):
        yield S(inp)
        yield SubagentStartedEvent(subagent_run_id="sa1", name="researcher", timestamp=TS)
        yield StepStartedEvent(step_name="search", timestamp=TS)
        yield StepStartedEvent(step_name="search", subagent_run_id="sa1", timestamp=TS)
        yield StepFinishedEvent(step_name="search", subagent_run_id="sa1", timestamp=TS)
        yield StepFinishedEvent(step_name="search", timestamp=TS)
        yield SubagentFinishedEvent(subagent_run_id="sa1", timestamp=TS)
        yield F(inp)

    await passes(script)


async def test_a_subagent_cannot_close_the_parents_step():
    """Per-owner steps cut both ways: a subagent's STEP_FINISHED does not close the parent's step of the same name
    (R5 'closes step ... which is not open'), and the parent's step is then still open at the end (R5)."""
    def script(inp):
        yield S(inp)
        yield SubagentStartedEvent(subagent_run_id="sa1", name="researcher", timestamp=TS)
        yield StepStartedEvent(step_name="search", timestamp=TS)
        yield StepFinishedEvent(step_name="search", subagent_run_id="sa1", timestamp=TS)
        yield SubagentFinishedEvent(subagent_run_id="sa1", timestamp=TS)
        yield F(inp)

    result = await fails(script, Rule.R5, "closes step 'search' of 'sa1', which is not open")
    assert any(v.rule is Rule.R5 and v.reason.startswith("step search still open") for v in result.violations), \
        result.violations


# -- subagent ownership and lifecycle (spec 1.1, Subagents), interrupts, activity content --------------------------

def _raw(**fields) -> bytes:
    """An event as raw SSE bytes, for what the models would not write (a null, a field they drop)."""
    return f"data: {json.dumps(fields)}\n\n".encode()


def _continuations():
    """(name, the events after RUN_STARTED): an entity opened for subagent s1, continued by an event tagged s2."""
    sub = dict(timestamp=TS)
    yield "text content", [TextMessageStartEvent(message_id="m1", subagent_run_id="s1", **sub),
                           TextMessageContentEvent(message_id="m1", delta="x", subagent_run_id="s2", **sub),
                           TextMessageEndEvent(message_id="m1", **sub)]
    yield "tool call end", [ToolCallStartEvent(tool_call_id="c1", tool_call_name="lookup", subagent_run_id="s1", **sub),
                            ToolCallArgsEvent(tool_call_id="c1", delta="{}", **sub),
                            ToolCallEndEvent(tool_call_id="c1", subagent_run_id="s2", **sub),
                            ToolCallResultEvent(message_id="r1", tool_call_id="c1", content="42", **sub)]
    yield "reasoning end", [ReasoningMessageStartEvent(message_id="rm1", **sub),  # the parent agent's
                            ReasoningMessageContentEvent(message_id="rm1", delta="hm", **sub),
                            ReasoningMessageEndEvent(message_id="rm1", subagent_run_id="s2", **sub)]
    yield "activity delta", [ActivitySnapshotEvent(message_id="a1", activity_type="plan", content={},
                                                   subagent_run_id="s1", **sub),
                             ActivityDeltaEvent(message_id="a1", activity_type="plan", subagent_run_id="s2",
                                                patch=[{"op": "add", "path": "/n", "value": 1}], **sub)]
    yield "activity kept", [ActivitySnapshotEvent(message_id="a1", activity_type="plan", content={}, **sub),
                            ActivitySnapshotEvent(message_id="a1", activity_type="plan", content={}, replace=False,
                                                  subagent_run_id="s2", **sub)]


@pytest.mark.parametrize("case", [name for name, _ in _continuations()])
async def test_a_continuation_attributed_to_another_owner_than_its_opener_fails(case):
    """FAILED-ON-ORIGINAL (passed): "A consumer MUST reject a continuation whose tag disagrees with its opener" (spec
    1.1, Subagents, Ownership; the corpus's subagent-attribution-mismatch-fatal)."""
    events = dict(_continuations())[case]

    def script(inp):
        yield S(inp)
        yield from events
        yield F(inp)

    await fails(script, Rule.R5, "a continuation must agree with its opener's owner")


async def test_untagged_continuations_and_unannounced_attribution_pass():
    """An untagged continuation continues whatever its opener owns; a producer may attribute without announcing; a
    finished invocation's id may still tag its trailing output, and reappear in a later run (the corpus's
    subagent-unannounced-attribution-accepted)."""
    def script(inp):
        yield S(inp)
        yield TextMessageStartEvent(message_id="m1", role="assistant", subagent_run_id="s0", timestamp=TS)
        yield TextMessageContentEvent(message_id="m1", delta="delegated ", timestamp=TS)
        yield TextMessageEndEvent(message_id="m1", subagent_run_id="s0", timestamp=TS)
        yield SubagentStartedEvent(subagent_run_id="s1", name="writer", timestamp=TS)
        yield TextMessageStartEvent(message_id="m2", subagent_run_id="s1", timestamp=TS)
        yield ToolCallStartEvent(tool_call_id="c1", tool_call_name="calc", parent_message_id="m2", timestamp=TS)
        yield ToolCallEndEvent(tool_call_id="c1", subagent_run_id="s1", timestamp=TS)
        yield ToolCallResultEvent(message_id="r1", tool_call_id="c1", content="42", timestamp=TS)
        yield SubagentFinishedEvent(subagent_run_id="s1", timestamp=TS)
        yield TextMessageEndEvent(message_id="m2", subagent_run_id="s1", timestamp=TS)  # trailing, tagged: allowed
        yield F(inp)
        yield RunStartedEvent(thread_id=inp.thread_id, run_id="r-next", timestamp=TS)
        yield SubagentStartedEvent(subagent_run_id="s1", name="writer", timestamp=TS)  # continued in a later run
        yield SubagentFinishedEvent(subagent_run_id="s1", timestamp=TS)
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id="r-next", timestamp=TS)

    await passes(script, runs=2)


def _lifecycle():
    yield "an id reused", "the id of an invocation that finished in this run", [
        SubagentStartedEvent(subagent_run_id="s1", name="a", timestamp=TS),
        SubagentFinishedEvent(subagent_run_id="s1", timestamp=TS),
        SubagentStartedEvent(subagent_run_id="s1", name="a", timestamp=TS),
        SubagentErrorEvent(subagent_run_id="s1", message="boom", timestamp=TS)]
    yield "announced late", "after events attributed to it", [
        CustomEvent(name="progress", value=1, subagent_run_id="s1", timestamp=TS),
        SubagentStartedEvent(subagent_run_id="s1", name="a", timestamp=TS),
        SubagentFinishedEvent(subagent_run_id="s1", timestamp=TS)]
    yield "unannounced parent", "which no SUBAGENT_STARTED of this run announced", [
        SubagentStartedEvent(subagent_run_id="s2", name="b", parent_subagent_run_id="s1", timestamp=TS),
        SubagentFinishedEvent(subagent_run_id="s2", timestamp=TS)]
    yield "call against its message", "but the message 'm1' that carries it is attributed to subagent 's1'", [
        TextMessageStartEvent(message_id="m1", subagent_run_id="s1", timestamp=TS),
        TextMessageEndEvent(message_id="m1", timestamp=TS),
        ToolCallStartEvent(tool_call_id="c1", tool_call_name="calc", parent_message_id="m1", subagent_run_id="s2",
                           timestamp=TS),
        ToolCallEndEvent(tool_call_id="c1", timestamp=TS),
        ToolCallResultEvent(message_id="r1", tool_call_id="c1", content="42", timestamp=TS)]


@pytest.mark.parametrize("case", [name for name, _, _ in _lifecycle()])
async def test_subagent_lifecycle_and_attribution_musts(case):
    """FAILED-ON-ORIGINAL (passed): spec 1.1, Subagents: "A producer MUST NOT reuse the id of an invocation that has
    already finished in this run", "A producer that announces an invocation MUST do so before any event attributed to
    it", "A producer MUST NOT name a parent invocation that has not been announced in this run", "A producer MUST NOT
    attribute a tool call to one owner while the message carrying it is attributed to another"."""
    words, events = next((w, e) for name, w, e in _lifecycle() if name == case)

    def script(inp):
        yield S(inp)
        yield from events
        yield F(inp)

    await fails(script, Rule.R5, words)


async def test_a_subagent_run_id_spelled_null_fails():
    """FAILED-ON-ORIGINAL (passed: the models read null as absent): "An absent subagentRunId means the parent agent,
    and MUST NOT be spelled as null"."""
    def script(inp):
        yield S(inp)
        yield _raw(type="TEXT_MESSAGE_START", messageId="m1", subagentRunId=None)
        yield from text("m1")[1:]
        yield F(inp)

    await fails(script, Rule.R12, "'subagentRunId': null")


async def test_two_interrupts_with_one_id_fail():
    """FAILED-ON-ORIGINAL (passed): "Each interrupt's id MUST be unique within the run; a resume entry answers it by
    this id" (spec 1.1, Interrupts and Resume)."""
    def script(inp):
        yield S(inp)
        yield F(inp, outcome={"type": "interrupt", "interrupts": [{"id": "i1", "reason": "approval"},
                                                                   {"id": "i1", "reason": "credential"}]})

    await fails(script, Rule.R5, "two interrupts of the run have the id 'i1'")


async def test_an_activity_delta_that_leaves_no_object_fails():
    """FAILED-ON-ORIGINAL (passed): "The patched result MUST still be an object" (spec 1.1, Activity)."""
    def script(inp):
        yield S(inp)
        yield ActivitySnapshotEvent(message_id="a1", activity_type="plan", content={"n": 1}, timestamp=TS)
        yield ActivityDeltaEvent(message_id="a1", activity_type="plan", patch=[{"op": "replace", "path": "", "value": 3}],
                                 timestamp=TS)
        yield ActivityDeltaEvent(message_id="a1", activity_type="plan", patch=[{"op": "add", "path": "/x", "value": 1}],
                                 timestamp=TS)  # not followed any more: no second finding
        yield F(inp)

    result = await fails(script, Rule.R12, "a JSON number, not an object")
    assert len(result.violations) == 1, result.violations


# -- valid variations, pinned ---------------------------------------------------------------------------------------

def every_kind(inp: RunAgentInput):
    """Every AG-UI 1.0 event kind, interleaved as the streaming pattern allows, with optional fields present."""
    yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS, protocol_version="1.0",
                          raw_event={"provider": "x"}, metadata={"k": None}, input=inp)
    yield StateSnapshotEvent(snapshot={"items": [], "ü": "日本"}, timestamp=TS)
    yield StepStartedEvent(step_name="plan", timestamp=TS)
    yield ReasoningStartEvent(message_id="rs1", timestamp=TS)
    yield ReasoningMessageStartEvent(message_id="rm1", timestamp=TS)
    yield ReasoningMessageContentEvent(message_id="rm1", delta="think…", timestamp=TS)
    yield ReasoningMessageEndEvent(message_id="rm1", timestamp=TS)
    yield ReasoningMessageChunkEvent(message_id="rm2", delta="more", timestamp=TS)
    yield ReasoningMessageChunkEvent(delta=" thoughts", timestamp=TS)
    yield ReasoningEncryptedValueEvent(subtype="message", entity_id="rm1", encrypted_value="opaque", timestamp=TS)
    yield ReasoningEndEvent(message_id="rs1", timestamp=TS)
    yield StepFinishedEvent(step_name="plan", timestamp=TS)
    yield TextMessageStartEvent(message_id="a1", role="assistant", name="bot", timestamp=TS)
    yield ToolCallStartEvent(tool_call_id="c1", tool_call_name="calc", parent_message_id="a1", timestamp=TS)
    yield ToolCallStartEvent(tool_call_id="c2", tool_call_name="search", parent_message_id="a1", timestamp=TS)
    yield ToolCallArgsEvent(tool_call_id="c2", delta='{"q": "日本 😀"', timestamp=TS)
    yield TextMessageContentEvent(message_id="a1", delta="Working on it — ünïcödé \u2028 😀 ", timestamp=TS)
    yield ToolCallArgsEvent(tool_call_id="c1", delta='{"expr": "6*7"}', timestamp=TS)
    yield ToolCallArgsEvent(tool_call_id="c2", delta="}", timestamp=TS)
    yield ToolCallEndEvent(tool_call_id="c2", timestamp=TS)
    yield ToolCallEndEvent(tool_call_id="c1", timestamp=TS)
    yield TextMessageEndEvent(message_id="a1", timestamp=TS)
    yield ToolCallResultEvent(message_id="r2", tool_call_id="c2", content=[{"type": "text", "text": "hit"}], timestamp=TS)
    yield ToolCallResultEvent(message_id="r1", tool_call_id="c1", content="42", role="tool", timestamp=TS)
    yield StateDeltaEvent(delta=[{"op": "add", "path": "/items/-", "value": {"n": 42}},
                                 {"op": "copy", "from": "/items/0", "path": "/last"},
                                 {"op": "test", "path": "/last/n", "value": 42},
                                 {"op": "move", "from": "/last", "path": "/final"},
                                 {"op": "remove", "path": "/ü"}], timestamp=TS)
    yield ActivitySnapshotEvent(message_id="act1", activity_type="plan", content={"steps": ["a"]}, timestamp=TS)
    yield ActivityDeltaEvent(message_id="act1", activity_type="plan",
                             patch=[{"op": "add", "path": "/steps/-", "value": "b"}], timestamp=TS)
    yield SubagentStartedEvent(subagent_run_id="sa1", name="writer", parent_tool_call_id="c1", timestamp=TS)
    yield TextMessageChunkEvent(message_id="sm1", delta="sub ", subagent_run_id="sa1", timestamp=TS)
    yield TextMessageChunkEvent(delta="text", subagent_run_id="sa1", timestamp=TS)
    yield SubagentFinishedEvent(subagent_run_id="sa1", result={"ok": True}, timestamp=TS)
    yield RawEvent(event={"provider_event": 1}, source="openai", timestamp=TS)
    yield CustomEvent(name="progress", value=None, timestamp=TS)
    yield MessagesSnapshotEvent(messages=[UserMessage(id=inp.messages[0].id, content="What is 6 * 7?")], timestamp=TS)
    yield TextMessageStartEvent(message_id="a1", timestamp=TS)  # a closed message MAY reopen (spec 1.1)
    yield TextMessageContentEvent(message_id="a1", delta="It is 42." + "x" * 200_000, timestamp=TS)
    yield TextMessageEndEvent(message_id="a1", timestamp=TS)
    yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, timestamp=TS, result={"answer": 42},
                           usage=[TokenUsage(provider="p", model="m", input_tokens=10, output_tokens=5, total_tokens=15)])


async def test_every_event_kind_over_sse_passes():
    (result,) = await passes(every_kind, streaming=True)
    assert not result.warnings, result.warnings
    assert len(result.events) == 38


async def test_every_event_kind_over_websocket_passes():
    def script(request: dict):
        for ev in every_kind(RunAgentInput.model_validate(request)):
            yield ev.model_dump_json(by_alias=True)

    async with WsServer(script) as server:
        result, results = await chat(server.url.replace("/chat", "/agent"), streaming=True)
    assert [r.outcome for r in results] == [Outcome.PASSED], [r.violations for r in results]
    assert not result.warnings, result.warnings


async def test_interrupt_and_cancelled_outcomes_pass():
    def interrupted(inp):
        yield S(inp)
        yield from call("c1", result=False)
        yield F(inp, outcome={"type": "interrupt", "interrupts": [{"id": "i1", "reason": "approval",
                                                                     "toolCallId": "c1"}]})

    def cancelled(inp):
        yield S(inp)
        yield from call("c1", result=False)
        yield F(inp, outcome={"type": "cancelled"})

    def interrupted_inside_the_tool(inp):
        """FAILED-ON-ORIGINAL (R5): an interrupt naming no call (LangGraph's interrupt() in a running tool). "On an
        interrupted run the pending calls are derived the same way; the interrupt outcome does not carry them"."""
        yield S(inp)
        yield from call("c1", result=False)
        yield F(inp, outcome={"type": "interrupt", "interrupts": [{"id": "i1", "reason": "langgraph:interrupt"}]})

    await passes(interrupted)
    await passes(cancelled)
    await passes(interrupted_inside_the_tool)


async def test_sse_framing_variations_pass():
    """Comments, `event:`/`id:`/`retry:` fields, multi-line data and CRLF, as the SSE binding allows a consumer."""
    def script(inp):
        enc = EventEncoder()
        yield b": keep-alive\n\nretry: 1000\n\n"
        for i, ev in enumerate([S(inp), *text("a1", "line\nbreak"), F(inp)]):
            data = ev.model_dump_json(by_alias=True, indent=1).replace("\n", "\ndata: ")
            frame = f"event: {ev.type.value}\nid: {i}\ndata: {data}\n\n" if i % 2 else enc.encode(ev)
            yield (frame.replace("\n", "\r\n") if i == 3 else frame).encode()

    await passes(script, streaming=True)


async def test_starlette_uvicorn_chunked_stream_with_charset_passes():
    """A real ASGI server: chunked transfer encoding and `text/event-stream; charset=utf-8`."""
    import uvicorn  # a dev dependency (pyproject.toml): never skipped
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def agent(request: Request) -> StreamingResponse:
        inp = RunAgentInput.model_validate(await request.json())
        enc = EventEncoder(accept=request.headers.get("accept"))

        async def gen():
            for ev in every_kind(inp):
                yield enc.encode(ev)
        return StreamingResponse(gen(), media_type="text/event-stream; charset=utf-8")

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # listening before uvicorn serves: the client's connection waits in the backlog, no polling
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/agent", agent, methods=["POST"])]),
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        result, results = await chat(f"http://127.0.0.1:{port}/agent", streaming=True)
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
        sock.close()
    assert [r.outcome for r in results] == [Outcome.PASSED], [r.violations for r in results]
