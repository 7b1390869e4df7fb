"""A server restarting in a rolling deploy: the connection a chat's run is on is lost mid-run, and the first
reconnects are refused (reset at the handshake) while the server is down. A browser client retries with backoff and
resumes the run; so must chatprobe, in every driver that reconnects (`chatprobe run` on both WebSocket clients with
`--record` and `chatprobe check` of the recording, `chatprobe monitor`, the Locust user's sync client under gevent):
each failed attempt tried again after a capped, jittered exponential backoff (harness/backoff.py), every attempt
with a connect deadline, all of them within the chat's own deadline and the scenario's `reconnect_timeout` and
`max_reconnect_attempts`. A server that never comes back ends the chat `incomplete`, "connection lost mid-run and
reconnecting failed", within those bounds: never a hang.

Real agentsim on a loopback port behind fault_relay.py (an RST mid-run on the first connection; an RST at the
upgrade request on the reconnects it refuses), real transports, the real recorder, the real metrics sink.

Each of these failed on the code before the reconnect-backoff patch, which tried once per lost connection: the
refused first attempt ended the chat `incomplete`, `reconnects: ["lost"]`, where it now resumes and passes.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from harness.events import Outcome
from harness.flow import RECONNECT_FAILED_NOTE, STOPPED_CHAT_NOTE, STOPPED_NOTE
from harness.offline import check_files
from harness.recorder import Recorder
from harness.runner import run_scenario
from harness.scenario import Scenario, load_scenario
from monitors.metrics import ChatMetrics, MetricsSink

from .fault_relay import DOWN, UP, Fault, relay
from .test_network_faults import MID_RUN, token_for

CONNECT, DEADLINE = 2.0, 6.0
SLACK = 20.0  # a subprocess's start-up (imports, gevent) on a loaded machine, beyond the chat's own bounds

# The first connection: reset mid-run (the server went away). Connections 1..N (the first N reconnects): reset as
# their upgrade request comes (nothing listens yet: refused); the one after goes through.
LOST_MID_RUN = Fault("rst", DOWN, at=MID_RUN, connections=frozenset({0}))


def refusing(first: int, n: int) -> Fault:
    """The relayed connections first .. first+n-1 reset at their first byte up (the upgrade request)."""
    return Fault("rst", UP, connections=frozenset(range(first, first + n)))


def scenario_text(*, client: str = "picows", attempts: int | None = None, timeout: str | None = None) -> str:
    text = (f"name: restart\nusers: 1\nconnect_timeout: {CONNECT:g}s\n"
            f"compression: {'deflate' if client == 'websockets' else 'none'}\n"
            f"expect: {{first_event_limit: 1.5s, deadline: {DEADLINE:g}s, settle: 0.05s}}\n")
    if attempts is not None:
        text += f"max_reconnect_attempts: {attempts}\n"
    if timeout is not None:
        text += f"reconnect_timeout: {timeout}\n"
    return text


def load(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "restart.yaml"
    path.write_text(text)
    return load_scenario(str(path))


def attempts_of(chat) -> tuple[str, list[str], int, int, str]:
    return (chat.outcome.value, chat.reconnects, chat.reconnect_attempts, chat.reconnect_failures, chat.note)


def counted(registry: CollectorRegistry) -> dict[str, float]:
    """The reconnect counters (one scenario in the registry, named as the run or the recording names it)."""

    def sample(name: str, result: str) -> float:
        return sum(s.value for m in registry.collect() for s in m.samples
                   if s.name == name and s.labels.get("result") == result)

    return {"resumed": sample("chatprobe_reconnects_total", result="resumed"),
            "lost": sample("chatprobe_reconnects_total", result="lost"),
            "connected": sample("chatprobe_reconnect_attempts_total", result="connected"),
            "failed": sample("chatprobe_reconnect_attempts_total", result="failed")}


async def played_and_checked(tmp_path: Path, sim, target, sc: Scenario, *faults: Fault):
    """The scenario played live through the relay, every connection recorded, with a metrics sink; then the recording
    checked with a metrics sink of its own: (the live chat, the checked chat, live counts, checked counts, relay
    stats, seconds the live run took)."""
    live_registry, checked_registry = CollectorRegistry(), CollectorRegistry()
    async with relay(sim.port, *faults) as r:
        recorded = dataclasses.replace(target, url=r.url, recorder=Recorder(tmp_path / "rec"))
        start = time.monotonic()
        live = await asyncio.wait_for(
            run_scenario(sc, recorded, MetricsSink(ChatMetrics(live_registry), "agentsim")), DEADLINE + SLACK)
        took = time.monotonic() - start
    [checked] = check_files([tmp_path / "rec"], target.profile, sc,
                            sink=MetricsSink(ChatMetrics(checked_registry), "agentsim"))
    (chat,) = live.results
    (offline,) = checked.results
    return chat, offline, counted(live_registry), counted(checked_registry), r.stats, took


@pytest.mark.parametrize("client", ["picows", "websockets"])
async def test_reconnects_refused_while_the_server_restarts_are_retried_and_the_run_resumes(tmp_path, sim_factory,
                                                                                             client):
    """Two reconnects refused, the third through: the chat resumes its run and passes; its result says 3 attempts, 2
    failed; the metrics count them with its verdict; `check` of the recording judges and counts the same."""
    sc = load(tmp_path, scenario_text(client=client))
    async with sim_factory() as (sim, target, _):
        chat, offline, live_counts, checked_counts, stats, _ = await played_and_checked(
            tmp_path, sim, target, sc, LOST_MID_RUN, refusing(1, 2))
    assert [s[:2] for s in stats.struck] == [(0, "rst"), (1, "rst"), (2, "rst")], stats.struck
    assert stats.accepted == 4  # the first connection, two refused, the one that resumed
    assert attempts_of(chat) == ("passed", ["resumed"], 3, 2, ""), chat
    assert attempts_of(offline) == attempts_of(chat), offline
    assert live_counts == checked_counts == {"resumed": 1, "lost": 0, "connected": 1, "failed": 2}
    # The recording says which failed attempts were tried again: both, since the third connected.
    closes = [json.loads(line) for f in sorted((tmp_path / "rec").glob("*.jsonl"))
              for line in f.read_text().splitlines() if '"failed"' in line]
    assert [(c.get("resume"), c.get("retry")) for c in closes] == [(True, True), (True, True)], closes


async def test_check_counts_a_resumed_reconnect_with_its_chat_as_live(tmp_path, sim_factory):
    """One lost connection, the first reconnect through: `check` of the recording counts the chat's reconnect in
    chatprobe_reconnects_total{result="resumed"}, as live and as its `reconnects` in the report say (it counted only
    a failed one: a resumed run was in the report and in no counter)."""
    sc = load(tmp_path, scenario_text())
    async with sim_factory() as (sim, target, _):
        chat, offline, live_counts, checked_counts, _, _ = await played_and_checked(tmp_path, sim, target, sc,
                                                                                    LOST_MID_RUN)
    assert (chat.outcome, chat.reconnects) == (offline.outcome, offline.reconnects) == (Outcome.PASSED, ["resumed"])
    assert (live_counts["resumed"], live_counts["lost"]) == (checked_counts["resumed"], checked_counts["lost"]) == (1, 0)


@pytest.mark.parametrize("bound", ["attempts", "timeout"])
async def test_a_server_that_never_comes_back_ends_the_chat_within_its_bounds(tmp_path, sim_factory, bound):
    """Every reconnect refused: the chat is `incomplete` with the documented note once its attempts are spent
    (max_reconnect_attempts: 4) or its time is (reconnect_timeout: 1s), never waiting past them; `check` judges the
    recording the same, the last attempt's close record without `retry`."""
    text = scenario_text(attempts=4) if bound == "attempts" else scenario_text(timeout="1s")
    sc = load(tmp_path, text)
    async with sim_factory() as (sim, target, _):
        chat, offline, live_counts, checked_counts, stats, took = await played_and_checked(
            tmp_path, sim, target, sc, LOST_MID_RUN, refusing(1, 1000))
    assert (chat.outcome, chat.reconnects, chat.note) == (Outcome.INCOMPLETE, ["lost"], RECONNECT_FAILED_NOTE), chat
    assert chat.reconnect_attempts == chat.reconnect_failures == stats.accepted - 1
    if bound == "attempts":
        assert chat.reconnect_attempts == 4
        # The backoff's ceilings before attempts 2, 3 and 4: 0.1 + 0.2 + 0.4 s, and the chat's own time to the loss.
        assert took < 0.7 + DEADLINE / 2, took
    else:
        # Attempts 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.4-0.8 s apart: none starts past 1 s after the loss.
        assert 3 <= chat.reconnect_attempts <= 6, chat
        assert took < 1.0 + DEADLINE / 2, took
    assert attempts_of(offline) == attempts_of(chat), offline
    n = chat.reconnect_attempts
    assert live_counts == checked_counts == {"resumed": 0, "lost": 1, "connected": 0, "failed": n}
    closes = [json.loads(line) for f in sorted((tmp_path / "rec").glob("*.jsonl"))
              for line in f.read_text().splitlines() if '"failed"' in line]
    assert sorted(c.get("retry", False) for c in closes) == [False] + [True] * (n - 1), closes


