"""Real Locust (gevent, monkey-patched) over SSE (and a WebSocket) against a hostile server: one that sends faster
than it is read, so no read of the Locust user ever has to wait. A greenlet that never waits lets no other run, so every such
server is a test of the process as a whole: its run time must still end the run, --stop-timeout still stop the
users, and the summary still be printed. The server is a raw HTTP/1.1 server on 127.0.0.1 in a thread of the test,
sending for at most FLOOD_FOR seconds a connection. Loopback only.
"""
from __future__ import annotations

import base64
import hashlib
import re
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from .rawserver import ThreadedRawServer
from .test_locust import LOCUSTFILE, SUMMARY, finish, locust_bin

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

FLOOD_FOR = 60.0  # seconds a connection is flooded at most: far past the bound the test allows the run



def upgrade(request: bytes) -> bytes:
    """The WebSocket handshake's answer to `request` (RFC 6455 4.2.2)."""
    match = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", request)
    assert match is not None, request
    accept = base64.b64encode(hashlib.sha1(match.group(1) + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


FLOODS: dict[str, tuple[str, Callable[[bytes], bytes], bytes]] = {
    # `100 Continue` without end: never the answer's head, never a read that waits
    "1xx answers": ("http", lambda request: b"", b"HTTP/1.1 100 Continue\r\n\r\n" * 2048),
    # an event stream of comments without end: nothing for the chat, never a read that waits
    "an endless stream": ("http", lambda request: b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n",
                          b":\n" * 32768),
    # the same over a WebSocket (AG-UI's events as text frames): small frames without end
    "endless frames": ("ws", upgrade, b"\x81\x02{}" * 16384),
}


class FloodServer(ThreadedRawServer):
    """Reads a request's head, writes `head(request)`, then `chunk` again and again until the client goes away (or
    FLOOD_FOR seconds have passed)."""

    def __init__(self, scheme: str, head: Callable[[bytes], bytes], chunk: bytes) -> None:
        super().__init__(scheme, "/agent")
        self.head, self.chunk = head, chunk

    def serve(self, conn: socket.socket) -> None:
        end = time.monotonic() + FLOOD_FOR
        got = self.read_head(conn)
        if got is None:
            return
        conn.sendall(self.head(got))
        while time.monotonic() < end and not self.stopped.is_set():
            conn.sendall(self.chunk)


@pytest.fixture(params=sorted(FLOODS))
def flood(request) -> Iterator[FloodServer]:
    with FloodServer(*FLOODS[request.param]) as server:
        yield server


def test_a_server_that_never_lets_a_read_wait_does_not_hold_the_run_past_its_end(procs, flood):
    """FAILED on the old code: the Locust process was held by the one greenlet reading (the 1xx answers, or the
    stream, the frames) until the server stopped sending: a 2 s run with --stop-timeout 2 had not ended after 30 s
    (a run with the server sending for good never ends, its SIGTERM unanswered). The user's readers now let the
    others run once per 64 KiB they read, and the answer's head is awaited within the connect deadline however fast
    the 1xx answers come."""
    started = time.monotonic()
    proc = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "2", "-r", "2", "--run-time", "2s", "--stop-timeout", "2",
        "--host", flood.url, "--chatprobe-profile", "ag-ui", "--chatprobe-auth", "none",
        "--chatprobe-scenario", "basic"])
    code = finish(proc, 30)
    assert time.monotonic() - started < 30
    assert code == 1, proc.tail(60)  # no chat passed: the objectives failed, the run ended with its summary
    assert SUMMARY.search(proc.out()) is not None, proc.tail(60)
    assert "Traceback" not in proc.err(), proc.tail(60)
