"""A distributed Locust run whose workers do not all come, or do not all stay: the master says which came, which was
lost (its index, process and Locust client id, the chats it reported, whether its last stats arrived), and a worker's
own scenario given by another path to the master's file is the master's file. Real Locust master and worker
processes, agentsim, loopback only."""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from harness.recordings import recorded_runs

from .conftest import ROOT, free_port, start_agentsim, start_on_free_port, wait_for
from .test_locust import LOCUSTFILE, SUMMARY, check, csv_row, finish, locust_bin
from .test_locust_distributed import TEAM_SCENARIO, start_worker, web_master

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def waiting_master(procs, url: str, env: dict[str, str], *extra: str):
    """A headless master waiting for two workers → (Proc, master port)."""
    return start_on_free_port(procs, "master", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "2",
        "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port), "-u", "2", "-r", "2", "--run-time", "5s",
        "--host", url, *extra], env=env)


def test_a_master_that_gives_up_waiting_for_its_workers_says_who_came(procs, agentsim):
    """--expect-workers 2, one worker comes. FAILED on the old code: Locust's "Gave up waiting for workers to connect"
    and exit 1, nothing saying which worker came nor what would have run."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    master, port = waiting_master(procs, url, secret, "--expect-workers-max-wait", "6", "--chatprobe-scenario", "probe")
    worker = start_worker(procs, port, secret)
    assert finish(master, 40) == 1, master.tail()
    finish(worker, 30)
    line = re.search(r"(?m)^chatprobe: no test ran: .*$", master.err())
    assert line is not None, master.tail()
    assert ("1 of the 2 worker(s) --expect-workers asks for connected within --expect-workers-max-wait 6s; connected: "
            f"w0 (pid {worker.popen.pid} on ") in line[0], line[0]
    assert "scenario probe against 127.0.0.1:" in line[0] and line[0].endswith("nothing judged: exit 1"), line[0]
    assert "Traceback" not in master.err()


def test_sigterm_to_a_master_waiting_for_its_workers_ends_it(procs, agentsim):
    """No --expect-workers-max-wait: a `kill` (a CI job's cancel) while the master waits. FAILED on the old code: the
    master logged "Got SIGTERM signal: stopping the run" and went on waiting, for ever."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    master, port = waiting_master(procs, url, secret)
    worker = start_worker(procs, port, secret)
    wait_for(lambda: "1 workers connected" in master.err(), 30, "the worker connects", diagnostics=master.tail)
    master.popen.send_signal(signal.SIGTERM)
    assert finish(master, 20) == 1, master.tail()
    assert finish(worker, 30) == 0, worker.tail()  # told to quit by the master, not left running
    line = re.search(r"(?m)^chatprobe: no test ran: .*$", master.err())
    assert line is not None, master.tail()
    assert line[0].startswith("chatprobe: no test ran: stopped (SIGTERM) while waiting for workers, 1 of the 2 "
                              f"worker(s) --expect-workers asks for connected; connected: w0 (pid {worker.popen.pid} "), \
        line[0]


def test_a_worker_lost_during_the_test_is_named_in_the_masters_summary(procs, agentsim):
    """A worker killed outright (SIGKILL: the OOM killer, a node gone) during the test. FAILED on the old code: the
    summary said "(workers: w0=N)" as for a worker that finished, nothing saying it was lost nor that the chats it
    played after its last report are counted nowhere."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    master, port = start_on_free_port(procs, "master", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "1",
        "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "-u", "2", "-r", "2", "--run-time", "90s", "--host", url], env=secret)
    worker = start_worker(procs, port, secret)
    # Its first report with chats reached the master (Locust's stats there count them).
    wait_for(lambda: re.search(r"(?m)^chat\s+basic\s+[1-9]", master.err()), 60, "the master counts chats",
             diagnostics=master.tail)
    worker.popen.kill()
    worker.popen.wait(10)
    wait_for(lambda: "failed to send heartbeat, setting state to missing" in master.err(), 30,
             "the master marks the worker missing", diagnostics=master.tail)
    master.popen.send_signal(signal.SIGTERM)
    finish(master)
    summary = SUMMARY.search(master.out())
    assert summary is not None and int(summary["chats"]) > 0, master.tail(60)
    lost = re.search(r"(?m)^chatprobe: worker w0 \(pid (\d+) on [^,]+, id (\S+)\) was lost: its last stats never "
                     r"arrived, it stopped sending heartbeats \(Locust marked it missing\); (\d+) of its chats counted, "
                     r"up to its last report [\d.]+s into the test: what it did after that is in neither Locust's "
                     r"stats nor the verdict$", master.out())
    assert lost is not None, master.tail(60)
    assert int(lost[1]) == worker.popen.pid and lost[2] in master.err(), lost[0]  # (Locust's log names its id)
    assert int(lost[3]) == int(summary["chats"]), (lost[0], summary[0])


def test_workers_given_the_masters_scenario_and_record_dir_by_other_paths_run(procs, agentsim, tmp_path: Path):
    """Each worker started from a directory of its own, given the master's scenario file and --chatprobe-record
    directory by another path: relative from there, through a symlink, absolute. FAILED on the old code: both workers
    refused, exit 2, "--chatprobe-scenario: this worker was given another value than the master ('../team.yaml' here,
    'team.yaml' at the master)", as if they named other files; a relative path's value was compared as a string."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    (tmp_path / "team.yaml").write_text(TEAM_SCENARIO.format(message="What is 17 * 23?"))
    for name in ("one", "two", "rec"):
        (tmp_path / name).mkdir()
    (tmp_path / "two" / "team.yaml").symlink_to(tmp_path / "team.yaml")
    (tmp_path / "two" / "rec").symlink_to(tmp_path / "rec", target_is_directory=True)
    master, port = start_on_free_port(procs, "master", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "2",
        "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "-u", "2", "-r", "2", "--run-time", "4s", "--host", url, "--chatprobe-scenario", "team.yaml",
        "--chatprobe-record", "rec"], env=secret)
    one = start_worker(procs, port, secret, "--chatprobe-scenario", "../team.yaml", "--chatprobe-record",
                       str(tmp_path / "rec"), cwd=tmp_path / "one", name="one")
    two = start_worker(procs, port, secret, "--chatprobe-scenario", "team.yaml", "--chatprobe-record", "rec",
                       cwd=tmp_path / "two", name="two")
    assert finish(master) == 0, master.tail(60)
    assert finish(one, 30) == 0, one.tail()
    assert finish(two, 30) == 0, two.tail()
    summary = SUMMARY.search(master.out())
    assert summary is not None and summary["scenario"] == "team", master.tail(60)
    per_worker = dict(item.split("=") for item in (summary["workers"] or "").split(", ") if item)
    assert set(per_worker) == {"w0", "w1"} and all(int(n) > 0 for n in per_worker.values()), summary[0]
    # Both recorded into the master's directory (none in the workers' own working directories).
    assert len(list((tmp_path / "rec").rglob("*.jsonl"))) >= 2, sorted((tmp_path / "rec").rglob("*"))
    assert not (tmp_path / "one" / "rec").exists()


