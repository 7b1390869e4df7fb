"""An attacker pass over today's relaxed AG-UI rules (an empty delta is advice, a parentMessageId no event has shown
is advice, calls named in RUN_FINISHED's pendingToolCallIds owe no result): streams that must not pass, against real
loopback SSE servers built with ag_ui.core's models and EventEncoder. Each test failed on the code before its fix."""
from __future__ import annotations

import time

from ag_ui.core import TextMessageChunkEvent

from harness.events import Outcome, Rule
from tests.integration.test_agui_conformance import F, S, call, chat, fails, text
from tests.profiles.servers import AguiSSEServer


async def _streamed(script) -> None:
    """With `expect.streaming: true`, a run that showed the user no text fails: partial_result is missing (R2)."""
    async with AguiSSEServer(script) as server:
        result, _ = await chat(server.url, streaming=True)
    assert result.outcome is Outcome.FAILED, (result.violations, result.warnings)
    assert any(v.rule is Rule.R2 and "partial_result" in v.reason for v in result.violations), result.violations


async def test_empty_content_deltas_alone_are_no_streamed_text():
    """A keep-alive carries no text: with streaming required, a run whose only TEXT_MESSAGE_CONTENTs are empty did not
    stream a partial result (it passed: the empty deltas counted as partial_result)."""
    def script(inp):
        yield S(inp)
        yield from text("a1", "", "", "")
        yield F(inp)

    await _streamed(script)


async def test_empty_chunk_deltas_alone_are_no_streamed_text():
    def script(inp):
        yield S(inp)
        yield TextMessageChunkEvent(message_id="a1", role="assistant", delta="", timestamp=1_700_000_000_000)
        yield TextMessageChunkEvent(delta="", timestamp=1_700_000_000_000)
        yield F(inp)

    await _streamed(script)


async def test_pending_tool_call_ids_on_an_interrupt_outcome_is_named():
    """pendingToolCallIds is a field of the success outcome only (ag_ui.core: "a success with an interrupt still
    pending would be a contradiction"); the models keep unknown fields, so on an interrupt outcome it passed the schema.
    (The unanswered call itself is pending on an interrupted run, spec 1.1: it owes no result there.)"""
    def script(inp):
        yield S(inp)
        yield from call("c1", result=False)
        yield F(inp, outcome={"type": "interrupt", "interrupts": [{"id": "i1", "reason": "approval"}],
                              "pendingToolCallIds": ["c1"]})

    await fails(script, Rule.R5, "pendingToolCallIds on a 'interrupt' outcome")


async def test_pending_tool_call_ids_on_a_cancelled_outcome_is_named():
    """A cancelled run owes nothing, but a list of pending calls on it contradicts the outcome: R5, not silence."""
    def script(inp):
        yield S(inp)
        yield from call("c1", result=False)
        yield F(inp, outcome={"type": "cancelled", "pendingToolCallIds": ["c1"]})

    await fails(script, Rule.R5, "pendingToolCallIds on a 'cancelled' outcome")


async def test_a_pending_list_naming_a_call_twice_fails():
    """"exactly the tool calls the run started and did not answer", "in the order they were made": once each."""
    def script(inp):
        yield S(inp)
        yield from call("c1", result=False)
        yield F(inp, outcome={"type": "success", "pendingToolCallIds": ["c1", "c1"]})

    await fails(script, Rule.R5, "names 'c1' twice")


async def test_a_pending_list_naming_a_call_of_an_earlier_run_fails():
    """The list names "the tool calls this run started": a further run naming the first run's call (which that run
    already left to the application) passed."""
    def script(inp):
        yield S(inp)
        yield from call("c1", result=False)
        yield F(inp, outcome={"type": "success", "pendingToolCallIds": ["c1"]})
        yield S(inp, "run-2")
        yield from text("a2", "done")
        yield F(inp, "run-2", outcome={"type": "success", "pendingToolCallIds": ["c1"]})

    await fails(script, Rule.R5, "which this run did not start")  # (the further run's verdict is the chat's)


async def test_a_huge_pending_list_is_judged_in_bounded_work():
    """A 3 MB list of ids that never started (under the 4 MiB frame limit): one finding each was built (~300,000
    findings, a few hundred MB at once) before the chat kept 200; the rule stops at 20 as the run's others do."""
    ids = [f"x{i}" for i in range(300_000)]

    def script(inp):
        yield S(inp)
        yield from text("a1", "hi")
        yield F(inp, outcome={"type": "success", "pendingToolCallIds": ids})

    async with AguiSSEServer(script) as server:
        cpu = time.process_time()
        result, _ = await chat(server.url)
        cpu = time.process_time() - cpu
    assert result.outcome is Outcome.FAILED
    r5 = [v for v in result.violations if v.rule is Rule.R5]
    assert 1 <= len(r5) <= 21 and not result.violations_not_listed, (len(r5), result.violations_not_listed)
    # The work, as this process's CPU time (the server's side included; other processes' load barely moves it, as
    # it moves the wall clock): under a second now, over ten when a finding was built for each id.
    assert cpu < 5, cpu
