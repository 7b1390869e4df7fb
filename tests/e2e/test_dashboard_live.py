"""The dashboard and the rules against what chatprobe really exports: a monitor probing agentsim (some of whose chats
drop an event, so chats pass and fail) and a proxy carrying users' chats to it, scraped by a real Prometheus with
the shipped rules (windows shortened, tests/e2e/rules.py). Grafana's template variables are resolved as Grafana asks
Prometheus for them, one value of each is picked, and every panel's query is asked with that pick: a panel querying a
misspelt metric or label, or filtering on a label its metric lacks, finds nothing there, a blank panel in production
(with every variable at "All", `.*` matches a missing label too and hides it). Every rule evaluates without error."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .conftest import chatprobe_bin, query, start_agentsim, start_monitor, start_prometheus, wait_for
from .rules import write_shortened_rules
from .test_sre_own_server import start_proxy

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "chatprobe-overview.json"
FACTOR = 10
# docs/metrics.md#dashboard: with the monitor alone every panel finds its series but the proxy's front door; with the
# proxy alone every panel but "Probe freshness" (the proxy runs no probe).
NOT_THE_MONITORS = {"Proxy client connections", "Proxy refused connections by reason"}
NOT_THE_PROXYS = {"Probe freshness"}


def grafana_escape(value: str) -> str:
    """A picked value of a multi-value variable as Grafana's Prometheus data source writes it into a `=~` matcher: each
    regex metacharacter escaped, the backslash doubled for the PromQL string."""
    return re.sub(r"[$^*{}\[\]'+?.()|\\]", lambda m: "\\\\" + m.group(), value)


def label_values(prom: str, definition: str, picked: dict[str, str]) -> set[str]:
    """A `label_values(SELECTOR, LABEL)` variable as Grafana resolves it: the series API's values of LABEL among
    the series SELECTOR matches, the variables it names replaced by their picked values."""
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", definition)
    assert m, definition
    selector, label = m.groups()
    for name, val in picked.items():
        selector = selector.replace(f"${name}", grafana_escape(val))
    r = httpx.get(f"{prom}/api/v1/label/{label}/values", params={"match[]": selector, "start": time.time() - 3600,
                                                                   "end": time.time()}, timeout=5)
    r.raise_for_status()
    return set(r.json()["data"])


def interpolate(expr: str, picked: dict[str, str]) -> str:
    """The query as Grafana sends it with one value of each variable picked (regex-escaped: they are multi-value)."""
    for name, val in picked.items():
        expr = expr.replace(f"${name}", grafana_escape(val))
    return expr.replace("$__rate_interval", "20s").replace("$__range", "1h")


def blank_panels(prom: str, board: dict, picked: dict[str, str]) -> set[str]:
    return {p["title"] for p in board["panels"] if p["type"] != "row"
            and not any(query(prom, interpolate(t["expr"], picked)) for t in p["targets"])}


@pytest.mark.timeout(180)
def test_every_variable_resolves_and_every_panel_shows_the_monitors_and_the_proxys_series(procs, tmp_path):
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    _, url, secret_env = start_agentsim(procs, faults=["drop:tool_completed=0.4"], seed=5)
    _, mon = start_monitor(procs, "--target", url, "--target-name", "sim", "--jwt-secret-env", "E2E_JWT_SECRET",
                           "--scenario", "probe", "--scenario", "basic", "--interval", "1s", env=secret_env)
    # The proxy joins the client's path to its upstream's: upstream without /ws, users with it.
    proxy_url, proxy_metrics = start_proxy(procs, url.removesuffix("/ws"), "--target-name", "sim-live")
    _, prom = start_prometheus(procs, [mon.split("//", 1)[1], proxy_metrics],
                               write_shortened_rules(tmp_path / "rules.yml", FACTOR))
    wait_for(lambda: query(prom, 'chatprobe_chats_total{target="sim-live"}'), 30,
             "Prometheus scraped the proxy's series, at zero, before its users' chats")
    # Users' chats through the proxy: chatprobe run as their client, its chats judged by the proxy as they pass.
    users = subprocess.run([chatprobe_bin(), "run", "basic", "-q", "--target", f"{proxy_url}/ws", "--jwt-secret-env",
                            "E2E_JWT_SECRET"], capture_output=True, text=True, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", **secret_env,
                                "PYTHONPATH": str(ROOT)})
    assert users.returncode in (0, 1), users.stdout + users.stderr

    def outcomes(target: str) -> set[str]:
        return {s["metric"]["outcome"] for s in query(prom, f'chatprobe_chats_total{{target="{target}"}} > 0')}

    wait_for(lambda: {"passed", "failed"} <= outcomes("sim") and outcomes("sim-live")
             and query(prom, 'target_scenario:chatprobe_chats:rate5m{target="sim-live"} > 0'), 60,
             "Prometheus holds the monitor's passing and failing chats and the proxy's",
             diagnostics=lambda: f"sim: {outcomes('sim')}, sim-live: {outcomes('sim-live')}\n{users.stdout[-2000:]}")

    variables = {v["name"]: v for v in board["templating"]["list"] if v["type"] == "query"}
    assert set(variables) == {"target", "scenario", "source"}
    assert {"sim", "sim-live"} <= label_values(prom, variables["target"]["query"], {})
    assert {"synthetic", "live"} <= label_values(prom, variables["source"]["query"], {})
    assert label_values(prom, variables["scenario"]["query"], {"target": "sim"}) == {"probe", "basic"}
    assert label_values(prom, variables["scenario"]["query"], {"target": "sim-live"}) == {"live"}

    for picked, blank in (({"target": "sim", "scenario": "probe", "source": "synthetic"}, NOT_THE_MONITORS),
                          ({"target": "sim", "scenario": "basic", "source": "synthetic"}, NOT_THE_MONITORS),
                          ({"target": "sim-live", "scenario": "live", "source": "live"}, NOT_THE_PROXYS)):
        wait_for(lambda p=picked, b=blank: blank_panels(prom, board, p) == b, 30,
                 f"the panels with {picked} show series",
                 diagnostics=lambda p=picked: repr(blank_panels(prom, board, p)))

    # Every recording and alerting rule evaluates over these series without an error (a many-to-many match, a
    # label clash): Prometheus reports each rule's health.
    def rules() -> list[dict]:
        r = httpx.get(f"{prom}/api/v1/rules", timeout=5)
        r.raise_for_status()
        return [rule for g in r.json()["data"]["groups"] for rule in g["rules"]]

    evaluated = wait_for(lambda: (got := rules()) and all(r["health"] != "unknown" for r in got) and got, 30,
                         "every rule evaluated once")
    assert [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []
    # The rules' series the dashboard does not read are there too: each recording rule has a sample for the
    # monitor's (target, scenario), but the proxy's parking and the Pushgateway's `last_push` ones.
    for rule in evaluated:
        if rule["type"] == "recording" and "last_push" not in rule["name"] and "unjudged" not in rule["name"]:
            assert query(prom, f'{rule["name"]}{{target="sim",scenario="probe"}}'), rule["name"]
