"""Differential tests: the same traffic judged live (`chatprobe run --record DIR`, here `run_scenario` with the
target's recorder, the hook the CLI sets) and offline (`check_files`, what `chatprobe check DIR` calls) must give the
same verdicts, chat by chat, unless docs/recordings.md says why not. Real agentsim on a loopback port, real
transports, the real recorder; no mock of the thing under test.

Which of these failed on the code before this patch (each was a finding of the differential run):
- test_oversized_frame_r12_survives_the_recording           FAILED (live R12, offline passed)
- test_agui_recorded_request_times_the_first_event[sse|ws]  FAILED (live R9, offline passed: no chat was timed)
- test_agui_second_run_started_is_r1_offline_as_live        FAILED (live R1, offline R8 x16 and a chat of its own)
- test_foreign_event_before_the_first_request_opens_no_chat FAILED (offline invented a chat for another user's run)
Failed on the code before the steps-parity patch (the recording carries each step's expectation, the connections
that never opened, and `check` follows a message sent again; see docs/recordings.md):
- test_steps_scenario_errors_is_judged_offline_as_live     (expect_error / send_raw steps were unknown offline)
- test_refused_connections_are_in_the_recording            (a connection that never opened left no record)
- test_builtin_scenarios_judged_offline_as_live[*]         (every fault: `errors`; refuse: every scenario; close and
                                                            oversized: `concurrent`, a message sent again was 2 chats)
- test_step_kinds_judged_offline_as_live[*]                (each kind of step, below)
- test_agui_sse_refused_request_is_an_error_offline_as_live (a refused POST was an abandoned chat that passed)
- test_refused_after_the_server_exited_is_in_the_recording (exit 3 live, a pass offline)
- test_credentials_refused_everywhere_is_exit_2_offline_too (exit 2 live, a pass offline)
- test_message_sent_again_after_a_clean_close_is_one_chat_offline (one chat live, an incomplete one more offline)
- test_expected_error_then_a_close_within_settle_is_r13_offline_as_live (R13 live, a pass offline)
- test_hostile_step_records_are_r12_not_a_traceback        (the fields were ignored: the probe passed unseen)
- test_check_says_when_an_event_came_just_past_a_verdict   (no word of it)
Failed on the code before the review of that patch:
- test_agui_sse_request_never_answered_is_a_timeout_error_offline_as_live (live error, exit 3; offline a pass, exit 0)
- test_message_whose_new_connection_is_refused_is_one_error_chat_offline (one error chat live, an incomplete one more)
Failed on the code before the record10 patch:
- test_a_send_the_server_never_reads_is_a_send_failed_error_offline_as_live (live send_failed, offline a pass)
- test_a_send_failed_record_fails_the_chat_it_follows_and_nothing_else (the record's kind was refused)
- test_a_message_a_browser_sends_again_through_the_proxy_is_one_chat_live_and_in_check (proxy 2 chats, check 1)
Failed on the code before the review10 patch:
- test_a_message_a_browser_sends_again_through_the_proxy_is_one_chat_live_and_in_check[record] (proxy: a pass;
  check: incomplete, the connection it passed on not kept)
Failed on the code before the flaky patch (a send_failed record after its chat's deadline: live `error`, offline R10):
- test_a_send_failed_after_a_slow_scrub_is_the_error_live_judged (the recording a busy machine wrote; offline incomplete)
- test_a_send_failed_record_fails_the_chat_it_follows_and_nothing_else (its `late` case, offline incomplete)
Failed on the code before the resumeparity patch (a `send_failed` record did not say which send failed):
- test_a_send_failed_record_fails_the_chat_whose_send_it_names_not_one_sent_in_between (the chat sent in between was
  the error, the one whose send failed took its run: R8 x5)
- test_the_recording_names_the_send_that_failed_when_another_chat_sent_meanwhile (the records named no send)
Failed on the code before the same-read patch (`steps` under after_terminal=0.4, once, on a loaded machine: a chat
`rejected` with a run id live, with none offline):
- test_a_run_in_the_read_that_rejected_its_message_is_judged_offline_as_live[picows] (offline judged the chat before
  the rest of the read that rejected it; live it took that read's run in)
- test_a_run_in_the_read_that_rejected_its_message_is_judged_offline_as_live[websockets] (that client stamped each
  message of one read with a time of its own: the recording could not say they came together)
What cannot be made equal: an event that came just past a chat's verdict time (its settle window's end, or its
deadline) is judged after the verdict offline, by the recorded times, while a live client under load, its timer late,
may have taken it in. `check` says so in its warnings (offline.LATE_WARNING); the differential tests accept a
difference only with that warning.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from harness.catalog import builtin_scenarios
from harness.client import Session
from harness.events import Outcome
from harness.flow import ChatOptions
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.results import exit_code
from harness.runner import run_scenario
from harness.scenario import Scenario, Stage, load_scenario
from harness.sinks import Sink
from harness.targets import Target, TokenProvider

from .conftest import Kept, scenario
from .hostile_ws import WELCOME, frame, read_frame, read_until_gone, run_frames, upgrade
from .hostile_ws import raw as raw_server
from .test_agui_faults_vs_ground_truth import AguiSimCtx
from .test_netra_conformance import NetraServer, clean_run
from .test_resend_attacks import Scripted


def by_run(results) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each chat's outcome and rules (with their counts), by run id (chats without one by their order)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for i, r in enumerate(sorted(results, key=lambda r: (r.run_id is None, r.run_id or ""))):
        counts = Counter(r.rule_counts())
        out[r.run_id or f"no-run-{i}"] = (r.outcome.value, tuple(sorted(f"{k}x{v}" for k, v in counts.items())))
    return out


async def live_and_offline(target, sc: Scenario, directory: Path):
    """The scenario played live with every connection recorded into `directory`, then the recording checked."""
    recorded = dataclasses.replace(target, recorder=Recorder(directory))
    live = await run_scenario(sc, recorded)
    [offline] = check_files([directory], target.profile, sc)
    return live, offline


async def test_oversized_frame_r12_survives_the_recording(sim_factory, tmp_path):
    # The client drops a connection whose server sends a frame over 4 MiB (close 1009, an R12 on its chats): the
    # frame never reaches the recorder, so the close record must say why the connection ended.
    sc = scenario(users=4, chats_per_user=4)  # 16 draws of a fault at 0.5: some chats get it (not 1 in 65,536)
    async with sim_factory(faults=["oversized=5MiB@0.5"], think=0.01) as (_sim, target, _gt):
        live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    assert any("R12" in r.rule_counts() for r in live.results)
    assert by_run(offline.results) == by_run(live.results)
    assert offline.passed is live.passed is False


@pytest.mark.parametrize("ws", [False, True], ids=["sse", "ws"])
async def test_agui_recorded_request_times_the_first_event(tmp_path, ws):
    # AG-UI's RunAgentInput has no `type`: the recorded request must still open the chat at its send time, so that
    # first-event time (R9) and the latency objectives are judged offline as live.
    sc = scenario(users=4, chats_per_user=4, message="What is 2 * 3?",  # 16 draws: some chats get the fault
                  expect={"first_event_limit": "0.2s", "settle": "0.05s", "deadline": "5s"})
    async with AguiSimCtx(tmp_path, faults=["delay_first=0.4s@0.5"], ws=ws) as (_sim, target, _gt):
        live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    assert any("R9" in r.rule_counts() for r in live.results)
    assert by_run(offline.results) == by_run(live.results)
    assert all(r.time_to_first_event is not None for r in offline.results)
    assert offline.passed is live.passed is False


async def test_agui_second_run_started_is_r1_offline_as_live(tmp_path):
    sc = scenario(users=4, chats_per_user=4, message="What is 2 * 3?",  # 16 draws: some chats get the fault
                  expect={"settle": "0.05s", "deadline": "5s"})
    async with AguiSimCtx(tmp_path, faults=["second_start=0.5"]) as (_sim, target, _gt):
        live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    assert any("R1" in r.rule_counts() for r in live.results)
    assert by_run(offline.results) == by_run(live.results)
    assert offline.stats.chats == live.stats.chats


def test_foreign_event_before_the_first_request_opens_no_chat(tmp_path):
    # What `--record` wrote on a connection that got another user's event (agentsim's crosstalk fault) before its
    # client sent anything: offline it must not become a chat. It is cross-talk all the same (R8), told to the chat the
    # connection carries next, live as offline (it was judged against none: whether the client's message or the other
    # user's event came first decided whether a server leaking events failed).
    conn = "cp-u37.1"
    frames = [
        (0.000, "recv", {"type": "connection_established", "data": {"connection_id": "c-1", "user_id": "u37"}}),
        (0.004, "recv", {"type": "agent_started", "run_id": "r-other", "thread_id": "t-x", "user_id": "u30", "seq": 1,
                         "payload": {}}),
        (0.010, "send", {"type": "user_message", "payload": {"content": "hi", "thread_id": "t-1", "message_id": "m-1"}}),
    ]
    run = "r-mine"
    for i, role in enumerate(["agent_started", "agent_thinking", "tool_executing", "tool_completed",
                              "agent_completed"], 1):
        payload = {"tool_name": "calc", "tool_call_id": "c1"} if role.startswith("tool") else {}
        frames.append((0.020 + i / 100, "recv", {"type": role, "run_id": run, "thread_id": "t-1", "user_id": "u37",
                                                  "seq": i, "payload": {**payload, "message_id": "m-1"}}))
    lines = [json.dumps({"t": 1764639000 + t, "dir": d, "conn": conn, "frame": json.dumps(f)}) for t, d, f in frames]
    lines.append(json.dumps({"t": 1764639000.5, "dir": "close", "conn": conn, "code": 1000, "by": "client"}))
    path = tmp_path / "rec.jsonl"
    path.write_text("\n".join(lines) + "\n")
    [offline] = check_files([path], load_profile("netra"), Scenario(name="t", expect={"settle": "0.05s"}))
    assert [(r.run_id, r.outcome, r.rule_counts()) for r in offline.results] == [(run, Outcome.FAILED, {"R8": 1})]


async def test_steps_scenario_errors_is_judged_offline_as_live(sim_factory, tmp_path):
    sc = load_scenario("errors").model_copy(update={"users": 1})
    async with sim_factory() as (_sim, target, _gt):
        live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    assert live.passed
    assert offline.stats.outcomes == live.stats.outcomes
    assert offline.passed is True


async def test_refused_connections_are_in_the_recording(sim_factory, tmp_path):
    sc = scenario(users=4, chats_per_user=1)
    async with sim_factory(faults=["refuse=0.5"]) as (_sim, target, _gt):
        live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    assert live.stats.outcomes.get("error", 0) > 0 and not live.passed
    assert offline.passed is live.passed
    assert_parity(live, offline)
    files = list((tmp_path / "rec").glob("*.jsonl"))
    refused = [json.loads(line) for f in files for line in f.read_text().splitlines() if '"failed"' in line]
    assert refused and all(r["dir"] == "close" and r["failed"] == "refused" and r["status"] == 503 for r in refused)
    # every chat refused: unreachable, exit 3, live and offline
    async with sim_factory(faults=["refuse=1"]) as (_sim, target, _gt):
        live, offline = await live_and_offline(target, sc, tmp_path / "rec-all")
    assert int(exit_code([live])) == int(exit_code([offline])) == 3


# --- the differential harness: every built-in scenario and every kind of step, with and without each fault --------

LATE_SAID = "after their chat's verdict was due"  # what `check` says of a difference it cannot rule out (LATE_WARNING)


def verdicts(run) -> Counter[tuple[str, str, str, tuple[str, ...]]]:
    """Each chat as (run id, outcome, error kind, rules with their counts): a multiset, since chats without a run id
    (probes, error chats) have nothing else that names them alike live and offline."""
    return Counter((r.run_id or "", r.outcome.value, r.error_kind or "",
                    tuple(sorted(f"{k}x{v}" for k, v in r.rule_counts().items()))) for r in run.results)


def assert_parity(live, offline) -> None:
    """Per-chat verdicts, violations (rule ids and counts) and the exit code, live and offline, the same; a difference
    only where `check` says why (an event just past a verdict: LATE_WARNING)."""
    late = any(LATE_SAID in w for w in offline.warnings)
    same = verdicts(offline) == verdicts(live) and exit_code([offline]) == exit_code([live])
    if not same and late:
        return  # said, not silent (docs/recordings.md)
    live_only, offline_only = verdicts(live) - verdicts(offline), verdicts(offline) - verdicts(live)
    assert verdicts(offline) == verdicts(live), f"live only: {live_only}\noffline only: {offline_only}"
    assert exit_code([offline]) == exit_code([live])
    assert len(offline.results) == len(live.results) > 0


# Each kind of step (docs/protocol.md, R13; README "steps:"): an expected recoverable and fatal error, invalid input
# (not JSON, no type, an unknown type, an empty message), a step's own required roles, several turns, a drop and
# resume, an abandonment.
STEPS = {
    "name": "steps",
    "dialects": ["netra"],
    "users": 2,
    "steps": [
        {"chat": {"message": "Look up the capital of Peru. #fail-tool", "expect_error": "recoverable"}},
        {"chat": {"message": "Compute 1 + 1. #fail-agent", "expect_error": "fatal"}},
        {"send_raw": "this is not json"},
        {"send_raw": '{"no_type": true}'},
        {"send_raw": '{"type": "definitely_not_a_type"}'},
        {"send_raw": '{"type": "user_message", "payload": {"content": ""}}'},
        {"chat": {"message": "What time is it?", "required": ["agent_started", "agent_completed"]}},
        {"chat": {"message": "What is 6 * 7? #tools=2", "repeat": 2}},
        {"chat": {"message": "Compute 3 * 5, then 7 * 8. #tools=3 #chunks=3", "disconnect_after": 3}},
        {"chat": {"message": "Compute 5 * 5 and look up the capital of Spain. #tools=2", "abandon_after": 2}},
        {"chat": {"message": "Compute 2 + 2. #fail-agent", "expect_error": "recoverable"}},  # the wrong kind: R13
        {"chat": {"message": "What is 9 * 9?", "expect_error": "fatal"}},  # no error comes: R13
    ],
    "expect": {"streaming": False},
}


def shrunk(sc: Scenario) -> Scenario:
    """A built-in scenario made small enough to run under every fault in a test: at most 3 users and 2 chats each, a
    1 s open-model stage, no ramp, a 2 s deadline and a 0.5 s first-event limit (a dropped terminal event, a delayed
    first event cost that much); the steps, expectations and objectives as they are."""
    update: dict = {"expect": sc.expect.model_copy(update={"deadline": min(sc.expect.deadline, 2.0),
                                                           "first_event_limit": min(sc.expect.first_event_limit, 0.5),
                                                           "stall_limit": min(sc.expect.stall_limit, 2.0)}),
                    "max_duration": 30.0}
    if sc.open_model:
        update |= {"stages": [Stage(duration=1.0, rate=8.0, ramp=False)], "arrival_rate": None, "duration": None,
                   "max_in_flight": 20}
    else:
        update |= {"users": min(sc.users, 3), "chats_per_user": min(sc.chats_per_user, 2), "ramp_up": 0.0}
    return sc.model_copy(update=update)


def netra_scenarios() -> list[Scenario]:
    out = [shrunk(load_scenario(name)) for name in builtin_scenarios()]
    out.append(shrunk(Scenario.model_validate(STEPS)))
    return [sc for sc in out if sc.carried_by("netra")]


# Every fault agentsim's netra mode takes (`python -m agentsim --help`) but exit and exit_after, which end the process
# (test_refused_after_the_server_exited_is_in_the_recording runs one in a process of its own). Rates high enough that
# a few chats get each.
NETRA_FAULTS = ["", "drop=0.3", "drop:tool_completed=0.4", "delay_first=0.6s@0.3", "duplicate=0.4", "swap=0.4",
                "crosstalk=0.4", "stall=0.3s@0.3", "close=0.4", "close:abort=0.4", "malformed=0.4",
                "malformed:binary=0.4", "malformed:notype=0.4", "malformed:unknowntype=0.4", "oversized=5MiB@0.3",
                "after_terminal=0.4", "refuse=0.3"]


@pytest.mark.parametrize("fault", NETRA_FAULTS, ids=lambda f: f or "no-fault")
async def test_builtin_scenarios_judged_offline_as_live(sim_factory, tmp_path, fault):
    # `chatprobe run --record DIR` then `chatprobe check DIR --scenario SAME`, for every built-in scenario `chatprobe
    # list` names (and one of every kind of step), against agentsim with the fault.
    async with sim_factory(faults=[fault] if fault else []) as (_sim, target, _gt):
        for sc in netra_scenarios():
            live, offline = await live_and_offline(target, sc, tmp_path / f"rec-{sc.name}")
            try:
                assert_parity(live, offline)
            except AssertionError as exc:
                raise AssertionError(f"scenario {sc.name}, fault {fault or 'none'}: {exc}") from None


@pytest.mark.parametrize("fault", ["", "close=0.4", "refuse=0.3"], ids=lambda f: f or "no-fault")
async def test_step_kinds_judged_offline_as_live(sim_factory, tmp_path, fault):
    # The steps scenario alone, with more users, so each kind of step meets the fault; and what each kind of step gives.
    sc = Scenario.model_validate({**STEPS, "users": 4, "expect": {"settle": "0.05s", "deadline": "3s"}})
    async with sim_factory(faults=[fault] if fault else []) as (_sim, target, _gt):
        live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    assert_parity(live, offline)
    if not fault:
        # Per user: 13 chats and probes, of which the two wrong expectations fail (R13; the error that never came is
        # a required role missing too, R2) and the rest pass.
        assert live.stats.chats == 4 * 13
        assert live.stats.outcomes == {"passed": 4 * 11, "failed": 4 * 2}
        assert offline.stats.violations == live.stats.violations == {"R13": 8, "R2": 4}


@pytest.mark.parametrize("fault", ["", "refuse=0.4", "close=0.4", "drop=0.3", "after_terminal=0.4"],
                         ids=lambda f: f or "no-fault")
async def test_agui_builtin_scenarios_judged_offline_as_live(tmp_path, fault):
    # The built-in scenarios an AG-UI server carries, over HTTP POST + SSE (a stream per chat).
    scenarios = [shrunk(load_scenario(name)) for name in builtin_scenarios()]
    async with AguiSimCtx(tmp_path, faults=[fault] if fault else []) as (_sim, target, _gt):
        for sc in [sc for sc in scenarios if sc.carried_by("ag-ui")]:
            live, offline = await live_and_offline(target, sc, tmp_path / f"rec-{sc.name}")
            try:
                assert_parity(live, offline)
            except AssertionError as exc:
                raise AssertionError(f"scenario {sc.name}, fault {fault or 'none'}: {exc}") from None


async def test_agui_sse_refused_request_is_an_error_offline_as_live(tmp_path):
    # Over SSE the request is the connection: a refused POST (HTTP 503) is an `error` chat live; its send record is in
    # the recording, and was an abandoned chat that passed offline.
    sc = scenario(users=4, chats_per_user=2, message="What is 2 * 3?", expect={"settle": "0.05s", "deadline": "5s"})
    async with AguiSimCtx(tmp_path, faults=["refuse=0.5"]) as (_sim, target, _gt):
        live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    assert live.stats.outcomes.get("error", 0) > 0
    assert_parity(live, offline)


async def test_agui_sse_request_never_answered_is_a_timeout_error_offline_as_live(tmp_path):
    # Over SSE a POST whose response head never comes within connect_timeout is an `error` chat (timeout) live, exit 3
    # when every chat was one. That timeout is the client's (Session._safe_send), not the transport's, and the
    # recording said nothing of it: a send, then the client's close: offline an abandoned chat that passed, exit 0.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # the request is taken and never answered, until the client hangs up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"http://127.0.0.1:{port}/agent", profile=load_profile("ag-ui"), name="raw")
        sc = scenario(users=2, chats_per_user=1, message="What is 2 * 3?", connect_timeout="0.3s",
                      expect={"settle": "0.05s", "deadline": "3s"})
        async with asyncio.timeout(15):  # a hang fails the test
            live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    assert live.stats.outcomes == {"error": 2} and {r.error_kind for r in live.results} == {"timeout"}
    assert int(exit_code([live])) == 3
    assert_parity(live, offline)


async def test_refused_after_the_server_exited_is_in_the_recording(tmp_path):
    # agentsim exits (os._exit) after its 2nd chat: the next chats find nothing listening ("connection refused", no
    # HTTP status), live and offline alike.
    proc = subprocess.Popen([sys.executable, "-m", "agentsim", "--port", "0", "--no-auth", "--think", "0.01", "--seed",
                             "1", "--fault", "exit_after=2"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "listening on" in line, line
        target = Target(url=line.split("listening on", 1)[1].strip(), profile=load_profile("netra"), name="sim",
                        no_auth_user_param=True)
        sc = scenario(users=1, chats_per_user=4, max_reconnects=1, connect_timeout="2s")
        live, offline = await live_and_offline(target, sc, tmp_path / "rec")
        assert proc.wait(timeout=10) == 3
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert live.stats.outcomes.get("error", 0) >= 1
    assert_parity(live, offline)


async def test_credentials_refused_everywhere_is_exit_2_offline_too(sim_factory, tmp_path):
    # A token the server refuses: every chat `auth_failed`, exit 2 (a usage error) live; the recording must say so.
    sc = scenario(users=2, chats_per_user=1)
    async with sim_factory() as (_sim, target, _gt):
        wrong = dataclasses.replace(target, tokens=TokenProvider(jwt_secret="not-the-servers-secret-" + "x" * 16))
        live, offline = await live_and_offline(wrong, sc, tmp_path / "rec")
    assert live.stats.outcomes == {"error": 2}
    assert int(exit_code([live])) == int(exit_code([offline])) == 2
    assert_parity(live, offline)


async def live_and_offline_raw(handler, sc: Scenario, directory: Path):
    """`live_and_offline` against a raw `websockets` server on a loopback port (`handler`)."""
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="raw",
                        recorder=Recorder(directory))
        async with asyncio.timeout(15):  # a hang fails the test
            live = await run_scenario(sc, target)
    [offline] = check_files([directory], target.profile, sc)
    return live, offline


async def test_message_sent_again_after_a_clean_close_is_one_chat_offline(tmp_path):
    # The server closes (1000) as the first message arrives, before any event: the live client sends it again on a new
    # connection, one chat (passed, with an R13 warning). Offline it was two: an incomplete chat, then a passing one.
    server = Scripted(lambda n, msg: "close1000" if n == 1 else None)
    sc = scenario(name="raw", users=1, chats_per_user=2, connect_timeout="1s",
                  expect={"deadline": "2s", "settle": "0.05s"}, message="hi")
    live, offline = await live_and_offline_raw(server.handler, sc, tmp_path / "rec")
    assert [r.outcome for r in live.results] == [Outcome.PASSED] * 2
    assert_parity(live, offline)
    [again] = [r for r in offline.results if r.warnings]
    assert any(w.rule == "R13" and "sent again" in w.reason for w in again.warnings)


@pytest.mark.parametrize("users", [1, 2])
async def test_message_whose_new_connection_is_refused_is_one_error_chat_offline(tmp_path, users):
    # A deploy: the server closes (1000) as the first message arrives, before any event, and refuses every connection
    # after (HTTP 503). Live, the message is to go again on a new connection, refused at every attempt (retried with
    # backoff until the chat's deadline: test_resend_backoff.py): one `error` chat (the other user's chat too, with 2
    # users). Offline the resend waiting and the failed connection were two chats (an
    # incomplete one and an error one).
    server = Scripted(lambda n, msg: "close1000")

    def refuse_after_the_first(connection: ServerConnection, request: object) -> object:
        if server.connections:
            return connection.respond(503, "restarting\n")
        return None

    sc = scenario(name="raw", users=users, chats_per_user=1, connect_timeout="1s", max_reconnects=1,
                  expect={"deadline": "2s", "settle": "0.05s"}, message="hi")
    async with serve(server.handler, "127.0.0.1", 0, compression=None, process_request=refuse_after_the_first) as srv:
        port = srv.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile("netra"), name="raw",
                        recorder=Recorder(tmp_path / "rec"))
        async with asyncio.timeout(15):  # a hang fails the test
            live = await run_scenario(sc, target)
    [offline] = check_files([tmp_path / "rec"], target.profile, sc)
    assert live.stats.outcomes == {"error": users}
    assert_parity(live, offline)


class ErrorThenClose(NetraServer):
    """Answers each message with a run that meets a recoverable error and completes, then closes the connection (1000)
    at once: within the chat's settle window."""

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps(self.welcome))
        async for raw in ws:
            msg = json.loads(raw)
            mid, tid = msg["payload"]["message_id"], msg["payload"]["thread_id"]
            base = {"run_id": "r-1", "thread_id": tid, "user_id": "u-1"}
            await ws.send(json.dumps({"type": "agent_started", "seq": 1, "payload": {"message_id": mid}, **base}))
            await ws.send(json.dumps({"type": "agent_error", "seq": 2, **base,
                                      "payload": {"error_message": "tool failed", "is_recoverable": True}}))
            await ws.send(json.dumps({"type": "agent_completed", "seq": 3, **base, "payload": {"result": "done"}}))
            await ws.close(1000)
            return


