"""Real runs against the embedded agentsim, written as --json and --junit, validated against the shipped JSON
Schema and the vendored JUnit XSD (junit-10.xsd)."""
from __future__ import annotations

from datetime import datetime

from harness.profiles import load_profile
from harness.report import write_json, write_junit
from harness.runner import run_scenario
from tests.integration.conftest import scenario, sim_factory  # noqa: F401 - sim_factory is a fixture

from .reports import check_json_report, check_junit_report

try:
    from harness.targets import Target
except ImportError:  # before the lead's move
    from harness.client import Target  # type: ignore[no-redef]


async def test_real_runs_validate_against_both_schemas(sim_factory, tmp_path, refused_port):  # noqa: F811
    async with sim_factory() as (_sim, target, _gt):
        good = await run_scenario(scenario(name="good", users=2, chats_per_user=3), target)
    async with sim_factory(faults=["drop:tool_completed=1"]) as (_sim, target, _gt):
        bad = await run_scenario(scenario(name="faulty", users=1, chats_per_user=3), target)
    nowhere = Target(url=f"ws://127.0.0.1:{refused_port()}/ws", profile=load_profile("netra"), name="127.0.0.1:1")
    down = await run_scenario(scenario(name="down", users=1, chats_per_user=1, connect_timeout="1s"), nowhere)
    assert good.passed and not bad.passed and not bad.unreachable and down.unreachable

    out = tmp_path / "r.json"
    write_json(str(out), [good, bad, down])
    doc = check_json_report(out)
    assert [s["scenario"] for s in doc["scenarios"]] == ["good", "faulty", "down"]
    assert doc["passed"] is False
    for s, run in zip(doc["scenarios"], (good, bad, down), strict=True):
        # ISO 8601 next to epoch seconds, the same instant
        assert abs(datetime.fromisoformat(s["started_at_iso"]).timestamp() - s["started_at"]) < 0.001
        assert abs(datetime.fromisoformat(s["finished_at_iso"]).timestamp() - s["finished_at"]) < 0.001
        assert len(s["chats"]) == run.stats.chats
    assert abs(datetime.fromisoformat(doc["generated_at_iso"]).timestamp() - doc["generated_at"]) < 0.001
    assert doc["scenarios"][0]["chats"][0]["events"][0]["role"] == "agent_started"
    # Why the error chats failed: docs/json-report.md and the schema had `stats.error_kinds`, the report never did.
    assert doc["scenarios"][2]["stats"]["error_kinds"] == {"refused": 1}
    assert doc["scenarios"][0]["stats"]["error_kinds"] == {}

    junit = tmp_path / "r.xml"
    write_junit(str(junit), [good, bad, down])
    root = check_junit_report(junit)
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert list(cases) == ["good", "faulty", "down"]
    assert cases["good"].find("failure") is None and cases["good"].find("error") is None
    failure = cases["faulty"].find("failure")
    assert failure is not None and cases["faulty"].find("error") is None
    assert "objective failed: violations.max" in failure.text and "R7 seq" in failure.text
    error = cases["down"].find("error")
    assert error is not None and error.get("type") == "Unreachable" and cases["down"].find("failure") is None
    # classnames: "chatprobe." + the target's label without its dots and colons
    assert cases["good"].get("classname") == "chatprobe.agentsim"
    assert cases["down"].get("classname") == "chatprobe.127_0_0_1_1"
    # properties only on suites, never on test cases (junit-10.xsd has no place for them there)
    assert not root.findall(".//testcase/properties") and root.findall("testsuite/properties/property")
    out_text = cases["faulty"].find("system-out").text
    assert "outcomes: passed" in out_text and "objectives:" in out_text and "FAIL" in out_text
    assert root.get("tests") == "3" and root.get("failures") == "1" and root.get("errors") == "1"
