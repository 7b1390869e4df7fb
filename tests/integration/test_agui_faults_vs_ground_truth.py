"""Against agentsim speaking AG-UI (HTTP POST + SSE, and WebSocket) with each fault on, the matching rule fires —
exactly for the chats agentsim's ground-truth log says were faulted, and for no other."""
from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from agentsim.agui import AguiSim
from agentsim.faults import FaultSpecError
from agentsim.server import SimConfig
from harness.events import Outcome
from harness.profiles import load_profile
from harness.runner import run_scenario
from harness.targets import Target, TokenProvider

from .conftest import TIMED, faults_by_run, ground_truth, scenario

AGUI = load_profile("ag-ui")


class AguiSimCtx:
    """`async with AguiSimCtx(tmp_path, faults=[...], ws=False) as (sim, target, ground_truth_path)`."""

    def __init__(self, tmp_path: Path, faults=(), ws: bool = False, seed: int = 7, think=0.002, tool_latency=0.001):
        self.gt = tmp_path / f"gt-{secrets.token_hex(4)}.jsonl"
        self.secret = secrets.token_urlsafe(32)
        self.ws = ws
        self.sim = AguiSim(SimConfig(host="127.0.0.1", port=0, jwt_secret=self.secret, think=think,
                                     tool_latency=tool_latency, seed=seed, faults=list(faults), protocol="ag-ui",
                                     ground_truth=str(self.gt)))

    async def __aenter__(self):
        await self.sim.start()
        target = Target(url=self.sim.ws_url if self.ws else self.sim.url, profile=AGUI, name="agentsim-agui",
                        tokens=TokenProvider(jwt_secret=self.secret))
        return self.sim, target, self.gt

    async def __aexit__(self, *exc):
        await self.sim.stop()


# fault spec -> (rule that must fire — "R5|R12": either; "advice R12": a warning only, the chat passes —,
# scenario overrides; none: conftest's UNTIMED, 10 s a chat, as the faults here are not of time)
CASES = {
    "drop_result=0.5": ("R5", {}),
    "drop:tool_completed=0.5": ("R5", {}),
    "bad_args=0.5": ("advice R12", {}),  # spec 1.1: arguments that do not parse are no protocol violation
    "bad_state_delta=0.5": ("R12", {}),
    "empty_delta=0.5": ("advice R12", {}),  # the schema allows empty deltas (keep-alives)
    "result_before_end=0.5": ("R5", {}),
    "orphan_result=0.5": ("R5", {}),
    "unknown_parent=0.5": ("advice R5", {}),  # spec 1.1: a tool-call-only assistant message is never streamed
    "reused_id=0.5": ("R5", {}),
    "second_start=0.5": ("R1", {}),
    "missing_field=0.5": ("R12", {}),
    "bad_sse_line=0.5": ("R12", {}),
    "chunk_without_id=0.5": ("R5", {}),
    "string_timestamp=0.5": ("R12", {}),
    "duplicate:tool_executing=0.5": ("R5", {}),
    # the stream ends without RUN_FINISHED: incomplete, agent_completed missing (at the deadline: TIMED's 3 s)
    "drop:agent_completed=0.5": ("R2", {"expect": TIMED}),
    "after_terminal=0.5": ("R4", {"expect": {"streaming": True, "settle": "0.3s", "deadline": "10s"}}),
    "malformed:notjson=0.5": ("R12", {}),
    "malformed:unknowntype=0.5": ("R12", {}),
    "delay_first=1s@0.5": ("R9", {"expect": {"first_event_limit": "0.5s", "settle": "0.05s", "deadline": "10s"}}),
    "stall=1.2s@0.5": ("R11", {"expect": {"stall_limit": "0.6s", "settle": "0.05s", "deadline": "10s"}}),
}


