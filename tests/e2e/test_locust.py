"""Real Locust playing chatprobe scenarios against agentsim: one process, then a master with two workers whose
verdicts add up at the master, which judges the objectives and sets the exit code. Loopback only."""
from __future__ import annotations

import csv
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, VENV_BIN, free_port, scrape, value, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LOCUSTFILE = str(ROOT / "scenarios" / "locustfile.py")
SUMMARY = re.compile(r"^(?P<scenario>\S+): (?P<chats>\d+) chats, (?P<passed>\d+) passed, (?P<missing>\d+) missing events, "
                     r"(?P<verdict>objectives met|OBJECTIVES FAILED|UNREACHABLE) in [\d.]+s"
                     r"(?: \(workers: (?P<workers>[^)]*)\))?$", re.M)


def locust_bin() -> str:
    exe = VENV_BIN / "locust"
    return str(exe if exe.exists() else ROOT / ".venv" / "bin" / "locust")


def csv_row(prefix: Path, request_type: str, name: str) -> dict[str, str]:
    with open(f"{prefix}_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["Type"] == request_type and row["Name"] == name:
                return row
    raise AssertionError(f"no {request_type} {name} row in {prefix}_stats.csv")


def finish(proc, timeout: float = 60) -> int:
    try:
        return proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.name} did not exit within {timeout:g}s\n{proc.tail()}")


def test_single_process_headless(procs, agentsim, tmp_path: Path):
    _, url, env = agentsim()
    metrics_port = free_port()
    prefix = tmp_path / "single"
    proc = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "10", "-r", "10", "--run-time", "5s",
        "--host", url, "--chatprobe-scenario", "basic", "--csv", str(prefix), "--exit-code-on-error", "0",
        "--chatprobe-metrics-port", str(metrics_port), "--chatprobe-target-name", "sim",
    ], env={"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]})

    # While it runs, its /metrics shows the chats as source="load".
    passed = {"target": "sim", "scenario": "basic", "source": "load", "outcome": "passed"}
    wait_for(lambda: value(scrape(f"http://127.0.0.1:{metrics_port}/metrics"), "chatprobe_chats_total", **passed) > 0,
             20, "chatprobe_chats_total{source=load,outcome=passed} counts chats", diagnostics=proc.tail)

    assert finish(proc) == 0, proc.tail(60)
    chat = csv_row(prefix, "chat", "basic")
    assert int(chat["Request Count"]) > 0 and int(chat["Failure Count"]) == 0, chat
    first = csv_row(prefix, "first_event", "basic")
    assert int(first["Request Count"]) == int(chat["Request Count"]), (first, chat)
    summary = SUMMARY.search(proc.out())
    assert summary is not None, proc.tail(60)
    assert summary["verdict"] == "objectives met" and int(summary["chats"]) == int(chat["Request Count"]), proc.tail()


def test_distributed_counters_add_up_and_the_master_fails_the_objectives(procs, agentsim, tmp_path: Path):
    # probe: one tool call per chat, so a dropped tool_completed is exactly one chat missing events (R2, R5).
    _, url, env = agentsim(faults=["drop:tool_completed=0.3"])
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    master_port = free_port()
    prefix = tmp_path / "dist"
    master = procs.start("master", [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "2",
        "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port),
        "-u", "6", "-r", "6", "--run-time", "6s", "--host", url, "--chatprobe-scenario", "probe",
        "--csv", str(prefix), "--exit-code-on-error", "0",
    ], env=secret)
    workers = [procs.start(f"worker{i}", [
        locust_bin(), "-f", LOCUSTFILE, "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port),
    ], env=secret) for i in range(2)]

    code = finish(master)
    for w in workers:
        assert finish(w, 20) == 0, w.tail()
    assert code == 1, master.tail(60)

    summary = SUMMARY.search(master.out())
    assert summary is not None, master.tail(60)
    assert summary["scenario"] == "probe" and summary["verdict"] == "OBJECTIVES FAILED", summary[0]
    per_worker = dict(item.split("=") for item in (summary["workers"] or "").split(", ") if item)
    assert set(per_worker) == {"w0", "w1"} and all(int(n) > 0 for n in per_worker.values()), summary[0]
    chats, missing = int(summary["chats"]), int(summary["missing"])
    assert sum(int(n) for n in per_worker.values()) == chats

    chat = csv_row(prefix, "chat", "probe")
    assert int(chat["Request Count"]) == chats, (chat, summary[0])
    assert missing > 0 and int(chat["Failure Count"]) == missing, (chat, summary[0])
    assert "missing_events_ratio.max" in master.out(), master.tail(60)


def test_a_server_flooding_pings_and_never_reading_ends_in_a_verdict_not_a_crash(procs, tmp_path: Path):
    """The Locust user must stop cleanly when Locust stops it mid-chat on a hostile server (once a native
    gevent abort: an fd closed under a waiting greenlet)."""
    port = free_port()
    server = tmp_path / "flood.py"
    server.write_text(
        "import asyncio, json, sys\n"
        "from websockets.asyncio.server import serve\n"
        "async def handler(ws):\n"
        "    await ws.send(json.dumps({'type': 'connection_established', 'data': {'user_id': 'u'}}))\n"
        "    try:\n"
        "        while True:\n"
        "            await ws.send(json.dumps({'type': 'ping'}))\n"
        "    except Exception:\n"
        "        pass\n"
        "async def main():\n"
        f"    async with serve(handler, '127.0.0.1', {port}, compression=None):\n"
        "        print('ready', flush=True)\n"
        "        await asyncio.Future()\n"
        "asyncio.run(main())\n")
    flooder = procs.start("flooder", [str(VENV_BIN / "python"), str(server)])
    wait_for(lambda: "ready" in flooder.out(), 10, "the flooding server is listening", diagnostics=flooder.tail)
    proc = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "2", "-r", "2", "--run-time", "3s",
        "--host", f"ws://127.0.0.1:{port}/ws", "--chatprobe-scenario", "basic", "--chatprobe-auth", "none",
        "--exit-code-on-error", "0",
    ])
    assert finish(proc) == 1, proc.tail(60)  # objectives failed: a verdict, not a signal (134) or a hang
    assert SUMMARY.search(proc.out()) is not None, proc.tail(60)
