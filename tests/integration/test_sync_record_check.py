"""The Locust user's client (gevent_client.SyncSession, on plain threads here as the sync client is) recording
(`--chatprobe-record DIR`: the target's recorder, as `chatprobe run --record` sets it), then `check_files` (what
`chatprobe check DIR` calls) on the recording: the same per-chat verdicts and exit code as the live results, a
connection that never opened an `error` chat offline as live, and a minted JWT the server echoes in no file. Real
agentsim (or a small websockets server) on a loopback port, the real recorder; no mock of the thing under test.

Failing on the code before this file was added: every test (the sync client recorded nothing: DIR stayed empty, and
`check` refused it, "no recording file in the directory").
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection

from harness.checker import ChatResult
from harness.gevent_client import SyncSession
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.results import ScenarioRun, exit_code
from harness.scenario import ChatCall, RawCall, Scenario
from harness.sinks import Sink
from harness.stats import Tally, evaluate
from harness.targets import Target, TokenProvider

from .conftest import scenario
from .test_record_check_parity import LATE_SAID, STEPS, verdicts
from .test_sync_session import ServerThread

pytestmark = pytest.mark.timeout(120)


def play_sync(target: Target, sc: Scenario, directory: Path) -> ScenarioRun:
    """The scenario's user scripts played once each by SyncSessions on threads (as ChatUser.play does under Locust),
    every connection recorded into `directory`; the live verdicts judged as the Locust master judges them."""
    recorded = dataclasses.replace(target, recorder=Recorder(directory))
    results: list[ChatResult] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def verdict(result: ChatResult) -> None:
        with lock:
            results.append(result)

    def user(i: int) -> None:
        session = SyncSession(recorded, f"sync-u{i}", sc.name, Sink(), connect_timeout=sc.connect_timeout)
        script = sc.user_script(recorded.profile)
        try:
            for item in script.plan():
                if isinstance(item, RawCall):
                    verdict(session.send_invalid(item.raw, item.expectations))
                    continue
                calls = [item] if isinstance(item, ChatCall) else [script.chat() for _ in range(item.count)]
                for call in calls:
                    session.chat(call.content, call.expectations, call.options, verdict)
        except BaseException as exc:  # surfaced by the test, not lost in a thread
            errors.append(exc)
        finally:
            session.close()

    started = time.monotonic()
    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(sc.users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a sync user did not finish within 60 s"
    assert not errors, errors
    tally = Tally()
    for r in results:
        tally.add(r)
    stats = tally.stats()
    return ScenarioRun(scenario=sc, target=target.name, results=results, stats=stats,
                       objectives=evaluate(stats, sc.objectives), started_at=time.time(),
                       elapsed=time.monotonic() - started)


def assert_parity(live: ScenarioRun, offline: ScenarioRun) -> None:
    """Per-chat verdicts (run id, outcome, error kind, rules with counts) and the exit code the same live and offline;
    a difference only where `check` says why (an event just past a verdict: docs/recordings.md)."""
    assert len(live.results) > 0
    if any(LATE_SAID in w for w in offline.warnings) and verdicts(offline) != verdicts(live):
        return
    live_only, offline_only = verdicts(live) - verdicts(offline), verdicts(offline) - verdicts(live)
    assert verdicts(offline) == verdicts(live), f"live only: {live_only}\noffline only: {offline_only}"
    assert exit_code([offline]) == exit_code([live])


SCENARIOS = [
    scenario(users=3, chats_per_user=3),
    # each kind of step: expected errors, send_raw probes, a step's required roles, a drop on purpose and resume
    # (disconnect_after: "by": "client-drop"), an abandonment (abandon_after: "by": "client")
    Scenario.model_validate({**STEPS, "users": 2, "expect": {"settle": "0.05s", "deadline": "3s"}}),
]


@pytest.mark.parametrize("fault", ["", "drop:tool_completed=0.4", "close=0.4", "close:abort=0.4", "crosstalk=0.4",
                                   "malformed=0.4", "oversized=5MiB@0.3", "refuse=0.3"],
                         ids=lambda f: f or "no-fault")
async def test_sync_session_recording_is_judged_offline_as_live(sim_factory, tmp_path, fault):
    async with sim_factory(faults=[fault] if fault else []) as (_sim, target, _gt):
        for n, sc in enumerate(SCENARIOS):
            directory = tmp_path / f"rec-{n}"
            live = await asyncio.to_thread(play_sync, target, sc, directory)
            [offline] = check_files([directory], target.profile, sc)
            try:
                assert_parity(live, offline)
            except AssertionError as exc:
                raise AssertionError(f"scenario {sc.name}, fault {fault or 'none'}: {exc}") from None
    if fault == "drop:tool_completed=0.4":
        assert not live.passed  # the fault was seen, live and offline
    if fault == "":
        # the steps scenario's records: a chat's expectation, a drop on purpose, an abandonment
        records = [json.loads(line) for f in (tmp_path / "rec-1").glob("*.jsonl") for line in f.read_text().splitlines()]
        assert any(r.get("expect", {}).get("error") == "invalid_input" for r in records)
        assert any(r.get("by") == "client-drop" for r in records)
        assert any(r.get("by") == "client" for r in records)


@pytest.mark.parametrize("case", ["nothing-listening", "http-503", "bad-credentials"])
async def test_a_connection_that_never_opened_is_recorded_and_checked_as_an_error(sim_factory, tmp_path, case,
                                                                                  refused_port):
    sc = scenario(users=2, chats_per_user=2, max_reconnects=0, connect_timeout="2s")
    faults = ["refuse=1"] if case == "http-503" else []
    async with sim_factory(faults=faults) as (_sim, target, _gt):
        if case == "nothing-listening":
            target = dataclasses.replace(target, url=f"ws://127.0.0.1:{refused_port()}/ws")
        elif case == "bad-credentials":
            target = dataclasses.replace(target, tokens=TokenProvider(jwt_secret="not-the-servers-secret-0123456789"))
        live = await asyncio.to_thread(play_sync, target, sc, tmp_path / "rec")
    [offline] = check_files([tmp_path / "rec"], target.profile, sc)
    kind = "auth_failed" if case == "bad-credentials" else "refused"
    assert {r.error_kind for r in live.results} == {kind} and live.stats.outcomes == {"error": 4}
    assert offline.stats.outcomes == {"error": 4} and {r.error_kind for r in offline.results} == {kind}
    assert int(exit_code([offline])) == int(exit_code([live])) == (2 if kind == "auth_failed" else 3)
    failed = [json.loads(line) for f in (tmp_path / "rec").glob("*.jsonl") for line in f.read_text().splitlines()
              if '"failed"' in line]
    assert len(failed) == 4 and all(r["dir"] == "close" and r["failed"] == kind for r in failed)
    if case == "http-503":
        assert all(r["status"] == 503 for r in failed)


def test_a_minted_jwt_the_server_echoes_is_in_no_recorded_file(tmp_path):
    # The Locust user mints a JWT per user (CHATPROBE_JWT_SECRET) as `chatprobe run` does; a server that echoes the
    # bearer token in its frames must not carry it into the recording.
    seen: list[str] = []

    async def echo(ws: ServerConnection) -> None:
        token = ws.request.headers["Authorization"].removeprefix("Bearer ")
        seen.append(token)
        await ws.send(json.dumps({"type": "connection_established",
                                  "data": {"connection_id": "c", "user_id": "sync-u0", "token": token}}))
        msg = json.loads(await ws.recv())
        mid = msg["payload"]["message_id"]
        for seq, kind in enumerate(["agent_started", "agent_thinking", "tool_executing", "tool_completed",
                                    "partial_result", "agent_completed"], 1):
            payload = {"message_id": mid, "tool_call_id": "t1", "tool_name": "calc", "echo": f"Bearer {token}",
                       "text": token}
            await ws.send(json.dumps({"type": kind, "run_id": "r1", "user_id": "sync-u0", "seq": seq,
                                      "payload": payload}))
        await ws.wait_closed()

    secret = "a-jwt-secret-for-this-test-only-0123456789"
    with ServerThread(echo) as url:
        target = Target(url=url, profile=load_profile("netra"), name="raw", tokens=TokenProvider(jwt_secret=secret))
        live = play_sync(target, scenario(users=1, chats_per_user=1, expect={"settle": "0.05s", "deadline": "3s"}),
                         tmp_path / "rec")
    assert [r.outcome.value for r in live.results] == ["passed"]
    assert seen and seen[0].count(".") == 2
    files = list((tmp_path / "rec").iterdir())
    text = "".join(f.read_text() for f in files)
    assert files and '"dir": "recv"' in text and "agent_completed" in text
    for part in (seen[0], *seen[0].split("."), secret):
        assert part not in text
