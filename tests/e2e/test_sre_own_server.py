"""An SRE team's adoption of chatprobe for its own agent chat server (tests/e2e/netra_server.py, not agentsim, its
faults set on its command line): `chatprobe monitor` probing it and `chatprobe proxy` in front of it, a real
Prometheus scraping them with the shipped rules (windows shortened tenfold, tests/e2e/rules.py), and the dashboard's
queries asked of that Prometheus as Grafana would.

FAILED on the code before this file, each with what was wrong:
- test_the_isolation_stat_counts_a_breach_the_first_scrape_already_saw: the monitor's first probe round runs at its
  start, before Prometheus's first scrape; a cross-talk in it makes the R8 counter's first sample 1, and
  ChatEventIsolationBreach (critical) fired while the dashboard's "Isolation breaches (R8)" stat, an increase() that
  sees nothing of a series born above zero, said 0 in green; the runbook's query for the page
  (`increase(chatprobe_rule_violations_total{rule="R8"}[1h])` by source) read 0 alike.
- test_users_who_leave_before_a_fast_first_event_open_no_latency_ticket: a fifth of the proxy's users closed the tab
  0.2 s after sending, before the server's first event (0.5 s, every chat passed): each counted as a chat without a
  first event within 2 s, the SLI read 80% and ChatTimeToFirstEventSlow went pending on a server that was never late.
- test_the_runbooks_probe_scrape_and_what_it_says_of_a_scrape_timeout_too_short: the runbook said a scrape_timeout
  shorter than the probe's deadline made `up` 0 and ChatProbeFailing stay silent; the monitor ends each /probe
  within the scrape timeout less 2.5 s, so `up` stays 1 and the page fires on a server that answers in 1.5 s.
- test_the_rules_leave_out_probe_scrapes_of_a_monitor_also_scraped_on_metrics: with the README's /metrics job and the
  runbook's /probe job on one monitor (its loop probes every target into /metrics anyway), the /probe counters'
  flips between 0 and 1 entered every rate(): the traffic rule read 0.43 chats/s for the loop's 0.32, and the
  missing-events ratio and its panel moved with them.
"""
from __future__ import annotations

import asyncio
import json
import math
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from .conftest import (
    ProcGroup,
    chatprobe_bin,
    query,
    scrape,
    start_monitor,
    start_on_free_port,
    start_prometheus,
    value,
    wait_for,
)
from .rules import shortened_rules, write_shortened_rules

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
SERVER = Path(__file__).with_name("netra_server.py")
DASHBOARD = ROOT / "dashboards" / "chatprobe-overview.json"
FACTOR = 10  # 5m windows and `for: 5m` become 30s


def start_server(procs: ProcGroup, name: str = "server", *faults: str) -> str:
    """The team's own netra server with `faults` (its flags) → its ws URL."""
    proc = procs.start(name, [sys.executable, str(SERVER), "--port", "0", *faults])
    return proc.wait_for_line(r"netra-server listening on (ws://\S+)").group(1)


def alerts(prom: str, name: str, state: str = "firing") -> list[dict]:
    r = httpx.get(f"{prom}/api/v1/alerts", timeout=5)
    r.raise_for_status()
    return [a for a in r.json()["data"]["alerts"] if a["labels"]["alertname"] == name and a["state"] == state]


def panel_exprs(title: str) -> list[str]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (panel,) = [p for p in board["panels"] if p["title"] == title]
    return [t["expr"] for t in panel["targets"]]


