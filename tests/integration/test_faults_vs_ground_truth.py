"""Against agentsim with each fault on, the matching rule fires — exactly for the chats agentsim's
ground-truth log says were faulted, and for no other."""
from __future__ import annotations

import pytest

from harness.events import Outcome
from harness.runner import run_scenario

from .conftest import TIMED, faults_by_run, scenario

# fault spec -> (rule that must fire — "R7|R10": either —, scenario overrides; none: conftest's UNTIMED, 10 s a chat)
CASES = {
    "drop:tool_completed=0.5": ("R2", {"message": "What is 2 * 3? #tools=1"}),
    "drop=0.5": ("R7|R10", {"expect": TIMED}),  # a dropped terminal event leaves the chat incomplete until its deadline
    "duplicate=0.5": ("R7", {}),
    "swap=0.5": ("R7", {}),
    "after_terminal=0.5": ("R4", {"expect": {"streaming": True, "settle": "0.3s", "deadline": "10s"}}),
    "malformed:notjson=0.5": ("R12", {}),
    "malformed:binary=0.5": ("R12", {}),
    "malformed:notype=0.5": ("R12", {}),
    "malformed:unknowntype=0.5": ("R12", {}),
    "delay_first=1s@0.5": ("R9", {"expect": {"first_event_limit": "0.5s", "settle": "0.05s", "deadline": "10s"}}),
    "stall=1.2s@0.5": ("R11", {"expect": {"stall_limit": "0.6s", "settle": "0.05s", "deadline": "10s"}}),
}


@pytest.mark.parametrize("spec", list(CASES))
async def test_fault_fires_its_rule_exactly_where_injected(sim_factory, spec):
    rule, overrides = CASES[spec]
    async with sim_factory(faults=[spec]) as (sim, target, gt):
        run = await run_scenario(scenario(**overrides), target)
    faulted = faults_by_run(gt)
    assert run.stats.chats == 20 and all(r.run_id for r in run.results)
    hit = [r for r in run.results if r.run_id in faulted]
    clean = [r for r in run.results if r.run_id not in faulted]
    assert hit and clean, f"rate 0.5 over 20 chats should give both kinds ({len(hit)} faulted)"
    for r in hit:
        assert set(rule.split("|")) & {v.rule for v in r.violations}, (spec, r.run_id, r.violations)
        assert r.outcome is not Outcome.PASSED
    for r in clean:
        assert r.outcome is Outcome.PASSED, (spec, r.run_id, r.violations)
    assert not run.passed


async def test_crosstalk_is_caught_as_isolation_breach(sim_factory):
    async with sim_factory(faults=["crosstalk=0.5"], think=0.01) as (sim, target, gt):
        run = await run_scenario(scenario(users=6, chats_per_user=4), target)
    faulted = [f for fs in faults_by_run(gt).values() for f in fs if f["fault"] == "crosstalk"]
    delivered = [f for f in faulted if f.get("victim_user_id") or f.get("to_user_id") or f.get("delivered", True)]
    assert delivered
    r8 = sum(1 for r in run.results for v in r.violations if v.rule == "R8")
    assert r8 >= 1
    assert run.stats.violations["R8"] == r8


@pytest.mark.parametrize("kind", ["clean", "abort"])
async def test_server_closing_mid_run_is_resumed(sim_factory, kind):
    async with sim_factory(faults=[f"close:{kind}=0.5"], think=0.01) as (sim, target, gt):
        run = await run_scenario(scenario(users=3, chats_per_user=3), target)
    faulted = faults_by_run(gt)
    resumed = [r for r in run.results if r.reconnects]
    assert resumed, "some runs were cut and must have been resumed"
    assert {r.run_id for r in resumed} <= set(faulted)
    for r in run.results:
        assert r.outcome is Outcome.PASSED, (r.run_id, r.violations, r.note)
    assert all(r.reconnects == ["resumed"] for r in resumed)


async def test_without_reconnect_a_cut_run_is_incomplete(sim_factory):
    async with sim_factory(faults=["close:abort=1.0"], think=0.01) as (sim, target, gt):
        run = await run_scenario(scenario(users=2, chats_per_user=1, reconnect=False), target)
    assert run.stats.outcomes[Outcome.INCOMPLETE] == 2
    assert all(r.missing for r in run.results)
    assert run.stats.missing_chats == 2


async def test_refused_connections_are_errors_and_unreachable(sim_factory):
    async with sim_factory(faults=["refuse=1.0"]) as (sim, target, gt):
        run = await run_scenario(scenario(users=2, chats_per_user=2), target)
    assert run.stats.outcomes[Outcome.ERROR] == 4
    assert {r.error_kind for r in run.results} == {"refused"}
    assert run.unreachable and not run.passed


async def test_same_seed_same_verdicts(sim_factory):
    verdicts = []
    for _ in range(2):
        async with sim_factory(faults=["drop:agent_thinking=0.3", "duplicate=0.2"], seed=42) as (sim, target, gt):
            run = await run_scenario(scenario(users=1, chats_per_user=12), target, user_prefix="seeded")
        verdicts.append([sorted({v.rule for v in r.violations}) for r in run.results])
    assert verdicts[0] == verdicts[1]
    assert any(verdicts[0]) and not all(verdicts[0])
