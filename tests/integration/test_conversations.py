"""Multi-turn conversations (a chat step's `thread: continue`, docs/scenarios.md): a follow-up turn goes on the
previous chat's thread on the same user's connection (netra: the same thread_id; AG-UI, stateless: the same threadId
with the conversation so far in RunAgentInput.messages), judged by every rule, live and from its recording alike.

Real agentsim on a loopback port, and tiny raw `websockets` servers written here for what agentsim does not do (answer
the follow-up on another thread). Every wait is bounded (run_against's 15 s, the scenarios' deadlines).

FAILED on the code before this file (`thread` was an unknown key of a chat step: exit 2 for every scenario here; no
chat could reuse a thread, so no follow-up turn was ever sent)."""
from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from agentsim.server import SimConfig, run_in_thread
from harness.events import Outcome
from harness.gevent_client import SyncSession
from harness.offline import check_files
from harness.profiles import load_profile
from harness.recorder import Recorder
from harness.runner import run_scenario
from harness.scenario import Scenario
from harness.sinks import Sink
from harness.targets import Target, TokenProvider

from .conftest import ground_truth
from .test_agui_faults_vs_ground_truth import AguiSimCtx
from .test_netra_conformance import verdicts
from .test_record_check_parity import assert_parity, live_and_offline

TWO_TURNS = {
    "name": "two_turns",
    "users": 2,
    "expect": {"settle": "0.05s", "deadline": "3s"},
    "steps": [
        {"chat": {"message": "What is 17 * 23?"}},
        {"chat": {"message": "And the capital of France?", "thread": "continue"}},
    ],
}


def conversation(**kw) -> Scenario:
    return Scenario.model_validate({**TWO_TURNS, **kw})