async def test_expected_error_then_a_close_within_settle_is_r13_offline_as_live(tmp_path):
    # R13: after an expected error the connection must stay open through the settle window. The live client, still
    # listening, sees the close; offline the chat was done, and judged at the close without it (it passed).
    sc = Scenario.model_validate({"name": "raw", "users": 1, "connect_timeout": "1s", "reconnect": False,
                                  "steps": [{"chat": {"message": "fail a tool", "expect_error": "recoverable",
                                                      "required": ["agent_started", "agent_completed"]}}],
                                  "expect": {"deadline": "2s", "settle": "0.5s"}})
    live, offline = await live_and_offline_raw(ErrorThenClose().handler, sc, tmp_path / "rec")
    [chat] = live.results
    assert chat.rule_counts() == {"R13": 1} and "stay open" in chat.violations[0].reason, chat.violations
    assert_parity(live, offline)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@pytest.mark.parametrize("field,value,detail", [
    ("expect", {"error": "catastrophic"}, "field 'expect.error' must be one of"),
    ("expect", {"required": ["agent_started", "nonsense"]}, "field 'expect.required' must be a list of roles"),
    ("expect", "fatal", "field 'expect' must be an object"),
])
def test_hostile_step_records_are_r12_not_a_traceback(tmp_path, field, value, detail):
    send = {"t": 1.0, "dir": "send", "conn": "c", field: value,
            "frame": json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": "m1"}})}
    welcome = {"t": 0.5, "dir": "recv", "conn": "c", "frame": json.dumps({"type": "connection_established"})}
    path = write_jsonl(tmp_path / "rec.jsonl", [welcome, send, {"t": 2.0, "dir": "close", "conn": "c", "code": 1000}])
    [run] = check_files([path], load_profile("netra"), Scenario(name="t"))
    # The unreadable send opens no chat: the connection's own R12 (no chat is made up for a recording's problem).
    assert run.stats.chats == 0 and not run.passed
    assert any(v.rule == "R12" and detail in v.reason for v in run.connection_violations), run.connection_violations


def test_hostile_failed_field_is_r12_and_a_known_one_is_an_error_chat(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"t": 1.0, "dir": "close", "conn": "c", "failed": "rm -rf"}])
    [run] = check_files([bad], load_profile("netra"), Scenario(name="t"))
    assert run.stats.chats == 0 and [v.rule for v in run.connection_violations] == ["R12"]  # the connection's own
    good = write_jsonl(tmp_path / "good.jsonl", [{"t": 1.0, "dir": "close", "conn": "c", "failed": "auth_failed",
                                                  "status": 401, "reason": "HTTP 401 at the WebSocket handshake"}])
    [run] = check_files([good], load_profile("netra"), Scenario(name="t"))
    [chat] = run.results
    assert (chat.outcome, chat.error_kind, chat.error) == (Outcome.ERROR, "auth_failed",
                                                           "HTTP 401 at the WebSocket handshake")
    assert int(exit_code([run])) == 2
    resumed = write_jsonl(tmp_path / "resume.jsonl", [{"t": 1.0, "dir": "close", "conn": "c", "failed": "refused",
                                                       "resume": True}])
    [run] = check_files([resumed], load_profile("netra"), Scenario(name="t"))
    assert run.stats.chats == 0  # a reconnect to resume a run: its chat is judged where it was lost