async def test_a_run_stopped_between_two_attempts_stops_the_chat_live_and_in_check(tmp_path, sim_factory):
    """The run's max_duration passes while the chat waits out a backoff (every reconnect refused, reconnect_timeout
    longer than the run): the chat is stopped, "stopped before the chat ended", not lost; its recording says the run
    stopped it there (a close record "by": "client-stop" for the user), and `check` judges it the same."""
    sc = load(tmp_path, scenario_text(timeout="20s") + "max_duration: 1.5s\n")
    async with sim_factory() as (sim, target, _):
        chat, offline, live_counts, checked_counts, stats, took = await played_and_checked(
            tmp_path, sim, target, sc, LOST_MID_RUN, refusing(1, 1000))
    assert (chat.outcome, chat.reconnects, chat.note) == (Outcome.INCOMPLETE, [], STOPPED_CHAT_NOTE), chat
    assert chat.reconnect_attempts == chat.reconnect_failures == stats.accepted - 1 >= 2, chat
    assert attempts_of(offline) == attempts_of(chat), offline
    assert live_counts == checked_counts == {"resumed": 0, "lost": 0, "connected": 0, "failed": stats.accepted - 1}
    assert took < 1.5 + 5, took


async def test_the_monitor_resumes_a_probe_across_refused_reconnects(tmp_path, sim_factory):
    """`chatprobe monitor --once`: its probe reconnects as `chatprobe run` does: two refused reconnects, then the run
    resumed, a probe that passes (exit 0)."""
    path = tmp_path / "restart.yaml"
    path.write_text(scenario_text())
    async with sim_factory() as (sim, target, _), relay(sim.port, LOST_MID_RUN, refusing(1, 2)) as r:
        token = token_for(target)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "harness", "monitor", "--once", "--target", r.url, "--scenario", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NO_COLOR": "1", "CHATPROBE_TOKEN": token}, start_new_session=True)
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), DEADLINE + SLACK)  # a hang fails here
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    text = stdout.decode() + stderr.decode()
    assert "Traceback" not in text and token not in text, text
    assert proc.returncode == 0, text
    assert r.stats.accepted == 4, r.stats


