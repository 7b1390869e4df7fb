"""Real Locust with `--chatprobe-record DIR` against agentsim, then `chatprobe check DIR`: the recording holds every
chat Locust counted, and `check` gives the same exit code and chat count as Locust's verdict and request stats; one
process, then a master with two workers (one run id for all the workers' files, so `check` judges them as the one run
the master judged). Loopback only.

Failing on the code before this file was added: every test (Locust refused the flag, "unrecognized arguments").
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.recordings import recorded_runs

from .conftest import ROOT, free_port
from .test_locust import LOCUSTFILE, SUMMARY, csv_row, finish, locust_bin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def check(directory: Path, scenario: str, out: Path) -> tuple[int, dict]:
    """`chatprobe check DIR --scenario SCENARIO --json OUT`: its exit code and the JSON report."""
    done = subprocess.run([sys.executable, "-m", "harness", "check", str(directory), "--scenario", scenario,
                           "--json", str(out), "-q"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.exists(), done.stderr[-2000:]
    return done.returncode, json.loads(out.read_text())


def test_single_process_recording_is_checked_as_locust_judged_it(procs, agentsim, tmp_path: Path):
    _, url, env = agentsim(faults=["drop:tool_completed=0.3"])
    prefix, rec = tmp_path / "single", tmp_path / "rec"
    # --stop-timeout: the users finish the chat they are in when the run time is up (Locust's default kills them
    # mid-chat: such a chat is in the recording, an abandoned chat for `check`, and not in Locust's stats).
    proc = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "4", "-r", "4", "--run-time", "4s", "--stop-timeout", "30",
        "--host", url, "--chatprobe-scenario", "probe", "--csv", str(prefix), "--exit-code-on-error", "0",
        "--chatprobe-record", str(rec),
    ], env={"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]})
    code = finish(proc)
    assert code == 1, proc.tail(60)  # the dropped tool_completed fails chats
    summary = SUMMARY.search(proc.out())
    assert summary is not None, proc.tail(60)
    chats = int(summary["chats"])
    assert chats > 0 and int(csv_row(prefix, "chat", "probe")["Request Count"]) == chats

    [(run_id, files)] = recorded_runs(rec)
    assert run_id is not None and len(files) >= 4  # a connection per user at least
    offline_code, doc = check(rec, "probe", tmp_path / "offline.json")
    [scenario] = doc["scenarios"]
    assert offline_code == code, doc["scenarios"][0]["stats"]
    assert scenario["stats"]["chats"] == chats, (scenario["stats"], summary[0])
    assert scenario["stats"]["missing_events_chats"] == int(summary["missing"])


def test_distributed_workers_record_one_run_that_check_judges_as_the_master(procs, agentsim, tmp_path: Path):
    _, url, env = agentsim(faults=["drop:tool_completed=0.3"])
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    master_port = free_port()
    rec = tmp_path / "rec"  # the same path on each worker's machine (here, one machine: one directory)
    master = procs.start("master", [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "2",
        "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port),
        "-u", "6", "-r", "6", "--run-time", "5s", "--stop-timeout", "30", "--host", url, "--chatprobe-scenario",
        "probe", "--exit-code-on-error", "0", "--chatprobe-record", str(rec),
    ], env=secret)
    workers = [procs.start(f"worker{i}", [
        locust_bin(), "-f", LOCUSTFILE, "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port),
    ], env=secret) for i in range(2)]
    code = finish(master)
    for w in workers:
        assert finish(w, 30) == 0, w.tail()
    assert code == 1, master.tail(60)
    summary = SUMMARY.search(master.out())
    assert summary is not None, master.tail(60)

    # One run (the master's run id), files from both workers (their user ids name the worker).
    [(run_id, files)] = recorded_runs(rec)
    assert run_id is not None
    assert {"w0", "w1"} <= {part for f in files for part in f.name.split("-")}, [f.name for f in files]
    offline_code, doc = check(rec, "probe", tmp_path / "offline.json")
    [scenario] = doc["scenarios"]
    assert offline_code == code
    assert scenario["stats"]["chats"] == int(summary["chats"]), (scenario["stats"], summary[0])
    assert scenario["stats"]["missing_events_chats"] == int(summary["missing"])


def test_a_record_dir_that_cannot_be_used_exits_2_with_one_line(procs, tmp_path: Path):
    proc = procs.start("locust", [locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "1", "-r", "1", "--run-time",
                                  "2s", "--host", f"ws://127.0.0.1:{free_port()}/ws", "--chatprobe-auth", "none",
                                  "--chatprobe-record", LOCUSTFILE])
    assert finish(proc, 30) == 2, proc.tail()
    errors = [line for line in proc.err().splitlines() if line.startswith("chatprobe: error:")]
    assert errors == [f"chatprobe: error: --chatprobe-record {LOCUSTFILE}: not a directory"], proc.tail()
