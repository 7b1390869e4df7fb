"""agentsim under abuse: per-user run quotas, run ids scoped to their user, tokens without exp, start warnings."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

import jwt
import pytest
import websockets

from .wsclient import DEADLINE, collect_runs, connect, recv, send, wait_until

ROOT = Path(__file__).resolve().parents[2]
SECRET = "abuse-test-secret-of-at-least-32-bytes"
HOLD = "hold this run open #think=60"  # a run that stays live for the whole test (the sim cancels it at stop)


async def started_run(ws, content: str = HOLD, **ids) -> str:
    await send(ws, {"type": "user_message", "payload": {"content": content, **ids}})
    first = await recv(ws)
    assert first["type"] == "agent_started", first
    return first["run_id"]


async def flood(ws, n: int, content: str = HOLD) -> tuple[list[dict], list[dict]]:
    """Send n chats back to back, then read until each has its answer: (agent_started frames, error frames)."""
    for i in range(n):
        await send(ws, {"type": "user_message", "payload": {"content": f"{content} {i}"}})
    started, errors = [], []
    async with asyncio.timeout(DEADLINE):
        while len(started) + len(errors) < n:
            frame = await recv(ws)
            if frame["type"] == "agent_started":
                started.append(frame)
            elif frame["type"] == "error_message":
                errors.append(frame)
    return started, errors


def normalized(frame: dict, run_id: str) -> str:
    """An error frame with its timestamp dropped and the asked-for run id masked, to compare two answers."""
    rest = {k: v for k, v in frame.items() if k != "timestamp"}
    return json.dumps(rest, sort_keys=True).replace(json.dumps(run_id)[1:-1][:64], "<ID>")


# -- quotas ----------------------------------------------------------------------------------------------------

async def test_one_users_flood_never_evicts_another_users_live_run(make_sim):
    sim = await make_sim(max_runs=20, max_live_runs_per_user=5)
    bob, _ = await connect(sim.url, "bob")
    mallory, _ = await connect(sim.url, "mallory")
    async with bob, mallory:
        bob_run = await started_run(bob)
        started, errors = await flood(mallory, 60)
        # Mallory gets her quota and a clear refusal for the rest; the connection stays usable.
        assert len(started) == 5 and len(errors) == 55
        assert {e["error_code"] for e in errors} == {"QUOTA_EXCEEDED"}
        assert "5 runs in progress" in errors[0]["error_message"]
        await send(mallory, {"type": "ping"})
        assert (await recv(mallory))["type"] == "pong"
        # Bob's run is still live and his: a fresh connection resumes it and gets its first event again.
        assert sim.runs[("bob", bob_run)].finished_at is None
        bob2, _ = await connect(sim.url, "bob")
        async with bob2:
            await send(bob2, {"type": "resume", "payload": {"run_id": bob_run, "last_seq": 0}})
            replay = await recv(bob2)
            assert replay["type"] == "agent_started" and replay["run_id"] == bob_run
            # Bob is not charged for Mallory's flood: he can still chat to the end.
            await send(bob2, {"type": "user_message", "payload": {"content": "hi", "run_id": "bob-2"}})
            assert (await collect_runs(bob2, 1))["bob-2"][-1]["type"] == "agent_completed"


async def test_server_full_of_live_runs_refuses_with_server_busy(make_sim):
    sim = await make_sim(max_runs=6, max_live_runs_per_user=3)
    conns = [(await connect(sim.url, f"user-{i}"))[0] for i in range(3)]
    try:
        held = [await started_run(ws) for ws in conns[:2] for _ in range(3)]
        await send(conns[2], {"type": "user_message", "payload": {"content": HOLD}})
        err = await recv(conns[2])
        assert err["type"] == "error_message" and err["error_code"] == "SERVER_BUSY", err
        # Every run that was live is still there: nothing was evicted to make room.
        assert all(sim.runs[(f"user-{i // 3}", rid)].finished_at is None for i, rid in enumerate(held))
    finally:
        for ws in conns:
            await ws.close()


async def test_a_users_churn_evicts_only_their_own_finished_runs(make_sim):
    """Finished runs stay resumable for their TTL: another user's stream of chats does not push them out."""
    sim = await make_sim(max_runs=20, max_runs_per_user=5)
    bob, _ = await connect(sim.url, "bob")
    mallory, _ = await connect(sim.url, "mallory")
    async with bob, mallory:
        await send(bob, {"type": "user_message", "payload": {"content": "hello", "run_id": "bob-1"}})
        bob_events = (await collect_runs(bob, 1))["bob-1"]
        for i in range(40):
            await send(mallory, {"type": "user_message", "payload": {"content": "hi", "run_id": f"m-{i}"}})
            await collect_runs(mallory, 1)
        await wait_until(lambda: sim._live_total == 0, what="every run to finish")
        assert sum(user == "mallory" for user, _ in sim.runs) <= 5
        await send(bob, {"type": "resume", "payload": {"run_id": "bob-1", "last_seq": 0}})
        assert (await collect_runs(bob, 1))["bob-1"] == bob_events