# The Locust user's client (harness/locust_user.py plays its chats with it), under gevent as Locust runs it, recording
# its connections as `--chatprobe-record` does.
LOCUST_CHAT = """
import sys
from gevent import monkey
monkey.patch_all()
import json
from harness.gevent_client import SyncSession
from harness.recorder import Recorder
from harness.scenario import load_scenario
from harness.sinks import Sink
from harness.targets import TargetOptions, make_target, read_token
scenario = load_scenario(sys.argv[1])
options = TargetOptions(url=sys.argv[2], auth="header")
target = make_target(options, read_token(options), scenario.profile, transports=("websocket",))
target.recorder = Recorder(sys.argv[3])
session = SyncSession(target, "u1", scenario.name, Sink(), connect_timeout=scenario.connect_timeout)
_, options = scenario.shared_by_users(target.profile)
expectations, _ = scenario.shared_by_users(target.profile)
try:
    result = session.chat(scenario.message, expectations, options)
finally:
    session.close()
print(json.dumps(result.to_dict()))
"""


@pytest.mark.parametrize("refused, expected", [(2, ("passed", ["resumed"], 3, 2, "")),
                                               (1000, ("incomplete", ["lost"], 4, 4, RECONNECT_FAILED_NOTE))],
                         ids=["comes_back", "never_comes_back"])
