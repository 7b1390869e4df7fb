"""The ChatEventsMissing alert end to end: agentsim drops tool_completed, `chatprobe monitor` probes it every
second, a real Prometheus scrapes the monitor and evaluates the shipped rules (windows shortened tenfold)."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .conftest import system_binary, wait_for
from .rules import SHIPPED, shortened_rules, write_shortened_rules

pytestmark = [pytest.mark.e2e]

FACTOR = 10  # 5m windows and `for: 5m` become 30s
# Long enough for the 10% case to fire: first scrapes, then the 30 s `for`, with room for a noisy start.
OBSERVATION = 75.0
SCENARIO = "probe10"
RATIO = "target_scenario:chatprobe_chats_missing_events_per_chats:ratio_rate5m"
# Ten chats a round, one tool each (a dropped tool_completed is then a missing role), one round a second.
PROBE10 = f"""\
name: {SCENARIO}
users: 2
chats_per_user: 5
parallel_chats: 5
message: "What is 2 * 3? #tools=1"
max_duration: 5s
expect:
  streaming: true
  deadline: 4s
  settle: 0.05s
"""


def _query(base: str, expr: str) -> list[dict]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
    r.raise_for_status()
    return r.json()["data"]["result"]


def _scalar(base: str, expr: str) -> float | None:
    result = _query(base, expr)
    return float(result[0]["value"][1]) if result else None


def _alerts(base: str, name: str) -> list[dict]:
    r = httpx.get(f"{base}/api/v1/alerts", timeout=5)
    r.raise_for_status()
    return [a for a in r.json()["data"]["alerts"] if a["labels"].get("alertname") == name]


def _start(tmp_path: Path, agentsim, monitor, prometheus, drop: float):
    _, url, env = agentsim(faults=[f"drop:tool_completed={drop}"], seed=4242)
    scenario = tmp_path / "probe10.yaml"
    scenario.write_text(PROBE10)
    mon, mon_base = monitor("--target", url, "--target-name", "sim", "--jwt-secret-env", "E2E_JWT_SECRET",
                            "--scenario", str(scenario), "--interval", "1s", "--timeout", "5s", env=env)
    rules = write_shortened_rules(tmp_path / "rules.yml", FACTOR)
    prom, prom_base = prometheus([mon_base.split("//", 1)[1]], rules)

    def diagnostics() -> str:
        return "\n".join([
            f"ratio={_safe(lambda: _scalar(prom_base, RATIO))} "
            f"chats={_safe(lambda: _scalar(prom_base, f'sum(chatprobe_chats_total{{scenario={SCENARIO!r}}})'))}",
            f"alerts={_safe(lambda: _alerts(prom_base, 'ChatEventsMissing'))}",
            mon.tail(10), prom.tail(10)])

    return mon, prom_base, diagnostics


def _safe(fn):
    try:
        return fn()
    except Exception as exc:  # diagnostics only
        return repr(exc)


@pytest.mark.timeout(150)
def test_generated_rules_are_valid_and_only_durations_differ(tmp_path):
    import yaml

    copy = write_shortened_rules(tmp_path / "rules.yml", FACTOR)
    r = subprocess.run([system_binary("promtool"), "check", "rules", str(copy)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    shipped = yaml.safe_load(SHIPPED.read_text())
    short = shortened_rules(FACTOR)
    for g_ship, g_short in zip(shipped["groups"], short["groups"], strict=True):
        assert g_short["interval"] == "1s"
        for a, b in zip(g_ship["rules"], g_short["rules"], strict=True):
            assert {k: v for k, v in a.items() if k not in ("expr", "for")} == \
                   {k: v for k, v in b.items() if k not in ("expr", "for")}
    events_missing = next(r for g in short["groups"] for r in g["rules"] if r.get("alert") == "ChatEventsMissing")
    assert events_missing["for"] == "30s"
    assert "[30s]" in next(r["expr"] for g in short["groups"] for r in g["rules"] if r.get("record") == RATIO)


@pytest.mark.timeout(150)
def test_alert_fires_when_10_percent_of_chats_miss_an_event(tmp_path, agentsim, monitor, prometheus):
    mon, prom, diagnostics = _start(tmp_path, agentsim, monitor, prometheus, drop=0.10)
    started = time.monotonic()
    firing = wait_for(lambda: [a for a in _alerts(prom, "ChatEventsMissing") if a["state"] == "firing"],
                      OBSERVATION, "ChatEventsMissing is firing", interval=1.0, diagnostics=diagnostics)
    elapsed = time.monotonic() - started
    labels = firing[0]["labels"]
    assert labels["target"] == "sim" and labels["scenario"] == SCENARIO and labels["severity"] == "page"
    assert float(firing[0]["value"]) > 0.05
    assert elapsed >= 30 * 0.9, f"fired after {elapsed:.0f}s, before its `for: 30s` could have elapsed"
    assert mon.alive(), mon.tail()


@pytest.mark.timeout(150)
def test_alert_stays_silent_when_2_percent_of_chats_miss_an_event(tmp_path, agentsim, monitor, prometheus):
    mon, prom, diagnostics = _start(tmp_path, agentsim, monitor, prometheus, drop=0.02)
    chats = f"sum(chatprobe_chats_total{{scenario={SCENARIO!r}}})"
    started = time.monotonic()
    # Not vacuous: the recording rule has a value and chats are flowing before the watch begins.
    wait_for(lambda: _scalar(prom, RATIO) is not None, 30, "the missing-events ratio is recorded",
             diagnostics=diagnostics)
    chats_before = _scalar(prom, chats) or 0.0
    while (left := OBSERVATION - (time.monotonic() - started)) > 0:
        states = [a["state"] for a in _alerts(prom, "ChatEventsMissing")]
        assert "firing" not in states, diagnostics()
        time.sleep(min(1.0, left))  # wait-ok: the poll interval of a fixed observation window
    assert not [a for a in _alerts(prom, "ChatEventsMissing") if a["state"] == "firing"], diagnostics()
    ratio = _scalar(prom, RATIO)
    chats_after = _scalar(prom, chats) or 0.0
    missing = _scalar(prom, f"sum(chatprobe_chats_missing_events_total{{scenario={SCENARIO!r}}})") or 0.0
    assert chats_after - chats_before >= 300, (chats_before, chats_after, diagnostics())
    assert ratio is not None and ratio < 0.05, diagnostics()
    assert missing >= 1, "agentsim should have dropped some events at 2%: " + diagnostics()
    assert mon.alive(), mon.tail()