def empty_panels(prom: str) -> set[str]:
    """The dashboard's panels none of whose queries finds a series in `prom`, asked as Grafana asks them."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return {p["title"] for p in board["panels"] if p["type"] != "row"
            and not any(query(prom, as_grafana(t["expr"])) for t in p["targets"])}


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
    # The runbook's queries for this page find the breach too, by source.
    import re

    section = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8").split("## ChatEventIsolationBreach")[1]
    queries = [q for q in re.findall(r"`([^`\n]*chatprobe_rule_violations_total[^`\n]*)`", section.split("\n## ")[0])]
    assert queries
    for q in queries:
        got = {s["metric"].get("source"): float(s["value"][1]) for s in query(prom, q)}
        assert got.get("synthetic", 0) >= 1, (q, got)
    # A monitor-only setup: every panel shows something but the proxy's front door (docs/metrics.md#dashboard).
    wait_for(lambda: empty_panels(prom) == {"Proxy client connections", "Proxy refused connections by reason"}, 30,
             "every panel but the proxy's finds its series", diagnostics=lambda: repr(empty_panels(prom)))


def start_proxy(procs: ProcGroup, upstream: str, *flags: str) -> tuple[str, str]:
    """`chatprobe proxy` in front of `upstream` → (its ws URL for users, its /metrics host:port)."""
    proc, port = start_on_free_port(procs, "proxy", lambda p: [
        chatprobe_bin(), "proxy", "--upstream", upstream, "--listen", "127.0.0.1:0", "--metrics-listen",
        f"127.0.0.1:{p}", "--settle", "0.05s", *flags])
    return proc.wait_for_line(r"chatprobe proxy listening on (ws://\S+)").group(1), f"127.0.0.1:{port}"


async def a_user(url: str, leave_after: float | None, deadline: float = 10.0) -> None:
    """One real user's chat through the proxy: send a message, then read to agent_completed, or close the tab
    `leave_after` seconds later (a deliberate pause: the user's)."""
    async with asyncio.timeout(deadline), connect(url) as ws:
        await ws.recv()  # the welcome
        await ws.send(json.dumps({"type": "user_message", "payload": {"content": "What is 1 + 1?"}}))
        if leave_after is not None:
            await asyncio.sleep(leave_after)  # wait-ok: the user leaves this long after sending
            return
        while json.loads(await ws.recv())["type"] != "agent_completed":
            pass


def users(url: str, seconds: float, per_round: int = 10, leaving: int = 2, leave_after: float = 0.2,
          stop: threading.Event | None = None) -> int:
    """Rounds of `per_round` concurrent users for `seconds` (or until `stop` is set: no round starts after it),
    `leaving` of each round closing the tab early → chats."""
    async def rounds() -> int:
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            await asyncio.gather(*(a_user(url, leave_after if k < leaving else None) for k in range(per_round)))
            n += per_round
        return n

    return asyncio.run(rounds())


@pytest.mark.timeout(150)
def test_users_who_leave_before_a_fast_first_event_open_no_latency_ticket(procs, tmp_path):
    url = start_server(procs, "server", "--first-delay", "0.5")
    proxy, metrics = start_proxy(procs, url, "--target-name", "own")
    _, prom = start_prometheus(procs, [metrics], write_shortened_rules(tmp_path / "rules.yml", FACTOR))
    ratio = "target_scenario:chatprobe_time_to_first_event_within_2s_per_chats:ratio_rate5m"
    started = time.monotonic()
    chats = users(proxy, 40)  # more than the shortened 30 s window and `for`
    window = f"{int(time.monotonic() - started) + 5}s"
    assert chats >= 100
    samples = query(prom, f'{ratio}{{target="own",scenario="live"}}[{window}]')
    assert samples and len(samples[0]["values"]) >= 20, samples
    assert min(float(v) for _, v in samples[0]["values"]) == pytest.approx(1.0), samples
    assert not query(prom, f'ALERTS{{alertname="ChatTimeToFirstEventSlow"}}[{window}]')
    seen = scrape(f"http://{metrics}/metrics")
    assert value(seen, "chatprobe_chats_abandoned_before_first_event_total") == \
        value(seen, "chatprobe_chats_abandoned_total") == chats // 5
    assert value(seen, "chatprobe_chats_total") == chats
    # A proxy-only setup: every panel shows something but the probe's freshness (docs/metrics.md#dashboard).
    assert empty_panels(prom) == {"Probe freshness"}


@pytest.mark.timeout(150)
def test_a_slow_first_event_opens_the_latency_ticket_for_the_monitor_and_the_proxy_alike(procs, tmp_path):
    """The server answers every chat 2.5 s late: the ticket fires for the probe's scenario and the proxy's, each
    naming its target and scenario, and not before its (shortened) `for`; users who leave after 2 s of silence
    count as slow."""
    url = start_server(procs, "server", "--first-delay", "2.5")
    proxy, metrics = start_proxy(procs, url, "--target-name", "own-live")
    _, mon = start_monitor(procs, "--target", url, "--target-name", "own", "--auth", "none", "--interval", "1s")
    _, prom = start_prometheus(procs, [mon.split("//", 1)[1], metrics],
                               write_shortened_rules(tmp_path / "rules.yml", FACTOR))
    started = time.monotonic()
    # Users come until the ticket fired for both (it was 45 s of users, then the wait: the `for` is 30 s).
    stop = threading.Event()
    live = threading.Thread(target=users, args=(proxy, 75), kwargs={"per_round": 5, "leaving": 1, "leave_after": 2.2,
                                                                    "stop": stop}, daemon=True)
    live.start()
    try:
        firing = wait_for(lambda: len(alerts(prom, "ChatTimeToFirstEventSlow")) == 2 and
                          alerts(prom, "ChatTimeToFirstEventSlow"), 75, "the ticket fires for both")
    finally:
        stop.set()
        live.join(30)
    assert not live.is_alive(), "the users' last round did not end"
    assert time.monotonic() - started >= 30
    assert sorted((a["labels"]["target"], a["labels"]["scenario"], a["labels"]["severity"]) for a in firing) == \
        [("own", "probe", "ticket"), ("own-live", "live", "ticket")]
    seen = scrape(f"http://{metrics}/metrics")
    assert value(seen, "chatprobe_chats_abandoned_total") > 0
    assert value(seen, "chatprobe_chats_abandoned_before_first_event_total") == 0


def runbook_probe_job() -> dict:
    """The blackbox-style scrape job docs/runbook.md gives under ChatProbeFailing, as written."""
    import re

    import yaml

    text = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```yaml\n(- job_name: chatprobe-probe\n.*?)```", text, re.S)
    (job,) = yaml.safe_load(block)
    return job


@pytest.mark.timeout(150)
def test_the_runbooks_probe_scrape_and_what_it_says_of_a_scrape_timeout_too_short(procs, tmp_path):
    """The runbook's `/probe` job, scraped by a real Prometheus twice: with a scrape_timeout the probe fits in, and
    with one it does not (the monitor cuts each probe within the scrape timeout less 2.5 s, as blackbox_exporter
    does). A server whose whole chat takes 1.5 s then fails every probe: `up` stays 1 and ChatProbeFailing pages,
    as the runbook now says (it said `up` went 0 and the alert stayed silent)."""
    import yaml

    url = start_server(procs, "server", "--first-delay", "1.5")
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump({"targets": {"own": {"url": url, "auth": "none"}}, "interval": "1h"}))
    _, mon = start_monitor(procs, "--config", str(config))
    jobs = []
    for name, timeout in (("fits", "6s"), ("too-short", "3s")):
        job = runbook_probe_job()
        assert job["relabel_configs"][-1] == {"target_label": "__address__", "replacement": "monitor:9464"}
        job["relabel_configs"][-1]["replacement"] = mon.split("//", 1)[1]
        job["static_configs"] = [{"targets": ["own"]}]
        jobs.append({**job, "job_name": name, "scrape_interval": "7s", "scrape_timeout": timeout})
    _, prom = start_prometheus(procs, [], write_shortened_rules(tmp_path / "rules.yml", FACTOR), scrape_configs=jobs)
    firing = wait_for(lambda: alerts(prom, "ChatProbeFailing"), 60, "ChatProbeFailing fires")
    assert [(a["labels"]["job"], a["labels"]["instance"], a["labels"]["target"], a["labels"]["scenario"])
            for a in firing] == [("too-short", "own/probe", "own", "probe")]
    up = {s["metric"]["job"]: s["value"][1] for s in query(prom, "up")}
    assert up == {"fits": "1", "too-short": "1"}
    success = {s["metric"]["job"]: s["value"][1] for s in query(prom, "probe_success")}
    assert success == {"fits": "1", "too-short": "0"}
    (took,) = query(prom, 'probe_duration_seconds{job="too-short"}')
    # Cut at its deadline (the scrape timeout less 2.5 s: 0.5 s, short of the server's 1.5 s), ended within the scrape
    # (`up` 1). How long past its deadline the cut ends is the machine's (the monitor's loop, a busy CPU): it was held
    # to 0.5 +- 0.3 s, a wall-clock bound a loaded machine can overrun.
    assert 3 - 2.5 <= float(took["value"][1]) < 3
    section = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8").split("## ChatProbeFailing")[1].split("\n## ")[0]
    assert "`up` stays 1" in section and "scrape timeout less 2.5 s" in section