async def test_the_locust_users_client_retries_as_run_does(tmp_path, sim_factory, refused, expected):
    """The Locust user's sync client under gevent: the same attempts, the same verdict, and `check` of its recording
    agrees."""
    sc_path = tmp_path / "restart.yaml"
    sc_path.write_text(scenario_text() if refused < 1000 else scenario_text(attempts=4))
    sc = load_scenario(str(sc_path))
    async with sim_factory() as (sim, target, _), relay(sim.port, LOST_MID_RUN, refusing(1, refused)) as r:
        token = token_for(target)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LOCUST_CHAT, str(sc_path), r.url, str(tmp_path / "rec"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NO_COLOR": "1", "CHATPROBE_TOKEN": token}, start_new_session=True)
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), DEADLINE + SLACK)  # a hang fails here
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    text = stdout.decode() + stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in text and token not in text, text
    chat = json.loads(stdout.decode().strip().splitlines()[-1])
    got = (chat["outcome"], chat["reconnects"], chat.get("reconnect_attempts"), chat.get("reconnect_failures"), chat["note"])
    assert got == expected, chat
    [checked] = check_files([tmp_path / "rec"], target.profile, sc)
    (offline,) = checked.results
    assert attempts_of(offline) == expected, offline


@pytest.mark.parametrize("client", ["picows", "websockets"])
@pytest.mark.parametrize("refused", [2, 1000], ids=["comes_back", "never_comes_back"])
async def test_chats_that_lose_one_connection_together_share_one_reconnect(tmp_path, sim_factory, client, refused):
    """Three chats in flight on one user's connection (parallel_chats: 3) lose it together. FAILED on the old code:
    each chat reconnected on its own schedule, so a lost connection got up to 3 × max_reconnect_attempts connection
    attempts (13 accepted by the relay with 4 attempts each against a server that never comes back), against
    "at most max_reconnect_attempts attempts per lost connection"; and `check` of the recording counted those
    attempts on other chats than live did ((10, 1, 1) failures where live said (4, 4, 4)). Now the chats share one
    schedule, one attempt at a time for all: 1 + 4 connections when it never comes back (every chat lost at the last
    failure, as `check` judges it), 1 + 3 when the third attempt gets through (every chat resumed); each attempt's
    failure counted on the oldest chat, as `check` counts it, and the counters add up live and in `check`."""
    sc = load(tmp_path, scenario_text(client=client, attempts=4) + "parallel_chats: 3\nchats_per_user: 3\n")
    live_registry, checked_registry = CollectorRegistry(), CollectorRegistry()
    async with sim_factory() as (sim, target, _):
        async with relay(sim.port, LOST_MID_RUN, refusing(1, refused)) as r:
            recorded = dataclasses.replace(target, url=r.url, recorder=Recorder(tmp_path / "rec"))
            live = await asyncio.wait_for(
                run_scenario(sc, recorded, MetricsSink(ChatMetrics(live_registry), "agentsim")), DEADLINE + SLACK)
        [checked] = check_files([tmp_path / "rec"], target.profile, sc,
                                sink=MetricsSink(ChatMetrics(checked_registry), "agentsim"))
    attempts = 3 if refused == 2 else 4
    assert r.stats.accepted == 1 + attempts, r.stats  # one reconnect for the three chats, not one each
    by_age = sorted(live.results, key=lambda c: c.sent_at)
    assert [c.reconnect_failures for c in by_age] == [attempts - 1 if refused == 2 else attempts, 0, 0], by_age
    assert sum(c.reconnect_attempts for c in by_age) == attempts, by_age  # (the one that connected: its maker's)
    verdict = (("passed", ["resumed"], "") if refused == 2 else ("incomplete", ["lost"], RECONNECT_FAILED_NOTE))
    assert {(c.outcome.value, tuple(c.reconnects), c.note) for c in by_age} == {
        (verdict[0], tuple(verdict[1]), verdict[2])}, by_age
    assert sorted(attempts_of(c) for c in checked.results) == sorted(attempts_of(c) for c in live.results), \
        checked.results
    live_counts, checked_counts = counted(live_registry), counted(checked_registry)
    assert live_counts == checked_counts == ({"resumed": 3, "lost": 0, "connected": 1, "failed": 2} if refused == 2
                                             else {"resumed": 0, "lost": 3, "connected": 0, "failed": 4})


