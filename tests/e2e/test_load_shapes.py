"""Load shapes end to end, measured by the server: `chatprobe run` starts every chat an arrival rate makes due and none
before its time, and one scenario file of stages and think time gives the same load under `chatprobe run` and under
real Locust (the same users at the peak, the same think time). What is asserted follows from the schedule, never from
how fast this machine is today. agentsim in its own process, loopback only."""
from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import chatprobe_bin, wait_for
from .test_locust import LOCUSTFILE, SUMMARY, csv_row, finish, locust_bin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]


def start_sim(procs, tmp_path: Path, name: str, secret: str = "e2e-load-shapes-secret-0123456789abcdef"):
    gt = tmp_path / f"{name}.jsonl"
    proc = procs.start(name, [sys.executable, "-m", "agentsim", "--port", "0", "--seed", "3", "--think", "0.002-0.01",
                              "--tool-latency", "0.001-0.005", "--ground-truth", str(gt)],
                       env={"AGENTSIM_JWT_SECRET": secret})
    url = proc.wait_for_line(r"agentsim listening on (ws://\S+)").group(1)
    return url, gt, {"CHATPROBE_JWT_SECRET": secret}


def records(gt: Path, kind: str) -> list[dict]:
    return [r for line in gt.read_text().splitlines() if line.strip() and (r := json.loads(line))["kind"] == kind]


def run_chatprobe(procs, args: list[str], env: dict[str, str], timeout: float = 90) -> int:
    proc = procs.start("chatprobe", [chatprobe_bin(), "run", *args], env={**env, "NO_COLOR": "1"})
    try:
        return proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chatprobe run did not end within {timeout:g}s\n{proc.tail()}")


def test_an_arrival_rate_starts_every_chat_due_none_before_its_time(procs, tmp_path: Path):
    """40 chats/s for 10 s, seen by the server: the 400 chats due all run (max_in_flight is above what can be in
    flight, 40/s times a chat's 30 s deadline), none began before it was due (the k-th run the server saw started no
    earlier than the k-th due time), and the stage's account adds up: the chats begun on time (the achieved rate times
    the stage's length) and those begun late are the 400 due. How many began on time is this machine's speed under
    whatever else it runs, not the feature (BENCHMARKS.md has what one process sustains); a late chat's wait counts
    in its first-event time (tests/integration/test_load_shapes.py). The limits are wide for the same reason. (It ran
    22 s, 880 chats, from when it measured the achieved rate over a 20 s window; nothing asserted needs that long.)"""
    url, gt, env = start_sim(procs, tmp_path, "sim")
    scenario = tmp_path / "rate.yaml"
    scenario.write_text("name: rate\narrival_rate: 40\nduration: 10s\nmax_in_flight: 2000\nmessage: hi\n"
                        "expect: {settle: 20ms, deadline: 30s, first_event_limit: 30s}\n"
                        "objectives: {time_to_first_event: {p95: 30s}}\n")
    report = tmp_path / "rate.json"
    assert run_chatprobe(procs, [str(scenario), "--target", url, "--json", str(report)], env) == 0
    doc = json.loads(report.read_text())["scenarios"][0]
    assert doc["stats"]["chats"] == 400 and doc["stats"]["outcomes"]["passed"] == 400, doc["stats"]
    [stage] = doc["stages"]
    assert doc["stats"]["dropped_chats"] == stage["dropped_chats"] == 0 and stage["asked_rate"] == 40, stage
    assert round(stage["achieved_rate"] * 10) + stage["late_chats"] == 400, stage
    starts = sorted(r["t"] for r in records(gt, "run_started"))
    assert len(starts) == 400
    # The k-th chat is due (k + 0.5) / 40 s after the start (Shape.arrivals); 5 ms for the two clocks' reads.
    early = [(k, t - doc["started_at"]) for k, t in enumerate(starts) if t < doc["started_at"] + (k + 0.5) / 40 - 0.005]
    assert not early, early[:5]


STAGED = """name: staged
stages:
  - {duration: 3s, users: 6}
  - {duration: 4s, users: 6, ramp: false}
  - {duration: 2s, users: 0}
think_time: {min: 150ms, max: 250ms}
message: hi
expect: {settle: 20ms, deadline: 5s}
"""
THINK_MIN = 0.15


def load_seen(gt: Path) -> tuple[list[float], list[float], list[float]]:
    """From the server's records: when each connection opened and closed (sorted), and the shortest gap between two
    runs started on one connection (a user's chat, its settle and its think time)."""
    opened = sorted(r["t"] for r in records(gt, "connection_opened"))
    closed = sorted(r["t"] for r in records(gt, "connection_closed"))
    by_connection: dict[str, list[float]] = {}
    for r in records(gt, "run_started"):
        by_connection.setdefault(r["connection_id"], []).append(r["t"])
    gaps = [b - a for times in by_connection.values() for a, b in itertools.pairwise(sorted(times))]
    return opened, closed, gaps