def test_a_worker_given_another_scenario_file_is_refused_naming_both(procs, agentsim, tmp_path: Path):
    """A worker given a scenario file of its own whose content is not the master's: refused, both named."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    (tmp_path / "team.yaml").write_text(TEAM_SCENARIO.format(message="What is 17 * 23?"))
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mine.yaml").write_text(TEAM_SCENARIO.format(message="Say hello."))
    master, port = start_on_free_port(procs, "master", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "1",
        "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "-u", "2", "-r", "2", "--run-time", "4s", "--host", url, "--chatprobe-scenario", "team.yaml"], env=secret)
    worker = start_worker(procs, port, secret, "--chatprobe-scenario", "mine.yaml", cwd=tmp_path / "w")
    assert finish(worker, 30) == 2, worker.tail()
    assert finish(master) == 2, master.tail(60)
    needle = ("--chatprobe-scenario: this worker was given another value than the master ('mine.yaml' here, "
              "'team.yaml' at the master)")
    assert needle in worker.err() and needle in master.err(), (worker.tail(), master.tail())
    assert "Traceback" not in worker.err() + master.err()


@pytest.mark.parametrize("mode", ["single", "master"])
def test_a_web_ui_process_quit_before_any_test_says_no_test_ran(procs, agentsim, mode: str):
    """The web UI opened, no test started from it, then SIGTERM (a deployment torn down). FAILED on the old code: a
    chatprobe table of 0 chats and "basic: 0 chats, 0 passed, 0 missing events, OBJECTIVES FAILED", as if the
    scenario had run and failed (and, at a master, a line saying it gave up waiting for its --expect-workers)."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    if mode == "master":
        proc, web, _ = web_master(procs, url, secret)
    else:
        proc, web_port = start_on_free_port(procs, "locust", lambda port: [
            locust_bin(), "-f", LOCUSTFILE, "--web-host", "127.0.0.1", "--web-port", str(port), "--host", url],
            env=secret)
        web = f"http://127.0.0.1:{web_port}"
    wait_for(lambda: httpx.get(web, timeout=5).status_code == 200, 30, "the web UI answers", diagnostics=proc.tail)
    proc.popen.send_signal(signal.SIGTERM)
    assert finish(proc, 30) == 1, proc.tail()
    assert ("chatprobe: no test ran: it quit before a test was started; scenario basic against 127.0.0.1:"
            in proc.err()), proc.tail()
    assert SUMMARY.search(proc.out()) is None and "expect-workers" not in proc.err(), proc.tail()


