"""Every valid stream of the AG-UI documentation's examples (docs.ag-ui.com: concepts/events, interrupts, reasoning,
subagents) passes, served by a real loopback AG-UI server built with the ag-ui-protocol package's models and encoder."""
from __future__ import annotations

import pytest
from ag_ui.core import (
    ActivityDeltaEvent,
    ActivitySnapshotEvent,
    AssistantMessage,
    CustomEvent,
    FunctionCall,
    MessagesSnapshotEvent,
    RawEvent,
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
    SubagentFinishedEvent,
    SubagentStartedEvent,
    TextMessageChunkEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    ToolCall,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    UserMessage,
)

from harness.client import Session
from harness.events import Outcome
from harness.flow import ChatOptions
from harness.profiles import Profile, load_profile
from harness.scenario import ChatStep, Expect, Scenario
from harness.sinks import Sink
from harness.targets import Target

from .servers import AguiSSEServer

AGUI = load_profile("ag-ui")


def lifecycle(inp):
    return [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id), StepStartedEvent(step_name="plan"),
            StepFinishedEvent(step_name="plan"), RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)]


def text_message(inp):
    return [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id),
            TextMessageStartEvent(message_id="msg_1", role="assistant"),
            *(TextMessageContentEvent(message_id="msg_1", delta=d) for d in ("Hello", ", ", "world")),
            TextMessageEndEvent(message_id="msg_1"), RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)]


def text_chunk(inp):
    return [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id),
            TextMessageChunkEvent(message_id="msg_1", role="assistant", delta="Hello in one go"),
            RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, result={"ok": True})]


def tool_call(inp):
    return [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id),
            TextMessageStartEvent(message_id="msg_1", role="assistant"),
            TextMessageContentEvent(message_id="msg_1", delta="Let me check."), TextMessageEndEvent(message_id="msg_1"),
            ToolCallStartEvent(tool_call_id="tool_1", tool_call_name="get_weather", parent_message_id="msg_1"),
            ToolCallArgsEvent(tool_call_id="tool_1", delta='{"location": '),
            ToolCallArgsEvent(tool_call_id="tool_1", delta='"Paris"}'), ToolCallEndEvent(tool_call_id="tool_1"),
            ToolCallResultEvent(message_id="result_1", tool_call_id="tool_1", content="18°C, sunny", role="tool"),
            RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)]


def state(inp):
    return [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id),
            StateSnapshotEvent(snapshot={"count": 0, "items": []}),
            StateDeltaEvent(delta=[{"op": "replace", "path": "/count", "value": 1}]),
            StateDeltaEvent(delta=[{"op": "add", "path": "/items/-", "value": {"name": "a"}}]),
            StateSnapshotEvent(snapshot={"count": 5, "items": [], "done": False}),
            StateDeltaEvent(delta=[{"op": "replace", "path": "/done", "value": True},
                                   {"op": "move", "from": "/count", "path": "/total"}]),
            MessagesSnapshotEvent(messages=[UserMessage(id=inp.messages[0].id, content="hi")]),
            RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)]


def activity_and_special(inp):
    return [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id),
            ActivitySnapshotEvent(message_id="act_1", activity_type="PLAN", content={"steps": ["search"]}),
            ActivityDeltaEvent(message_id="act_1", activity_type="PLAN",
                               patch=[{"op": "add", "path": "/steps/-", "value": "answer"}]),
            RawEvent(event={"provider": "x", "kind": "token"}, source="openai"),
            CustomEvent(name="thumbs_up", value={"by": "user"}),
            RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)]


def reasoning(inp):
    return [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id), ReasoningStartEvent(message_id="r_1"),
            ReasoningMessageStartEvent(message_id="rm_1", role="reasoning"),
            ReasoningMessageContentEvent(message_id="rm_1", delta="Thinking about it"),
            ReasoningMessageEndEvent(message_id="rm_1"), ReasoningMessageChunkEvent(message_id="rm_2", delta="More"),
            ReasoningEndEvent(message_id="r_1"), TextMessageChunkEvent(message_id="msg_1", delta="Done"),
            RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)]