PROBE10 = """\
name: p10
users: 2
chats_per_user: 5
parallel_chats: 5
message: "What is 1 + 1?"
max_duration: 5s
expect:
  streaming: true
  deadline: 4s
  settle: 0.05s
"""


def start_monitor_on(procs: ProcGroup, name: str, url: str, scenario: Path, port: int | None = None) -> tuple[str, int]:
    """`chatprobe monitor` of `url` as target `name` on a port of its own (again the same `port` on a restart, as a
    service's fixed --listen) → (its host:port, port)."""
    argv = [chatprobe_bin(), "monitor", "--target", url, "--target-name", name, "--auth", "none", "--scenario",
            str(scenario), "--interval", "1s", "--timeout", "10s", "--listen"]
    if port is None:
        _, port = start_on_free_port(procs, f"monitor-{name}", lambda p: [*argv, f"127.0.0.1:{p}"])
    else:
        procs.start(f"monitor-{name}-again", [*argv, f"127.0.0.1:{port}"]).wait_for_line(
            r"chatprobe monitor listening on")
    return f"127.0.0.1:{port}", port


@pytest.mark.timeout(200)
def test_two_monitors_and_a_proxy_one_prometheus_a_restart_and_a_target_down(procs, tmp_path):
    """One Prometheus job scrapes two monitors (alpha: healthy; beta: drops tool_completed in 20% of chats) and a
    proxy in front of beta carrying many users. The page names each (target, scenario) on its own, never alpha while
    it is healthy; alpha's monitor restarting on its address adds its counts up in Prometheus (a counter reset), and
    alpha's server going down pages alpha too (its chats `error`), while ChatProbeDown stays silent throughout."""
    scenario = tmp_path / "p10.yaml"
    scenario.write_text(PROBE10)
    alpha_url = start_server(procs, "alpha")
    alpha_server = procs.started[-1]
    beta_url = start_server(procs, "beta", "--drop-percent", "20")
    alpha, alpha_port = start_monitor_on(procs, "alpha", alpha_url, scenario)
    beta, _ = start_monitor_on(procs, "beta", beta_url, scenario)
    proxy, proxy_metrics = start_proxy(procs, beta_url, "--target-name", "beta")
    _, prom = start_prometheus(procs, [alpha, beta, proxy_metrics],
                               write_shortened_rules(tmp_path / "rules.yml", FACTOR))
    stop_users = threading.Event()  # set once the last page fired: no more users are needed
    live = threading.Thread(target=users, args=(proxy, 60), kwargs={"leaving": 0, "stop": stop_users}, daemon=True)
    live.start()
    wait_for(lambda: query(prom, 'target_scenario:chatprobe_chats:rate5m{target="alpha"}'), 30, "alpha's rate")

    first = procs.started[[p.name for p in procs.started].index("monitor-alpha")]
    scraped_at = time.monotonic()
    counted_first = value(scrape(f"http://{alpha}/metrics"), "chatprobe_chats_total")
    first.stop()
    # Rounds (10 chats each, one a second at the most: --interval 1s) may end between that scrape and the stop, the
    # last of them maybe scraped by Prometheus: as many more as whole seconds passed, and the one under way.
    rounds_after = math.ceil(time.monotonic() - scraped_at) + 1
    start_monitor_on(procs, "alpha", alpha_url, scenario, alpha_port)
    wait_for(lambda: value(scrape(f"http://{alpha}/metrics"), "chatprobe_chats_total") >= 50, 30, "alpha probed again")
    assert not query(prom, 'ALERTS{target="alpha",alertstate="firing"}[2m]'), "alpha paged while healthy"
    counted_second = value(scrape(f"http://{alpha}/metrics"), "chatprobe_chats_total")
    # What Prometheus saw of alpha's chats: from its first scrape of the first process (which had probed before
    # Prometheus started) across the reset to now, against what the two processes counted.
    scraped = query(prom, 'chatprobe_chats_total{target="alpha"}[5m]')
    unseen = sum(float(s["values"][0][1]) for s in scraped)
    seen = float(query(prom, 'sum(increase(chatprobe_chats_total{target="alpha"}[5m]))')[0]["value"][1])
    least = counted_first + counted_second - unseen
    most = least + 10 * rounds_after
    assert least * 0.85 - 10 <= seen <= most * 1.15 + 10, (seen, counted_first, counted_second, unseen, rounds_after)

    alpha_server.stop()
    pages = {("alpha", "p10"), ("beta", "p10"), ("beta", "live")}
    firing = wait_for(lambda: (got := alerts(prom, "ChatEventsMissing")) and
                      {(a["labels"]["target"], a["labels"]["scenario"]) for a in got} == pages and got,
                      90, "ChatEventsMissing fires for alpha (down), beta's probe and beta's users")
    stop_users.set()
    assert {a["labels"]["severity"] for a in firing} == {"page"}
    assert not query(prom, 'ALERTS{alertname="ChatProbeDown",alertstate="firing"}[5m]')
    live.join(90)
    assert not live.is_alive(), "the users' last round did not end"


