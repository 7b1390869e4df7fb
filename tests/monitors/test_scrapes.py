"""Real scrapes of a `chatprobe monitor` and a `chatprobe proxy` process, read as their consumers read them: promtool's
lint, OpenMetrics when the scraper asks for it (on /metrics and /probe alike), and docs/metrics.md, the rules and the
dashboard naming only metrics and labels that the scrapes carry, every exported chatprobe metric documented."""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from .procs import ROOT, agentsim_process, proxy_process
from .test_dashboard import EXTERNAL, promql_metric_names

pytestmark = pytest.mark.timeout(120)

DEADLINE = 10.0
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
CHAT_LABELS = {"target", "scenario", "source"}
PROMETHEUS_LABELS = {"job", "instance"}  # what Prometheus adds to every scraped series


def fetch(port: int, path: str, accept: str | None = None) -> tuple[int, dict[str, str], str]:
    """One GET over a raw socket, read to EOF within DEADLINE: status, headers (lower-case names), body."""
    request = f"GET {path} HTTP/1.1\r\nHost: scraper\r\nConnection: close\r\n"
    request += f"Accept: {accept}\r\n" if accept else ""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.settimeout(DEADLINE)
        sock.sendall((request + "\r\n").encode())
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body.decode()


def promtool_lint(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run scripts/install-system-deps.sh (Debian package `prometheus`)"
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


def labels_by_family(text: str) -> dict[str, set[str]]:
    """Each family of a text-format scrape (a counter under its name with _total) and the labels its samples carry."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        out.setdefault(name, set()).update(k for s in family.samples for k in s.labels if k != "le")
    return out


def sample_names(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def documented() -> dict[str, set[str]]:
    """docs/metrics.md's metrics table: each metric and the labels it says it carries."""
    out: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) < 5 or not cells[1].startswith("`"):
            continue
        names, extra = re.findall(r"`([a-z_:]+)`", cells[1]), cells[3]
        if cells[2] not in ("counter", "gauge", "histogram"):
            continue
        if extra == "none":
            labels: set[str] = set()
        elif extra.startswith("only "):
            labels = {"target", "source"} | ({"reason"} if "`reason`" in extra else set())
        else:
            labels = CHAT_LABELS | set(re.findall(r"`([a-z_]+)`", extra))
        for name in names:
            out[name] = labels
    return out


def rule_and_panel_exprs() -> list[str]:
    rules = [r for g in yaml.safe_load((ROOT / "monitors/rules/chatprobe.rules.yml").read_text())["groups"]
             for r in g["rules"]]
    board = json.loads((ROOT / "dashboards/chatprobe-overview.json").read_text())
    panels = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    variables = [v["query"] for v in board["templating"]["list"] if v.get("type") == "query"]
    return [r["expr"] for r in rules] + panels + variables


def recorded_names() -> set[str]:
    rules = yaml.safe_load((ROOT / "monitors/rules/chatprobe.rules.yml").read_text())["groups"]
    return {r["record"] for g in rules for r in g["rules"] if "record" in r}


def labels_used(expr: str) -> set[str]:
    """The label names an expression matches on or groups by."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    used = {m for sel in re.findall(r"\{([^}]*)\}", e) for m in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", sel)}
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        used |= {x.strip() for x in clause.split(",") if x.strip()}
    used |= set(re.findall(r"label_values\([^,]*,\s*(\w+)\)", e))
    return used


def start_monitor(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """`chatprobe monitor` on the embedded agentsim, `probe` and `errors` every second; returns once both have been
    probed (its own log lines say so), with its HTTP port."""
    log = tmp_path / "monitor.log"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "monitor", "--target-name", "sim", "--listen",
                             "127.0.0.1:0", "--interval", "1s", "--scenario", "probe", "--scenario", "errors"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    port, probed, seen = None, set(), ""
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline and len(probed) < 2:
        line = proc.stdout.readline()  # the monitor logs each probe: the wait ends on what it says, or on its exit
        if not line:
            break
        seen += line
        if m := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
        if m := re.search(r" / (probe|errors): ", line):
            probed.add(m.group(1))
    log.write_text(seen)
    if port is None or len(probed) < 2:
        proc.kill()
        proc.wait()
        pytest.fail(f"the monitor did not probe both scenarios:\n{seen}")
    return proc, port


@pytest.fixture
def monitor(tmp_path):
    proc, port = start_monitor(tmp_path)
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_monitor_scrapes_lint_clean_and_openmetrics_is_served_when_asked(monitor):
    for path in ("/metrics", "/probe?target=sim&scenario=probe"):
        status, headers, text = fetch(monitor, path)
        assert status == 200 and headers["content-type"].startswith("text/plain; version="), (path, headers)
        promtool_lint(text)
        # A scraper asking for OpenMetrics (Prometheus does, first) gets it on /probe as on /metrics: its content
        # type, its `# EOF`, and the same families.
        status, headers, om = fetch(monitor, path, accept=OPENMETRICS)
        assert status == 200 and headers["content-type"].startswith("application/openmetrics-text"), (path, headers)
        assert om.endswith("# EOF\n"), (path, om[-200:])
        assert {f.name for f in openmetrics_families(om)} == {f.name for f in text_string_to_metric_families(text)}


def test_docs_rules_and_dashboard_name_what_real_scrapes_carry_and_the_docs_name_every_metric(monitor, tmp_path):
    import asyncio

    _, _, metrics = fetch(monitor, "/metrics")
    _, _, probe = fetch(monitor, "/probe?target=sim&scenario=errors")

    async def proxy_scrape() -> str:
        async with agentsim_process() as upstream, proxy_process(f"{upstream}/ws", tmp_path, metrics=True) as p:
            return (await asyncio.to_thread(fetch, p.metrics_port, "/metrics"))[2]

    proxy = asyncio.run(proxy_scrape())
    promtool_lint(proxy)

    scraped = labels_by_family(metrics)
    for text in (probe, proxy):
        for name, labels in labels_by_family(text).items():
            scraped.setdefault(name, set()).update(labels)
    ours = {n for n in scraped if n.startswith(("chatprobe_", "probe_"))}
    docs = documented()
    assert sorted(ours - set(docs)) == [], "exported but not in docs/metrics.md"
    assert sorted(set(docs) - ours) == [], "in docs/metrics.md but in no scrape"
    for name in ours:
        assert scraped[name] == docs[name], (name, scraped[name], docs[name])

    samples = sample_names(metrics) | sample_names(probe) | sample_names(proxy)
    known_labels = set().union(*scraped.values()) | PROMETHEUS_LABELS | {"le"}
    for expr in rule_and_panel_exprs():
        selector = re.sub(r"label_values\((.*),\s*\w+\)", r"\1", expr)  # a dashboard variable's: its series
        missing = promql_metric_names(selector) - samples - recorded_names() - EXTERNAL
        assert not missing, f"{expr!r} selects {missing}, in no scrape"
        assert labels_used(expr) <= known_labels, f"{expr!r} uses {labels_used(expr) - known_labels}"
