"""Servers that break a rule in ways an earlier chatprobe let pass: each raw server here breaks one, over a real
socket, and the verdict must name it (or, for what comes after a verdict, show it)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.events import Outcome

from .test_misbehaving_server import WELCOME, quick, rules, run_against


def run_frames(run_id: str, mid: str | None, *, user: str | None = None, thread: str | None = None,
               parent: str | None = None, start: int = 1, error: bool | None = None) -> list[str]:
    """A clean netra run (started, thinking, tool, result, completed); `error`: a recoverable (True) or fatal
    (False) agent_error after the thinking (fatal: the run ends there)."""
    def ev(kind: str, seq: int, **payload):
        frame = {"type": kind, "seq": seq, "payload": payload}
        if run_id:
            frame["run_id"] = run_id
        for key, value in (("user_id", user), ("thread_id", thread), ("parent_run_id", parent)):
            if value is not None:
                frame[key] = value
        return json.dumps(frame)

    out = [ev("agent_started", start, message_id=mid), ev("agent_thinking", start + 1)]
    if error is not None:
        out.append(ev("agent_error", start + 2, is_recoverable=error, error_message="tool failed"))
        if not error:
            return out
    n = len(out) + start
    out += [ev("tool_executing", n, tool_name="calc", tool_call_id="t1"),
            ev("tool_completed", n + 1, tool_name="calc", tool_call_id="t1"),
            ev("agent_completed", n + 2, result="42")]
    return out


async def test_a_close_right_after_an_expected_fatal_error_is_r13():
    async def handler(ws):
        await ws.send(WELCOME)
        msg = json.loads(await ws.recv())
        for frame in run_frames(msg["payload"]["run_id"], msg["payload"]["message_id"], error=False):
            await ws.send(frame)
        await ws.close(1000)  # R13: the connection must stay open after the error

    run = await run_against(handler, quick(client_run_id=True, steps=[{"chat": {"expect_error": "fatal"}}]))
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and "R13" in rules(run), r
    assert any("stay open" in v.reason for v in r.violations)


async def test_a_close_right_after_answering_an_invalid_message_is_r13():
    async def handler(ws):
        await ws.send(WELCOME)
        await ws.recv()
        await ws.send(json.dumps({"type": "error_message", "error_code": "INVALID_MESSAGE", "error_message": "bad"}))
        await ws.close(1000)

    run = await run_against(handler, quick(steps=[{"send_raw": "this is not json"}]))
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and "R13" in rules(run), r


async def test_an_invalid_message_answered_on_an_open_connection_passes():
    async def handler(ws):
        await ws.send(WELCOME)
        await ws.recv()
        await ws.send(json.dumps({"type": "error_message", "error_code": "INVALID_MESSAGE", "error_message": "bad"}))
        await ws.wait_closed()

    run = await run_against(handler, quick(steps=[{"send_raw": "this is not json"}]))
    assert [r.outcome for r in run.results] == [Outcome.PASSED], run.results


async def test_a_recoverable_error_does_not_meet_an_expected_fatal_one():
    async def handler(ws):
        await ws.send(WELCOME)
        msg = json.loads(await ws.recv())
        for frame in run_frames(msg["payload"]["run_id"], msg["payload"]["message_id"], error=True):
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler, quick(client_run_id=True, steps=[{"chat": {"expect_error": "fatal"}}]))
    (r,) = run.results
    assert r.outcome is Outcome.FAILED
    assert any(v.rule == "R13" and "recoverable" in v.reason for v in r.violations), r.violations


async def test_netra_events_that_name_only_the_thread_are_not_this_clients():
    async def handler(ws):
        await ws.send(WELCOME)
        msg = json.loads(await ws.recv())
        # No run id in any event, only the client's own thread: netra names the run in every event (R8).
        for frame in run_frames("", msg["payload"]["message_id"], thread=msg["payload"]["thread_id"]):
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler, quick(client_run_id=True))
    (r,) = run.results
    assert r.outcome is not Outcome.PASSED
    assert any(v.rule == "R8" and "names the run in every event" in v.reason for v in r.violations), r.violations


async def test_a_netra_run_the_client_did_not_start_is_no_chat_of_its_own_even_naming_a_parent():
    async def handler(ws):
        await ws.send(WELCOME)
        msg = json.loads(await ws.recv())
        run_id, thread = msg["payload"]["run_id"], msg["payload"]["thread_id"]
        frames = run_frames(run_id, msg["payload"]["message_id"], thread=thread)
        # An unasked second run on the same thread, naming the finished one as its parent (AG-UI's multi-run rule).
        frames += run_frames("r-unasked", None, thread=thread, parent=run_id, start=6)
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler, quick(client_run_id=True, expect={"deadline": "1s", "settle": "0.5s"}))
    assert len(run.results) == 1, [r.chat_id for r in run.results]  # one chat asked, one judged
    (r,) = run.results
    assert r.outcome is Outcome.FAILED and {"R3", "R4"} <= rules(run), r.violations


async def test_a_control_frame_naming_another_user_is_cross_talk():
    async def handler(ws):
        await ws.send(WELCOME)  # this connection is user "u"
        msg = json.loads(await ws.recv())
        frames = run_frames(msg["payload"]["run_id"], msg["payload"]["message_id"])
        frames.insert(2, json.dumps({"type": "system_message", "user_id": "someone-else",
                                     "payload": {"content": "someone else's order history"}}))
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler, quick(client_run_id=True))
    (r,) = run.results
    assert r.outcome is Outcome.FAILED
    assert any(v.rule == "R8" and "system_message" in v.reason for v in r.violations), r.violations


async def test_an_event_after_a_chats_verdict_shows_with_it_as_a_warning():
    async def handler(ws):
        await ws.send(WELCOME)
        first = json.loads(await ws.recv())
        for frame in run_frames(first["payload"]["run_id"], first["payload"]["message_id"]):
            await ws.send(frame)
        second = json.loads(await ws.recv())  # sent once the first chat was judged (a user who thinks waits it out)
        # A second agent_completed of the first run, long past its settle window.
        await ws.send(run_frames(first["payload"]["run_id"], None)[-1])
        for frame in run_frames(second["payload"]["run_id"], second["payload"]["message_id"]):
            await ws.send(frame)
        await ws.wait_closed()

    run = await run_against(handler, quick(client_run_id=True, chats_per_user=2, think_time="0s"))
    first, second = run.results
    # Its verdict was given (and counted) before: it stands, and the late event is not hidden in its event list.
    assert first.outcome is Outcome.PASSED and second.outcome is Outcome.PASSED
    assert [e.wire_type for e in first.events].count("agent_completed") == 2
    assert any(w.rule == "R3" and "after the chat was judged" in w.reason for w in first.warnings), first.warnings
    assert not second.warnings


@pytest.mark.parametrize("leave", [{"abandon_after": 1}, {"disconnect_after": 1}])
def test_the_clients_own_close_is_no_r13_for_a_chat_still_settling_after_its_expected_error(tmp_path, leave):
    """The next chat of the user leaves (or drops the socket) while the expected-error chat listens out its settle
    window in the background: the connection closed, but by the client, not the server."""
    step = json.dumps({"message": "Compute 5 * 5 and look up the capital of Spain. #tools=2", **leave})
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: s\nusers: 1\nsteps:\n"
                        '  - chat: {message: "Look up the capital of Peru. #fail-tool", expect_error: recoverable}\n'
                        f"  - chat: {step}\nexpect: {{settle: 3s}}\n")
    report = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(scenario), "--json", str(report), "-q"],
                          capture_output=True, text=True, timeout=120)
    [run] = json.loads(report.read_text())["scenarios"]
    assert [(c["outcome"], c["violations"]) for c in run["chats"]] == [("passed", []), ("passed", [])], run["chats"]
    assert proc.returncode == 0, proc.stderr[-2000:]


async def test_an_anonymous_user_named_anew_on_each_connection_is_no_cross_talk():
    """agentsim --no-auth names each connection's user anew (anon-…): after a chat the client abandons, the next
    chat's connection is another user's by its welcome, and its events are that user's, not cross-talk (R8)."""
    import asyncio

    from agentsim.server import AgentSim, SimConfig
    from harness.profiles import load_profile
    from harness.runner import run_scenario
    from harness.targets import Target

    sim = AgentSim(SimConfig(host="127.0.0.1", port=0, no_auth=True, think=0, tool_latency=0))
    await sim.start()
    try:
        target = Target(url=sim.url, profile=load_profile("netra"), name="sim")
        scenario = quick(steps=[{"chat": {"abandon_after": 1}}, {"chat": {}}, {"chat": {}}],
                         expect={"deadline": "10s", "settle": "0.05s"})
        async with asyncio.timeout(30):
            run = await run_scenario(scenario, target)
    finally:
        await sim.stop()
    assert [r.outcome for r in run.results] == [Outcome.PASSED] * 3, [(r.outcome, r.violations) for r in run.results]
    assert not rules(run)


def test_a_recorded_abandoned_chat_is_judged_offline_as_it_was_live(tmp_path):
    """`run --record` then `check`: the client's own close is recorded as such ("by": "client"), so the chat it left
    is abandoned offline too (it was "incomplete: the connection was lost and no resume was recorded")."""
    from harness.cli import main

    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: s\nusers: 1\nsteps:\n  - chat: {abandon_after: 2}\n  - chat: {}\n")
    rec, live, offline = tmp_path / "rec", tmp_path / "live.json", tmp_path / "offline.json"
    assert main(["run", str(scenario), "--record", str(rec), "--json", str(live), "-q"]) == 0
    assert any('"by": "client"' in f.read_text() for f in rec.iterdir())
    assert main(["check", str(rec), "--scenario", str(scenario), "--json", str(offline), "-q"]) == 0

    def outcomes(path):
        [run] = json.loads(path.read_text())["scenarios"]
        return sorted((c["outcome"], "abandoned" in c["note"]) for c in run["chats"])

    assert outcomes(offline) == outcomes(live) == [("passed", False), ("passed", True)]