def test_processes_forks_workers_whose_verdicts_metrics_and_recordings_add_up(procs, agentsim, tmp_path: Path):
    """Locust's --processes 2 (a master forking two workers on this machine): the verdict merges both workers' chats
    (the summary, the CSV and `chatprobe check` of the one record directory both wrote hold one count), and their
    recordings share the directory without clashing (each file named by its worker's user)."""
    _, url, env = agentsim(faults=["drop:tool_completed=0.3"])
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    prefix, rec = tmp_path / "forked", tmp_path / "rec"
    proc = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "--processes", "2", "-u", "4", "-r", "4", "--run-time", "5s",
        "--stop-timeout", "30", "--host", url, "--chatprobe-scenario", "probe", "--csv", str(prefix),
        "--chatprobe-record", str(rec), "--exit-code-on-error", "0"],
        env=secret)
    assert finish(proc) == 1, proc.tail(60)  # (dropped tool_completed events: probe's objectives fail)
    summary = SUMMARY.search(proc.out())
    assert summary is not None and summary["verdict"] == "OBJECTIVES FAILED", proc.tail(60)
    per_worker = dict(item.split("=") for item in (summary["workers"] or "").split(", ") if item)
    assert set(per_worker) == {"w0", "w1"} and all(int(n) > 0 for n in per_worker.values()), summary[0]
    chats, missing = int(summary["chats"]), int(summary["missing"])
    row = csv_row(prefix, "chat", "probe")
    assert int(row["Request Count"]) == chats and int(row["Failure Count"]) == missing > 0, (row, summary[0])
    [(run_id, files)] = recorded_runs(rec)
    assert {"w0", "w1"} <= {part for f in files for part in f.name.split("-")}, [f.name for f in files]
    code, doc = check(rec, "probe", tmp_path / "offline.json")
    [scenario] = doc["scenarios"]
    assert code == 1 and scenario["stats"]["chats"] == chats, (scenario["stats"], summary[0])
    assert scenario["stats"]["missing_events_chats"] == missing