def subagent(inp):
    return [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id),
            SubagentStartedEvent(subagent_run_id="sa_1", name="researcher"),
            TextMessageStartEvent(message_id="msg_s", role="assistant", subagent_run_id="sa_1"),
            TextMessageContentEvent(message_id="msg_s", delta="found it", subagent_run_id="sa_1"),
            TextMessageEndEvent(message_id="msg_s", subagent_run_id="sa_1"),
            SubagentFinishedEvent(subagent_run_id="sa_1", outcome={"type": "success"}),
            RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)]


def interrupted(inp):
    """Interrupts: the agent proposes sendEmail and pauses for approval; the call's result comes in the next run."""
    return [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id),
            ToolCallStartEvent(tool_call_id="tc-001", tool_call_name="sendEmail"),
            ToolCallArgsEvent(tool_call_id="tc-001", delta='{"to": "a@b.com", "subject": "Hi"}'),
            ToolCallEndEvent(tool_call_id="tc-001"), StateSnapshotEvent(snapshot={"pending": "tc-001"}),
            RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, outcome={
                "type": "interrupt", "interrupts": [{"id": "int-abc123", "reason": "tool_call", "toolCallId": "tc-001",
                                                    "message": "Send email to a@b.com with subject 'Hi'?"}]})]


def resumed(inp):
    """The run that resumes it: RUN_STARTED echoes its input (the history, with the proposed call), then the result."""
    history = [*inp.messages, AssistantMessage(id="a-1", tool_calls=[ToolCall(id="tc-001", function=FunctionCall(
        name="sendEmail", arguments='{"to": "a@b.com"}'))])]
    echo = RunAgentInput(thread_id=inp.thread_id, run_id=inp.run_id, messages=history, state={}, tools=[], context=[],
                         forwarded_props={}, resume=[{"interrupt_id": "int-abc123", "status": "resolved",
                                                      "payload": {"approved": True}}])
    return [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id, input=echo),
            ToolCallResultEvent(message_id="res-1", tool_call_id="tc-001", content="sent"),
            RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id, outcome={"type": "success"}, result="sent")]


def frontend_tool(inp):
    """A call of a tool the client offered: the run ends with it pending, for the application to answer."""
    return [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id),
            ToolCallStartEvent(tool_call_id="fc-1", tool_call_name="confirm"),
            ToolCallArgsEvent(tool_call_id="fc-1", delta='{"question": "ok?"}'), ToolCallEndEvent(tool_call_id="fc-1"),
            RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id,
                             outcome={"type": "success", "pendingToolCallIds": ["fc-1"]})]


def failed(inp):
    return [RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id),
            RunErrorEvent(message="model overloaded", code="OVERLOADED")]


def offering(*tools: str) -> Profile:
    data = AGUI.model_dump()
    data["request"] = {**data["request"], "tools": [{"name": t, "description": t} for t in tools]}
    return Profile.model_validate(data)


EXAMPLES = {
    "lifecycle with a step": (lifecycle, AGUI, None),
    "text message": (text_message, AGUI, None),
    "text message chunk": (text_chunk, AGUI, None),
    "tool call with its result": (tool_call, AGUI, None),
    "state snapshots and deltas, messages snapshot": (state, AGUI, None),
    "activity, raw and custom": (activity_and_special, AGUI, None),
    "reasoning": (reasoning, AGUI, None),
    "subagent": (subagent, AGUI, None),
    "run paused by an interrupt": (interrupted, AGUI, None),
    "run resuming an interrupted one": (resumed, AGUI, None),
    "frontend tool call left pending": (frontend_tool, offering("confirm"), None),
    "run error (expected)": (failed, AGUI, "fatal"),
}


@pytest.mark.parametrize("example", list(EXAMPLES))
async def test_documented_stream_passes(example):
    script, profile, expect_error = EXAMPLES[example]
    async with AguiSSEServer(script) as server:
        target = Target(url=server.url, profile=profile, name="t")
        scenario = Scenario(name="t", expect=Expect(deadline=10))
        exp = scenario.expectations(profile, ChatStep(expect_error=expect_error) if expect_error else None)
        session = Session(target, "u1", "t", Sink(), connect_timeout=5)
        try:
            result = await session.chat("hi", exp, ChatOptions(settle=0.05))
        finally:
            await session.close()
    assert result.outcome is Outcome.PASSED, result.violations
    assert result.warnings == [], result.warnings  # the examples carry no timestamp: optional, nothing to say