def test_one_scenario_file_gives_the_same_load_under_chatprobe_run_and_locust(procs, tmp_path: Path):
    """The same stages and think time under `chatprobe run` and real Locust, seen by the server: six users at the
    peak in both, each user thinking at least the scenario's minimum between two chats, every chat counted by the
    engine the server saw; `chatprobe run`'s users come and go no sooner than the stages say (its report gives the
    start). How many chats fit in a stage, and how late a user comes, is this machine's speed, not the shape."""
    scenario = tmp_path / "staged.yaml"
    scenario.write_text(STAGED)

    url, gt_run, env = start_sim(procs, tmp_path, "sim-run")
    report = tmp_path / "staged.json"
    assert run_chatprobe(procs, [str(scenario), "--target", url, "--json", str(report)], env) == 0
    doc = json.loads(report.read_text())["scenarios"][0]
    assert [s["label"] for s in doc["stages"]] == ["0→6 users", "6 users", "6→0 users"]

    url, gt_locust, env = start_sim(procs, tmp_path, "sim-locust")
    prefix = tmp_path / "locust"
    locust = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "--host", url, "--chatprobe-scenario", str(scenario),
        "--csv", str(prefix), "--exit-code-on-error", "0"], env=env)
    assert finish(locust, 60) == 0, locust.tail(60)
    summary = SUMMARY.search(locust.out())
    assert summary is not None and summary["verdict"] == "objectives met", locust.tail(60)
    assert "staged by stage" in locust.out() and "0→6 users" in locust.out(), locust.tail(60)
    # Locust's shape ticks once a second, up the first ramp to 6 users, then down: which counts a tick lands on
    # depends on when it runs.
    wanted = [int(n) for n in re.findall(r"Shape test updating to (\d+) users", locust.out() + locust.err())]
    peak = wanted.index(6) if 6 in wanted else -1
    assert peak >= 0 and wanted[:peak + 1] == sorted(wanted[:peak + 1]) and \
        wanted[peak:] == sorted(wanted[peak:], reverse=True), wanted

    for gt in (gt_run, gt_locust):  # the server writes a connection's end as it notices the engine left
        wait_for(lambda gt=gt: len(records(gt, "connection_closed")) >= 6, 10, f"{gt.name}: every connection closed")
        opened, closed, gaps = load_seen(gt)
        assert len(opened) == len(closed) == 6, (gt.name, opened, closed)
        assert gaps and min(gaps) >= THINK_MIN, (gt.name, min(gaps))
    # Every chat counted is one the server ran; Locust stops the users a ramp down removes mid-chat (no --stop-timeout),
    # its count leaves those out.
    assert sum(s["chats"] for s in doc["stages"]) == doc["stats"]["chats"] == len(records(gt_run, "run_started"))
    assert 0 < int(csv_row(prefix, "chat", "staged")["Request Count"]) <= len(records(gt_locust, "run_started"))
    # chatprobe run: 0 -> 6 users over 3 s, one more each time the line passes a whole user (after 0, 0.5, ... 2.5 s);
    # 6 -> 0 over the last 2 s, one fewer every third of a second, each leaving after the chat it is in.
    opened, closed, _ = load_seen(gt_run)
    start = doc["started_at"]
    assert all(t >= start + k * 0.5 - 0.005 for k, t in enumerate(opened)), [t - start for t in opened]
    assert all(t >= start + 7 + (k + 1) / 3 - 0.005 for k, t in enumerate(closed)), [t - start for t in closed]


def test_the_builtin_knee_scenario_finds_where_the_first_event_slo_breaks(procs, tmp_path: Path):
    report = tmp_path / "knee.json"
    proc = procs.start("chatprobe", [chatprobe_bin(), "run", "knee", "--json", str(report)], env={"NO_COLOR": "1"})
    try:
        code = proc.popen.wait(120)  # its stages last 32 s and max_duration is 55 s: a hang, not a slow machine
    except subprocess.TimeoutExpired:
        pytest.fail(f"chatprobe run knee did not end within 120s\n{proc.tail()}")
    assert code == 0, proc.tail(60)
    doc = json.loads(report.read_text())["scenarios"][0]
    stages, knee = doc["stages"], doc["knee"]
    # One Python process playing client and embedded server cannot hold 5,000 chats/s: the knee is found.
    assert knee is not None, proc.tail(60)
    broke = stages[knee["stage"] - 1]
    assert knee["rate"] == broke["asked_rate"] and knee["limit"] == 2.0
    assert broke["time_to_first_event"]["p95"] > 2.0 or broke["dropped_chats"] > 0.05 * (broke["chats"] + broke["dropped_chats"])
    for held in stages[:knee["stage"] - 1]:  # every stage before it held the SLO, with every chat judged
        assert held["time_to_first_event"]["p95"] <= 2.0
        assert held["chats"] + held["dropped_chats"] == round(held["asked_rate"] * 4)
    assert f"the knee: first-event p95 <= 2 s broke in stage {knee['stage']} at {knee['rate']:g} chats/s" in proc.out()


def test_an_open_model_scenario_under_locust_is_a_usage_error(procs, tmp_path: Path):
    scenario = tmp_path / "open.yaml"
    scenario.write_text("name: open\narrival_rate: 5\nduration: 5s\n")
    locust = procs.start("locust", [locust_bin(), "-f", LOCUSTFILE, "--headless", "--host", "ws://127.0.0.1:9/ws",
                                    "--chatprobe-scenario", str(scenario)])
    assert finish(locust, 30) == 2, locust.tail(60)
    assert "an open-model scenario (arrival_rate, or stages with `rate`) runs under `chatprobe run` only" in locust.err()