@pytest.mark.timeout(150)
def test_the_rules_leave_out_probe_scrapes_of_a_monitor_also_scraped_on_metrics(procs, tmp_path):
    """The README's /metrics job and the runbook's /probe job on one monitor, for the same target and scenario
    (the monitor's loop probes every configured target into /metrics whatever else scrapes it): the per-scrape
    counters of /probe flip between 0 and 1 as probes fail and pass, which rate() read as chats that never were.
    The rules and the missing-events panel read the loop's chats alone."""
    import yaml

    url = start_server(procs, "server", "--drop-percent", "20")
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump({"targets": {"own": {"url": url, "auth": "none"}}, "interval": "1s"}))
    _, mon = start_monitor(procs, "--config", str(config))
    address = mon.split("//", 1)[1]
    probe = runbook_probe_job()
    probe["relabel_configs"][-1]["replacement"] = address
    probe["static_configs"] = [{"targets": ["own"]}]
    jobs = [{"job_name": "chatprobe-monitor", "static_configs": [{"targets": [address]}]},
            {**probe, "scrape_interval": "1s", "scrape_timeout": "1s"}]
    _, prom = start_prometheus(procs, [], write_shortened_rules(tmp_path / "rules.yml", FACTOR), scrape_configs=jobs)
    flips = 'sum(changes(chatprobe_chats_total{job="chatprobe-probe",outcome="failed"}[30s])) or vector(0)'
    wait_for(lambda: float(query(prom, flips)[0]["value"][1]) >= 4, 60, "some /probe scrapes failed and passed")
    rules = {r["record"]: r["expr"] for g in shortened_rules(FACTOR)["groups"] for r in g["rules"] if "record" in r}
    (panel,) = panel_exprs("Missing-events ratio")
    ratio = ('sum by (target, scenario) (rate(chatprobe_chats_missing_events_total{job="chatprobe-monitor"}[30s]))'
             ' / sum by (target, scenario) (rate(chatprobe_chats_total{job="chatprobe-monitor"}[30s]))')
    loop = {
        rules["target_scenario:chatprobe_chats:rate5m"]:
            'sum by (target, scenario) (rate(chatprobe_chats_total{job="chatprobe-monitor"}[30s]))',
        rules["target_scenario:chatprobe_chats_missing_events_per_chats:ratio_rate5m"]: ratio,
        rules["target_scenario:chatprobe_chats_not_passed_per_chats:ratio_rate5m"]: ratio,  # every failure misses one
        as_grafana(panel).replace("[5m]", "[30s]"): ratio,
    }
    at = time.time() - 1
    for expr, own in loop.items():
        got, want = (httpx.get(f"{prom}/api/v1/query", params={"query": e, "time": at}, timeout=5).json()
                     ["data"]["result"] for e in (expr, own))
        assert [float(s["value"][1]) for s in got] == pytest.approx([float(s["value"][1]) for s in want]), expr