def test_locusts_html_report_shows_the_failures_readably_and_no_credential_of_the_host(procs, tmp_path: Path):
    """A target URL with a credential in its query (`?token=…`, as some gateways take it) and chats that fail. FAILED
    on the old code: Locust's --html report, and the web UI's report, showed the URL whole as its "Target Host", the
    token with it. The failures keep chatprobe's reasons, readable, in the report and the CSV."""
    _, url, env = start_agentsim(procs, faults=["drop:tool_completed=0.5"])
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    token = "q5ecr3t-" + "7" * 24
    host = f"{url}?token={token}&team=blue"
    prefix, report = tmp_path / "rep", tmp_path / "rep.html"
    proc = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "2", "-r", "2", "--run-time", "3s", "--host", host,
        "--chatprobe-scenario", "probe", "--csv", str(prefix), "--html", str(report)], env=secret)
    assert finish(proc) == 1, proc.tail(60)
    text = report.read_text(encoding="utf-8")
    assert token not in text and "?token=[REDACTED]\\u0026team=blue" in text, re.findall(r'"host": "[^"]*"', text)
    assert "ChatNotPassed(\\u0027failed: R2 required, R5 pairing, R7 seq (missing tool_completed)\\u0027)" in text
    failures = (tmp_path / "rep_failures.csv").read_text(encoding="utf-8")
    assert "ChatNotPassed('failed: R2 required, R5 pairing, R7 seq (missing tool_completed)')" in failures, failures
    assert token not in failures + proc.out() + proc.err()

    # The web UI's report of a test started there, alike.
    web_proc, web_port = start_on_free_port(procs, "web", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--web-host", "127.0.0.1", "--web-port", str(port), "--host", host,
        "--chatprobe-scenario", "probe"], env=secret)
    web = f"http://127.0.0.1:{web_port}"
    wait_for(lambda: httpx.get(web, timeout=5).status_code == 200, 30, "the web UI answers", diagnostics=web_proc.tail)
    assert httpx.post(f"{web}/swarm", data={"user_count": 1, "spawn_rate": 1, "host": host}, timeout=10).json()["success"]
    wait_for(lambda: any(r["method"] == "chat" and r["num_requests"] > 0
                         for r in httpx.get(f"{web}/stats/requests", timeout=10).json()["stats"]),
             30, "the web UI counts chats", diagnostics=web_proc.tail)
    for query in ("", "?download=1"):
        page = httpx.get(f"{web}/stats/report{query}", timeout=30)
        assert page.status_code == 200 and "window.templateArgs" in page.text, page.text[:300]
        assert token not in page.text and "?token=[REDACTED]" in page.text, re.findall(r'"host": "[^"]*"', page.text)


@pytest.mark.parametrize("name,text,needle", [
    ("team.conf", "headless = true\n# the team's scenario\nchatprobe-scenario = probx\n",
     "chatprobe: error: team.conf:3 (chatprobe-scenario): scenario 'probx': no such file"),
    ("pyproject.toml", '[tool.locust]\nheadless = true\nchatprobe-profile = "nope"\n',
     "chatprobe: error: pyproject.toml:3 (chatprobe-profile): --chatprobe-profile 'nope': no such file"),
], ids=["config", "pyproject"])
def test_a_bad_chatprobe_option_in_locusts_config_file_names_the_file_and_line(procs, tmp_path: Path, name, text,
                                                                               needle):
    """Locust's own config file (--config FILE, or pyproject.toml's [tool.locust] found in the working directory)
    giving a chatprobe option that cannot be used. FAILED on the old code: the message named a flag nobody typed (or
    none), never the file nor its line."""
    (tmp_path / name).write_text(text)
    config = ["--config", name] if name.endswith(".conf") else []
    proc = procs.start("locust", [locust_bin(), "-f", LOCUSTFILE, *config, "--host", "ws://127.0.0.1:9/ws"])
    assert finish(proc, 30) == 2, proc.tail()
    lines = [line for line in proc.err().splitlines() if line.startswith("chatprobe: error:")]
    assert len(lines) == 1 and lines[0].startswith(needle), proc.tail()
    assert "Traceback" not in proc.err()


def test_sigterm_to_a_waiting_master_whose_output_pipe_is_gone_still_ends_it(tmp_path: Path):
    """`locust --master … | head` or a CI runner that stopped reading: the master's stderr is a pipe nobody reads
    any more when SIGTERM comes while it waits for its workers. FAILED before this fix: the line saying no test ran
    raised BrokenPipeError in the signal's handler, which then never quit: the master waited on, for ever."""
    read_end, write_end = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen([
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "2", "--master-bind-host",
        "127.0.0.1", "--master-bind-port", str(free_port()), "-u", "1", "--run-time", "3s", "--host",
        "ws://127.0.0.1:9/ws"], stdout=write_end, stderr=write_end, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path,
        start_new_session=True)
    os.close(write_end)
    try:
        seen, deadline = b"", time.monotonic() + 40
        while b"Waiting for workers to be ready, 0 of 2 connected" not in seen:  # (Locust says it after 5 s)
            left = deadline - time.monotonic()
            assert left > 0 and proc.poll() is None, seen.decode(errors="replace")[-2000:]
            if select.select([read_end], [], [], left)[0]:
                seen += os.read(read_end, 65536)
        os.close(read_end)  # nobody reads its output any more
        read_end = -1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 1
    finally:
        if read_end >= 0:
            os.close(read_end)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
