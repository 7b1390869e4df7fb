"""The ChatEventsMissing alert end to end: agentsim drops tool_completed, `chatprobe monitor` probes it every
second, a real Prometheus scrapes the monitor and evaluates the shipped rules (windows shortened tenfold). The two
stacks (10% and 2% dropped) start together, each in its own processes and directory, and run side by side: the 2%
one is watched, from its start, for the whole observation window while the 10% one is waited on to fire."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import ProcGroup, start_agentsim, start_monitor, start_prometheus, system_binary, wait_for
from .rules import SHIPPED, shortened_rules, write_shortened_rules

pytestmark = [pytest.mark.e2e]

FACTOR = 10  # 5m windows and `for: 5m` become 30s
# Long enough for the 10% case to fire: first scrapes, then the 30 s `for`, with room for a noisy start.
OBSERVATION = 75.0
# The 2% stack is watched at least a whole window and `for` (30 s + 30 s), and at least as long as the 10% stack, started
# beside it, took to fire (plus LOUD_MARGIN), up to OBSERVATION: it was 75 s whenever the 10% one fired.
MIN_OBSERVATION = 60.0
LOUD_MARGIN = 5.0
SCENARIO = "probe10"
RATIO = "target_scenario:chatprobe_chats_missing_events_per_chats:ratio_rate5m"
CHATS = f"sum(chatprobe_chats_total{{scenario={SCENARIO!r}}})"
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


def _start(workdir: Path, procs: ProcGroup, drop: float):
    _, url, env = start_agentsim(procs, faults=[f"drop:tool_completed={drop}"], seed=4242)
    scenario = workdir / "probe10.yaml"
    scenario.write_text(PROBE10)
    mon, mon_base = start_monitor(procs, "--target", url, "--target-name", "sim", "--jwt-secret-env", "E2E_JWT_SECRET",
                                  "--scenario", str(scenario), "--interval", "1s", "--timeout", "5s", env=env)
    rules = write_shortened_rules(workdir / "rules.yml", FACTOR)
    prom, prom_base = start_prometheus(procs, [mon_base.split("//", 1)[1]], rules)

    def diagnostics() -> str:
        return "\n".join([
            f"ratio={_safe(lambda: _scalar(prom_base, RATIO))} "
            f"chats={_safe(lambda: _scalar(prom_base, f'sum(chatprobe_chats_total{{scenario={SCENARIO!r}}})'))}",
            f"alerts={_safe(lambda: _alerts(prom_base, 'ChatEventsMissing'))}",
            mon.tail(10), prom.tail(10)])

    return mon, prom_base, diagnostics


class _SilentWatch(threading.Thread):
    """The 2% stack's observation, from the moment it is up: the missing-events ratio gets a value (chats are
    flowing, so the watch is not vacuous), then ChatEventsMissing is polled every second until `observation` has passed
    since the start; a firing state seen is kept with the diagnostics of that moment."""

    def __init__(self, prom: str, diagnostics) -> None:
        super().__init__(daemon=True)
        self.prom, self.diagnostics = prom, diagnostics
        self.started = time.monotonic()
        self.observation = OBSERVATION  # shortened by `loud_fired`, never below MIN_OBSERVATION
        self.chats_before: float | None = None
        self.fired: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            wait_for(lambda: _scalar(self.prom, RATIO) is not None, 30, "the missing-events ratio is recorded",
                     diagnostics=self.diagnostics)
            self.chats_before = _scalar(self.prom, CHATS) or 0.0
            while (left := self.observation - (time.monotonic() - self.started)) > 0:
                if "firing" in [a["state"] for a in _alerts(self.prom, "ChatEventsMissing")]:
                    self.fired.append(self.diagnostics())
                    return
                time.sleep(min(1.0, left))  # wait-ok: the poll interval of a fixed observation window
        except BaseException as exc:  # pytest.fail's Failed too: re-raised in the test
            self.error = exc

    def loud_fired(self, after: float) -> None:
        """The 10% stack fired `after` seconds from its start: the watch lasts that long too (and LOUD_MARGIN more)."""
        self.observation = min(OBSERVATION, max(MIN_OBSERVATION, after + LOUD_MARGIN))


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """{drop: (monitor Proc, Prometheus URL, diagnostics, ready time)} for 10% and 2%, and the 2% stack's watch,
    started as soon as that stack is up."""
    groups: list[ProcGroup] = []
    try:
        started = {}
        for drop in (0.10, 0.02):
            group = ProcGroup(tmp_path_factory.mktemp(f"drop{drop:g}"))
            groups.append(group)
            started[drop] = (*_start(group.workdir, group, drop), time.monotonic())
        _, prom, diagnostics, _ = started[0.02]
        watch = _SilentWatch(prom, diagnostics)
        watch.start()
        yield started, watch
        watch.join(OBSERVATION + 60)
    finally:
        for group in groups:
            group.stop_all()


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
def test_alert_fires_when_10_percent_of_chats_miss_an_event(stacks):
    mon, prom, diagnostics, started = stacks[0][0.10]
    firing = wait_for(lambda: [a for a in _alerts(prom, "ChatEventsMissing") if a["state"] == "firing"],
                      OBSERVATION, "ChatEventsMissing is firing", interval=1.0, diagnostics=diagnostics)
    elapsed = time.monotonic() - started
    stacks[1].loud_fired(elapsed)
    labels = firing[0]["labels"]
    assert labels["target"] == "sim" and labels["scenario"] == SCENARIO and labels["severity"] == "page"
    assert float(firing[0]["value"]) > 0.05
    assert elapsed >= 30 * 0.9, f"fired after {elapsed:.0f}s, before its `for: 30s` could have elapsed"
    assert mon.alive(), mon.tail()


@pytest.mark.timeout(150)
def test_alert_stays_silent_when_2_percent_of_chats_miss_an_event(stacks):
    mon, prom, diagnostics, _ = stacks[0][0.02]
    watch = stacks[1]
    watch.join(OBSERVATION + 60)
    assert not watch.is_alive(), "the observation did not end"
    if watch.error is not None:
        raise watch.error
    assert not watch.fired, watch.fired[0]
    assert time.monotonic() - watch.started >= MIN_OBSERVATION
    # Every rule evaluation of the window, not only the polls: ALERTS holds a firing sample for each one that fired.
    assert not _query(prom, f'ALERTS{{alertname="ChatEventsMissing",alertstate="firing"}}[{int(OBSERVATION) + 30}s]'), \
        diagnostics()
    assert not [a for a in _alerts(prom, "ChatEventsMissing") if a["state"] == "firing"], diagnostics()
    ratio = _scalar(prom, RATIO)
    chats_after = _scalar(prom, CHATS) or 0.0
    missing = _scalar(prom, f"sum(chatprobe_chats_missing_events_total{{scenario={SCENARIO!r}}})") or 0.0
    assert chats_after - watch.chats_before >= 300, (watch.chats_before, chats_after, diagnostics())
    assert ratio is not None and ratio < 0.05, diagnostics()
    assert missing >= 1, "agentsim should have dropped some events at 2%: " + diagnostics()
    assert mon.alive(), mon.tail()
