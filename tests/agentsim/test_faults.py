"""Each fault shows up at its configured rate, is visible on the wire, and is recorded in the ground truth."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
import websockets

from .wsclient import connect, gt_of, is_terminal, recv, send, wait_until

N_CHATS = 200
RATE = 0.3


def within_rate(k: int, n: int, p: float) -> bool:
    return abs(k - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 2


async def drive(sim, ws, n: int, prefix: str, content: str = "what is 2+2 #tools=2") -> list:
    """Start n chats at once on ws, read until the server finished them all, return every frame received."""
    base = sim.chats_finished
    frames: list = []
    pong = asyncio.Event()

    async def reader():
        while True:
            raw = await ws.recv()
            try:
                frame = json.loads(raw)
            except (ValueError, TypeError):
                frames.append(raw)
                continue
            if isinstance(frame, dict) and frame.get("type") == "pong":
                pong.set()
                return
            frames.append(frame)

    task = asyncio.create_task(reader())
    try:
        for i in range(n):
            await send(ws, {"type": "user_message", "payload": {"content": content, "run_id": f"{prefix}-{i}"}})
        await wait_until(lambda: sim.chats_finished >= base + n, what=f"{n} chats to finish")
        await send(ws, {"type": "ping"})  # answered after every event of the finished runs
        async with asyncio.timeout(10):
            await pong.wait()
    finally:
        task.cancel()
    return frames


def by_run(frames: list) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for f in frames:
        if isinstance(f, dict) and "run_id" in f and "seq" in f:
            runs.setdefault(f["run_id"], []).append(f)
    return runs


def faults(sim, name: str) -> list[dict]:
    return [r for r in gt_of(sim) if r["kind"] == "fault" and r["fault"] == name]


@pytest.mark.parametrize("spec", [
    "drop:tool_completed=0.3", "drop=0.3", "duplicate:agent_thinking=0.3", "duplicate=0.3", "swap=0.3",
    "swap:tool_executing=0.3", "after_terminal=0.3", "delay_first=0.001s@0.3", "stall=0.001s@0.3",
    "malformed:notjson=0.3", "malformed:binary=0.3", "malformed:notype=0.3", "malformed:unknowntype=0.3",
    "oversized=64KiB@0.3",
])
async def test_fault_rate_wire_and_ground_truth(make_sim, spec):
    sim = await make_sim(seed=11, faults=[spec])
    ws, _ = await connect(sim.url, "alice", max_size=None)
    async with ws:
        frames = await drive(sim, ws, N_CHATS, "r")
    name = spec.split("=")[0].split(":")[0].split("@")[0]
    recs = faults(sim, name)
    assert within_rate(len(recs), N_CHATS, RATE), f"{len(recs)} {name} faults in {N_CHATS} chats at rate {RATE}"
    assert len({r["run_id"] for r in recs}) == len(recs)  # at most once per chat
    hit = {r["run_id"]: r for r in recs}
    runs = by_run(frames)
    assert len(runs) == N_CHATS
    for run_id, events in runs.items():
        seqs = [e["seq"] for e in events]
        r = hit.get(run_id)
        if name in ("delay_first", "stall", "malformed", "oversized"):
            assert seqs == list(range(1, len(seqs) + 1))
        elif name == "drop":
            if r is None:
                assert seqs == list(range(1, len(seqs) + 1))
            else:
                assert r["seq"] not in seqs and sorted(seqs + [r["seq"]]) == list(range(1, len(seqs) + 2))
                if ":" in spec:
                    assert r["role"] == "tool_completed"
        elif name == "duplicate":
            if r is None:
                assert len(set(seqs)) == len(seqs)
            else:
                assert [s for s in seqs if seqs.count(s) > 1] == [r["seq"], r["seq"]]
                if ":" in spec:
                    assert next(e for e in events if e["seq"] == r["seq"])["type"] == "agent_thinking"
        elif name == "swap":
            if r is None:
                assert seqs == sorted(seqs)
            else:
                i = seqs.index(r["seq"])
                assert seqs[i - 1] == r["seq"] + 1 and sorted(seqs) == list(range(1, len(seqs) + 1))
        elif name == "after_terminal":
            term = next(i for i, e in enumerate(events) if is_terminal(e))
            assert len(events) - term - 1 == (1 if r else 0)
            if r:
                assert events[-1]["seq"] == r["seq"] == events[term]["seq"] + 1
    bad = [f for f in frames if not (isinstance(f, dict) and "run_id" in f)]
    if name == "malformed":
        kind = spec.split(":")[1].split("=")[0]
        assert len(bad) == len(recs)
        for f in bad:
            if kind == "notjson":
                assert isinstance(f, str)
            elif kind == "binary":
                assert isinstance(f, bytes)
            elif kind == "notype":
                assert "type" not in f
            else:
                assert f["type"] == "zz_agentsim_unknown"
    elif name == "oversized":
        assert len(bad) == len(recs) and all(len(json.dumps(f)) >= 64 * 1024 - 64 for f in bad)
    else:
        assert bad == []


async def test_delay_first_and_stall_take_their_time(make_sim):
    sim = await make_sim(seed=1, faults=["delay_first=0.3s@1", "stall=0.3s@1"])
    ws, _ = await connect(sim.url, "alice")
    async with ws:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await send(ws, {"type": "user_message", "payload": {"content": "hi"}})
        first = await recv(ws)
        assert first["type"] == "agent_started" and loop.time() - t0 >= 0.29
        gaps, last = [], loop.time()
        while not is_terminal(first):
            first = await recv(ws)
            gaps.append(loop.time() - last)
            last = loop.time()
        assert max(gaps) >= 0.29
    stall = faults(sim, "stall")[0]
    assert stall["duration"] == 0.3 and faults(sim, "delay_first")[0]["seq"] == 1


async def test_crosstalk_reaches_another_user(make_sim):
    sim = await make_sim(seed=5, faults=["crosstalk=0.3"])
    ws_a, _ = await connect(sim.url, "alice")
    ws_b, welcome_b = await connect(sim.url, "bob")
    async with ws_a, ws_b:
        await drive(sim, ws_a, N_CHATS, "x")
        await send(ws_b, {"type": "ping"})
        leaked = []
        while (f := await recv(ws_b))["type"] != "pong":
            leaked.append(f)
    recs = faults(sim, "crosstalk")
    assert within_rate(len(recs), N_CHATS, RATE)
    assert all(r["delivered"] and r["target_user_id"] == "bob" for r in recs)
    assert sorted((f["run_id"], f["seq"]) for f in leaked) == sorted((r["run_id"], r["seq"]) for r in recs)
    assert all(f["user_id"] == "alice" for f in leaked)
    foreign = [r for r in gt_of(sim) if r["kind"] == "event" and r.get("to_user_id") == "bob"]
    assert len(foreign) == len(recs) and {r["connection_id"] for r in foreign} == {welcome_b["data"]["connection_id"]}


@pytest.mark.parametrize("kind", ["clean", "abort"])
async def test_close_mid_run_then_resume(make_sim, kind):
    sim = await make_sim(seed=3, faults=[f"close:{kind}=0.3"])
    n = 60

    async def one(i: int):
        ws, _ = await connect(sim.url, f"u{i}")
        await send(ws, {"type": "user_message", "payload": {"content": "hi #tools=2", "run_id": f"run-{i}"}})
        events = []
        try:
            while True:
                e = await recv(ws)
                events.append(e)
                if is_terminal(e):
                    break
        except websockets.ConnectionClosed as exc:
            closed = exc
        else:
            await ws.close()
            return i, events, None
        # the server dropped us mid-run: resume from the last seq seen
        ws2, _ = await connect(sim.url, f"u{i}")
        async with ws2:
            await send(ws2, {"type": "resume", "payload": {"run_id": f"run-{i}", "last_seq": events[-1]["seq"]}})
            while not is_terminal(events[-1]):
                events.append(await recv(ws2))
        return i, events, closed

    results = await asyncio.gather(*(one(i) for i in range(n)))
    recs = {r["run_id"]: r for r in faults(sim, "close")}
    assert within_rate(len(recs), n, RATE)
    for i, events, closed in results:
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # resumed with nothing lost
        if f"run-{i}" in recs:
            assert closed is not None and events[recs[f"run-{i}"]["seq"] - 1]["seq"] == recs[f"run-{i}"]["seq"]
            if kind == "clean":
                assert closed.rcvd is not None and closed.rcvd.code == 1001
            else:
                assert closed.rcvd is None  # TCP reset: no close frame
        else:
            assert closed is None


async def test_oversized_default_breaks_a_default_client(make_sim):
    sim = await make_sim(seed=1, faults=["oversized@1"])
    ws, _ = await connect(sim.url, "alice")  # client max_size 1 MiB < 2 MiB frame
    await send(ws, {"type": "user_message", "payload": {"content": "hi"}})
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await recv(ws)
    assert info.value.sent is not None and info.value.sent.code == 1009  # "message too big"
    assert faults(sim, "oversized")[0]["value"] == 5 * 1024 * 1024


async def test_refuse_rate(make_sim):
    sim = await make_sim(seed=9, faults=["refuse=0.3"])
    refused = 0
    n = 150
    for _ in range(n):
        try:
            ws, _ = await connect(sim.url, "alice")
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == 503
            refused += 1
        else:
            await ws.close()
    assert within_rate(refused, n, RATE)
    assert len(faults(sim, "refuse")) == refused


async def test_same_seed_same_faults(make_sim):
    specs = ["drop=0.2", "duplicate=0.2", "swap=0.2", "after_terminal=0.2", "malformed:notype=0.2"]

    async def one(seed: int) -> list:
        sim = await make_sim(seed=seed, faults=specs, think="0-0.002", tool_latency="0-0.002")
        ws, _ = await connect(sim.url, "alice")
        async with ws:
            frames = await drive(sim, ws, 80, "s", content="hello #tools=2")
        recs = [r for r in gt_of(sim) if r["kind"] == "fault"]
        decided = sorted((r["run_id"], r["fault"], r["seq"]) for r in recs)
        wire = sorted((f["run_id"], f["seq"], f["type"]) for f in frames if isinstance(f, dict) and "seq" in f)
        return decided, wire

    first, second, other = await one(42), await one(42), await one(43)
    assert first == second
    assert first[0] and first[0] != other[0]
