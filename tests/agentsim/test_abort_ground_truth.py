"""After the close:abort fault resets a connection, the ground truth records no event as delivered to it: every event
it logs for the connection reached the client (frames queued for a reset connection go nowhere)."""
from __future__ import annotations

import asyncio
import json

from websockets.exceptions import ConnectionClosed

from .wsclient import chat_frame, connect, gt_of, wait_until

CHATS = 20


async def test_no_event_is_logged_as_delivered_to_a_connection_the_abort_fault_reset(make_sim):
    sim = await make_sim(faults=["close:abort=1.0"], seed=5)
    ws, welcome = await connect(sim.url, "aborted", compression=None)
    received: set[tuple[str, int]] = set()
    try:
        # The chats leave in one write, so their runs go on in the same loop turns as the reset.
        for _ in range(CHATS):
            ws.protocol.send_text(json.dumps(chat_frame("What is 2 + 2? #chunks=20")).encode())
        ws.send_data()
        try:
            async with asyncio.timeout(10):
                async for raw in ws:
                    frame = json.loads(raw)
                    if "seq" in frame:
                        received.add((frame["run_id"], frame["seq"]))
        except ConnectionClosed:
            pass
        await wait_until(lambda: sim.chats_finished >= CHATS, what="the runs to finish")
    finally:
        ws.transport.abort()
    cid = welcome["data"]["connection_id"]
    logged = {(r["run_id"], r["seq"]) for r in gt_of(sim) if r["kind"] == "event" and r["connection_id"] == cid}
    assert logged, "the ground truth logged no event at all"
    assert logged <= received, f"{len(logged - received)} events logged as delivered never reached the client"
