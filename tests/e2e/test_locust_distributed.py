"""A distributed Locust run as a load-testing team drives it: a master with its web UI whose form changes the scenario,
and workers whose own scenario or chatprobe options differ from the master's. Real Locust master and worker processes,
agentsim, loopback only."""
from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import httpx
import pytest

from .conftest import free_port, scrape, start_on_free_port, value, wait_for
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


def headless_master(procs, url: str, env: dict[str, str], *extra: str):
    """A headless master on loopback waiting for one worker (2 users, 6 s) → (Proc, master port)."""
    return start_on_free_port(procs, "master", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "1",
        "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "-u", "2", "-r", "2", "--run-time", "6s", "--host", url, *extra], env=env)


def start_worker(procs, master_port: int, env: dict[str, str], *extra: str, cwd: Path | None = None,
                 name: str = "worker"):
    return procs.start(name, [locust_bin(), "-f", LOCUSTFILE, "--worker", "--master-host", "127.0.0.1",
                                  "--master-port", str(master_port), *extra], env=env, cwd=cwd)


TEAM_SCENARIO = """name: team
users: 1
chats_per_user: 1
message: "{message}"
objectives:
  passed_ratio: {{min: 1.0}}
"""


def test_a_worker_whose_scenario_file_differs_from_the_masters_is_refused(procs, agentsim, tmp_path: Path):
    """The same relative path on two machines (here: two working directories) holds two different files. FAILED on
    the old code: the worker played its own file's chats and the master judged them by its own file, exit 0, nothing
    said."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    # The master's working directory is the test's own (procs'), the worker's one of its own.
    (tmp_path / "team.yaml").write_text(TEAM_SCENARIO.format(message="What is 17 * 23?"))
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "team.yaml").write_text(TEAM_SCENARIO.format(message="Say hello."))
    master, master_port = headless_master(procs, url, secret, "--chatprobe-scenario", "team.yaml")
    worker = start_worker(procs, master_port, secret, cwd=tmp_path / "worker")
    assert finish(worker, 30) == 2, worker.tail()
    assert finish(master) == 2, master.tail(60)
    needle = ("--chatprobe-scenario team.yaml: the scenario this worker loaded differs from the master's (another file "
              "at that path, or another chatprobe version)")
    assert needle in worker.err() and needle in master.err(), (worker.tail(), master.tail())
    assert "Traceback" not in worker.err() + master.err()


@pytest.mark.parametrize("flags,needle", [
    (["--chatprobe-scenario", "probe"], "--chatprobe-scenario: this worker was given another value than the master "
                                        "('probe' here, 'basic' at the master)"),
    (["--chatprobe-header", "X-Team: s3cr3t-value"], "--chatprobe-header: this worker was given another value than "
                                                     "the master; a worker plays"),
], ids=["scenario", "header"])
def test_a_worker_given_other_chatprobe_options_than_the_master_is_refused(procs, agentsim, flags, needle):
    """Locust sets the master's options over a worker's own. FAILED on the old code: the worker given --chatprobe-scenario
    probe played basic (the master's) and nothing said so, exit 0. A header's value is a secret: never shown."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    master, master_port = headless_master(procs, url, secret, "--chatprobe-scenario", "basic")
    worker = start_worker(procs, master_port, secret, *flags, "--chatprobe-metrics-port", "0")
    assert finish(worker, 30) == 2, worker.tail()
    assert finish(master) == 2, master.tail(60)
    assert needle in worker.err() and needle in master.err(), (worker.tail(), master.tail())
    assert "s3cr3t" not in worker.out() + worker.err() + master.out() + master.err()


def test_a_worker_given_the_masters_own_options_and_its_own_metrics_port_runs(procs, agentsim, tmp_path: Path):
    """The same command line on every machine (as a deployment's template gives it), a worker's metrics port its own."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    same = ["--chatprobe-scenario", "probe", "--chatprobe-header", "X-Team: blue"]
    master, master_port = headless_master(procs, url, secret, *same)
    worker = start_worker(procs, master_port, secret, *same, "--chatprobe-metrics-port", "0",
                          "--chatprobe-metrics-host", "127.0.0.1")
    assert finish(master) == 0, master.tail(60)
    assert finish(worker, 30) == 0, worker.tail()
    summary = SUMMARY.search(master.out())
    assert summary is not None and summary["scenario"] == "probe" and int(summary["chats"]) > 0, master.tail(60)


def test_a_worker_that_joins_a_running_test_plays_its_share_and_is_judged(procs, agentsim, tmp_path: Path):
    """Locust gives a worker that joins a running test its users at once, with the master's answer to its hello: its
    test starts before its locustfile's init listeners ran. FAILED on the old code: "AssertionError: the chatprobe
    locustfile's init listener has not run" out of the test start, and Locust ends a process whose init raised:
    the late worker exited 1 at once, the master marked it missing, its users were never played. Then (FAILED before
    its fix) its init read its --chatprobe-metrics-port from options the master's had replaced: it served no /metrics."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    prefix = tmp_path / "late"
    master, master_port = start_on_free_port(procs, "master", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "1",
        "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "-u", "4", "-r", "4", "--run-time", "60s", "--host", url, "--csv", str(prefix)], env=secret)
    first = start_worker(procs, master_port, secret)
    wait_for(lambda: re.search(r"(?m)^chat\s+basic\s+[1-9]", master.err()), 60, "the master counts chats",
             diagnostics=master.tail)
    metrics = free_port()  # the late worker's: index 1, so --chatprobe-metrics-port one below
    late = start_worker(procs, master_port, secret, "--chatprobe-metrics-port", str(metrics - 1), name="late")
    wait_for(lambda: "2 workers connected" in master.err(), 30, "the late worker connects", diagnostics=master.tail)
    # Its share of the users plays (its own /metrics counts their chats), or it exited.
    passed = {"scenario": "basic", "source": "load", "outcome": "passed"}

    def late_chats() -> bool:
        if late.popen.poll() is not None:
            return True
        return value(scrape(f"http://127.0.0.1:{metrics}/metrics"), "chatprobe_chats_total", **passed) > 0

    wait_for(late_chats, 30, "the late worker's chats", diagnostics=late.tail)
    assert late.popen.poll() is None, late.tail()
    master.popen.send_signal(signal.SIGTERM)
    assert finish(master) == 0, master.tail(60)
    assert finish(first, 30) == 0, first.tail()
    assert finish(late, 30) == 0, late.tail()
    assert "Traceback" not in late.err(), late.tail(60)
    summary = SUMMARY.search(master.out())
    assert summary is not None and summary["verdict"] == "objectives met", master.tail(60)
    per_worker = dict(item.split("=") for item in (summary["workers"] or "").split(", ") if item)
    assert set(per_worker) == {"w0", "w1"} and int(per_worker["w1"]) > 0, summary[0]
    assert int(csv_row(prefix, "chat", "basic")["Request Count"]) == int(summary["chats"]), summary[0]


OWN_LOCUSTFILE = '''
from harness.locust_user import ChatUser

class Mine(ChatUser):  # no LoadTestShape: -u, -r and --run-time, as most locustfiles run
    pass
'''


def html_chats(report: Path) -> int:
    """The `chat` requests in Locust's HTML report (its stats, as the page's script data)."""
    found = re.search(r'"method": "chat", [^{}]*?"name": "basic", [^{}]*?"num_requests": (\d+)',
                      report.read_text(encoding="utf-8"))
    assert found is not None, "no chat row in the HTML report"
    return int(found[1])


@pytest.mark.parametrize("mode", ["single", "master"])
def test_sigterm_to_a_headless_run_without_a_shape_ends_it_with_one_count_everywhere(procs, agentsim, tmp_path: Path,
                                                                                     mode: str):
    """A locustfile of one's own without a shape class: Locust's own SIGTERM handler shuts the run down. FAILED on the
    old code (single): the process judged before it stopped its users (265 chats in the verdict, 410 in the CSV, more
    printed) and wrote no --html report. A master (its workers stopped first, its report written as its last worker
    quit) held already: kept as the same check of the distributed path."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    (tmp_path / "mine.py").write_text(OWN_LOCUSTFILE)
    prefix, report = tmp_path / "own", tmp_path / "reports" / "own.html"
    common = ["-u", "4", "-r", "4", "--run-time", "120s", "--host", url, "--csv", str(prefix), "--html", str(report),
              "--stop-timeout", "20"]
    if mode == "single":
        proc = procs.start("locust", [locust_bin(), "-f", str(tmp_path / "mine.py"), "--headless", *common], env=secret)
        worker = None
    else:
        proc, master_port = start_on_free_port(procs, "master", lambda port: [
            locust_bin(), "-f", str(tmp_path / "mine.py"), "--master", "--headless", "--expect-workers", "1",
            "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
            *common], env=secret)
        worker = procs.start("worker", [locust_bin(), "-f", str(tmp_path / "mine.py"), "--worker", "--master-host",
                                        "127.0.0.1", "--master-port", str(master_port)], env=secret)
    wait_for(lambda: re.search(r"(?m)^chat\s+basic\s+[1-9]", proc.err()), 60, "Locust counts chats",
             diagnostics=proc.tail)
    proc.popen.send_signal(signal.SIGTERM)
    assert finish(proc) == 0, proc.tail(60)
    if worker is not None:
        assert finish(worker, 30) == 0, worker.tail()
    summary = SUMMARY.search(proc.out())
    assert summary is not None and summary["verdict"] == "objectives met", proc.tail(60)
    chats = int(summary["chats"])
    assert int(csv_row(prefix, "chat", "basic")["Request Count"]) == chats > 0, (summary[0], proc.tail())
    assert report.exists(), proc.tail(60)
    assert html_chats(report) == chats, summary[0]


def test_reset_stats_resets_the_verdicts_tally_as_locusts_stats(procs, agentsim, tmp_path: Path):
    """--reset-stats (Locust's stats from the moment every user is spawned, the ramp-up left out) and the web UI's
    Reset Stats: the verdict judges the chats that Locust's stats count. FAILED on the old code: 1028 chats in the
    verdict, 817 in the CSV (the ramp-up's chats judged, not counted); the web UI's reset alike."""
    _, url, env = agentsim()
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    prefix = tmp_path / "reset"
    proc = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "6", "-r", "3", "--run-time", "5s", "--reset-stats",
        "--host", url, "--csv", str(prefix)], env=secret)
    assert finish(proc) == 0, proc.tail(60)
    assert "Resetting stats" in proc.err(), proc.tail()
    summary = SUMMARY.search(proc.out())
    assert summary is not None and summary["verdict"] == "objectives met", proc.tail(60)
    assert int(csv_row(prefix, "chat", "basic")["Request Count"]) == int(summary["chats"]) > 0, summary[0]

    # The web UI's button, on a master (whose verdict merges its workers' tallies).
    prefix = tmp_path / "button"
    master, web, master_port = web_master(procs, url, secret, "--csv", str(prefix))
    worker = start_worker(procs, master_port, secret, name="worker2")
    wait_for(lambda: "1 workers connected" in master.err(), 30, "the worker connects", diagnostics=master.tail)
    assert httpx.post(f"{web}/swarm", data={"user_count": 2, "spawn_rate": 2, "host": url}, timeout=10).json()["success"]

    def chats() -> int:
        stats = httpx.get(f"{web}/stats/requests", timeout=10).json()["stats"]
        return sum(row["num_requests"] for row in stats if row["method"] == "chat")

    wait_for(chats, 30, "the web UI counts chats", diagnostics=master.tail)
    assert httpx.post(f"{web}/stats/reset", timeout=10).text == "ok"
    wait_for(chats, 30, "the web UI counts chats after the reset", diagnostics=master.tail)
    assert httpx.post(f"{web}/stop", timeout=30).json()["success"] is True
    master.popen.send_signal(signal.SIGTERM)
    assert finish(master) == 0, master.tail(60)
    finish(worker, 30)
    summary = SUMMARY.search(master.out())
    assert summary is not None and summary["verdict"] == "objectives met", master.tail(60)
    assert int(csv_row(prefix, "chat", "basic")["Request Count"]) == int(summary["chats"]) > 0, summary[0]


SLOW_START_LOCUSTFILE = '''
from gevent import monkey

from harness.locust_user import ChatUser

# wait-ok: a locustfile whose imports hold the process for seconds without yielding to gevent (heavy libraries; on a
# loaded machine, Locust's and chatprobe's own start-up)
monkey.get_original("time", "sleep")(3)


class Mine(ChatUser):
    pass
'''


def test_a_slow_start_up_does_not_shorten_the_run_time(procs, agentsim, tmp_path: Path):
    """gevent's timers count from its loop's last clock reading, taken before the start-up's work: Locust's --run-time
    timer fired early by as long as that took. FAILED on the old code: a 3 s run ended after 0.3 s, 0 chats,
    OBJECTIVES FAILED, exit 1 (as short e2e runs did now and then on a loaded machine)."""
    _, url, env = agentsim()
    (tmp_path / "slow.py").write_text(SLOW_START_LOCUSTFILE)
    proc = procs.start("locust", [locust_bin(), "-f", str(tmp_path / "slow.py"), "--headless", "-u", "2", "-r", "2",
                                  "--run-time", "3s", "--host", url],
                       env={"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]})
    assert finish(proc) == 0, proc.tail(60)
    summary = SUMMARY.search(proc.out())
    assert summary is not None and summary["verdict"] == "objectives met" and int(summary["chats"]) > 0, proc.tail()
    elapsed = float(re.search(r" in ([\d.]+)s", summary[0])[1])
    assert elapsed >= 2.5, summary[0]


def test_a_worker_that_joins_a_running_test_with_another_scenario_file_is_refused(procs, agentsim, tmp_path: Path):
    """A worker that joins a running test gets the master's options inside Locust's runner constructor, before
    `environment.runner` is set. FAILED on the old code: its checks were skipped there, so a late worker whose
    team.yaml (same relative path) says another thing played its own file's chats, judged by the master's: exit 0,
    nothing said (the same worker from the start was refused). Now it is refused as that one is: exit 2 at both, and
    no chat of its own is played (it sends no chat to the server)."""
    truth = tmp_path / "truth.jsonl"
    _, url, env = agentsim(ground_truth=truth)
    secret = {"CHATPROBE_JWT_SECRET": env["E2E_JWT_SECRET"]}
    (tmp_path / "team.yaml").write_text(TEAM_SCENARIO.format(message="What is 17 * 23?"))
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "team.yaml").write_text(TEAM_SCENARIO.format(message="Say hello."))
    master, master_port = start_on_free_port(procs, "master", lambda port: [
        locust_bin(), "-f", LOCUSTFILE, "--master", "--headless", "--expect-workers", "1",
        "--expect-workers-max-wait", "30", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "-u", "4", "-r", "4", "--run-time", "60s", "--host", url, "--chatprobe-scenario", "team.yaml"], env=secret)
    first = start_worker(procs, master_port, secret)
    wait_for(lambda: re.search(r"(?m)^chat\s+team\s+[1-9]", master.err()), 60, "the master counts chats",
             diagnostics=master.tail)
    late = start_worker(procs, master_port, secret, cwd=tmp_path / "worker", name="late")
    assert finish(late, 30) == 2, late.tail()
    assert finish(master) == 2, master.tail(60)
    finish(first, 30)
    needle = ("--chatprobe-scenario team.yaml: the scenario this worker loaded differs from the master's (another file "
              "at that path, or another chatprobe version)")
    assert needle in late.err() and f"worker 1: {needle}" in master.err(), (late.tail(), master.tail())
    assert "Traceback" not in late.err() + master.err()
    # The late worker opened no connection: every user the server saw is the first worker's (one process's prefix).
    users = [json.loads(line).get("user_id") for line in truth.read_text().splitlines()]
    assert len({u.split("-w")[0] for u in users if u}) == 1, sorted(set(users))
