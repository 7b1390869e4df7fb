"""Load shapes end to end, measured by the server: `chatprobe run` holds an arrival rate within a few percent over a
20 s window, and one scenario file of stages and think time gives the same load under `chatprobe run` and under
real Locust (users opened on the same ramp, the same chats per stage). agentsim in its own process, loopback only."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import chatprobe_bin
from .test_locust import LOCUSTFILE, SUMMARY, finish, locust_bin

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


def test_an_arrival_rate_is_held_within_a_few_percent_over_20_seconds(procs, tmp_path: Path):
    url, gt, env = start_sim(procs, tmp_path, "sim")
    scenario = tmp_path / "rate.yaml"
    scenario.write_text("name: rate\narrival_rate: 40\nduration: 22s\nmax_in_flight: 200\nmessage: hi\n"
                        "expect: {settle: 20ms, deadline: 5s}\n")
    report = tmp_path / "rate.json"
    assert run_chatprobe(procs, [str(scenario), "--target", url, "--json", str(report)], env) == 0
    doc = json.loads(report.read_text())["scenarios"][0]
    assert doc["stats"]["chats"] == 880 and doc["stats"]["outcomes"]["passed"] == 880, doc["stats"]
    assert doc["stats"]["dropped_chats"] == 0 and doc["stages"][0]["achieved_rate"] == pytest.approx(40, rel=0.03)
    # What the server saw: runs started in a 20 s window from the second one on.
    starts = sorted(r["t"] for r in records(gt, "run_started"))
    assert len(starts) == 880
    t0 = starts[0] + 1
    in_window = sum(1 for t in starts if t0 <= t < t0 + 20)
    assert in_window == pytest.approx(800, rel=0.03), in_window


STAGED = """name: staged
stages:
  - {duration: 3s, users: 6}
  - {duration: 4s, users: 6, ramp: false}
  - {duration: 2s, users: 0}
think_time: {min: 150ms, max: 250ms}
message: hi
expect: {settle: 20ms, deadline: 5s}
"""


def shape_seen(gt: Path) -> tuple[list[float], list[int]]:
    """From the server's records: when each user's connection opened (since the first), and runs started per stage."""
    opened = sorted(r["t"] for r in records(gt, "connection_opened"))
    t0 = opened[0]
    starts = [r["t"] - t0 for r in records(gt, "run_started")]
    per_stage = [sum(1 for t in starts if lo <= t < hi) for lo, hi in ((0, 3), (3, 7), (7, 9.5))]
    return [t - t0 for t in opened], per_stage


def test_one_scenario_file_gives_the_same_load_under_chatprobe_run_and_locust(procs, tmp_path: Path):
    scenario = tmp_path / "staged.yaml"
    scenario.write_text(STAGED)

    url, gt_run, env = start_sim(procs, tmp_path, "sim-run")
    report = tmp_path / "staged.json"
    assert run_chatprobe(procs, [str(scenario), "--target", url, "--json", str(report)], env) == 0
    doc = json.loads(report.read_text())["scenarios"][0]
    assert [s["label"] for s in doc["stages"]] == ["0→6 users", "6 users", "6→0 users"]

    url, gt_locust, env = start_sim(procs, tmp_path, "sim-locust")
    locust = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "--host", url, "--chatprobe-scenario", str(scenario),
        "--exit-code-on-error", "0"], env=env)
    assert finish(locust, 60) == 0, locust.tail(60)
    out = locust.out() + locust.err()
    for users in (1, 3, 5, 6, 5, 2):  # the line's users half a second past each tick: 0.5 1.5 2.5 … 7.5 8.5 s
        assert f"Shape test updating to {users} users" in out, locust.tail(60)
    summary = SUMMARY.search(locust.out())
    assert summary is not None and summary["verdict"] == "objectives met", locust.tail(60)
    assert "staged by stage" in locust.out() and "0→6 users" in locust.out(), locust.tail(60)

    opened_run, stages_run = shape_seen(gt_run)
    opened_locust, stages_locust = shape_seen(gt_locust)
    # Six users ramped up over the first stage in both engines: chatprobe adds one each time the line passes a
    # whole user (every 0.5 s), Locust in batches on its shape's ticks once a second (the line half a second on).
    for opened in (opened_run, opened_locust):
        assert len(opened) == 6 and max(opened) < 3.0 and max(opened) >= 1.8, (opened_run, opened_locust)
        assert abs(sum(opened) / 6 - 1.25) < 0.4, (opened_run, opened_locust)
    # The same chats per stage (think time dominates each chat's cycle): within 10% while the users are held,
    # 25% on the ramps (a second's batches against a half second's steps).
    for (a, b), tolerance in zip(zip(stages_run, stages_locust, strict=True), (0.25, 0.1, 0.25), strict=True):
        assert a > 0 and b > 0 and abs(a - b) <= tolerance * max(a, b), (stages_run, stages_locust)
    assert [s["chats"] for s in doc["stages"]][1] == pytest.approx(stages_run[1], rel=0.1)


def test_the_builtin_knee_scenario_finds_where_the_first_event_slo_breaks_within_a_minute(procs, tmp_path: Path):
    report = tmp_path / "knee.json"
    proc = procs.start("chatprobe", [chatprobe_bin(), "run", "knee", "--json", str(report)], env={"NO_COLOR": "1"})
    try:
        code = proc.popen.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chatprobe run knee did not end within 60s\n{proc.tail()}")
    assert code == 0, proc.tail(60)
    doc = json.loads(report.read_text())["scenarios"][0]
    assert doc["elapsed_seconds"] < 50
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
