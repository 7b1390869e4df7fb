"""Real Locust over SSE: an AG-UI server's chats (an HTTP POST each, its answer an event stream) played by the Locust
user against agentsim in AG-UI mode, on one process and distributed (a master and a worker), recorded with
`--chatprobe-record` and judged again by `chatprobe check`: the same chats, the same verdict. Loopback only.

Failing on the code before the Locust user spoke SSE: every test (`--host http://…`: "expected a ws://, wss:// URL",
exit 2).
"""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, ProcGroup, start_on_free_port
from .test_locust import LOCUSTFILE, SUMMARY, csv_row, finish, locust_bin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]


def agui_sim(procs: ProcGroup, faults: list[str] = ()) -> tuple[str, dict[str, str]]:
    """agentsim in AG-UI mode → (its SSE URL, the env that mints its tokens)."""
    secret = secrets.token_urlsafe(32)
    argv = [sys.executable, "-m", "agentsim", "--port", "0", "--seed", "5", "--protocol", "ag-ui",
            "--think", "0.002-0.01", "--tool-latency", "0.001-0.005"]
    for f in faults:
        argv += ["--fault", f]
    proc = procs.start("agentsim", argv, env={"AGENTSIM_JWT_SECRET": secret})
    url = proc.wait_for_line(r"agentsim listening on (http://\S+)").group(1)
    return url, {"CHATPROBE_JWT_SECRET": secret}


def check(directory: Path, scenario: str, out: Path) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "harness", "check", str(directory), "--profile", "ag-ui",
                           "--scenario", scenario, "--json", str(out), "-q"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.exists(), done.stderr[-2000:]
    return done.returncode, json.loads(out.read_text())


def test_locust_judges_an_agui_server_over_sse_and_check_judges_its_recording_alike(procs, tmp_path: Path):
    url, env = agui_sim(procs)
    prefix, rec = tmp_path / "sse", tmp_path / "rec"
    proc = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "4", "-r", "4", "--run-time", "4s", "--stop-timeout", "30",
        "--host", url, "--chatprobe-profile", "ag-ui", "--chatprobe-scenario", "basic", "--csv", str(prefix),
        "--chatprobe-record", str(rec),
    ], env=env)
    code = finish(proc, 90)
    assert code == 0, proc.tail(60)
    summary = SUMMARY.search(proc.out())
    assert summary is not None and summary["verdict"] == "objectives met", proc.tail(60)
    chats = int(summary["chats"])
    row = csv_row(prefix, "chat", "basic")
    assert chats > 0 and int(row["Request Count"]) == chats == int(summary["passed"]), (row, summary[0])
    assert int(row["Failure Count"]) == 0, row
    offline_code, doc = check(rec, "basic", tmp_path / "offline.json")
    [scenario] = doc["scenarios"]
    assert offline_code == code and scenario["stats"]["chats"] == chats, scenario["stats"]


def test_a_server_that_drops_a_tool_result_fails_the_run_on_master_and_worker(procs, tmp_path: Path):
    url, env = agui_sim(procs, faults=["drop_result=0.5"])
    prefix = tmp_path / "dist"
    master, port = start_on_free_port(procs, "master", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "--headless", "--expect-workers", "1", "--expect-workers-max-wait", "30", "-u", "3", "-r", "3",
        "--run-time", "4s", "--stop-timeout", "30", "--host", url, "--chatprobe-profile", "ag-ui",
        "--chatprobe-scenario", "basic", "--csv", str(prefix), "--exit-code-on-error", "0"], env=env)
    worker = procs.start("worker", [locust_bin(), "-f", LOCUSTFILE, "--worker", "--master-host", "127.0.0.1",
                                    "--master-port", str(port)], env=env)
    code = finish(master, 90)
    assert code == 1, master.tail(60)  # the dropped TOOL_CALL_RESULT fails chats (R5)
    summary = SUMMARY.search(master.out())
    assert summary is not None and summary["verdict"] == "OBJECTIVES FAILED", master.tail(60)
    row = csv_row(prefix, "chat", "basic")
    assert int(row["Request Count"]) == int(summary["chats"]) > int(summary["passed"]), (row, summary[0])
    with open(f"{prefix}_failures.csv", newline="") as f:
        failures = f.read()
    assert "R5" in failures, failures
    finish(worker, 30)
    assert "Traceback" not in master.err() + worker.err(), master.tail() + worker.tail()


@pytest.mark.parametrize("scheme, scenario, needle", [
    ("http", "twice", "scenario 'twice': field 'parallel_chats': 2 chats in flight per user cannot be carried over SSE"),
    ("ws", "errors", "scenario 'errors': field 'dialects': written for netra; an ag-ui server cannot carry it"),
])
def test_a_scenario_the_target_cannot_carry_exits_2_with_one_line_as_run_says_it(procs, refused_port, tmp_path: Path,
                                                                                 scheme, scenario, needle):
    """FAILED on the old code: over SSE, "expected a ws://, wss:// URL"; a netra-only scenario against an AG-UI
    WebSocket ran its chats (every one failed), where `chatprobe run` exits 2."""
    if scenario == "twice":
        path = tmp_path / "twice.yaml"
        path.write_text("name: twice\nusers: 1\nchats_per_user: 2\nparallel_chats: 2\n", encoding="utf-8")
        scenario = str(path)
    proc = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "1", "-r", "1", "--run-time", "2s", "--host",
        f"{scheme}://127.0.0.1:{refused_port()}/agent", "--chatprobe-profile", "ag-ui", "--chatprobe-auth", "none",
        "--chatprobe-scenario", scenario])
    assert finish(proc, 30) == 2, proc.tail()
    errors = [line for line in proc.err().splitlines() if line.startswith("chatprobe: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.tail()
    assert "Traceback" not in proc.err(), proc.tail()
