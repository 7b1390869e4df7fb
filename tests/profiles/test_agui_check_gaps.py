"""AG-UI payload rules (harness/payload_checks.py) at edges no other test held, over a real SSE server: each case is
one a small change to the check set let through while every other test still passed."""
from __future__ import annotations

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

from harness.events import Outcome

from .servers import AguiSSEServer
from .test_agui import chat, rules


async def test_a_run_error_owes_no_result_for_a_backend_call_it_cut_short():
    # At RUN_ERROR the run failed: nothing more is owed (the unexpected fatal error is the R13), not the
    # TOOL_CALL_RESULT a completed run owes for each backend call.
    def failing(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id)
        yield ToolCallStartEvent(tool_call_id="c1", tool_call_name="search")
        yield ToolCallEndEvent(tool_call_id="c1")
        yield RunErrorEvent(message="search backend down")

    async with AguiSSEServer(failing) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.FAILED
    assert rules(result) == ["R13"], result.violations


async def test_a_tool_result_under_the_id_of_a_message_already_shown_is_r5():
    # A TOOL_CALL_RESULT's messageId is the id of the tool message it makes: one a streamed message already has is
    # two messages under one id (R5).
    def reused(inp: RunAgentInput):
        yield RunStartedEvent(thread_id=inp.thread_id, run_id=inp.run_id)
        yield TextMessageStartEvent(message_id="a1", role="assistant")
        yield TextMessageContentEvent(message_id="a1", delta="Let me look.")
        yield TextMessageEndEvent(message_id="a1")
        yield ToolCallStartEvent(tool_call_id="c1", tool_call_name="search")
        yield ToolCallEndEvent(tool_call_id="c1")
        yield ToolCallResultEvent(message_id="a1", tool_call_id="c1", content="found")
        yield RunFinishedEvent(thread_id=inp.thread_id, run_id=inp.run_id)

    async with AguiSSEServer(reused) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.FAILED
    assert rules(result) == ["R5"] and "reuses message id 'a1'" in result.violations[0].reason, result.violations
