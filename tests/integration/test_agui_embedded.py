"""The embedded agentsim in AG-UI (what `chatprobe run --profile ag-ui` with no --target starts) carries every built-in
scenario marked for ag-ui, over SSE and over WebSocket, and every one of them passes."""
from __future__ import annotations

import pytest

from harness.catalog import builtin_scenarios
from harness.profiles import load_profile
from harness.runner import run_scenario
from harness.scenario import load_scenario
from harness.targets import Target, embedded_sim
from harness.yamlfile import ConfigError

AGUI = load_profile("ag-ui")
# The built-ins an AG-UI server carries (no `dialects:`, or one naming ag-ui), less `knee`, which saturates the server
# on purpose (its verdict is the table of stages).
MARKED = [n for n in builtin_scenarios() if load_scenario(n).carried_by("ag-ui") and not load_scenario(n).stages]


def test_the_marks():
    assert {"basic", "probe", "abandonment", "performance"} <= set(MARKED)
    for name in ("concurrent", "errors", "reconnection"):  # parallel runs on a stream, recoverable errors, resume
        assert not load_scenario(name).carried_by("ag-ui") and load_scenario(name).carried_by("netra")


@pytest.mark.parametrize("transport", ["sse", "websocket"])
@pytest.mark.parametrize("name", MARKED)
async def test_builtin_scenario_passes_against_the_embedded_agui_sim(name, transport):
    scenario = load_scenario(name)
    if scenario.users * scenario.chats_per_user > 20:  # the same scenario, smaller: two cores are shared
        scenario = scenario.model_copy(update={"users": 4, "chats_per_user": 2, "ramp_up": 0.0})
    async with embedded_sim([], 7, protocol="ag-ui") as (sim, tokens):
        url = sim.ws_url if transport == "websocket" else sim.url  # type: ignore[union-attr]
        target = Target(url=url, profile=AGUI, name="agentsim", tokens=tokens)
        run = await run_scenario(scenario, target)
    assert run.passed, [(r.outcome, r.violations, r.note) for r in run.results if not r.passed]
    assert all(not r.warnings for r in run.results)


async def test_embedded_agui_sim_with_a_fault():
    async with embedded_sim(["drop_result=1"], 7, protocol="ag-ui") as (sim, tokens):
        target = Target(url=sim.url, profile=AGUI, name="agentsim", tokens=tokens)
        run = await run_scenario(load_scenario("probe"), target)
    [result] = run.results
    assert [v.rule for v in result.violations] == ["R5"] and "no TOOL_CALL_RESULT" in result.violations[0].reason


async def test_a_netra_only_fault_for_the_agui_sim_is_a_usage_error():
    with pytest.raises(ConfigError, match="--sim-fault: .*netra-only"):
        async with embedded_sim(["swap=1"], 7, protocol="ag-ui"):
            pass


def test_a_bad_dialects_key_is_a_usage_error_naming_file_line_and_field(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("name: s\nusers: 1\ndialects: netra\n")
    with pytest.raises(ConfigError, match=r"s.yaml:3: field 'dialects'"):
        load_scenario(str(bad))
