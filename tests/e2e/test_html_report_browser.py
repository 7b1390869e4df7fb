"""The HTML report in a real headless Chromium: `chatprobe run --html` against the embedded agentsim with faults
on (so there are failing chats), the file opened offline; no console error, every chart drawn with a size, the
violations marked on the timelines, nothing fetched; a screenshot and the report kept under tests/artifacts/."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import sim_factory  # noqa: F401 - a fixture

from .conftest import ROOT, chatprobe_bin, chromium

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ARTIFACTS = ROOT / "tests" / "artifacts"
FAULTS = ("drop:tool_completed=0.1", "delay_first=2.2s@0.05", "after_terminal=0.05", "malformed=0.03")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    """A real run: 100 chats of `performance` and the one of `basic`, some failing by the sim's faults."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    argv = [chatprobe_bin(), "run", "performance", "basic", "--sim-seed", "5", "--html", str(out)]
    for f in FAULTS:
        argv += ["--sim-fault", f]
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=150, stdin=subprocess.DEVNULL,
                          env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"  # the faults fail it
    assert out.exists(), proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Chromium with its console log kept."""
    with chromium(tmp_path_factory.mktemp("chromium"), window="1200,900", logs={"browser": "ALL"},
                  page_load_timeout=30) as driver:
        yield driver


CHARTS_JS = """
return Array.from(document.querySelectorAll('figure.chart')).map(f => {
  const svg = f.querySelector('svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {kind: f.dataset.chart, svg: !!svg, width: box.width, height: box.height,
          marks: svg ? svg.querySelectorAll('path, line').length : 0,
          red: svg ? svg.querySelectorAll('[fill="#c62828"], [stroke="#c62828"]').length : 0,
          section: f.closest('section').id};
});
"""


def test_report_renders_in_chromium_offline(report, browser):
    browser.get(report.as_uri())
    assert browser.title == "chatprobe report"
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe

    # Self-contained: no script on the page, nothing fetched beyond the file itself.
    assert browser.execute_script("return document.scripts.length") == 0
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0

    charts = browser.execute_script(CHARTS_JS)
    for section in ("s-performance", "s-basic"):
        kinds = [c["kind"] for c in charts if c["section"] == section]
        assert kinds[:3] == ["ttfe", "over-time", "rules"], (section, kinds)
    perf = [c for c in charts if c["section"] == "s-performance"]
    timelines = [c for c in perf if c["kind"] == "timeline" and c["svg"]]
    assert 1 <= len(timelines) <= 20
    drawn = [c for c in charts if c["svg"]]
    # Every chart that has data is an SVG with a size and marks in it (the basic scenario may have no violation).
    assert len(drawn) >= 3 + len(timelines) + 2
    for c in drawn:
        assert c["width"] > 100 and c["height"] > 50 and c["marks"] > 0, c
    # The 2 s limit (a red rule) on the first-event histogram; each failing chat's violation marked in red.
    assert perf[0]["red"] > 0
    assert all(t["red"] > 0 for t in timelines), timelines
    assert "2 s limit" in browser.find_element("css selector", 'figure[data-chart="ttfe"]').text

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "html-report.png"
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1200, min(height, 2400))
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    shutil.copy(report, ARTIFACTS / "html-report.html")
    print(f"\nscreenshot: {shot}; the report: {ARTIFACTS / 'html-report.html'}")


VERDICTS_JS = """
return Array.from(document.querySelectorAll('table.overview tr')).slice(1).map(
  tr => Array.from(tr.cells).map(td => td.innerText.trim()));
"""


async def test_every_verdict_reads_right_and_server_text_stays_text_in_chromium(browser, tmp_path, refused_port,
                                                                                sim_factory):  # noqa: F811
    """What a CI publishes as the run's page, in a real browser: one scenario met, one failed by a server whose
    strings carry markup, escapes and NULs, one unreachable, one a stop came before. Each verdict reads as it is,
    the server's `<script>` and `<img>` are shown as text (no element of theirs, nothing run, nothing fetched)."""
    from harness.profiles import load_profile
    from harness.report import write_html
    from harness.results import STOPPED_BY, not_started
    from harness.runner import run_scenario
    from harness.targets import Target
    from tests.harness.reports import hostile_run
    from tests.integration.conftest import scenario

    async with sim_factory() as (_sim, target, _gt):
        good = await run_scenario(scenario(name="good", users=1, chats_per_user=2), target)
    hostile = hostile_run()
    nowhere = Target(url=f"ws://127.0.0.1:{refused_port()}/ws", profile=load_profile("netra"), name="down")
    down = await run_scenario(scenario(name="down", users=1, chats_per_user=1, connect_timeout="1s"), nowhere)
    later = not_started(scenario(name="later"), "down", STOPPED_BY["interrupted"], down.started_at)
    page = tmp_path / "report.html"
    write_html(str(page), [good, hostile, down, later])

    browser.get(page.as_uri())
    rows = browser.execute_script(VERDICTS_JS)
    assert [(r[0], r[-1].partition(" (")[0]) for r in rows] == [
        ("good", "met"), ("hostile", "FAILED"), ("down", "UNREACHABLE"), ("later", "NOT RUN")], rows
    assert browser.find_element("css selector", "h1 .verdict").text == "objectives not met"
    assert browser.execute_script("return document.scripts.length") == 0
    assert browser.execute_script("return document.images.length") == 0
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    text = browser.find_element("css selector", "section#s-hostile").text
    assert "<script>alert(1)</script>" in text and "\\x1b[2J" in text, text[:2000]
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
