"""A client that stops reading must not hold its run forever: agentsim drops it and the run goes on."""
from __future__ import annotations

import json

import websockets

import agentsim.server as server_mod

from .wsclient import wait_until


async def test_a_client_that_stops_reading_is_dropped_and_the_run_finishes(make_sim, monkeypatch):
    monkeypatch.setattr(server_mod, "SEND_TIMEOUT", 0.5)
    # A 4 MiB frame mid-run fills the socket buffers of a client that does not read.
    sim = await make_sim(faults=["oversized=4MiB@1.0"], seed=3)
    ws = await websockets.connect(f"{sim.url}?user=slow", compression=None, max_size=None, max_queue=1)
    try:
        await ws.recv()  # welcome
        await ws.send(json.dumps({"type": "user_message", "payload": {"content": "What is 2 + 2? #chunks=3"}}))
        # ... and never reads again. Without a send deadline the run would wait on this client forever.
        await wait_until(lambda: sim.chats_finished >= 1, timeout=15, what="the run to finish without its reader")
    finally:
        ws.transport.abort()
