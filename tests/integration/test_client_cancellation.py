"""A client stopped from outside stays stopped: the run's stop, a monitor probe's deadline (asyncio.timeout around the
probe) and a second Ctrl-C all reach a chat's task as a cancellation, which the client must let through wherever it
waits. Real sockets: a raw WebSocket server written here (tests/integration/test_picows_listen.py's helpers) that
greets the connection and then holds it, never sending again."""
from __future__ import annotations

import asyncio
import json

import pytest

from harness.client import Session
from harness.profiles import load_profile
from harness.sinks import Sink
from harness.targets import Target

from .test_picows_listen import frame, serve, upgrade

WELCOME = json.dumps({"type": "connection_established", "data": {"user_id": "u1"}}).encode()


async def _holding_server() -> tuple[asyncio.AbstractServer, str]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await upgrade(reader, writer)
            writer.write(frame(1, WELCOME))
            await reader.read()  # holds the connection: never another frame, never a close
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await serve(handler)


# "deflate" has the websockets client carry the connection (a reader task), "none" picows (no task: it calls back).
@pytest.mark.parametrize("compression", ["deflate", "none"])
async def test_a_cancellation_while_the_client_waits_for_its_reader_is_not_swallowed(compression):
    """FAILED on the old code: a cancellation that came while the client waited for the connection's reader to see
    the end (after dropping it: a failed welcome, a send found closed; or closing it) was caught and dropped. The
    chat's task then played on as if never stopped (its next chat, its deadline): a monitor probe overran the
    deadline its asyncio.timeout set, and a run stopped by Ctrl-C went on."""
    srv, url = await _holding_server()
    target = Target(url=url, profile=load_profile("netra"), name="t", compression=compression)
    session = Session(target, "u1", "s", Sink(), connect_timeout=5)
    try:
        async with asyncio.timeout(10):  # a hang fails the test
            await session.connect()
            transport = session.transport
            assert transport is not None and not session.closed
            dropping = asyncio.create_task(session._drop(transport))
            # One turn of the loop, no time: the drop runs, aborts the socket and waits for its reader to see the end,
            # which it can only see on the loop's next turn; the cancellation comes before then.
            await asyncio.sleep(0)  # wait-ok: one loop turn, no time
            assert not dropping.done()
            dropping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await dropping
            assert dropping.cancelled()
            # The connection is taken as ended all the same: its reader stopped, its end seen.
            if session.reader is not None:
                await asyncio.wait({session.reader})
            while not session.closed:
                await asyncio.sleep(0)  # wait-ok: turns of the loop until the end is delivered, bounded above
    finally:
        srv.close()
