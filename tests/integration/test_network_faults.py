"""A hostile network between chatprobe and a well-behaved agentsim (fault_relay.py): latency, a byte at a time, a
black hole, a half-close, an RST mid-frame, a peer whose reads stop (the client's sends fill its buffers), a
handshake never answered, a connection dropped after some bytes. Every client path goes through it: `chatprobe run`
over WebSocket on both clients (picows; websockets, which `compression: deflate` takes), over SSE (agentsim's AG-UI
endpoint), the Locust user's sync client, `chatprobe monitor` and `chatprobe proxy` (the relay on either side).

What a user must see (docs/runbook.md, "When the network misbehaves"): every wait ends by its deadline, a network
failure is no protocol violation of the server's (a black hole is a timeout, R9/R10 at the chat's limits; an RST or a
FIN mid-run a lost connection, resumed where the scenario reconnects), the counts add up, no traceback, the process
ends in time.
"""
from __future__ import annotations

import asyncio

from harness.client import Session
from harness.events import Outcome
from harness.flow import ChatOptions
from harness.scenario import Expect, expectations_for
from harness.sinks import Sink
from harness.targets import Target

from .fault_relay import UP, Fault, relay

# A message larger than loopback's socket buffers take from a peer that never reads (the kernel's send buffer grows
# to 4 MiB, asyncio's then holds the rest): a send of it waits for the peer.
BIG = "x" * (24 * 1024 * 1024)
AFTER_UPGRADE = b"\r\n\r\n"  # the end of the client's upgrade request: a fault at it strikes the frames that follow


async def test_a_websockets_close_to_a_peer_that_reads_nothing_lets_the_socket_go(sim_factory):
    """The websockets client's close when the peer stopped reading and its write buffer is full: websockets' close
    waits to write its close frame with no end (the chat's send had already failed at connect_timeout), the wait was
    cut at 3 s, and the socket was left open with the megabytes queued on it, for the process's life (a monitor
    probing such a server kept one per probe). It is dropped now, as picows drops it.

    FAILED on the code before: the relay never saw the client's end of the connection."""
    async with sim_factory() as (sim, target, _), relay(sim.port, Fault("stall", UP, at=AFTER_UPGRADE, mid=False)) as r:
        through = Target(url=r.url, profile=target.profile, name="relayed", tokens=target.tokens,
                         compression="deflate")
        session = Session(through, "u1", "t", Sink(), connect_timeout=1)
        exp = expectations_for(target.profile, Expect(deadline=2, first_event_limit=1, settle=0.05))
        try:
            result = await asyncio.wait_for(session.chat(BIG, exp, ChatOptions(settle=0.05)), 10)
        finally:
            await asyncio.wait_for(session.close(), 10)
        assert (result.outcome, result.error_kind) == (Outcome.ERROR, "send_failed"), result
        r.release()  # the relay reads again, dropping what it reads: the client's end shows once its bytes are read
        await asyncio.wait_for(r.connection(0).client_gone.wait(), 10)
