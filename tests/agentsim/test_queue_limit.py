"""A client that stops reading and floods resume requests gets no more queued for it than QUEUE_LIMIT and a burst:
frames waiting in websockets' protocol buffer count against the limit as the transport's do."""
from __future__ import annotations

import json

import agentsim.server as server_mod

from .wsclient import chat, connect, wait_until

RESUMES = 2000  # ~150 KB from the client, each asking for a run of ~75 events (~20 KB) again


async def test_a_flood_of_resumes_from_a_client_that_does_not_read_stays_bounded(make_sim, monkeypatch):
    monkeypatch.setattr(server_mod, "SEND_TIMEOUT", 0.5)
    sim = await make_sim()
    ws, _ = await connect(sim.url, "flood", compression=None, max_size=None)
    try:
        events = await chat(ws, "What is 2 + 2? #tools=10 #chunks=50")
        assert len(events) > 60
        run_id = events[0]["run_id"]
        (conn,) = sim.conns.values()
        held: list[int] = []

        def server_holds() -> int:
            # What agentsim keeps for this client: unsent in the transport, and queued on the protocol.
            n = conn.ws.transport.get_write_buffer_size() + sum(map(len, conn.ws.protocol.writes))
            held.append(n)
            return n

        # From here on the client reads nothing; its resume requests leave in one write.
        resume = json.dumps({"type": "resume", "payload": {"run_id": run_id, "last_seq": 0}})
        for _ in range(RESUMES):
            ws.protocol.send_text(resume.encode())
        ws.send_data()
        # The server stops when the socket buffers are full and its own reaches websockets' write limit.
        await wait_until(lambda: server_holds() >= 2**15 or not conn.open, timeout=20,
                         what="the server to stop on the client that does not read")
        assert max(held) < 1024 * 1024, f"agentsim held {max(held)} bytes for one client that does not read"
    finally:
        ws.transport.abort()
