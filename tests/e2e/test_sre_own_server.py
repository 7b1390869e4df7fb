"""An SRE team's adoption of chatprobe for its own agent chat server (tests/e2e/netra_server.py, not agentsim, its
faults set on its command line): `chatprobe monitor` probing it and `chatprobe proxy` in front of it, a real
Prometheus scraping them with the shipped rules (windows shortened tenfold, tests/e2e/rules.py), and the dashboard's
queries asked of that Prometheus as Grafana would.

FAILED on the code before this file, each with what was wrong:
- test_the_isolation_stat_counts_a_breach_the_first_scrape_already_saw: the monitor's first probe round runs at its
  start, before Prometheus's first scrape; a cross-talk in it makes the R8 counter's first sample 1, and
  ChatEventIsolationBreach (critical) fired while the dashboard's "Isolation breaches (R8)" stat, an increase() that
  sees nothing of a series born above zero, said 0 in green.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import ProcGroup, scrape, start_monitor, start_prometheus, value, wait_for
from .rules import write_shortened_rules

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
SERVER = Path(__file__).with_name("netra_server.py")
DASHBOARD = ROOT / "dashboards" / "chatprobe-overview.json"
FACTOR = 10  # 5m windows and `for: 5m` become 30s


def start_server(procs: ProcGroup, name: str = "server", *faults: str) -> str:
    """The team's own netra server with `faults` (its flags) → its ws URL."""
    proc = procs.start(name, [sys.executable, str(SERVER), "--port", "0", *faults])
    return proc.wait_for_line(r"netra-server listening on (ws://\S+)").group(1)


def query(prom: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def alerts(prom: str, name: str, state: str = "firing") -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/alerts", timeout=5)
    r.raise_for_status()
    return [a for a in r.json()["data"]["alerts"] if a["labels"]["alertname"] == name and a["state"] == state]


def panel_exprs(title: str) -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (panel,) = [p for p in board["panels"] if p["title"] == title]
    return [t["expr"] for t in panel["targets"]]


def as_grafana(expr: str, rate_interval: str = "20s", time_range: str = "1h") -> str:
    """The query as Grafana sends it with every variable at "All" (`.*`), for a time range of `time_range`."""
    for var in ("$target", "$scenario", "$source"):
        expr = expr.replace(var, ".*")
    return expr.replace("$__rate_interval", rate_interval).replace("$__range", time_range)


@pytest.mark.timeout(120)
def test_the_isolation_stat_counts_a_breach_the_first_scrape_already_saw(procs, tmp_path):
    url = start_server(procs, "server", "--crosstalk-every", "1")
    _, mon = start_monitor(procs, "--target", url, "--target-name", "own", "--auth", "none", "--interval", "1h")
    r8 = wait_for(lambda: value(scrape(f"{mon}/metrics"), "chatprobe_rule_violations_total", rule="R8"), 30,
                  "the monitor's first probe round counts the cross-talk")
    _, prom = start_prometheus(procs, [mon.split("//", 1)[1]], write_shortened_rules(tmp_path / "rules.yml", FACTOR))
    firing = wait_for(lambda: alerts(prom, "ChatEventIsolationBreach"), 30, "ChatEventIsolationBreach fires")
    assert firing[0]["labels"]["target"] == "own" and firing[0]["labels"]["source"] == "synthetic"
    (expr,) = panel_exprs("Isolation breaches (R8)")
    for time_range in ("5m", "1h", "7d"):
        shown = query(prom, as_grafana(expr, time_range=time_range))
        assert [float(s["value"][1]) for s in shown] == [r8], (time_range, shown)
