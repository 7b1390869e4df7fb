"""AG-UI payload rules (harness/payload_checks.py) at edges no other test held, over a real SSE server: each case is
one a small change to the check set let through while every other test still passed."""
from __future__ import annotations

import asyncio

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

from harness.client import Session
from harness.events import Outcome
from harness.flow import ChatOptions
from harness.scenario import Expect, Scenario
from harness.targets import Target

from .servers import AguiSSEServer, Pause
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


async def test_a_further_run_still_open_at_its_deadline_is_r10_not_cut_short():
    # A further run the stream carried, with no terminal event by its deadline while the stream stays open: judged at
    # that deadline, R10 (a run that ran out of time), not "the stream ended before this run's terminal event".
    from .test_agui_multirun import AGUI, Collector, hitl

    def unfinished(inp: RunAgentInput):
        yield from hitl(inp, second_ends=False)
        yield Pause(3.0)  # the stream stays open past the 1 s deadline

    sink = Collector()
    async with AguiSSEServer(unfinished) as server:
        session = Session(Target(url=server.url, profile=AGUI, name="t"), "u1", "t", sink, connect_timeout=5)
        try:
            async with asyncio.timeout(15):
                result = await session.chat("book it", Scenario(name="t", expect=Expect(deadline=1)).expectations(AGUI),
                                            ChatOptions(settle=0.05))
        finally:
            await session.close()
    [further] = [r for r in sink.results if r.further_run]
    assert further.outcome is Outcome.INCOMPLETE and rules(further) == ["R10"], (further.note, further.violations)
    assert result.outcome is Outcome.INCOMPLETE and "R10" in rules(result), result.violations
