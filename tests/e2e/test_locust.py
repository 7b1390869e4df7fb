"""Real Locust playing chatprobe scenarios against agentsim: one process, then a master with two workers whose
verdicts add up at the master, which judges the objectives and sets the exit code (and whose recording `chatprobe
check` judges as the master did); usage errors exit 2 (single
process, master, and a worker that cannot use the master's options); an unreachable host is backed off (bounded
connection attempts) and exits 3. Loopback only."""
from __future__ import annotations

import csv
import json
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.recordings import recorded_runs

from .conftest import ROOT, VENV_BIN, scrape, start_on_free_port, value, wait_for

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
    prefix = tmp_path / "single"
    proc, metrics_port = start_on_free_port(procs, "locust", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "10", "-r", "10", "--run-time", "5s",
        "--host", url, "--chatprobe-scenario", "basic", "--csv", str(prefix), "--exit-code-on-error", "0",
        "--chatprobe-metrics-port", str(port), "--chatprobe-target-name", "sim",
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


def check(directory: Path, scenario: str, out: Path) -> tuple[int, dict]:
    """`chatprobe check DIR --scenario SCENARIO --json OUT`: its exit code and the JSON report."""
    done = subprocess.run([sys.executable, "-m", "harness", "check", str(directory), "--scenario", scenario,
                           "--json", str(out), "-q"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.exists(), done.stderr[-2000:]
    return done.returncode, json.loads(out.read_text())


def test_distributed_counters_add_up_and_the_master_fails_the_objectives(procs, agentsim, tmp_path: Path):
    """The workers' verdicts add up at the master, which fails the objectives; and the workers, given
    --chatprobe-record, record one run (the master's run id, files from both) that `chatprobe check` judges as the
    master did: the same exit code, chats and chats missing events (this was a test of its own in
    test_locust_record.py, a second distributed run of the same shape)."""
    # probe: one tool call per chat, so a dropped tool_completed is exactly one chat missing events (R2, R5).
    _, url, env = agentsim(faults=["drop:tool_completed=0.3"])
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    prefix = tmp_path / "dist"
    rec = tmp_path / "rec"  # the same path on each worker's machine (here, one machine: one directory)
    # --stop-timeout: the users finish the chat they are in when the run time is up (Locust's default kills them
    # mid-chat: such a chat is in the recording, an abandoned chat for `check`, and not in Locust's stats).
    master, master_port = start_on_free_port(procs, "master", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "2",
        "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "-u", "6", "-r", "6", "--run-time", "6s", "--stop-timeout", "30", "--host", url, "--chatprobe-scenario", "probe",
        "--csv", str(prefix), "--exit-code-on-error", "0", "--chatprobe-record", str(rec),
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
    assert summary["scenario"] == "probe" and summary["verdict"] == "OBJECTIVES FAILED", summary[0]
    per_worker = dict(item.split("=") for item in (summary["workers"] or "").split(", ") if item)
    assert set(per_worker) == {"w0", "w1"} and all(int(n) > 0 for n in per_worker.values()), summary[0]
    chats, missing = int(summary["chats"]), int(summary["missing"])
    assert sum(int(n) for n in per_worker.values()) == chats

    chat = csv_row(prefix, "chat", "probe")
    assert int(chat["Request Count"]) == chats, (chat, summary[0])
    assert missing > 0 and int(chat["Failure Count"]) == missing, (chat, summary[0])
    assert "missing_events_ratio.max" in master.out(), master.tail(60)

    # One run (the master's run id), files from both workers (their user ids name the worker).
    [(run_id, files)] = recorded_runs(rec)
    assert run_id is not None
    assert {"w0", "w1"} <= {part for f in files for part in f.name.split("-")}, [f.name for f in files]
    offline_code, doc = check(rec, "probe", tmp_path / "offline.json")
    [scenario] = doc["scenarios"]
    assert offline_code == code
    assert scenario["stats"]["chats"] == chats, (scenario["stats"], summary[0])
    assert scenario["stats"]["missing_events_chats"] == missing


def test_a_server_flooding_pings_and_never_reading_ends_in_a_verdict_not_a_crash(procs, tmp_path: Path):
    """The Locust user must stop cleanly when Locust stops it mid-chat on a hostile server (once a native
    gevent abort: an fd closed under a waiting greenlet)."""
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
        "    async with serve(handler, '127.0.0.1', 0, compression=None) as server:\n"
        "        print('ready on', server.sockets[0].getsockname()[1], flush=True)\n"
        "        await asyncio.Future()\n"
        "asyncio.run(main())\n")
    flooder = procs.start("flooder", [str(VENV_BIN / "python"), str(server)])
    port = flooder.wait_for_line(r"ready on (\d+)", 10).group(1)
    proc = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "2", "-r", "2", "--run-time", "3s",
        "--host", f"ws://127.0.0.1:{port}/ws", "--chatprobe-scenario", "basic", "--chatprobe-auth", "none",
        "--exit-code-on-error", "0",
    ])
    assert finish(proc) == 1, proc.tail(60)  # objectives failed: a verdict, not a signal (134) or a hang
    assert SUMMARY.search(proc.out()) is not None, proc.tail(60)


# -- usage errors exit 2; an unreachable host is backed off and exits 3 -----------------------------------------

@pytest.mark.parametrize("flags,needle", [
    (["--host", "http://127.0.0.1:9/ws"], "--host http:// means sse, but profile 'netra' is spoken over websocket"),
    (["--chatprobe-scenario", "nosuch"], "scenario 'nosuch': no such file"),
    (["--chatprobe-profile", "nosuch"], "--chatprobe-profile 'nosuch': no such file"),
    (["--chatprobe-scenario", "knee"], "--chatprobe-scenario knee: an open-model scenario"),
])
def test_a_usage_error_exits_2_with_one_line(procs, refused_port, flags, needle):
    argv = [locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "1", "-r", "1", "--run-time", "2s",
            "--host", f"ws://127.0.0.1:{refused_port()}/ws", *flags]
    proc = procs.start("locust", argv)
    assert finish(proc, 30) == 2, proc.tail()
    errors = [line for line in proc.err().splitlines() if line.startswith("chatprobe: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.tail()
    assert "Traceback" not in proc.err(), proc.tail()


@pytest.mark.parametrize("flag,meant", [(["--chatprobe-scenaro", "basic"], "--chatprobe-scenario"),
                                        (["--chatprob-auth=none"], "--chatprobe-auth"),
                                        (["--chatprobe-metrics-prot", "9"], "--chatprobe-metrics-port")])
def test_a_misspelt_chatprobe_flag_is_one_line_naming_the_flag_meant(procs, refused_port, flag, meant):
    """FAILED on the old code: Locust's "locust: error: unrecognized arguments: --chatprobe-scenaro" and, on a line of
    its own, "Did you mean '--chatprobe-scenario'?". Now one line, as `chatprobe run` says it, exit 2; a misspelt flag
    of Locust's own stays Locust's to report."""
    argv = [locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "1", "-r", "1", "--run-time", "2s",
            "--host", f"ws://127.0.0.1:{refused_port()}/ws", *flag]
    proc = procs.start("locust", argv)
    assert finish(proc, 30) == 2, proc.tail()
    name = flag[0].partition("=")[0]
    assert [line for line in proc.err().splitlines() if line.strip()] == [
        f"chatprobe: error: unrecognized option {name} (did you mean {meant}?)"], proc.tail()
    theirs = procs.start("theirs", [*argv[:-len(flag)], "--run-tme", "2s"])
    assert finish(theirs, 30) == 2, theirs.tail()
    assert "unrecognized arguments: --run-tme" in theirs.err() and "chatprobe" not in theirs.err(), theirs.tail()


@pytest.mark.parametrize("port", ["busy", "70000", "-1"])
def test_a_metrics_port_it_cannot_listen_on_exits_2_with_one_line(procs, refused_port, port):
    """FAILED on the original code: a traceback from inside Locust's init hook (OSError, OverflowError, gaierror)
    and exit 1."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        if port == "busy":
            port = str(taken.getsockname()[1])
        proc = procs.start("locust", [
            locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "1", "-r", "1", "--run-time", "2s",
            "--host", f"ws://127.0.0.1:{refused_port()}/ws", "--chatprobe-auth", "none",
            "--chatprobe-metrics-port", port])
        assert finish(proc, 30) == 2, proc.tail()
    errors = [line for line in proc.err().splitlines() if line.startswith("chatprobe: error:")]
    assert len(errors) == 1 and f"--chatprobe-metrics-port {port} on --chatprobe-metrics-host '127.0.0.1': " \
        "cannot listen: " in errors[0], proc.tail()
    assert "Traceback" not in proc.err(), proc.tail()


def test_a_master_with_a_bad_host_exits_2_before_waiting_for_workers(procs):
    master, _ = start_on_free_port(procs, "master", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "1",
        "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "-u", "1", "-r", "1", "--run-time", "2s", "--host", "ftp://agent.example/ws"])
    assert finish(master, 20) == 2, master.tail()  # well before --expect-workers-max-wait
    assert "chatprobe: error: --host 'ftp://agent.example/ws'" in master.err(), master.tail()


def test_a_worker_that_cannot_use_the_masters_options_exits_2_and_so_does_the_master(procs, refused_port,
                                                                                       tmp_path: Path):
    """The master checks the options at its start (and at each test's); a worker can still fail them (here the
    scenario's relative path names no file on the worker's machine: another working directory). The worker exits 2,
    tells the master, and the master stops and exits 2. (Until the master loaded the options again at each test's
    start, this test removed the file after the master's start; the master now finds that itself.)"""
    (tmp_path / "mine.yaml").write_text((ROOT / "scenarios" / "probe.yaml").read_text())
    (tmp_path / "elsewhere").mkdir()
    master, master_port = start_on_free_port(procs, "master", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "1",
        "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "-u", "1", "-r", "1", "--run-time", "20s", "--host", f"ws://127.0.0.1:{refused_port()}/ws",
        "--chatprobe-scenario", "mine.yaml", "--chatprobe-auth", "none"])
    wait_for(lambda: "Waiting for workers to be ready" in master.err(), 20, "the master checked its options and waits",
             diagnostics=master.tail)
    worker = procs.start("worker", [locust_bin(), "-f", LOCUSTFILE, "--worker", "--master-host", "127.0.0.1",
                                    "--master-port", str(master_port)], cwd=tmp_path / "elsewhere")
    assert finish(worker, 30) == 2, worker.tail()
    assert "chatprobe: error: mine.yaml: cannot read" in worker.err(), worker.tail()
    assert finish(master, 30) == 2, master.tail()  # stopped, not run out to its 20 s
    assert "chatprobe: error: worker 0: mine.yaml: cannot read" in master.err(), master.tail()
    assert "Traceback" not in master.err() + worker.err()


def test_chatprobe_help_lists_the_chatprobe_flags(procs):
    """Locust prints --help before it imports the locustfile; --chatprobe-help prints it after, flags included."""
    proc = procs.start("help", [locust_bin(), "-f", LOCUSTFILE, "--chatprobe-help"])
    assert finish(proc, 30) == 0, proc.tail()
    registered = re.findall(r'add_argument\(\s*"(--chatprobe-[a-z-]+)"', (ROOT / "harness/locust_user.py").read_text())
    assert len(registered) >= 14, registered
    for flag in (*registered, "--host", "--users"):
        assert flag in proc.out(), (flag, proc.tail(80))
    # Each flag's text says what it takes: --chatprobe-auth's every mode (`none` too, as run's --auth says), and
    # --chatprobe-header's every request (the Locust user speaks SSE too, where there is no upgrade).
    flat = " ".join(proc.out().split())
    auth = flat.split("--chatprobe-auth {header,subprotocol,none} ", 1)[1].split(" --chatprobe-", 1)[0]
    assert all(mode in auth for mode in ("Authorization header", "subprotocol", "none")), auth
    header = flat.split("--chatprobe-header 'NAME: VALUE' ", 1)[1].split(" --chatprobe-", 1)[0]
    assert "upgrade" in header and "SSE" in header, header


# Two users for 4 s against a host that refuses: ~12,000 connection attempts before the backoff (0.1 s doubling
# to 5 s: about 7 per user in 4 s); the bound leaves room for a slow machine and catches any spin.
MAX_ATTEMPTS = 60


def test_an_unreachable_host_is_backed_off_and_exits_3(procs, refused_port):
    target = f"127.0.0.1:{refused_port()}"
    proc, metrics_port = start_on_free_port(procs, "locust", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "2", "-r", "2", "--run-time", "4s",
        "--host", f"ws://{target}/ws", "--chatprobe-scenario", "basic", "--chatprobe-auth", "none",
        "--chatprobe-metrics-port", str(port), "--exit-code-on-error", "0"])
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    seen = [0.0]

    def attempts_until_exit() -> bool:
        # The metrics die with the process: keep the last count read while it ran.
        if proc.alive():
            seen[0] = max(seen[0], value(scrape(url), "chatprobe_connections_total", target=target, source="load"))
        return not proc.alive()

    wait_for(attempts_until_exit, 40, "the run ends", interval=0.1, diagnostics=proc.tail)
    assert finish(proc) == 3, proc.tail(60)
    assert 2 <= seen[0] <= MAX_ATTEMPTS, (seen[0], proc.tail())
    summary = SUMMARY.search(proc.out())
    assert summary is not None and summary["verdict"] == "UNREACHABLE", proc.tail(60)
    assert int(summary["chats"]) <= MAX_ATTEMPTS, summary[0]


# A locustfile of the user's own whose ChatUser subclass sets its own wait_time, as Locust users do: the backoff
# holds all the same (it FAILED on the old code, where the backoff lived in ChatUser.wait_time: 17,000 attempts).
EAGER_LOCUSTFILE = """
from locust import constant
from harness.locust_user import ChatUser

class Eager(ChatUser):
    wait_time = constant(0)
"""


@pytest.mark.parametrize("own_wait_time", [False, True])
def test_connection_attempts_counted_at_the_socket_stay_bounded(procs, tmp_path: Path, own_wait_time: bool):
    """A raw listener that accepts and closes every connection counts the attempts exactly, after the run."""
    locustfile = LOCUSTFILE
    if own_wait_time:
        (tmp_path / "eager.py").write_text(EAGER_LOCUSTFILE)
        locustfile = str(tmp_path / "eager.py")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted = [0]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            accepted[0] += 1
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        proc = procs.start("locust", [
            locust_bin(), "-f", locustfile, "--headless", "-u", "2", "-r", "2", "--run-time", "4s",
            "--host", f"ws://127.0.0.1:{listener.getsockname()[1]}/ws", "--chatprobe-scenario", "basic",
            "--chatprobe-auth", "none", "--exit-code-on-error", "0"])
        assert finish(proc) == 3, proc.tail(60)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert 2 <= accepted[0] <= MAX_ATTEMPTS, (accepted[0], proc.tail())


def master_and_worker_chatting(procs, url: str, env: dict[str, str], prefix: Path, *extra: str):
    """A headless master (basic, 3 users, 120 s, CSV at `prefix`, `extra` flags) and its one worker, returned once
    the worker's chats are judged at the master (Locust's stats table, on stderr)."""
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    master, master_port = start_on_free_port(procs, "master", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "1",
        "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "-u", "3", "-r", "3", "--run-time", "120s", "--host", url, "--chatprobe-scenario", "basic",
        "--csv", str(prefix), *extra,
    ], env=secret)
    worker = procs.start("worker", [
        locust_bin(), "-f", LOCUSTFILE, "--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port),
    ], env=secret)
    wait_for(lambda: re.search(r"(?m)^chat\s+basic\s+[1-9]", master.err()), 60, "the master counts chats",
             diagnostics=master.tail)
    return master, worker


# FAILED before the fix: SIGTERM killed a headless master outright (-15: no summary, no exit code, no CSV) and its
# worker ran on; only a single process had the handler that ends the run as its run time's end would.
def test_sigterm_ends_a_headless_master_with_its_verdict_and_quits_its_worker(procs, agentsim, tmp_path: Path):
    import signal

    _, url, env = agentsim()
    prefix = tmp_path / "term"
    master, worker = master_and_worker_chatting(procs, url, env, prefix, "--exit-code-on-error", "0")
    master.popen.send_signal(signal.SIGTERM)
    assert finish(master) == 0, master.tail(60)
    assert finish(worker, 30) == 0, worker.tail()
    summary = SUMMARY.search(master.out())
    assert summary is not None and summary["verdict"] == "objectives met", master.tail(60)
    chat = csv_row(prefix, "chat", "basic")
    assert int(chat["Request Count"]) == int(summary["chats"]) > 0, (chat, summary[0])


def test_a_websockets_bound_in_the_environment_that_is_no_number_is_one_line_and_exit_2(procs, refused_port):
    """FAILED on the old code: websockets' own ValueError traceback out of the locustfile's import."""
    argv = [locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "1", "-r", "1", "--run-time", "2s",
            "--host", f"ws://127.0.0.1:{refused_port()}/ws"]
    proc = procs.start("locust", argv, env={"WEBSOCKETS_MAX_LINE_LENGTH": "8k"})
    assert finish(proc, 30) == 2, proc.tail()
    lines = [line for line in proc.err().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("chatprobe: error: the environment variable "
                                                   "WEBSOCKETS_MAX_LINE_LENGTH is not a whole number"), proc.tail()
    assert "8k" not in proc.err()


def test_a_worker_stopped_with_sigterm_reports_its_last_chats_before_it_quits(procs, agentsim, tmp_path: Path):
    """FAILED on the old code: the worker told the master it quit, then stopped its users, and never sent what they
    did since its last stats report: chats agentsim ran were in neither Locust's stats nor the verdict."""
    import signal

    truth = tmp_path / "truth.jsonl"
    _, url, env = agentsim(ground_truth=truth)
    prefix = tmp_path / "wterm"
    master, worker = master_and_worker_chatting(procs, url, env, prefix, "--stop-timeout", "20")
    worker.popen.send_signal(signal.SIGTERM)
    assert finish(worker, 30) == 0, worker.tail()
    assert finish(master) == 0, master.tail(60)  # its last worker quit: the test stops, judged
    summary = SUMMARY.search(master.out())
    assert summary is not None and summary["verdict"] == "objectives met", master.tail(60)
    runs = sum(json.loads(line)["kind"] == "run_started" for line in truth.read_text().splitlines())
    assert int(summary["chats"]) == runs, (summary[0], runs)
    assert int(csv_row(prefix, "chat", "basic")["Request Count"]) == runs


def test_the_web_ui_refuses_a_form_it_cannot_use_and_a_good_test_after_it_is_judged(procs, agentsim, tmp_path):
    """Web UI mode, no --autostart, driven through its HTTP API. FAILED on the old code: /swarm answered "Swarming
    started" for an http:// host, the test stopped at once with nothing said, and the process exited 2 at the end even
    after a good test from the form; then only five form fields were checked, so a --chatprobe-auth out of its choices
    started the test, a --chatprobe-metrics-port that is no number was Locust's 500 and traceback, and a header typed
    in the form (Locust gives a repeatable option filled in once as one string) was read letter by letter: the test's
    start was a usage error and the process quit; a --chatprobe-record DIR that cannot be used started the test, which
    ended the process (exit 2) at its start."""
    import signal

    import httpx

    _, url, env = agentsim()
    proc, web_port = start_on_free_port(procs, "locust", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--web-host", "127.0.0.1", "--web-port", str(port), "--host", url,
        "--chatprobe-scenario", "basic"], env={"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]})
    web = f"http://127.0.0.1:{web_port}"
    bad = url.replace("ws://", "http://")
    form = {"user_count": 2, "spawn_rate": 2, "host": url}
    not_a_dir = tmp_path / "rec"
    not_a_dir.write_text("a file\n")
    for field, given, needle in [("host", bad, "--host http:// means sse, but profile 'netra'"),
                                 ("chatprobe_record", str(not_a_dir), f"--chatprobe-record {not_a_dir}: not a directory"),
                                 ("chatprobe_auth", "cookie", "--chatprobe-auth 'cookie': one of header"),
                                 ("chatprobe_metrics_port", "80a", "--chatprobe-metrics-port '80a': not a number")]:
        answer = httpx.post(f"{web}/swarm", data={**form, field: given}, timeout=10)
        assert answer.status_code == 200 and answer.json()["success"] is False, answer.text
        assert needle in answer.json()["message"], answer.text
    assert "chatprobe: error: --host http:// means sse" in proc.err(), proc.tail()

    started = httpx.post(f"{web}/swarm", data={**form, "chatprobe_header": "X-Team: blue"}, timeout=10).json()
    assert started["success"] is True, started

    def chats() -> int:
        stats = httpx.get(f"{web}/stats/requests", timeout=10).json()["stats"]
        return sum(row["num_requests"] for row in stats if row["method"] == "chat")

    wait_for(chats, 30, "the web UI counts chats", diagnostics=proc.tail)
    assert httpx.post(f"{web}/stop", timeout=30).json()["success"] is True
    proc.popen.send_signal(signal.SIGTERM)
    assert finish(proc) == 0, proc.tail(60)
    summary = SUMMARY.search(proc.out())
    assert summary is not None and summary["verdict"] == "objectives met" and int(summary["chats"]) > 0, proc.tail()
    assert "Traceback" not in proc.err(), proc.tail(60)


def test_a_users_token_is_in_no_debug_log_line(procs, agentsim, tmp_path: Path):
    """Locust's --loglevel DEBUG shows the websockets client's lines, the upgrade request's headers among them.
    FAILED on the old code: `> Authorization: Bearer eyJ…`, each user's minted JWT, on the console and in --logfile."""
    _, url, env = agentsim()
    log = tmp_path / "locust.log"
    proc = procs.start("locust", [locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "2", "-r", "2", "--run-time",
                                  "2s", "--host", url, "--chatprobe-scenario", "basic", "--loglevel", "DEBUG",
                                  "--logfile", str(log)], env={"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]})
    finish(proc)
    said = proc.out() + proc.err() + log.read_text()
    assert "> Authorization: Bearer [REDACTED]" in log.read_text(), proc.tail(60)  # the line is there, scrubbed
    assert "Bearer eyJ" not in said and env["E2E_JWT_SECRET"] not in said