def test_a_send_failed_record_fails_the_chat_it_follows_and_nothing_else(tmp_path):
    # The send_failed close record: the chat the last send opened is an error (send_failed) and the connection goes
    # on (the next chat on it passes); one that came after that chat's deadline fails it too, as live (the live client
    # waits for the send, its deadline unwatched), unless another record of the connection came in between (a frame
    # the server sent meanwhile judged it at its deadline: said, LATE_SEND_WARNING); one with no chat before it is an
    # R12 (the connection's own: no chat is made up for it), never a traceback.
    def send(t: float, mid: str) -> dict:
        return {"t": t, "dir": "send", "conn": "c",
                "frame": json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": mid}})}

    welcome = {"t": 0.5, "dir": "recv", "conn": "c", "frame": json.dumps({"type": "connection_established"})}
    failed = {"dir": "close", "conn": "c", "failed": "send_failed", "reason": "the frame did not leave within 1s"}
    events = [{"t": 3.0 + i / 10, "dir": "recv", "conn": "c", "frame": json.dumps(
        {"type": kind, "run_id": "r2", "seq": i + 1, "payload": {"message_id": "m2"}})}
        for i, kind in enumerate(["agent_started", "agent_thinking", "tool_executing", "tool_completed",
                                  "agent_completed"])]
    sc = Scenario(name="t", expect={"streaming": False, "settle": "0.05s", "deadline": "5s"})
    path = write_jsonl(tmp_path / "ok.jsonl", [welcome, send(1.0, "m1"), {**failed, "t": 2.0}, send(2.5, "m2"), *events,
                                               {"t": 4.0, "dir": "close", "conn": "c", "code": 1000, "by": "client"}])
    [run] = check_files([path], load_profile("netra"), sc)
    assert sorted((r.outcome.value, r.error_kind or "") for r in run.results) == [("error", "send_failed"),
                                                                                  ("passed", "")]
    assert not run.warnings
    late = write_jsonl(tmp_path / "late.jsonl", [welcome, send(1.0, "m1"), {**failed, "t": 9.0}])
    [run] = check_files([late], load_profile("netra"), sc)
    assert [(r.outcome, r.error_kind) for r in run.results] == [(Outcome.ERROR, "send_failed")]
    assert not run.warnings
    heartbeat = {"t": 7.0, "dir": "recv", "conn": "c", "frame": json.dumps({"type": "heartbeat"})}
    between = write_jsonl(tmp_path / "between.jsonl", [welcome, send(1.0, "m1"), heartbeat, {**failed, "t": 9.0}])
    [run] = check_files([between], load_profile("netra"), sc)
    assert [r.outcome for r in run.results] == [Outcome.INCOMPLETE]
    assert any("had not left when their deadline passed" in w for w in run.warnings)
    alone = write_jsonl(tmp_path / "alone.jsonl", [welcome, {**failed, "t": 2.0}])
    [run] = check_files([alone], load_profile("netra"), sc)
    assert run.stats.chats == 0 and [v.rule for v in run.connection_violations] == ["R12"]  # the connection's own


def test_a_send_failed_after_a_slow_scrub_is_the_error_live_judged(tmp_path):
    # What `--record` writes on a busy machine for a 3.2 MB message to a server that reads nothing: the send record
    # stamped when the frame was handed to the recorder, scrubbing it took 30 s of the process's share of the CPU (the
    # event loop held all that time), and the send timed out (connect_timeout 0.5 s) only then, past the chat's 30 s
    # deadline; then the client's close. Live the chat was an `error` (send_failed): it waited for its send, its
    # deadline unwatched (flow.ChatFlow.sent). `check` judged it at its deadline (incomplete, R9 and R10), and
    # warned: a verdict that depended on how fast the client's machine was.
    frame = json.dumps({"type": "user_message", "payload": {"content": "x" * 64, "message_id": "m1"}})
    records = [{"t": 1796306464.625, "dir": "recv", "conn": "u0.1", "frame": json.dumps({"type": "connection_established"})},
               {"t": 1796306464.626, "dir": "send", "conn": "u0.1", "frame": frame},
               {"t": 1796306495.034, "dir": "close", "conn": "u0.1", "failed": "send_failed",
                "reason": "the frame did not leave within 0.5s (the server read nothing)"},
               {"t": 1796306501.039, "dir": "close", "conn": "u0.1", "code": 1006, "by": "client"}]
    path = write_jsonl(tmp_path / "slow.jsonl", records)
    sc = scenario(users=1, chats_per_user=1, connect_timeout="0.5s", expect={"settle": "0.05s", "deadline": "30s"})
    [run] = check_files([path], load_profile("netra"), sc)
    assert [(r.outcome, r.error_kind, r.rule_counts()) for r in run.results] == [(Outcome.ERROR, "send_failed", {})]
    assert "did not leave within 0.5s" in run.results[0].error
    assert not run.warnings
    assert int(exit_code([run])) == 1


def test_check_says_when_an_event_came_just_past_a_verdict(tmp_path):
    # A run completes at t=1.0; with a 0.1 s settle window its verdict is due at 1.1. An event of the run at 1.15 is a
    # warning on the chat here (judged after the verdict); a live client whose timer ran 50 ms late would have judged
    # it an R4. `check` must say that it may differ from live there.
    frames = [(0.0, "recv", {"type": "connection_established", "data": {"user_id": "u1"}}),
              (0.5, "send", {"type": "user_message", "payload": {"content": "hi", "thread_id": "t1",
                                                                 "message_id": "m1"}})]
    for seq, (t, role) in enumerate([(0.6, "agent_started"), (0.7, "agent_thinking"), (0.8, "tool_executing"),
                                     (0.9, "tool_completed"), (1.0, "agent_completed"), (1.15, "partial_result")], 1):
        payload = {"tool_name": "calc", "tool_call_id": "c1"} if role.startswith("tool") else {}
        frames.append((t, "recv", {"type": role, "run_id": "r1", "thread_id": "t1", "user_id": "u1", "seq": seq,
                                   "payload": {**payload, "message_id": "m1"}}))
    records = [{"t": 100 + t, "dir": d, "conn": "c", "frame": json.dumps(f)} for t, d, f in frames]
    path = write_jsonl(tmp_path / "rec.jsonl", [*records, {"t": 102.0, "dir": "close", "conn": "c", "code": 1000}])
    [run] = check_files([path], load_profile("netra"), Scenario(name="t", expect={"settle": "0.1s"}))
    [chat] = run.results
    assert chat.outcome is Outcome.PASSED and [w.rule for w in chat.warnings] == ["R4"]
    assert any(LATE_SAID in w for w in run.warnings), run.warnings
    # another user's event then (cross-talk, charged to the chats in flight): the same race, said the same way
    foreign = {"type": "agent_thinking", "run_id": "r9", "thread_id": "t9", "user_id": "u9", "seq": 1, "payload": {}}
    other = [*records[:-1], {"t": 101.15, "dir": "recv", "conn": "c", "frame": json.dumps(foreign)}]
    path = write_jsonl(tmp_path / "rec3.jsonl", [*other, {"t": 102.0, "dir": "close", "conn": "c", "code": 1000}])
    [run] = check_files([path], load_profile("netra"), Scenario(name="t", expect={"settle": "0.1s"}))
    assert [r.outcome for r in run.results] == [Outcome.PASSED]
    assert any(LATE_SAID in w for w in run.warnings), run.warnings
    # past the margin: the live timer would have fired long before; nothing to say
    records[-1]["t"] = 101.6
    path = write_jsonl(tmp_path / "rec2.jsonl", [*records, {"t": 102.0, "dir": "close", "conn": "c", "code": 1000}])
    [run] = check_files([path], load_profile("netra"), Scenario(name="t", expect={"settle": "0.1s"}))
    assert not any(LATE_SAID in w for w in run.warnings)


class ForeignOnReconnect(NetraServer):
    """A netra server whose runs take their time, and that greets every connection but the first with another user's
    event before anything else (agentsim's crosstalk fault, as it struck a reconnection)."""

    async def handler(self, ws: ServerConnection) -> None:
        if self.connections:
            original = ws.send

            async def first_foreign(frame, *a, **kw):  # after the welcome, once
                await original(frame, *a, **kw)
                ws.send = original  # type: ignore[method-assign]
                await original(json.dumps({"type": "agent_thinking", "run_id": "r-someone", "thread_id": "t-someone",
                                           "user_id": "u-2", "seq": 4, "payload": {"thought": "not yours"}}))

            ws.send = first_foreign  # type: ignore[method-assign]
        await super().handler(ws)


async def test_another_users_event_before_a_resume_is_r8_offline_as_live(tmp_path):
    # The chat drops its socket after 2 events (disconnect_after) and resumes on a new connection, where the server
    # first sends another user's event: live the chat in flight sees it (R8); offline the new connection had no chat
    # until the resume, and the event was charged to nobody.
    server = ForeignOnReconnect(script=lambda msg: [(0.02, k, f) for _, k, f in clean_run(tools=2)])
    sc = scenario(name="raw", users=1, connect_timeout="1s", steps=[{"chat": {"disconnect_after": 2}}],
                  expect={"deadline": "3s", "settle": "0.05s"})
    live, offline = await live_and_offline_raw(server.handler, sc, tmp_path / "rec")
    [chat] = live.results
    assert chat.rule_counts() == {"R8": 1} and chat.reconnects == ["resumed"], chat.violations
    assert_parity(live, offline)


async def test_an_open_model_chat_sent_late_is_timed_from_when_it_was_due_offline_too(sim_factory, tmp_path):
    # An open-model chat the load generator got to 1.5 s after it was due: its first-event time counts from when it was
    # due (ChatOptions.due_at), an R9 over a 1 s limit live; offline it counted from the send, and passed.
    sc = scenario(expect={"first_event_limit": "1s", "settle": "0.05s", "deadline": "5s"})
    async with sim_factory() as (_sim, target, _gt):
        recorded = dataclasses.replace(target, recorder=Recorder(tmp_path / "rec"))
        session = Session(recorded, "u1", "t", Sink())
        try:
            now = session.clock()
            live = await session.chat("What is 2 * 3?", sc.expectations(target.profile),
                                      ChatOptions(due_at=now - 1.5, settle=0.05))
        finally:
            await session.close()
    assert live.rule_counts() == {"R9": 1} and live.time_to_first_event > 1.5
    [offline] = check_files([tmp_path / "rec"], target.profile, sc)
    [chat] = offline.results
    assert chat.rule_counts() == {"R9": 1}
    assert abs(chat.time_to_first_event - live.time_to_first_event) < 0.01


async def test_a_drop_on_purpose_after_an_expected_error_is_no_r13_offline_as_live(tmp_path):
    # A step expects a recoverable error and drops its socket after it (disconnect_after), to resume on a new
    # connection: the client's drop is not the server failing to stay open (no R13 live). The recording said only that
    # the connection ended (1006), which offline held against the server.
    def script(msg):
        return [(0.02, "agent_started", {}), (0.02, "agent_error", {"error_message": "tool failed",
                                                                    "is_recoverable": True}),
                (0.05, "agent_thinking", {"thought": "retrying"}), (0.02, "agent_completed", {"result": "done"})]

    server = NetraServer(script=script)
    sc = scenario(name="raw", users=1, connect_timeout="1s", expect={"deadline": "3s", "settle": "0.05s"},
                  steps=[{"chat": {"expect_error": "recoverable", "disconnect_after": 2,
                                   "required": ["agent_started", "agent_completed"]}}])
    live, offline = await live_and_offline_raw(server.handler, sc, tmp_path / "rec")
    [chat] = live.results
    assert chat.outcome is Outcome.PASSED and chat.reconnects == ["resumed"], chat.violations
    assert_parity(live, offline)
    closes = [json.loads(line) for f in (tmp_path / "rec").glob("*.jsonl") for line in f.read_text().splitlines()
              if '"close"' in line]
    assert sorted(c.get("by") for c in closes) == ["client", "client-drop"]


async def test_the_proxy_and_check_charge_another_users_event_before_a_resume_to_the_resumed_chat(tmp_path):
    # The proxy follows a run resumed on a new connection (flow.Resumes, as `check` does): another user's event that
    # reached the new connection before the resume was charged to nobody there (the connection had no chat yet); the
    # chat was in flight for that user then, as a live client's would be: R8, in the proxy and in `check` of its
    # recording alike.
    from prometheus_client import CollectorRegistry
    from websockets.asyncio.client import connect

    from harness.checker import Expectations
    from harness.events import DEFAULT_REQUIRED
    from monitors.metrics import ChatMetrics
    from monitors.proxy import LiveChats, Proxy, start_proxy

    upstream = ForeignOnReconnect(script=lambda msg: [(0.05, k, f) for _, k, f in clean_run(tools=2)])
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=5.0)
    kept = Kept(ChatMetrics(CollectorRegistry()), "up", "live")
    live = LiveChats(load_profile("netra"), kept, exp, "live", 0.05, recorder=Recorder(tmp_path / "rec"))
    async with serve(upstream.handler, "127.0.0.1", 0, compression=None) as up:
        up_port = up.sockets[0].getsockname()[1]
        proxy = await start_proxy(Proxy(f"ws://127.0.0.1:{up_port}", live), "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{proxy.sockets[0].getsockname()[1]}/ws"
        try:
            async with asyncio.timeout(15):
                old = await connect(url, ping_interval=None, close_timeout=1)
                await old.send(json.dumps({"type": "user_message", "payload": {"content": "hi", "thread_id": "t-1",
                                                                               "message_id": "m-1"}}))
                while (frame := json.loads(await old.recv())).get("type") != "agent_started":
                    pass
                new = await connect(url, ping_interval=None, close_timeout=1)
                assert json.loads(await new.recv())["type"] == "connection_established"
                assert json.loads(await new.recv())["user_id"] == "u-2"  # the other user's event, first
                await new.send(json.dumps({"type": "resume", "payload": {"run_id": frame["run_id"], "last_seq": 1}}))
                while json.loads(await new.recv()).get("type") != "agent_completed":
                    pass
                await old.close()
                await kept.judged.wait()
                await new.close()
        finally:
            proxy.close()
            await proxy.wait_closed()
    [chat] = kept.results
    assert chat.rule_counts() == {"R8": 1}, chat.violations
    [offline] = check_files([tmp_path / "rec"], load_profile("netra"), Scenario(name="t", expect={"settle": "0.05s"}))
    assert [r.rule_counts() for r in offline.results] == [{"R8": 1}]


def test_a_verdict_judged_late_holds_no_stall_past_the_deadline():
    # R11 at the verdict measures the silence up to the chat's end, its deadline: a live client whose deadline timer
    # fired 0.3 s late (under load) had an R11 that `check`, judging at the deadline by the recorded times, had not.
    from harness.checker import ChatTracker

    profile = load_profile("netra")
    exp = Scenario(name="t", expect={"deadline": "2s", "stall_limit": "1.8s"}).expectations(profile)
    chat = ChatTracker("c1", exp, 100.0, scenario="t", thread_id="t1", run_id="r1")
    chat.feed(profile.decode(json.dumps({"type": "agent_started", "run_id": "r1", "thread_id": "t1", "seq": 1,
                                         "payload": {}}), 100.3))
    result = chat.finish(102.3)  # 2.0 s after the last event, 0.3 s after the deadline
    assert sorted(result.rule_counts()) == ["R10"], result.violations
    chat = ChatTracker("c2", exp, 100.0, scenario="t", thread_id="t1", run_id="r1")
    chat.feed(profile.decode(json.dumps({"type": "agent_started", "run_id": "r1", "thread_id": "t1", "seq": 1,
                                         "payload": {}}), 100.1))
    assert sorted(chat.finish(102.0).rule_counts()) == ["R10", "R11"]  # 1.9 s of silence by the deadline: a stall


@pytest.mark.parametrize("fault", ["refuse=0.3", "refuse=1"])
def test_the_cli_run_record_then_check_agree(tmp_path, fault):
    # The commands themselves: `chatprobe run errors --record DIR --json live.json`, then `chatprobe check DIR
    # --scenario errors --json offline.json`: the same chats (outcome, error kind, rules) and the same exit code.
    def chats(path: Path) -> Counter:
        doc = json.loads(path.read_text())
        return Counter((c["run_id"] or "", c["outcome"], c.get("error_kind") or "",
                        tuple(sorted(v["rule"] for v in c["violations"])))
                       for sc in doc["scenarios"] for c in sc["chats"])

    cli = [sys.executable, "-m", "harness"]
    live = subprocess.run([*cli, "run", "errors", "--sim-fault", fault, "--sim-seed", "3", "--record",
                           str(tmp_path / "rec"), "--json", str(tmp_path / "live.json"), "-q"],
                          capture_output=True, text=True, timeout=120)
    offline = subprocess.run([*cli, "check", str(tmp_path / "rec"), "--scenario", "errors", "--json",
                              str(tmp_path / "offline.json"), "-q"], capture_output=True, text=True, timeout=120)
    assert live.returncode in (0, 1, 3), live.stderr[-2000:]
    assert offline.returncode == live.returncode, (live.stdout[-1500:], offline.stdout[-1500:], offline.stderr[-800:])
    assert chats(tmp_path / "offline.json") == chats(tmp_path / "live.json")
    if fault == "refuse=1":
        assert live.returncode == 3


@contextlib.asynccontextmanager
async def reads_nothing(welcome: dict) -> AsyncIterator[str]:
    """A raw WebSocket server that takes the upgrade, sends `welcome` and then reads nothing more, its receive buffer
    4 KiB (a large message fills the kernel's buffers and the client's send stalls), until the block ends: its URL."""
    done = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(upgrade(await reader.readuntil(b"\r\n\r\n")) + frame(0x1, json.dumps(welcome).encode()))
        await done.wait()  # reads nothing more until the test ends
        writer.transport.abort()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the accepted connections
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(never_reads, sock=sock)
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/ws"
    finally:
        done.set()
        server.close()
        await server.wait_closed()


async def test_a_send_the_server_never_reads_is_a_send_failed_error_offline_as_live(tmp_path):
    # A server that takes the upgrade, welcomes, and then reads nothing more (a receive buffer of 4 KiB): the chat's
    # message (3.2 MB) fills the kernel's buffers and the client's send stalls for connect_timeout: a `send_failed`
    # error chat live (the websockets client, which `compression: deflate` picks: its send waits for the socket).
    # The recording said only "send" and then the client's close: offline an abandoned chat that passed.
    # (Then, in the whole suite, on a busy machine: offline incomplete, R10, where live was send_failed. Scrubbing the
    # frame for the recording costs in proportion to the secrets the process has registered, and the suite's process
    # had registered one fresh secret per agentsim it started: with 150 of them, 30 s for this frame, the send
    # record stamped before it and the send_failed record after the chat's 30 s deadline, which `check` judged first;
    # test_a_send_failed_after_a_slow_scrub_is_the_error_live_judged holds that recording. The secrets of the tests
    # before are forgotten here, as tests/harness/test_redact.py forgets them, so that this test's scrub takes what a
    # `chatprobe run` process's takes, well inside the deadlines below.)
    import base64
    import os

    from harness import redact

    redact.forget_all()
    async with reads_nothing(NetraServer().welcome) as url:
        target = Target(url=url, profile=load_profile("netra"), name="raw")
        sc = scenario(users=1, chats_per_user=1, message=base64.b64encode(os.urandom(2_400_000)).decode(),
                      connect_timeout="0.5s", compression="deflate", expect={"settle": "0.05s", "deadline": "30s"})
        async with asyncio.timeout(40):  # a hang fails the test (scrubbing 3 MB for the recording takes seconds)
            live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    assert [(r.outcome, r.error_kind) for r in live.results] == [(Outcome.ERROR, "send_failed")]
    assert "did not leave within" in live.results[0].error, live.results[0].error  # a stall, not a closed connection
    assert_parity(live, offline)
    [failed] = [json.loads(line) for f in (tmp_path / "rec").glob("*.jsonl") for line in f.read_text().splitlines()
                if '"failed"' in line]
    assert failed["failed"] == "send_failed" and failed["dir"] == "close"


def test_a_send_failed_record_fails_the_chat_whose_send_it_names_not_one_sent_in_between(tmp_path):
    # Two chats on one connection (parallel_chats): m1's message is sent and stalls; m2's is sent meanwhile (its send
    # record comes in between); m1's send fails (send_failed); m2's goes and its run passes. The record names its send
    # (`send`: the connection's first send record), as `--record` writes it: `check` failed m2 instead, the last chat
    # nothing had answered, and left m1 waiting, given m2's run (whose events name m2's message: an R8 to m1).
    def send(t: float, mid: str) -> dict:
        return {"t": t, "dir": "send", "conn": "c",
                "frame": json.dumps({"type": "user_message", "payload": {"content": "hi", "message_id": mid}})}

    welcome = {"t": 0.5, "dir": "recv", "conn": "c", "frame": json.dumps({"type": "connection_established"})}
    failed = {"t": 1.6, "dir": "close", "conn": "c", "failed": "send_failed", "send": 1,
              "reason": "the frame did not leave within 0.5s (the server read nothing)"}
    events = [{"t": 2.0 + i / 10, "dir": "recv", "conn": "c", "frame": json.dumps(
        {"type": kind, "run_id": "r2", "seq": i + 1, "payload": {"message_id": "m2"}})}
        for i, kind in enumerate(["agent_started", "agent_thinking", "tool_executing", "tool_completed",
                                  "agent_completed"])]
    sc = Scenario(name="t", expect={"streaming": False, "settle": "0.05s", "deadline": "5s"})
    path = write_jsonl(tmp_path / "between.jsonl", [welcome, send(1.0, "m1"), send(1.1, "m2"), failed, *events,
                                                    {"t": 4.0, "dir": "close", "conn": "c", "code": 1000,
                                                     "by": "client"}])
    [run] = check_files([path], load_profile("netra"), sc)
    assert [(r.outcome.value, r.error_kind or "", r.run_id, r.rule_counts()) for r in run.results] == [
        ("error", "send_failed", None, {}), ("passed", "", "r2", {})], [(r.outcome, r.note, r.violations)
                                                                         for r in run.results]
    assert run.results[0].chat_id == "c#1" and not run.warnings  # m1's chat, the connection's first
    # A `send` that names no send record of a chat waiting for its send is the R12 a record with no chat is; one that
    # is not an ordinal is a record that cannot be read, an R12 naming the field.
    for bad, detail in [(7, "no chat waiting"), (0, "field 'send'"), ("1", "field 'send'"), (True, "field 'send'")]:
        odd = write_jsonl(tmp_path / "odd.jsonl", [welcome, send(1.0, "m1"), {**failed, "send": bad}])
        [run] = check_files([odd], load_profile("netra"), sc)
        reasons = [v.reason for r in run.results for v in r.violations if v.rule == "R12"]
        assert any(detail in reason for reason in reasons), (bad, reasons)


async def test_the_recording_names_the_send_that_failed_when_another_chat_sent_meanwhile(tmp_path):
    # Two chats in flight on one connection to a server that reads nothing (parallel_chats: 2): the first message
    # (3.2 MB) stalls, the second is sent behind it (its send record written while the first still waits), and each
    # send fails at its connect_timeout, the first first. Each `send_failed` record names the send record of the frame
    # that did not leave (the connection's first, then its second): written before as bare records, which `check`
    # charged to the last chat sent, not the chat whose send failed.
    import base64
    import os

    from harness import redact

    redact.forget_all()  # scrubbing the frames costs in proportion to the secrets registered (see the test above)
    async with reads_nothing({"type": "connection_established"}) as url:
        target = Target(url=url, profile=load_profile("netra"), name="raw")
        sc = scenario(users=1, chats_per_user=2, parallel_chats=2, connect_timeout="0.5s", compression="deflate",
                      message=base64.b64encode(os.urandom(2_400_000)).decode(),
                      expect={"settle": "0.05s", "deadline": "30s"})
        async with asyncio.timeout(40):  # a hang fails the test
            live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    assert [(r.outcome, r.error_kind) for r in live.results] == [(Outcome.ERROR, "send_failed")] * 2
    [records] = [[json.loads(line) for line in f.read_text().splitlines()] for f in (tmp_path / "rec").glob("*.jsonl")]
    kinds = [r.get("failed", r["dir"]) for r in records if r["dir"] != "recv"]
    assert kinds[:3] == ["send", "send", "send_failed"], kinds  # the second chat's send record came in between
    assert [r.get("send") for r in records if r.get("failed") == "send_failed"] == [1, 2]
    assert_parity(live, offline)


@pytest.mark.parametrize("record_all", [True, False], ids=["record-all", "record"])
async def test_a_message_a_browser_sends_again_through_the_proxy_is_one_chat_live_and_in_check(tmp_path, record_all):
    # (`record`: the proxy's --record without --record-all keeps the connections of chats that did not pass, and that
    # of a chat held for a resend; the connection the resent chat passed on was not kept, so `check` of the recording
    # judged the first try alone, never sent again: incomplete where the proxy counted a pass.)
    # agentsim takes a browser's message and, before any event of its run, goes away (a deploy: its connections closed
    # with 1001); the browser reconnects through the proxy to the new agentsim and sends the message again, same ids.
    # The harness's own client counts that as one chat (docs/protocol.md, "Outcomes"), and so did `check` of the
    # proxy's recording; the proxy counted two (an incomplete one, then a passing one).
    from prometheus_client import CollectorRegistry
    from websockets.asyncio.client import connect

    from agentsim.server import AgentSim, SimConfig
    from harness.checker import Expectations
    from harness.events import DEFAULT_REQUIRED
    from monitors.metrics import ChatMetrics, MetricsSink
    from monitors.proxy import LiveChats, Proxy, start_proxy

    results: list = []
    started, judged = asyncio.Event(), asyncio.Event()

    class Kept(MetricsSink):
        def chat_started(self, scenario):
            started.set()
            super().chat_started(scenario)

        def chat_finished(self, result):
            results.append(result)
            judged.set()
            super().chat_finished(result)

    secret = "s" * 40
    first = AgentSim(SimConfig(port=0, jwt_secret=secret, think=0.002, tool_latency=0.001, seed=3,
                               faults=["delay_first=60s@1.0"]))  # no event of the run comes before it goes away
    await first.start()
    port = first.port
    exp = Expectations(required=frozenset(DEFAULT_REQUIRED), deadline=10.0)
    live = LiveChats(load_profile("netra"), Kept(ChatMetrics(CollectorRegistry()), "up", "live"), exp, "live", 0.05,
                     recorder=Recorder(tmp_path / "rec", keep_all=record_all))
    proxy = await start_proxy(Proxy(f"ws://127.0.0.1:{port}", live), "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{proxy.sockets[0].getsockname()[1]}/ws"
    headers = {"Authorization": f"Bearer {TokenProvider(jwt_secret=secret).for_user('u-1')}"}
    message = json.dumps({"type": "user_message", "payload": {"content": "What is 2 * 3?", "thread_id": "t-1",
                                                              "message_id": "m-1"}})
    second = None
    try:
        async with asyncio.timeout(20):  # a hang fails the test
            browser = await connect(url, additional_headers=headers, ping_interval=None, close_timeout=1)
            assert json.loads(await browser.recv())["type"] == "connection_established"
            await browser.send(message)
            await started.wait()  # the proxy has the chat
            await first.stop()  # closes its connections (1001) before any event of the run
            await browser.wait_closed()
            assert browser.close_code == 1001
            second = AgentSim(SimConfig(port=port, jwt_secret=secret, think=0.002, tool_latency=0.001, seed=3))
            await second.start()
            browser = await connect(url, additional_headers=headers, ping_interval=None, close_timeout=1)
            assert json.loads(await browser.recv())["type"] == "connection_established"
            await browser.send(message)  # sent again: the same message and thread ids
            while json.loads(await browser.recv()).get("type") != "agent_completed":
                pass
            await judged.wait()
            await browser.close()
    finally:
        proxy.close()
        await proxy.wait_closed()
        if second is not None:
            await second.stop()
    [chat] = results  # one chat, not an incomplete one and a passing one
    assert chat.outcome is Outcome.PASSED and any(w.rule == "R13" for w in chat.warnings)
    [offline] = check_files([tmp_path / "rec"], load_profile("netra"),
                            Scenario(name="t", expect={"settle": "0.05s", "deadline": "10s"}))

    def seen(rs):
        return [(r.outcome, r.rule_counts(), sorted(w.rule for w in r.warnings)) for r in rs]

    assert seen(offline.results) == seen(results)


async def one_raw_chat(handler, compression: str, directory: Path):
    """One chat (no reconnect) against a raw netra server on a loopback port (`handler`), recorded into `directory`,
    then the recording checked: the live run and the check. `compression: deflate` picks the websockets client, which
    the raw server answers without the extension; "none" picows."""
    sc = scenario(name="raw", users=1, chats_per_user=1, connect_timeout="1s", reconnect=False, message="hi",
                  compression=compression, expect={"deadline": "2s", "settle": "0.05s"})
    async with raw_server(handler) as server:
        target = Target(url=server.url, profile=load_profile("netra"), name="raw", recorder=Recorder(directory))
        async with asyncio.timeout(15):  # a hang fails the test
            live = await run_scenario(sc, target)
    [offline] = check_files([directory], target.profile, sc)
    return live, offline


async def rejects_then_runs(reader, writer, head: bytes, srv) -> None:
    """A raw netra server that answers the chat's message with an error_message naming no run and, in the same write
    (one socket read for the client), a whole run naming that message: the order `steps` met under load, a send_raw
    probe's answer that came after the probe was judged, taken by the next chat as its rejection, that chat's run
    behind it."""
    writer.write(upgrade(head) + frame(1, WELCOME))
    await writer.drain()
    _, data = await read_frame(reader)
    message_id = json.loads(data)["payload"]["message_id"]
    error = json.dumps({"type": "error_message", "error_code": "INVALID_MESSAGE", "error_message": "not now"}).encode()
    writer.write(b"".join(frame(1, f) for f in [error, *run_frames(message_id)]))
    await writer.drain()
    while (await read_frame(reader))[0] != 0x8:  # until the client closes, answered at once
        pass
    writer.write(frame(0x8, b"\x03\xe8"))
    await writer.drain()
    await read_until_gone(reader)


@pytest.mark.parametrize("compression", ["none", "deflate"], ids=["picows", "websockets"])
async def test_a_run_in_the_read_that_rejected_its_message_is_judged_offline_as_live(tmp_path, compression):
    # The error_message rejects the waiting chat (judged at once: nothing more of it is awaited), but the frames of
    # the same socket read reach it before its verdict live (the client routes a read's frames before the chat's turn
    # comes): it takes the run's id and events. Offline the chat was judged at the record after the error, before the
    # run's first event of that same read: `rejected` with no run id, the run's events warnings after its verdict.
    live, offline = await one_raw_chat(rejects_then_runs, compression, tmp_path / "rec")
    assert [(r.run_id, r.outcome, r.error_kind) for r in live.results] == [("r1", Outcome.ERROR, "rejected")]
    assert_parity(live, offline)
    assert not offline.warnings


async def welcomes_and_closes(reader, writer, head: bytes, srv) -> None:
    """A raw netra server that writes the upgrade, its welcome and a 1000 close in one write (one socket read for the
    client), then hangs up once the client answered the close."""
    writer.write(upgrade(head) + frame(1, WELCOME) + frame(0x8, b"\x03\xe8"))
    await writer.drain()
    await read_until_gone(reader)


@pytest.mark.parametrize("compression", ["none", "deflate"], ids=["picows", "websockets"])
async def test_a_close_read_with_the_welcome_is_said_to_come_after_it(tmp_path, compression):
    # The welcome came: the connection failed because it closed at once, not because no welcome was seen. Said
    # "closed before the welcome frame" on the code before, live and (through the recorded failure) offline.
    live, offline = await one_raw_chat(welcomes_and_closes, compression, tmp_path / "rec")
    for results in (live.results, offline.results):
        assert [(r.outcome, r.error_kind, r.error) for r in results] == [
            (Outcome.ERROR, "protocol_error", "closed right after the welcome frame (code 1000)")]
    assert_parity(live, offline)


def sse_answers_late(status: bytes | None):
    """A raw SSE server that reads a chat's POST and answers it with `status` (a refusal, no body) 1.5 s later, past
    the chat's 1 s deadline and within its 2 s connect_timeout; None: never answers (the client's connect_timeout)."""
    async def handler(reader, writer, head: bytes, srv) -> None:
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        if status is None:
            await read_until_gone(reader)  # until the client gives up and hangs up
            return
        await asyncio.sleep(1.5)  # wait-ok: the answer's lateness is the case under test
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await read_until_gone(reader)
    return handler


@pytest.mark.parametrize(("status", "kind"), [(None, "timeout"), (b"503 Service Unavailable", "refused"),
                                              (b"401 Unauthorized", "auth_failed")], ids=["unanswered", "503", "401"])
async def test_an_sse_request_answered_past_the_deadline_is_one_error_chat_live_and_in_check(tmp_path, status, kind):
    # Live, an SSE chat waits for its POST's answer up to connect_timeout, its deadline unwatched, and is one `error`
    # chat of the failure's kind. `check` judged the recorded request at its deadline first (incomplete: R9, R10),
    # then counted the close record's failure as an error chat more: two chats of one, and exit 1 for a live 3 or 2.
    sc = scenario(name="sse", users=1, chats_per_user=1, connect_timeout="2s", reconnect=False,
                  expect={"deadline": "1s", "first_event_limit": "1s", "settle": "0.05s"})
    async with raw_server(sse_answers_late(status)) as server:
        url = f"http://127.0.0.1:{server.port}/agent"
        target = Target(url=url, profile=load_profile("ag-ui"), name="sse", recorder=Recorder(tmp_path / "rec"))
        async with asyncio.timeout(15):  # a hang fails the test
            live = await run_scenario(sc, target)
    [offline] = check_files([tmp_path / "rec"], target.profile, sc)
    assert [(r.outcome, r.error_kind) for r in live.results] == [(Outcome.ERROR, kind)]
    assert_parity(live, offline)
    assert offline.stats.chats == live.stats.chats == 1


async def test_an_sse_streams_own_faults_are_judged_offline_with_the_reasons_given_live(tmp_path):
    """What the SSE parser finds wrong in a stream (an event's data that is not UTF-8, a line that is no SSE field) is
    an R12 live saying so; the recording wrote that text as a frame received, and `check` judged it as a frame of that
    text the server sent: "not JSON: 'event data is not valid UTF-8 …'", not the reason given live."""
    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        request = json.loads(await reader.readexactly(length))
        thread, run = request["threadId"], request["runId"]
        events = [b'{"type":"RUN_STARTED","threadId":"%s","runId":"%s"}' % (thread.encode(), run.encode()),
                  b'{"type":"TEXT_MESSAGE_START","messageId":"a","role":"assistant"}',
                  '{"type":"TEXT_MESSAGE_CONTENT","messageId":"a","delta":"café"}'.encode("latin-1"),
                  b'{"type":"TEXT_MESSAGE_CONTENT","messageId":"a","delta":"ok"}',
                  b'{"type":"RUN_FINISHED","threadId":"%s","runId":"%s"}' % (thread.encode(), run.encode())]
        body = b"".join(b"data: " + e + b"\n\n" for e in events[:4])
        body += b'Data: {"type":"TEXT_MESSAGE_END","messageId":"a"}\n\n' + b"data: " + events[4] + b"\n\n"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(stream, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"http://127.0.0.1:{port}/agent", profile=load_profile("ag-ui"), name="raw")
        sc = scenario(users=1, chats_per_user=1, message="hi", expect={"settle": "0.05s", "deadline": "3s"})
        async with asyncio.timeout(15):
            live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    [live_chat], [offline_chat] = live.results, offline.results
    said_live = sorted(v.reason for v in live_chat.violations if v.rule == "R12")
    assert len(said_live) == 2 and any("not valid UTF-8" in r for r in said_live), said_live
    assert any("is not an SSE field" in r for r in said_live), said_live
    assert sorted(v.reason for v in offline_chat.violations if v.rule == "R12") == said_live
    assert_parity(live, offline)
