"""agentsim writes a burst of events (zero think time) in one write per connection, and an event before a wait
at once: the frames a run sends without waiting leave together, none is held while the run waits."""
from __future__ import annotations

import asyncio
import json

import websockets


async def _chat_counting_writes(sim) -> tuple[list[str], list[int]]:
    """One chat over a real socket; the frames received and the sizes of the server's transport writes."""
    async with websockets.connect(f"{sim.url}?user=u", compression=None, open_timeout=10) as ws:
        async with asyncio.timeout(10):
            await ws.recv()  # welcome
            (conn,) = sim.conns.values()
            transport = conn.ws.transport
            writes: list[int] = []
            write = transport.write

            def counting(data: bytes) -> None:
                writes.append(len(data))
                write(data)

            transport.write = counting
            await ws.send(json.dumps({"type": "user_message", "payload": {"content": "What is 6*7?"}}))
            frames: list[str] = []
            while not frames or json.loads(frames[-1])["type"] not in ("agent_completed", "agent_error"):
                frames.append(await ws.recv())
            transport.write = write  # the close handshake is not the run's
    return frames, writes


def _wire(frame: str) -> int:
    """Bytes of one unmasked server text frame: a 2-byte header up to 125 bytes of payload, else 4 (< 64 KiB)."""
    n = len(frame.encode())
    return n + (2 if n <= 125 else 4)


async def test_a_run_without_think_time_leaves_in_one_write(agentsim):
    frames, writes = await _chat_counting_writes(agentsim)
    assert len(frames) >= 8
    assert [json.loads(f)["seq"] for f in frames] == list(range(1, len(frames) + 1))
    assert writes == [sum(_wire(f) for f in frames)]


async def test_with_think_time_each_event_leaves_before_the_wait(make_sim):
    sim = await make_sim(think=0.02)
    frames, writes = await _chat_counting_writes(sim)
    assert len(frames) >= 8
    # Several writes, each a run of whole frames: what was sent before a wait left before it.
    assert len(writes) > 1
    ends, total = set(), 0
    for f in frames:
        total += _wire(f)
        ends.add(total)
    written = 0
    for w in writes:
        written += w
        assert written in ends, (writes, [_wire(f) for f in frames])
    assert written == total
