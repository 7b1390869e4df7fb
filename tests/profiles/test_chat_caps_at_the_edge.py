"""The caps on what one chat keeps (harness/checker.py's MAX_* constants), each reached exactly at its edge against a
real loopback AG-UI server built with the ag-ui-protocol encoder: one more than the cap is counted or dropped as the
docs say, never kept. Small workloads: the smallest stream that passes each cap."""
from __future__ import annotations

from harness.checker import MAX_WARNINGS_KEPT
from harness.events import Outcome, Rule

from .servers import AguiSSEServer
from .test_agui_payload import call, chat, run


async def test_a_chat_keeps_its_first_warnings_up_to_the_cap_and_no_more():
    """Each tool call naming an assistant message no event showed is advice (R5, the chat passes): a server doing it on
    every call fills the chat's warnings (docs/profiles.md: "the chat's 50 warnings") and no further one is kept."""
    calls = [ev for n in range(MAX_WARNINGS_KEPT + 2) for ev in call(f"c{n}", parent=f"m{n}")]
    async with AguiSSEServer(run(*calls)) as server:
        result = await chat(server.url)
    assert result.outcome is Outcome.PASSED, result.violations
    assert len(result.warnings) == MAX_WARNINGS_KEPT, len(result.warnings)
    assert {w.rule for w in result.warnings} == {Rule.R5}
    assert "'m0'" in result.warnings[0].reason and f"'m{MAX_WARNINGS_KEPT - 1}'" in result.warnings[-1].reason