async def test_every_way_a_run_ends_gives_its_live_slot_back_once(make_sim):
    """Runs ended normally, by a fatal agent error, under agentsim's own close fault (clean and reset), under the
    client's close, and resumed on a new connection: past 4 x max_runs of them no live run is left counted, and a
    new chat is served, not refused with SERVER_BUSY (a soak that slowed down was suspected of this)."""
    sim = await make_sim(max_runs=3, max_live_runs_per_user=3, max_runs_per_user=3, seed=5,
                         faults=["close=0.3", "close:abort=0.3"])
    messages = ("What is 3 * 4?", "What is 3 * 4? #fail-agent", "What is 3 * 4? #fail-tool")
    for i in range(4 * 3 * 3):
        ws, _ = await connect(sim.url, "u")
        async with ws:
            run_id = await started_run(ws, messages[i % 3])
            if i % 4 == 0:
                await ws.close()  # the client leaves mid-run
            else:
                try:
                    await collect_runs(ws, 1)
                except websockets.ConnectionClosed:  # agentsim's close fault
                    if i % 4 == 1:
                        again, _ = await connect(sim.url, "u")
                        async with again:
                            await send(again, {"type": "resume", "payload": {"run_id": run_id, "last_seq": 0}})
                            await collect_runs(again, 1)
        await wait_until(lambda: sim._live_total == 0, what="the run's live slot to be given back")
        assert sim._live == {} and len(sim.runs) <= 3
    assert sim.chats_started == sim.chats_finished == 36
    ws, _ = await connect(sim.url, "v")
    async with ws:
        await started_run(ws, "hello")


# -- run ids scoped to their user --------------------------------------------------------------------------------

async def test_another_users_run_id_answers_exactly_like_one_that_never_existed(make_sim):
    sim = await make_sim()
    alice, _ = await connect(sim.url, "alice")
    mallory, _ = await connect(sim.url, "mallory")
    async with alice, mallory:
        live = await started_run(alice, run_id="shared-1")  # a client-chosen id, still running
        await send(alice, {"type": "user_message", "payload": {"content": "done"}})
        finished = (await collect_runs(alice, 1))
        (done,) = finished
        answers = {}
        for label, run_id in (("live", live), ("finished", done), ("never-1", "r-0123456789abcdef"),
                              ("never-2", "shared-2")):
            await send(mallory, {"type": "resume", "payload": {"run_id": run_id, "last_seq": 0}})
            frame = await recv(mallory)
            assert frame["error_code"] == "RESUME_UNKNOWN_RUN", frame
            answers[label] = normalized(frame, run_id)
        assert len(set(answers.values())) == 1, answers
        # Mallory may even use Alice's run id for a chat of her own: it names her run, not Alice's.
        await send(mallory, {"type": "user_message", "payload": {"content": "mine", "run_id": "shared-1"}})
        mine = (await collect_runs(mallory, 1))["shared-1"]
        assert {e["user_id"] for e in mine} == {"mallory"} and mine[-1]["type"] == "agent_completed"
        # Reusing her own live id is refused, naming only her own run.
        await send(alice, {"type": "user_message", "payload": {"content": "again", "run_id": "shared-1"}})
        err = await recv(alice)
        assert err["error_code"] == "INVALID_MESSAGE" and "already in use" in err["error_message"]
        assert sim.runs[("alice", "shared-1")].finished_at is None  # Alice's run untouched by Mallory's
        await send(alice, {"type": "resume", "payload": {"run_id": "shared-1", "last_seq": 0}})
        assert (await recv(alice))["user_id"] == "alice"