def sent_requests(directory: Path) -> list[dict]:
    """The chat requests `--record` wrote, in the order they were sent."""
    out = []
    for f in sorted(directory.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("dir") == "send":
                out.append((rec["t"], json.loads(rec["frame"])))
    return [frame for _, frame in sorted(out, key=lambda x: x[0])]


async def test_two_turns_on_one_thread_pass_against_agentsim(sim_factory):
    async with sim_factory() as (_sim, target, gt):
        run = await run_scenario(conversation(), target)
    assert run.passed and len(run.results) == 4, verdicts(run)
    started = [r for r in ground_truth(gt) if r.get("kind") == "run_started"]
    # agentsim ran both turns of each user on the thread of its first: two runs per thread, two threads
    threads: dict[str, set[str]] = {}
    for rec in started:
        threads.setdefault(rec["thread_id"], set()).add(rec["run_id"])
    assert sorted(len(runs) for runs in threads.values()) == [2, 2], started
    assert {r.thread_id for r in run.results} == set(threads)
    # …and on the user's one connection
    assert len({rec["connection_id"] for rec in started}) == 2


async def test_a_turn_continues_after_a_failed_one_on_the_same_thread(sim_factory):
    # docs/scenarios.md: a continued turn goes on with the thread whatever the previous turn's verdict.
    sc = conversation(users=1, steps=[{"chat": {"message": "Compute 1 + 1. #fail-agent"}},
                                      {"chat": {"message": "Try again?", "thread": "continue"}}])
    async with sim_factory() as (_sim, target, _gt):
        run = await run_scenario(sc, target)
    first, second = sorted(run.results, key=lambda r: r.sent_at)
    assert first.outcome is Outcome.FAILED and "R13" in first.rule_counts()
    assert second.outcome is Outcome.PASSED and second.thread_id == first.thread_id


@pytest.mark.parametrize("ws", [False, True], ids=["sse", "ws"])
async def test_agui_follow_up_carries_the_conversation_so_far(tmp_path, ws):
    # AG-UI's requests are stateless: turn 2 names turn 1's threadId and sends turn 1's user message and the
    # assistant's text of its run (TEXT_MESSAGE_CONTENT deltas, as agentsim streamed them) before its own.
    sc = conversation(users=1, expect={"settle": "0.05s", "deadline": "5s", "streaming": True})
    async with AguiSimCtx(tmp_path, ws=ws) as (_sim, target, _gt):
        live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    assert live.passed and len(live.results) == 2, verdicts(live)
    assert_parity(live, offline)
    first, second = sent_requests(tmp_path / "rec")
    assert second["threadId"] == first["threadId"] and second["runId"] != first["runId"]
    said = "".join(json.loads(json.loads(line)["frame"]).get("delta", "")
                   for f in (tmp_path / "rec").glob("*.jsonl") for line in f.read_text().splitlines()
                   if json.loads(line).get("dir") == "recv" and first["runId"] in json.loads(line)["frame"]
                   and "TEXT_MESSAGE_CONTENT" in json.loads(line)["frame"])
    assert said, "agentsim streamed no text"
    assert [(m["role"], m["content"]) for m in second["messages"]] == [
        ("user", "What is 17 * 23?"), ("assistant", said), ("user", "And the capital of France?")]
    assert second["messages"][0] == first["messages"][0]


@pytest.mark.parametrize("fault", ["", "crosstalk=0.4", "close=0.3"], ids=lambda f: f or "no-fault")
async def test_a_conversation_is_judged_offline_as_live(sim_factory, tmp_path, fault):
    # `chatprobe run --record DIR` of a conversation, then `chatprobe check DIR --scenario SAME`: the same verdicts.
    sc = conversation(users=4, steps=[*TWO_TURNS["steps"],
                                      {"chat": {"message": "One more?", "thread": "continue", "repeat": 2}}])
    async with sim_factory(faults=[fault] if fault else []) as (_sim, target, _gt):
        live, offline = await live_and_offline(target, sc, tmp_path / "rec")
    assert_parity(live, offline)
    if not fault:
        assert live.passed and len(live.results) == 16
        assert all(len(set(threads)) == 1 for threads in _threads_per_user(live, 4))


def _threads_per_user(run, turns: int) -> list[list[str | None]]:
    by_thread: dict[str | None, int] = {}
    for r in run.results:
        by_thread[r.thread_id] = by_thread.get(r.thread_id, 0) + 1
    assert sorted(by_thread.values()) == [turns] * (len(run.results) // turns), by_thread
    return [[t] * n for t, n in by_thread.items()]


# --- a server that answers the follow-up on another thread: R8, live and offline -----------------------------------

WELCOME = {"type": "connection_established", "data": {"connection_id": "c-1", "user_id": "u-1"}}


async def netra_other_thread(ws: ServerConnection) -> None:
    """A netra server that answers each user's second message on a thread of its own (a mixed-up conversation
    store), every event otherwise as the protocol says."""
    await ws.send(json.dumps(WELCOME))
    n = 0
    async for raw in ws:
        msg = json.loads(raw)
        if msg.get("type") != "user_message":
            continue
        n += 1
        p = msg["payload"]
        thread = p["thread_id"] if n == 1 else "t-someone-elses"
        run_id = f"srv-run-{n}"
        for seq, (kind, fields) in enumerate([
                ("agent_started", {"message_id": p["message_id"]}), ("agent_thinking", {"thought": "hm"}),
                ("tool_executing", {"tool_name": "calc", "tool_call_id": "c1"}),
                ("tool_completed", {"tool_name": "calc", "tool_call_id": "c1", "result": 1}),
                ("agent_completed", {"result": "done"})], 1):
            await ws.send(json.dumps({"type": kind, "run_id": run_id, "thread_id": thread, "user_id": "u-1",
                                      "seq": seq, "payload": fields}))


async def agui_other_thread(ws: ServerConnection) -> None:
    """The same over AG-UI (WebSocket): the second RunAgentInput's run answered under another threadId."""
    n = 0
    async for raw in ws:
        inp = json.loads(raw)
        n += 1
        thread = inp["threadId"] if n == 1 else "t-someone-elses"
        ids = {"threadId": thread, "runId": inp["runId"]}
        for frame in ({"type": "RUN_STARTED", **ids},
                      {"type": "TEXT_MESSAGE_START", "messageId": f"a{n}", "role": "assistant"},
                      {"type": "TEXT_MESSAGE_CONTENT", "messageId": f"a{n}", "delta": f"answer {n}"},
                      {"type": "TEXT_MESSAGE_END", "messageId": f"a{n}"},
                      {"type": "RUN_FINISHED", **ids}):
            await ws.send(json.dumps({**frame, "timestamp": 1764000000000}))


@pytest.mark.parametrize("profile, handler", [("netra", netra_other_thread), ("ag-ui", agui_other_thread)],
                         ids=["netra", "ag-ui"])
async def test_a_follow_up_answered_on_another_thread_is_r8_live_and_offline(tmp_path, profile, handler):
    sc = conversation(users=1, connect_timeout="2s")
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        target = Target(url=f"ws://127.0.0.1:{port}/ws", profile=load_profile(profile), name="raw",
                        recorder=Recorder(tmp_path / "rec"))
        async with asyncio.timeout(15):  # a hang fails the test
            live = await run_scenario(sc, target)
    first, second = sorted(live.results, key=lambda r: r.sent_at)
    assert first.outcome is Outcome.PASSED, verdicts(live)
    assert second.outcome is Outcome.FAILED and "R8" in second.rule_counts(), verdicts(live)
    assert any("t-someone-elses" in v.reason for v in second.violations if v.rule == "R8")
    [offline] = check_files([tmp_path / "rec"], target.profile, sc)
    assert_parity(live, offline)
    # the follow-up was sent on the first turn's thread (what the server got wrong)
    requests = sent_requests(tmp_path / "rec")
    threads = [r["payload"]["thread_id"] if profile == "netra" else r["threadId"] for r in requests]
    assert threads[0] == threads[1] == first.thread_id



def test_the_locust_users_client_converses_as_run_does(tmp_path):
    # The Locust user's SyncSession plays the same UserScript: the follow-up on the first turn's thread, both passing.
    secret = secrets.token_urlsafe(32)
    gt = tmp_path / "gt.jsonl"
    sc = conversation(users=1)
    with run_in_thread(SimConfig(host="127.0.0.1", port=0, jwt_secret=secret, think=0.002, tool_latency=0.001,
                                 ground_truth=str(gt))) as sim:
        target = Target(url=sim.sim.url, profile=load_profile("netra"), name="agentsim",
                        tokens=TokenProvider(jwt_secret=secret))
        session = SyncSession(target, "u-sync", sc.name, Sink(), connect_timeout=5)
        script = sc.user_script(target.profile)
        try:
            results = [session.chat(call.content, call.expectations, call.options) for call in script.plan()]
        finally:
            session.close()
    assert [r.outcome for r in results] == [Outcome.PASSED, Outcome.PASSED], results
    assert results[0].thread_id == results[1].thread_id
    started = [r for r in ground_truth(gt) if r.get("kind") == "run_started"]
    assert len(started) == 2 and started[0]["thread_id"] == started[1]["thread_id"] == results[0].thread_id
