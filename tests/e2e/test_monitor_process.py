"""`chatprobe monitor` as a real process: it keeps reporting a target that is down, answers /probe, refuses a
bad config with file:line, and exits 0 on SIGTERM."""
from __future__ import annotations

import signal
import subprocess

import httpx
import pytest

from .conftest import chatprobe_bin, scrape, value, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_target_down_is_reported_and_the_monitor_stays_up(monitor, refused_port):
    down = f"ws://127.0.0.1:{refused_port()}/ws"  # nothing listens there
    proc, base = monitor("--target", down, "--target-name", "down", "--interval", "1s", "--timeout", "3s")
    refused = {"target": "down", "scenario": "probe", "source": "synthetic", "result": "refused"}

    first = wait_for(lambda: value(scrape(f"{base}/metrics"), "chatprobe_connections_total", **refused), 20,
                     "connections_total{result=refused} counts the first refused probe", diagnostics=proc.tail)
    wait_for(lambda: value(scrape(f"{base}/metrics"), "chatprobe_connections_total", **refused) >= first + 2, 20,
             "refused connections keep increasing, one probe a second", diagnostics=proc.tail)
    samples = scrape(f"{base}/metrics")
    assert value(samples, "chatprobe_chats_total", target="down", outcome="error") >= 3
    assert value(samples, "chatprobe_chats_total", target="down", outcome="passed") == 0
    assert value(samples, "chatprobe_last_run_timestamp_seconds", target="down", source="synthetic") > 0
    assert value(samples, "chatprobe_last_success_timestamp_seconds", target="down") == 0

    r = httpx.get(f"{base}/probe", params={"target": "down", "scenario": "probe"}, timeout=15)
    assert r.status_code == 200, r.text
    probe = scrape_text(r.text)
    assert value(probe, "probe_success") == 0
    assert ("probe_duration_seconds", frozenset()) in probe and value(probe, "probe_duration_seconds") >= 0
    assert value(probe, "chatprobe_connections_total", result="refused") == 1  # this probe only
    assert value(probe, "chatprobe_chats_total", outcome="error") == 1

    for bad in ({"target": "ws://evil.example/ws"}, {"target": "nope"}, {},
                {"target": "down", "scenario": "../../etc/passwd"}):
        r = httpx.get(f"{base}/probe", params=bad, timeout=5)
        assert r.status_code == 400, (bad, r.text)

    assert proc.alive(), proc.tail()
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(10) == 0, proc.tail()


def test_sigint_exits_zero(monitor, agentsim):
    _, url, env = agentsim()
    proc, base = monitor("--target", url, "--jwt-secret-env", "E2E_JWT_SECRET", "--interval", "1s", env=env)
    wait_for(lambda: value(scrape(f"{base}/metrics"), "chatprobe_chats_total", outcome="passed") >= 1, 20,
             "a first passed probe", diagnostics=proc.tail)
    r = httpx.get(f"{base}/probe", params={"target": url.split("//")[1].split("/")[0]}, timeout=15)
    assert value(scrape_text(r.text), "probe_success") == 1, r.text
    proc.popen.send_signal(signal.SIGINT)
    assert proc.popen.wait(10) == 0, proc.tail()


def test_bad_config_exits_2_naming_file_and_line(tmp_path):
    cfg = tmp_path / "monitor.yaml"
    cfg.write_text("targets:\n  prod:\n    url: wss://agent.example/ws\n    auth: bearer\n")
    r = subprocess.run([chatprobe_bin(), "monitor", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2, r
    assert f"{cfg}:4" in r.stderr and "targets.prod.auth" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def scrape_text(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}
