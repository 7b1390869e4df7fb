"""`chatprobe run --pushgateway` against a real Pushgateway: the run's group holds its counts, and a failed run
leaves the last-success timestamp of the run before it."""
from __future__ import annotations

import subprocess
import time

import pytest

from .conftest import ROOT, chatprobe_bin, scrape, value

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def run(*args: str) -> subprocess.CompletedProcess:
    # This checkout's code, as the procs fixture runs it (the console script's install may point at another).
    return subprocess.run([chatprobe_bin(), "run", *args], capture_output=True, text=True, timeout=60,
                          env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


def test_each_pushgateway_starts_empty(pushgateway):
    """No state shared between runs: a group pushed to one gateway (which persists what it holds when it stops,
    if it has a persistence file) is not in the next one; the fixture also checks that each starts empty."""
    first_proc, first = pushgateway()
    r = run("basic", "-q", "--target-name", "agentsim", "--pushgateway", first, "--job", "empty-check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert value(scrape(f"{first}/metrics"), "chatprobe_chats_total", outcome="passed", job="empty-check") == 1
    first_proc.stop()
    _, second = pushgateway()
    assert not [k for k in scrape(f"{second}/metrics") if k[0].startswith("chatprobe_")]


def test_push_round_trip(pushgateway):
    _, base = pushgateway()
    before = time.time()
    r = run("basic", "-q", "--target-name", "agentsim", "--pushgateway", base, "--job", "ci")
    assert r.returncode == 0, r.stdout + r.stderr
    group = dict(job="ci", scenario="basic", target="agentsim", source="synthetic")
    samples = scrape(f"{base}/metrics")
    assert value(samples, "chatprobe_chats_total", outcome="passed", **group) == 1
    assert value(samples, "chatprobe_chats_total", outcome="failed", **group) == 0
    assert value(samples, "chatprobe_chats_missing_events_total", **group) == 0
    assert value(samples, "chatprobe_connections_total", result="ok", **group) == 1
    last_run = value(samples, "chatprobe_last_run_timestamp_seconds", **group)
    last_success = value(samples, "chatprobe_last_success_timestamp_seconds", **group)
    assert before <= last_run <= time.time() and last_success == last_run

    # A failing run of the same group replaces its counts but keeps the last success.
    r = run("basic", "-q", "--target-name", "agentsim", "--pushgateway", base, "--job", "ci",
            "--sim-fault", "drop:tool_completed=1.0")
    assert r.returncode == 1, r.stdout + r.stderr
    samples = scrape(f"{base}/metrics")
    assert value(samples, "chatprobe_chats_total", outcome="passed", **group) == 0
    assert value(samples, "chatprobe_chats_total", outcome="failed", **group) == 1
    assert value(samples, "chatprobe_rule_violations_total", rule="R2", **group) >= 1
    assert value(samples, "chatprobe_last_run_timestamp_seconds", **group) > last_run
    assert value(samples, "chatprobe_last_success_timestamp_seconds", **group) == last_success


def test_push_failure_warns_and_keeps_the_verdict(refused_port):
    r = run("basic", "-q", "--pushgateway", f"http://127.0.0.1:{refused_port()}", "--job", "ci")
    assert r.returncode == 0, r.stdout + r.stderr
    warnings = [line for line in r.stderr.splitlines() if "could not push" in line]
    assert len(warnings) == 1 and "Pushgateway" in warnings[0], r.stderr
    assert "Traceback" not in r.stderr


def test_an_open_model_run_pushes_its_dropped_chats(pushgateway, tmp_path):
    """docs/metrics.md: chatprobe_chats_dropped_total counts the open model's chats that fell due while
    max_in_flight chats were in flight. A pushed run's group carries them as the run counted them (its --json
    `dropped_chats`), not a 0 beside a run that dropped most of its chats."""
    import json

    _, base = pushgateway()
    scenario = tmp_path / "open.yaml"
    scenario.write_text("name: open\narrival_rate: 200\nduration: 1s\nmax_in_flight: 1\nmessage: hi\n")
    report = tmp_path / "out.json"
    r = run(str(scenario), "-q", "--target-name", "agentsim", "--pushgateway", base, "--job", "open",
            "--json", str(report))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    dropped = json.loads(report.read_text())["scenarios"][0]["stats"]["dropped_chats"]
    assert dropped > 0  # one chat in flight at a time at 200 due a second: most are dropped
    group = dict(job="open", scenario="open", target="agentsim", source="synthetic")
    assert value(scrape(f"{base}/metrics"), "chatprobe_chats_dropped_total", **group) == dropped


def test_a_gateway_that_never_answers_holds_a_run_of_many_scenarios_no_longer_than_the_push_timeout():
    """FAILED on the code before it: each scenario's push had the 10 s of the push timeout to itself, one after the
    other, so a gateway (or a proxy before it) that takes the connection and never answers held a CI run of three
    scenarios 30 s after its verdict, and 10 s more for each scenario more. The pushes share the 10 s; the groups left
    when they are up are not tried, said in one line; the verdict and exit code stand."""
    import socket
    import threading

    held: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept_and_hold() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        r = run("probe", "basic", "errors", "-q", "--pushgateway", f"http://127.0.0.1:{listener.getsockname()[1]}",
                "--job", "ci")
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for s in held:
            s.close()
    assert r.returncode == 0, r.stdout + r.stderr
    assert took < 20, f"the run took {took:.1f}s: its pushes waited 10 s each"
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, r.stderr
    assert "could not push scenario 'probe'" in warnings[0], warnings
    assert "2 scenario(s) not pushed" in warnings[1] and "'basic', 'errors'" in warnings[1], warnings
    assert "Traceback" not in r.stderr