# The Locust user's client stopped as Locust stops a user (its greenlet killed) while its chat waits out a backoff
# between two refused reconnects; the verdict the client gave, as its sink got it.
LOCUST_STOPPED = """
import sys
from gevent import monkey
monkey.patch_all()
import json
import gevent
from harness.gevent_client import SyncSession
from harness.recorder import Recorder
from harness.scenario import load_scenario
from harness.sinks import Sink
from harness.targets import TargetOptions, make_target, read_token

class Verdicts(Sink):
    def __init__(self):
        self.results = []
    def chat_finished(self, result):
        self.results.append(result)

scenario = load_scenario(sys.argv[1])
options = TargetOptions(url=sys.argv[2], auth="header")
target = make_target(options, read_token(options), scenario.profile, transports=("websocket",))
target.recorder = Recorder(sys.argv[3])
sink = Verdicts()
session = SyncSession(target, "u1", scenario.name, sink, connect_timeout=scenario.connect_timeout)
expectations, options = scenario.shared_by_users(target.profile)
user = gevent.spawn(session.chat, scenario.message, expectations, options)
gevent.sleep(1.0)  # wait-ok: the chat is between refused reconnects for the 20 s reconnect_timeout
user.kill()
session.close()
print(json.dumps([r.to_dict() for r in sink.results]))
"""


async def test_a_locust_user_stopped_between_two_reconnect_attempts_is_judged_alike_by_check(tmp_path, sim_factory):
    """Locust stops a user (kills its greenlet) while its chat waits out a backoff between refused reconnects. Live,
    the chat is abandoned by the load generator (ChatFlow.left), as a chat whose connection the stopped user closes.
    FAILED on the old code: nothing of that stop was recorded (no connection was open), so `check` of the recording
    kept the chat for a resume to the end of the recording and judged it `incomplete`, "the connection was lost
    mid-run and no resume of the run was recorded". Now the recording has a close record "by": "client" for the
    user (recorder.open_left) and `check` judges the chat abandoned, as live: the same outcome, note and attempts."""
    sc_path = tmp_path / "restart.yaml"
    sc_path.write_text(scenario_text(timeout="20s"))
    sc = load_scenario(str(sc_path))
    async with sim_factory() as (sim, target, _), relay(sim.port, LOST_MID_RUN, refusing(1, 1000)) as r:
        token = token_for(target)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LOCUST_STOPPED, str(sc_path), r.url, str(tmp_path / "rec"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NO_COLOR": "1", "CHATPROBE_TOKEN": token}, start_new_session=True)
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), DEADLINE + SLACK)  # a hang fails here
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    text = stdout.decode() + stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in text and token not in text, text
    (chat,) = json.loads(stdout.decode().strip().splitlines()[-1])
    assert chat["reconnect_attempts"] == chat["reconnect_failures"] >= 2, chat  # stopped while retrying
    assert (chat["note"], chat["reconnects"]) == (STOPPED_NOTE, []), chat
    [checked] = check_files([tmp_path / "rec"], target.profile, sc)
    (offline,) = checked.results
    got = (offline.outcome.value, offline.reconnects, offline.reconnect_attempts, offline.reconnect_failures,
           offline.abandoned_at is not None)
    assert got == (chat["outcome"], chat["reconnects"], chat["reconnect_attempts"], chat["reconnect_failures"],
                   True), (offline, chat)


async def test_reconnects_never_answered_end_at_the_deadline_and_check_counts_the_last_one(tmp_path, sim_factory):
    """After the loss every reconnect is accepted and never answered (a server whose port takes TCP while it
    restarts): each attempt waits connect_timeout (2 s), the last one cut at the chat's deadline (6 s), and the chat
    is `incomplete`, "reconnecting failed", at that failure. FAILED on the old code: the last attempt's failure is
    recorded at the deadline or a few milliseconds past it, and `check` judged the chat kept for the resume at its
    deadline first ("no resume of the run was recorded", no reconnect `lost`, that attempt in no count: 2 failures
    where live said 3), so live and `check` counters disagreed. Now a resume's failure record is read before the
    chats due by its time are judged (live never judges a chat at its deadline during an attempt)."""
    sc = load(tmp_path, scenario_text())
    silent = Fault("silent", connections=frozenset(range(1, 100)))
    async with sim_factory() as (sim, target, _):
        chat, offline, live_counts, checked_counts, stats, took = await played_and_checked(
            tmp_path, sim, target, sc, LOST_MID_RUN, silent)
    assert (chat.outcome, chat.reconnects, chat.note) == (Outcome.INCOMPLETE, ["lost"], RECONNECT_FAILED_NOTE), chat
    assert chat.reconnect_attempts == chat.reconnect_failures == stats.accepted - 1 >= 2, chat
    assert took < DEADLINE + 3, took  # bounded by the chat's deadline, not by attempts × connect_timeout
    assert attempts_of(offline) == attempts_of(chat), offline
    n = chat.reconnect_failures
    assert live_counts == checked_counts == {"resumed": 0, "lost": 1, "connected": 0, "failed": n}
