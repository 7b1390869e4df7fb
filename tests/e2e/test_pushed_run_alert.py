"""ChatEventsMissing for a run pushed to a Pushgateway, end to end: `chatprobe run --pushgateway` against the
embedded agentsim dropping a required event, a real Pushgateway, a real Prometheus scraping it (without
honor_labels, so the pushed job becomes `exported_job`) and evaluating the shipped rules. rate() reads nothing from a
pushed group (its totals never move between scrapes): the page reads the last pushed run."""
from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from .conftest import chatprobe_bin, wait_for
from .rules import write_shortened_rules

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

RATIO = "target_scenario:chatprobe_chats_missing_events_per_chats:ratio_last_push"


def _alerts(base: str) -> list[dict]:
    r = httpx.get(f"{base}/api/v1/alerts", timeout=5)
    r.raise_for_status()
    return [a for a in r.json()["data"]["alerts"] if a["labels"].get("alertname") == "ChatEventsMissing"]


def _query(base: str, expr: str) -> list[dict]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_a_pushed_run_missing_events_pages_and_a_good_run_clears_it(tmp_path, pushgateway, prometheus):
    _, gateway = pushgateway()
    prom, base = prometheus([gateway.split("//", 1)[1]], write_shortened_rules(tmp_path / "rules.yml", 10))

    def push(*fault: str) -> None:
        report = tmp_path / "run.json"
        r = subprocess.run([chatprobe_bin(), "run", "concurrent", "-q", "--target-name", "staging",
                            "--pushgateway", gateway, "--job", "load", "--json", str(report), *fault],
                           capture_output=True, text=True, timeout=90, env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"})
        stats = json.loads(report.read_text())["scenarios"][0]["stats"]
        if fault:
            assert r.returncode == 1 and stats["missing_events_chats"] > 0, r.stdout + r.stderr
        else:  # no chat missing an event; a first event over 2 s (R9) is a busy machine's, and fails the run alone
            assert stats["missing_events_chats"] == 0, r.stdout + r.stderr
            broken = {rule for rule, n in stats["violations"].items() if n}
            assert broken <= {"R9"} and r.returncode == (1 if broken else 0), r.stdout + r.stderr

    def diagnostics() -> str:
        return f"ratio={_query(base, RATIO)} alerts={_alerts(base)}\n{prom.tail(10)}"

    push("--sim-fault", "drop:tool_completed=1.0")
    firing = wait_for(lambda: [a for a in _alerts(base) if a["state"] == "firing"], 60,
                      "ChatEventsMissing fires for the pushed run", interval=0.5, diagnostics=diagnostics)
    labels = firing[0]["labels"]
    assert (labels["target"], labels["scenario"], labels["window"], labels["severity"]) == \
           ("staging", "concurrent", "last_push", "page"), labels
    assert float(firing[0]["value"]) > 0.05
    # The rate()-based ratio of the monitor's page leaves the pushed group out altogether.
    assert _query(base, "target_scenario:chatprobe_chats:rate5m") == []

    push()  # a good run replaces the group: the page clears
    wait_for(lambda: not _alerts(base), 60, "ChatEventsMissing clears after a good run", interval=0.5,
             diagnostics=diagnostics)
