"""The monitor's recent-probes page: real probes of an agentsim with faults, kept bounded in count and bytes, served
over a real socket at / and /probes/ID (no script, CSP), every server string redacted and escaped."""
from __future__ import annotations

import asyncio
import secrets

import httpx
import pytest
from prometheus_client import CollectorRegistry

from agentsim.server import AgentSim, SimConfig
from harness import redact
from harness.targets import TargetOptions, TokenProvider
from monitors import probes_page
from monitors.metrics import ChatMetrics
from monitors.monitor import Monitor, make_app, probes_from_args, start_http
from monitors.probes_page import RecentProbes, detail_page, index_page

from .test_monitor_http import get

DEADLINE = 10.0


@pytest.fixture
async def faulty_monitor():
    """A Monitor of target `sim` (scenarios probe and basic) against an agentsim that drops every tool_completed:
    every probe fails with R2/R5 and a missing role."""
    secret = secrets.token_urlsafe(32)
    sim = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.001, tool_latency=0.001, seed=1,
                             faults=["drop:tool_completed=1.0"]))
    await sim.start()
    probes = probes_from_args(TargetOptions(url=sim.url, name="sim"), ["probe", "basic"], sim.url,
                              TokenProvider(jwt_secret=secret), timeout=5)
    mon = Monitor(probes, interval=1, timeout=5, metrics=ChatMetrics(CollectorRegistry()))
    try:
        yield mon
    finally:
        await sim.stop()


async def test_a_failing_probe_is_kept_with_its_violations_and_timeline(faulty_monitor):
    mon = faulty_monitor
    [(probe, run), _] = await mon.round()
    assert run is not None and not run.passed
    [(target, scenarios)] = mon.recent.groups()
    assert target == "sim" and [s for s, _ in scenarios] == ["probe", "basic"]
    record = scenarios[0][1][0]
    assert (record.verdict, record.chats, record.passed, record.via) == ("failed", 1, 0, "interval")
    assert "passed_ratio.min" in record.summary and "R2:1" in record.summary
    page = detail_page(record).decode()
    assert 'data-rule="R2"' in page and 'data-rule="R5"' in page and "missing tool_completed" in page
    assert 'class="lane missing" data-lane="tool_completed"' in page  # the role that never came, in its lane
    assert page.count('class="ev bad"') >= 1  # a violation marked on its event
    index = index_page(mon.recent).decode()
    assert f'href="/probes/{record.id}"' in index and 'data-verdict="failed"' in index


async def test_the_last_n_per_probe_and_a_byte_budget_for_details(faulty_monitor):
    mon = faulty_monitor
    [(probe, run), _] = await mon.round()
    size = len(mon.recent.get(1).detail)
    recent = RecentProbes([probe.key], per_probe=5, detail_budget=3 * size + size // 2)
    records = [recent.add(*probe.key, run, "failed", float(i), 0.1) for i in range(12)]
    [(_, [(_, kept)])] = recent.groups()
    assert [r.id for r in kept] == [12, 11, 10, 9, 8]  # the last 5, newest first
    assert all(recent.get(r.id) is None for r in records[:7])  # the older ones are gone, not just hidden
    assert recent.detail_bytes <= recent.detail_budget
    assert [r.detail is not None for r in kept] == [True, True, True, False, False]  # the oldest details dropped
    assert kept[-1].detail_dropped and detail_page(kept[-1]) is None
    assert "detail dropped" in index_page(recent).decode()
    # Evicted records give their bytes back: what is counted is what is held.
    assert recent.detail_bytes == sum(len(r.detail) for r in kept if r.detail is not None)


async def test_server_strings_are_redacted_and_escaped(faulty_monitor):
    mon = faulty_monitor
    [(probe, run), _] = await mon.round()
    token = "s3cr3t-" + secrets.token_urlsafe(16)
    redact.register(token)
    chat = run.results[0]
    chat.note = f"<script>alert(1)</script> Bearer {token} \x1b[31mred"
    chat.events[0].wire_type = '<img src=x onerror="alert(2)">'
    record = mon.recent.add(*probe.key, run, "failed", 0.0, 0.1)
    for page in (detail_page(record).decode(), index_page(mon.recent).decode()):
        assert "<script" not in page and "<img" not in page and token not in page and "\x1b" not in page
    detail = detail_page(record).decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail and "&lt;img src=x onerror=" in detail
    assert redact.REDACTED in detail


async def test_served_over_http_with_no_script_and_odd_paths_refused(faulty_monitor):
    mon = faulty_monitor
    await mon.round()
    server = start_http(make_app(mon, asyncio.get_running_loop()), "127.0.0.1", 0)
    port = server.server_address[1]
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=DEADLINE) as client:
            index = await client.get(f"{base}/")
            assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
            assert index.headers["content-security-policy"] == probes_page.CONTENT_SECURITY_POLICY
            assert "script-src" not in index.headers["content-security-policy"]  # default-src 'none' forbids it
            assert index.text.count('class="probe"') == 2 and "<script" not in index.text
            failing = await client.get(f"{base}/probes/1")
            assert failing.status_code == 200 and 'data-rule="R2"' in failing.text
            # A /probe asked for over HTTP is listed too, marked as such.
            probe = await client.get(f"{base}/probe", params={"target": "sim", "scenario": "basic"})
            assert probe.status_code == 200 and "probe_success 0.0" in probe.text
            listed = (await client.get(f"{base}/")).text
            assert listed.count('class="probe"') == 3 and "<td>/probe</td>" in listed
        for path in (b"/probes/0", b"/probes/999999", b"/probes/1/", b"/probes/1/x", b"/probes/-1", b"/probes/01",
                     b"/probes/" + b"9" * 40, b"/probes/"):
            status, body = await asyncio.to_thread(get, port, path)
            assert status == 404 and len(body.strip().splitlines()) == 1, (path, status, body)
        status, body = await asyncio.to_thread(get, port, b"/", DEADLINE, b"HEAD")
        assert status == 200 and body == b""
    finally:
        await asyncio.to_thread(server.shutdown)


def test_every_alert_of_the_runbook_points_at_the_page():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    runbook = (root / "docs" / "runbook.md").read_text()
    rules = yaml.safe_load((root / "monitors" / "rules" / "chatprobe.rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    sections = runbook.split("\n## ")[1:]
    assert len(sections) == len(alerts) == 9
    for section in sections:
        assert "monitor's `/` page" in section, section.splitlines()[0]
