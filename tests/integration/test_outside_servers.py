"""The raw SSE server the outside-evaluator tests speak to (outside_servers.py) ends a connection's handler when its
client leaves, on the server's own loop: no handler is left pending for the garbage collector to destroy in whatever
thread it runs in (outside_servers.hold_handler says what that did to a connection accepted later)."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

from .outside_servers import InThread, RawSseServer


async def _never_ends(request: dict[str, Any]) -> AsyncIterator[bytes]:
    """A stream that says one event and never ends (a vendor's `hang`)."""
    yield b"data: {}\n\n"
    await asyncio.Event().wait()


def test_an_sse_handler_whose_client_left_ends_on_the_servers_loop():
    running = InThread(RawSseServer(_never_ends))
    with running as server:
        assert isinstance(server, RawSseServer)
        port = int(server.url.split(":")[2].split("/")[0])

        async def handlers() -> set[asyncio.Task[Any]]:  # the server loop's connection handlers
            return {t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "RawSseServer._client"}

        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /agent HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 2\r\n\r\n{}")
            got = b""
            while b"data: {}" not in got:  # the handler is streaming, and waits
                chunk = sock.recv(4096)
                assert chunk, got
                got += chunk
            (handler,) = asyncio.run_coroutine_threadsafe(handlers(), running.loop).result(5)
        # The client closed the connection: its handler ends there and then, not when the server stops.

        async def ended() -> bool:
            await asyncio.wait({handler}, timeout=5)
            return handler.done() and not handler.cancelled()

        assert asyncio.run_coroutine_threadsafe(ended(), running.loop).result(10), handler
