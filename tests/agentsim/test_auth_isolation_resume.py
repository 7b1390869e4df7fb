"""JWT auth, per-user isolation under concurrency, and resume after a mid-run disconnect."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from pathlib import Path

import jwt
import pytest
import websockets

from .wsclient import chat, collect_runs, connect, gt_of, recv, send, wait_until

SECRET = "test-secret-of-at-least-32-bytes-long"


def token(sub="alice", secret=SECRET, exp_in=300.0, **claims):
    body = {"sub": sub, "exp": int(time.time() + exp_in), **claims}
    return jwt.encode(body, secret, algorithm="HS256")


@pytest.fixture
async def authsim(make_sim):
    return await make_sim(no_auth=False, jwt_secret=SECRET)


async def test_auth_by_header(authsim):
    ws, welcome = await connect(authsim.url, additional_headers={"Authorization": f"Bearer {token('bob')}"})
    async with ws:
        assert welcome["data"]["user_id"] == "bob"
        events = await chat(ws, "hi")
        assert {e["user_id"] for e in events} == {"bob"}


async def test_auth_by_subprotocol(authsim):
    encoded = base64.urlsafe_b64encode(token("carol").encode()).decode().rstrip("=")
    ws, welcome = await connect(authsim.url, subprotocols=["jwt-auth", f"jwt.{encoded}"])
    async with ws:
        assert ws.subprotocol == "jwt-auth"
        assert welcome["data"]["user_id"] == "carol"


@pytest.mark.parametrize("case", ["bad_signature", "missing", "expired", "garbage", "no_sub", "user_query"])
async def test_auth_rejected(authsim, case, caplog):
    caplog.set_level(logging.DEBUG)
    bad = {"bad_signature": token(secret="wrong-secret-of-at-least-32-bytes-long"), "expired": token(exp_in=-60),
           "garbage": "not.a.jwt", "no_sub": jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),
           }.get(case)
    kw = {"additional_headers": {"Authorization": f"Bearer {bad}"}} if bad else {}
    url = authsim.url + ("?user=alice" if case == "user_query" else "")
    async with websockets.connect(url, open_timeout=5, **kw) as ws:
        err = await recv(ws)
        assert err["type"] == "error_message" and err["error_code"] == "AUTH_FAILED" and err["error_message"]
        with pytest.raises(websockets.ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1008
    if bad:
        server_log = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("websockets.client"))
        assert bad not in server_log
        assert bad not in err["error_message"]
        assert bad not in Path(authsim.config.ground_truth).read_text()


async def test_isolation_50_concurrent_users(agentsim):
    """50 users, 2 connections each, 3 chats per connection at once: nobody ever sees a foreign event."""

    async def user(i: int):
        name = f"user-{i}"
        conns = [await connect(agentsim.url, name) for _ in range(2)]
        seen: list[tuple[str, dict]] = []
        started: dict[int, set[str]] = {0: set(), 1: set()}

        async def drive(k: int):
            ws = conns[k][0]
            for j in range(3):
                await send(ws, {"type": "user_message", "payload": {
                    "content": f"what is {i}*{j} #tools=2", "run_id": f"{name}-c{k}-{j}"}})
                started[k].add(f"{name}-c{k}-{j}")
            runs = await collect_runs(ws, 3, timeout=20)
            for events in runs.values():
                seen.extend((f"c{k}", e) for e in events)
            assert set(runs) == started[k]

        await asyncio.gather(drive(0), drive(1))
        for ws, _ in conns:
            await ws.close()
        return name, started, seen

    results = await asyncio.gather(*(user(i) for i in range(50)))
    total = 0
    for name, started, seen in results:
        for where, e in seen:
            k = int(where[1])
            assert e["user_id"] == name, f"foreign event delivered to {name}: {e}"
            assert e["run_id"] in started[k], f"{name} {where} got another connection's run {e['run_id']}"
            total += 1
    assert total >= 50 * 2 * 3 * 8
    # The ground truth agrees: no event was ever sent to a connection of another user.
    assert not [r for r in gt_of(agentsim) if r["kind"] == "event" and "to_user_id" in r]


async def test_resume_after_mid_run_disconnect(make_sim):
    sim = await make_sim(think=0.05)
    ws, _ = await connect(sim.url, "alice")
    await send(ws, {"type": "user_message", "payload": {"content": "hello #tools=3 #chunks=3",
                                                        "message_id": "m-9"}})
    first = await recv(ws)
    assert first["type"] == "agent_started" and first["seq"] == 1 and first["payload"]["message_id"] == "m-9"
    run_id = first["run_id"]
    await ws.close()
    # the run goes on server-side while nobody listens
    await wait_until(lambda: sim.runs[("alice", run_id)].last_seq >= 3, what="the run to progress")
    ws2, _ = await connect(sim.url, "alice")
    async with ws2:
        await send(ws2, {"type": "resume", "payload": {"run_id": run_id, "last_seq": 1}})
        runs = await collect_runs(ws2, 1)
    rest = runs[run_id]
    seqs = [1] + [e["seq"] for e in rest]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # every missed event, exactly once, in order
    assert rest[-1]["type"] == "agent_completed"
    gt = gt_of(sim)
    replayed = [r for r in gt if r["kind"] == "event" and r.get("replay")]
    live_after = [r for r in gt if r["kind"] == "event" and not r.get("replay") and r["seq"] > 1]
    assert replayed and live_after  # some events replayed, the rest delivered live on the new connection
    assert len({r["seq"] for r in replayed + live_after}) == len(replayed) + len(live_after)


async def test_resume_finished_run_replays_all(agentsim):
    ws, _ = await connect(agentsim.url, "alice")
    async with ws:
        events = await chat(ws, "hello")
        await send(ws, {"type": "resume", "payload": {"run_id": events[0]["run_id"], "last_seq": 0}})
        replay = (await collect_runs(ws, 1))[events[0]["run_id"]]
    assert [json.dumps(e) for e in replay] == [json.dumps(e) for e in events]


async def test_resume_unknown_or_foreign_run(agentsim):
    ws_a, _ = await connect(agentsim.url, "alice")
    ws_b, _ = await connect(agentsim.url, "mallory")
    async with ws_a, ws_b:
        events = await chat(ws_a, "secret stuff")
        for run_id in (events[0]["run_id"], "r-does-not-exist"):
            await send(ws_b, {"type": "resume", "payload": {"run_id": run_id, "last_seq": 0}})
            err = await recv(ws_b)
            assert err["type"] == "error_message" and err["error_code"] == "RESUME_UNKNOWN_RUN"
        await send(ws_b, {"type": "ping"})
        assert (await recv(ws_b))["type"] == "pong"  # nothing of alice's run was sent before


async def test_runs_are_bounded_and_expire(make_sim):
    sim = await make_sim(max_runs=5)
    ws, _ = await connect(sim.url, "alice")
    async with ws:
        first = await chat(ws, "one")
        for i in range(10):
            await chat(ws, f"more {i}")
        assert len(sim.runs) <= 5
        await send(ws, {"type": "resume", "payload": {"run_id": first[0]["run_id"], "last_seq": 0}})
        assert (await recv(ws))["error_code"] == "RESUME_UNKNOWN_RUN"
    sim2 = await make_sim(resume_ttl=0)
    ws, _ = await connect(sim2.url, "alice")
    async with ws:
        events = await chat(ws, "one")
        await wait_until(lambda: sim2.runs[("alice", events[0]["run_id"])].finished_at is not None, what="run end")
        await send(ws, {"type": "resume", "payload": {"run_id": events[0]["run_id"], "last_seq": 0}})
        assert (await recv(ws))["error_code"] == "RESUME_UNKNOWN_RUN"


async def test_run_event_buffer_bounded(make_sim):
    sim = await make_sim(max_events_per_run=4)
    ws, _ = await connect(sim.url, "alice")
    async with ws:
        events = await chat(ws, "hello #tools=5")
        assert len(sim.runs[("alice", events[0]["run_id"])].events) == 4
