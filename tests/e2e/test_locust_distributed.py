"""A distributed Locust run as a load-testing team drives it: a master with its web UI whose form changes the scenario,
and workers whose own scenario or chatprobe options differ from the master's. Real Locust master and worker processes,
agentsim, loopback only."""
from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, start_on_free_port, wait_for
from .test_locust import LOCUSTFILE, SUMMARY, csv_row, finish, locust_bin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def web_master(procs, url: str, env: dict[str, str], *extra: str):
    """A master with its web UI (no --headless) on loopback → (Proc, web base URL, master port)."""
    ports: dict[str, int] = {}

    def argv(web_port: int) -> list[str]:
        ports["master"] = free_port()  # (taken meanwhile: the master exits "address already in use", started again)
        return [locust_bin(), "-f", LOCUSTFILE, "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port",
                str(ports["master"]), "--web-host", "127.0.0.1", "--web-port", str(web_port), "--host", url, *extra]

    proc, web_port = start_on_free_port(procs, "master", argv, env=env)
    return proc, f"http://127.0.0.1:{web_port}", ports["master"]


def test_a_web_ui_master_judges_the_scenario_its_form_started(procs, agentsim, tmp_path: Path):
    """The form's scenario (probe) is what the workers play, and what the master must judge. FAILED on the old code:
    the master kept the scenario it loaded at its start (basic): "basic: N chats ... objectives met", basic's
    objectives and stages applied to probe's chats, while Locust's own stats named probe."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    prefix = tmp_path / "form"
    master, web, master_port = web_master(procs, url, secret, "--chatprobe-scenario", "basic", "--csv", str(prefix))
    worker = procs.start("worker", [locust_bin(), "-f", LOCUSTFILE, "--worker", "--master-host", "127.0.0.1",
                                    "--master-port", str(master_port)], env=secret)
    wait_for(lambda: re.search(r"1 workers connected", master.err()), 30, "the worker connects",
             diagnostics=master.tail)
    started = httpx.post(f"{web}/swarm", data={"user_count": 2, "spawn_rate": 2, "host": url,
                                               "chatprobe_scenario": "probe"}, timeout=10).json()
    assert started["success"] is True, started

    def probe_chats() -> int:
        stats = httpx.get(f"{web}/stats/requests", timeout=10).json()["stats"]
        return sum(row["num_requests"] for row in stats if row["method"] == "chat" and row["name"] == "probe")

    wait_for(probe_chats, 30, "the web UI counts probe chats", diagnostics=master.tail)
    assert httpx.post(f"{web}/stop", timeout=30).json()["success"] is True
    master.popen.send_signal(signal.SIGTERM)
    assert finish(master) == 0, master.tail(60)
    finish(worker, 30)
    summary = SUMMARY.search(master.out())
    assert summary is not None and summary["scenario"] == "probe", master.tail(60)
    assert summary["verdict"] == "objectives met", master.tail(60)
    assert int(summary["chats"]) == int(csv_row(prefix, "chat", "probe")["Request Count"]) > 0, summary[0]