@pytest.mark.parametrize("transport", ["sse", "websocket"])
@pytest.mark.parametrize("spec", list(CASES))
async def test_agui_fault_fires_its_rule_exactly_where_injected(tmp_path, spec, transport):
    rule, overrides = CASES[spec]
    async with AguiSimCtx(tmp_path, faults=[spec], ws=transport == "websocket") as (sim, target, gt):
        run = await run_scenario(scenario(**overrides), target)
    faulted = faults_by_run(gt)
    assert run.stats.chats == 20 and all(r.run_id for r in run.results)
    hit = [r for r in run.results if r.run_id in faulted]
    clean = [r for r in run.results if r.run_id not in faulted]
    assert hit and clean, f"rate 0.5 over 20 chats should give both kinds ({len(hit)} faulted)"
    if rule.startswith("advice"):
        for r in hit:
            assert r.outcome is Outcome.PASSED and not r.violations, (spec, r.run_id, r.violations)
            assert [w.rule.value for w in r.warnings] == [rule.split()[1]], (spec, r.run_id, r.warnings)
        for r in clean:
            assert r.outcome is Outcome.PASSED and not r.warnings, (spec, r.run_id, r.violations, r.warnings)
        assert run.passed
        return
    for r in hit:
        if rule == "R2":
            assert r.outcome is Outcome.INCOMPLETE and "agent_completed" in [m.value for m in r.missing], r
        else:
            assert set(rule.split("|")) & {v.rule for v in r.violations}, (spec, r.run_id, r.violations)
        assert r.outcome is not Outcome.PASSED
    for r in clean:
        assert r.outcome is Outcome.PASSED, (spec, r.run_id, r.violations)
    assert not run.passed


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_a_clean_agui_sim_passes_every_chat_and_logs_every_event(tmp_path, transport):
    async with AguiSimCtx(tmp_path, ws=transport == "websocket") as (sim, target, gt):
        run = await run_scenario(scenario(), target)
    assert run.passed and all(r.outcome is Outcome.PASSED and not r.warnings for r in run.results)
    records = ground_truth(gt)
    sent = [r for r in records if r["kind"] == "event"]
    assert len(sent) == sum(r.events_received for r in run.results)
    assert {r["role"] for r in sent} >= {"RUN_STARTED", "STATE_SNAPSHOT", "REASONING_MESSAGE_CONTENT", "TOOL_CALL_ARGS",
                                         "TOOL_CALL_RESULT", "STATE_DELTA", "TEXT_MESSAGE_CONTENT", "RUN_FINISHED"}
    assert records[0]["kind"] == "server_started" and records[0]["protocol"] == "ag-ui"


async def test_close_mid_run_leaves_the_chat_incomplete_at_once(tmp_path):
    async with AguiSimCtx(tmp_path, faults=["close:abort=0.5"]) as (sim, target, gt):
        run = await run_scenario(scenario(), target)
    faulted = faults_by_run(gt)
    for r in run.results:
        if r.run_id in faulted:
            assert r.outcome is Outcome.INCOMPLETE and r.missing, (r.run_id, r.violations, r.note)
        else:
            assert r.outcome is Outcome.PASSED, (r.run_id, r.violations)
    assert any(r.run_id in faulted for r in run.results)


async def test_refused_requests_are_errors(tmp_path):
    async with AguiSimCtx(tmp_path, faults=["refuse=1.0"]) as (sim, target, gt):
        run = await run_scenario(scenario(users=2, chats_per_user=1), target)
    assert {(r.outcome, r.error_kind) for r in run.results} == {(Outcome.ERROR, "refused")}


async def test_a_bad_token_is_auth_failed(tmp_path):
    async with AguiSimCtx(tmp_path) as (sim, target, gt):
        bad = Target(url=sim.url, profile=AGUI, name="x", tokens=TokenProvider(jwt_secret="not-the-secret-" + "x" * 32))
        run = await run_scenario(scenario(users=1, chats_per_user=1), bad)
    assert [(r.outcome, r.error_kind) for r in run.results] == [(Outcome.ERROR, "auth_failed")]


def test_netra_only_faults_are_refused_in_agui_mode(tmp_path):
    with pytest.raises(FaultSpecError, match="netra-only"):
        AguiSim(SimConfig(port=0, faults=["crosstalk=0.5"], protocol="ag-ui"))