# -- tokens without exp ----------------------------------------------------------------------------------------

def bearer(claims: dict, secret: str = SECRET) -> dict:
    return {"additional_headers": {"Authorization": "Bearer " + jwt.encode(claims, secret, algorithm="HS256")}}


async def test_token_without_exp_is_refused(make_sim):
    sim = await make_sim(no_auth=False, jwt_secret=SECRET)
    async with websockets.connect(sim.url, open_timeout=5, **bearer({"sub": "alice"})) as ws:
        err = await recv(ws)
        assert err["error_code"] == "AUTH_FAILED" and "exp" in err["error_message"]
        with pytest.raises(websockets.ConnectionClosed):
            await recv(ws)
        assert ws.close_code == 1008
    ws, welcome = await connect(sim.url, **bearer({"sub": "alice", "exp": int(time.time()) + 60}))
    async with ws:
        assert welcome["data"]["user_id"] == "alice"


async def test_allow_no_exp_accepts_them(make_sim):
    sim = await make_sim(no_auth=False, jwt_secret=SECRET, allow_no_exp=True)
    ws, welcome = await connect(sim.url, **bearer({"sub": "alice"}))
    async with ws:
        assert welcome["data"]["user_id"] == "alice"


async def test_chatprobes_own_tokens_carry_exp_and_are_accepted(make_sim):
    try:
        from harness.targets import TokenProvider
    except ImportError:  # before the harness restructuring lands
        from harness.client import TokenProvider
    token = TokenProvider(jwt_secret=SECRET).for_user("alice")
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["exp"] > time.time()
    sim = await make_sim(no_auth=False, jwt_secret=SECRET)
    ws, welcome = await connect(sim.url, additional_headers={"Authorization": f"Bearer {token}"})
    async with ws:
        assert welcome["data"]["user_id"] == "alice"


# -- warnings at start (the real command line) -----------------------------------------------------------------

async def start_cli(*args: str, env: dict | None = None) -> tuple[asyncio.subprocess.Process, str]:
    environment = {k: v for k, v in os.environ.items() if k != "AGENTSIM_JWT_SECRET"}
    environment.update(env or {}, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agentsim", "--port", "0", "--think", "0", "--tool-latency", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environment, cwd=str(ROOT))
    async with asyncio.timeout(15):
        line = (await proc.stdout.readline()).decode()
    assert "agentsim listening on ws://" in line, line
    return proc, line.split()[-1]


async def stop_cli(proc: asyncio.subprocess.Process) -> list[str]:
    proc.terminate()
    async with asyncio.timeout(15):
        _, err = await proc.communicate()
    return err.decode().splitlines()


DEV_SECRET = "chatprobe-dev-secret"


@pytest.mark.parametrize("args, env, secret, needle", [
    (["--no-auth"], {}, None, "--no-auth"),
    ([], {}, DEV_SECRET, "built-in development secret"),
    ([], {"AGENTSIM_JWT_SECRET": DEV_SECRET}, DEV_SECRET, "built-in development secret"),
    (["--jwt-secret", SECRET, "--host", "0.0.0.0"], {}, SECRET, "--host 0.0.0.0 is not loopback"),
    (["--jwt-secret", SECRET, "--allow-no-exp"], {}, SECRET, "--allow-no-exp"),
])
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the short development secret
async def test_unsafe_settings_warn_once_at_start(args, env, secret, needle):
    proc, url = await start_cli(*args, env=env)
    try:
        # It serves all the same (a real connection), and says why it is unsafe on exactly one stderr line.
        if secret is None:
            ws, _ = await connect(url, "alice")
        else:
            ws, _ = await connect(url, **bearer({"sub": "alice", "exp": int(time.time()) + 60}, secret))
        await ws.close()
    finally:
        lines = await stop_cli(proc)
    warnings = [line for line in lines if line.startswith("agentsim: warning:")]
    assert len(warnings) == 1 and needle in warnings[0], lines


async def test_safe_settings_print_no_warning():
    proc, url = await start_cli("--jwt-secret", SECRET, "--host", "127.0.0.1")
    try:
        ws, _ = await connect(url, **bearer({"sub": "alice", "exp": int(time.time()) + 60}))
        await ws.close()
    finally:
        lines = await stop_cli(proc)
    assert not [line for line in lines if "warning" in line], lines
