"""The monitor's recent-probes page in a real headless Chromium: `chatprobe monitor` probing an agentsim that drops
every other tool_completed; the page loads with no console error and no script, lists the target's probes, and a
failing probe's page shows its violations and its event timeline with a size; screenshots under tests/artifacts/."""
from __future__ import annotations

import re

import httpx
import pytest

from .conftest import ROOT, chromium, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path, window="1200,900", logs={"browser": "ALL"}, page_load_timeout=30) as driver:
        yield driver


def severe(browser) -> list:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


TIMELINE_JS = """
return Array.from(document.querySelectorAll('.chat')).map(c => {
  const box = el => { const r = el.getBoundingClientRect(); return {w: r.width, h: r.height}; };
  return {tl: box(c.querySelector('.tl')),
          lanes: Array.from(c.querySelectorAll('.lane')).map(l => l.dataset.lane),
          ticks: Array.from(c.querySelectorAll('.ev')).map(box),
          bad: c.querySelectorAll('.ev.bad').length,
          rules: Array.from(c.querySelectorAll('.violations li[data-rule]')).map(li => li.dataset.rule)};
});
"""


def test_recent_probes_page_in_chromium(monitor, agentsim, browser):
    _, url, env = agentsim(faults=["drop:tool_completed=0.5"], seed=4)
    proc, base = monitor("--target", url, "--target-name", "sim", "--jwt-secret-env", "E2E_JWT_SECRET",
                         "--interval", "0.5s", "--timeout", "5s", env=env)

    def rows() -> tuple[int, int] | None:
        page = httpx.get(f"{base}/", timeout=5).text
        failing = len(re.findall(r'href="/probes/\d+"', page))
        passed = page.count('data-verdict="passed"')
        return (failing, passed) if failing >= 1 and passed >= 1 else None

    wait_for(rows, 40, "the monitor lists a failing and a passing probe", diagnostics=proc.tail)

    browser.get(f"{base}/")
    assert browser.title == "chatprobe monitor"
    assert severe(browser) == []
    assert browser.execute_script("return document.scripts.length") == 0
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0  # nothing fetched
    section = browser.find_element("css selector", 'section.target[data-target="sim"]')
    assert section.find_element("css selector", "h2").text == "sim"
    probes = section.find_elements("css selector", 'table[data-scenario="probe"] tr.probe')
    verdicts = [p.get_attribute("data-verdict") for p in probes]
    assert {"passed", "failed"} <= set(verdicts) and len(probes) <= 50, verdicts
    failing_row = next(p for p in probes if p.get_attribute("data-verdict") == "failed")
    assert "passed_ratio.min" in failing_row.text and "failed" in failing_row.text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "monitor-probes.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    failing_row.find_element("css selector", "a.detail").click()
    wait_for(lambda: re.search(r"/probes/\d+$", browser.current_url), 10, "the failing probe's page opens")
    assert severe(browser) == []
    assert browser.execute_script("return document.scripts.length") == 0
    heading = browser.find_element("css selector", "h1").text
    assert heading.startswith("sim / probe: probe "), heading
    objectives = browser.find_element("css selector", "ul.objectives").text
    assert "passed_ratio.min" in objectives
    [chat] = browser.execute_script(TIMELINE_JS)
    # A dropped tool_completed: R2 (required role missing) and R5 (the tool call never closed), its lane shown
    # empty and marked missing, the violations drawn on the events they concern.
    assert {"R2", "R5"} <= set(chat["rules"]), chat["rules"]
    assert "tool_completed" in chat["lanes"] and "agent_started" in chat["lanes"], chat["lanes"]
    assert browser.find_element("css selector", '.lane.missing[data-lane="tool_completed"]')
    assert chat["tl"]["w"] > 600 and chat["tl"]["h"] > 100, chat["tl"]
    assert len(chat["ticks"]) >= 4 and all(t["w"] > 0 and t["h"] > 0 for t in chat["ticks"]), chat["ticks"]
    assert chat["bad"] >= 1
    shot = ARTIFACTS / "monitor-probe-detail.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"\nscreenshots: {ARTIFACTS / 'monitor-probes.png'}, {shot}")
