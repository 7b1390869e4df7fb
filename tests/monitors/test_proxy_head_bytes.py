"""A WebSocket upgrade request that goes on past the proxy's 64 KiB bound on a request's head, over real sockets: it is
answered 431 and closed as those bytes come, not read on (websockets reads 128 header lines of 8 KiB, 1 MiB, before it
gives up) and held until the handshake's deadline."""
from __future__ import annotations

import asyncio
import logging

from .test_proxy_security import Recorded, in_process_proxy, refused, upgrade_request

LINE = 7900  # a header line within websockets' 8 KiB bound on one
LINES = 100  # within its 128 header lines: ~790 KB it would read and hold


async def test_a_head_that_goes_on_past_64_kib_is_answered_431_as_it_comes_not_held_to_the_deadline(caplog):
    upstream = await Recorded().start()
    server, port, metrics = await in_process_proxy(f"ws://127.0.0.1:{upstream.port}")
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                # The head never ends (no blank line): a slow loris's, or one still to come.
                writer.write(upgrade_request("/ws", f"127.0.0.1:{port}")[:-2])
                for i in range(LINES):
                    writer.write(f"X-Pad-{i}: {'p' * LINE}\r\n".encode())
                    if writer.transport.is_closing():
                        break
                async with asyncio.timeout(3):  # well before the handshake's deadline (15 s)
                    answer = await reader.read()
            finally:
                writer.transport.abort()
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
            assert b"p" * 100 not in answer  # the proxy's own words, no echo
        assert upstream.requests == []
        assert refused(metrics, "bad_request") == 3
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    finally:
        server.close()
        upstream.server.close()
