"""Real Locust with `--chatprobe-record DIR` against agentsim, then `chatprobe check DIR`: the recording holds every
chat Locust counted, and `check` gives the same exit code and chat count as Locust's verdict and request stats; one
process here (a master with two workers, whose files are one run that `check` judges as the master did, is
test_locust.py::test_distributed_counters_add_up_and_the_master_fails_the_objectives: one distributed run for both).
Loopback only.

Failing on the code before this file was added: every test (Locust refused the flag, "unrecognized arguments").
"""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.recordings import recorded_runs

from .test_locust import LOCUSTFILE, SUMMARY, check, csv_row, finish, locust_bin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


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


def test_a_record_dir_that_cannot_be_used_exits_2_with_one_line(procs, tmp_path: Path, refused_port):
    proc = procs.start("locust", [locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "1", "-r", "1", "--run-time",
                                  "2s", "--host", f"ws://127.0.0.1:{refused_port()}/ws", "--chatprobe-auth", "none",
                                  "--chatprobe-record", LOCUSTFILE])
    assert finish(proc, 30) == 2, proc.tail()
    errors = [line for line in proc.err().splitlines() if line.startswith("chatprobe: error:")]
    assert errors == [f"chatprobe: error: --chatprobe-record {LOCUSTFILE}: not a directory"], proc.tail()
