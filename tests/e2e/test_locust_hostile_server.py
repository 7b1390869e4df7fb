"""Real Locust (gevent, monkey-patched) against a hostile chat server: pings or fragments without end, a close
never answered, a handshake answered a byte at a time or with an odd status, a TLS handshake that never ends, a
flood of cookies, the user's token echoed in close reasons and error frames. Each run must end within its bound
with its summary, no traceback, the failures classified as `chatprobe run` classifies them, and the token in no
output or report. The server is a raw socket server on 127.0.0.1 in a thread of the test. Loopback only.
"""
from __future__ import annotations

import csv
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .rawserver import ThreadedRawServer
from .test_locust import LOCUSTFILE, SUMMARY, finish, locust_bin
from .test_locust_sse_attacks import upgrade

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TOKEN = "tok-SECRET-4f1d9c2b7e"
SERVE_FOR = 30.0  # seconds a connection is served at most: far past the bound the test allows the run
SCENARIO = """\
name: hostile
users: 1
chats_per_user: 1
connect_timeout: 2s
max_duration: 20s
expect:
  streaming: true
  deadline: 2s
objectives:
  chat_duration: {max: 2s}
"""


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """An unmasked server frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    if len(payload) < 126:
        return head + bytes([len(payload)]) + payload
    return head + bytes([126]) + struct.pack("!H", len(payload)) + payload


def close_frame(code: int, reason: bytes) -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason[:120])


Behaviour = Callable[[socket.socket, bytes, threading.Event], None]


def pings_forever(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    conn.sendall(upgrade(request))
    while not stop.wait(0.05):
        conn.sendall(frame(0x9, b"p"))


def fragments_forever(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    conn.sendall(upgrade(request) + frame(0x1, b"{", fin=False))
    while not stop.wait(0.05):
        conn.sendall(frame(0x0, b" ", fin=False))


def close_unanswered(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    """Accepts, then on the chat's message closes with the token in its reason and an error frame holding it, and
    never reads nor answers again."""
    conn.sendall(upgrade(request))
    conn.recv(65536)
    secret = TOKEN.encode()
    conn.sendall(frame(0x1, b'{"type":"error","message":"bad token ' + secret + b'","error":"' + secret + b'"}')
                 + close_frame(4401, b"token " + secret + b" refused"))
    stop.wait(SERVE_FOR)


def status(line: bytes) -> Behaviour:
    def answer(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(line + b"\r\nSet-Cookie: session=" + TOKEN.encode() + b"\r\nContent-Length: 0\r\n\r\n")
        stop.wait(SERVE_FOR)
    return answer


def latin1_101(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    head = upgrade(request).replace(b"101 Switching Protocols", b"101 Umschalten \xfcber \xe9t\xe9")
    conn.sendall(head)
    stop.wait(SERVE_FOR)


def drip(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    for byte in upgrade(request):
        if stop.wait(0.5):
            return
        conn.sendall(bytes([byte]))


def tls_never(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    """Never says a word back (the client's TLS hello is read and not answered)."""
    stop.wait(SERVE_FOR)


def cookie_flood(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
    cookies = b"".join(b"Set-Cookie: c%d=%s; Path=/\r\n" % (i, TOKEN.encode()) for i in range(200))
    conn.sendall(upgrade(request)[:-2] + cookies + b"\r\n")
    stop.wait(SERVE_FOR)


def sse(head: bytes, body: bytes = b"") -> Behaviour:
    def answer(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        conn.sendall(head.replace(b"TOKEN", TOKEN.encode()) + body.replace(b"TOKEN", TOKEN.encode()))
        stop.wait(SERVE_FOR)
    return answer


def sse_in_pieces(head: bytes, piece: int = 2048) -> Behaviour:
    """The answer's head in pieces, a moment apart: the client reads it in parts, its unfinished head growing past
    h11's default bound (16 KiB) before it ends (a head that comes in one read is never judged unfinished)."""
    def answer(conn: socket.socket, request: bytes, stop: threading.Event) -> None:
        data = head.replace(b"TOKEN", TOKEN.encode())
        for i in range(0, len(data), piece):
            conn.sendall(data[i:i + piece])
            if stop.wait(0.02):
                return
        stop.wait(SERVE_FOR)
    return answer


SSE_OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
COOKIES = b"".join(b"Set-Cookie: c%d=TOKEN; Path=/\r\n" % i for i in range(200))


ATTACKS: dict[str, tuple[str, Behaviour, str]] = {
    # name: (scheme, behaviour, the failure Locust records, as `chatprobe run` judges the same server's chats)
    "pings forever": ("ws", pings_forever, r"incomplete: .*R10 deadline"),
    "fragments forever": ("ws", fragments_forever, r"incomplete: .*R10 deadline"),
    "close unanswered, token echoed": ("ws", close_unanswered, r"incomplete: R12 well-formed"),
    "status 520": ("ws", status(b"HTTP/1.1 520 Unknown"), r"error: protocol_error"),
    "status 499": ("ws", status(b"HTTP/1.1 499 Client Closed"), r"error: protocol_error"),
    "101 with a Latin-1 reason": ("ws", latin1_101, r"incomplete: .*R10 deadline"),
    "handshake dripped": ("ws", drip, r"error: timeout"),
    "TLS never answered": ("wss", tls_never, r"error: timeout"),
    "cookie flood": ("ws", cookie_flood, r"error: protocol_error"),  # past 128 headers: malformed, as under `run`
    "SSE redirect to an undecodable xn-- host": ("http", sse(
        b"HTTP/1.1 307 Temporary Redirect\r\nLocation: http://xn--zz.xn--a/agent?token=TOKEN\r\n"
        b"Content-Length: 0\r\n\r\n"), r"error: protocol_error"),
    # A head of ~38 KB of Set-Cookie, in pieces: httpx reads it (up to 100 KiB) and `run` waits for the events; the
    # sync client refused it as protocol_error at h11's default 16 KiB.
    "SSE Set-Cookie flood": ("http", sse_in_pieces(SSE_OK + COOKIES * 4 + b"\r\n"), r"incomplete: .*R10 deadline"),
    "SSE head past 100 KiB": ("http", sse(SSE_OK + COOKIES * 30 + b"\r\n"), r"error: protocol_error"),
    "SSE head that never ends": ("http", sse(SSE_OK + COOKIES[:400]), r"error: timeout"),
    "SSE error echoing the token": ("http", sse(SSE_OK + b"\r\n", b'data: {"type":"RUN_ERROR","message":"TOKEN",'
                                                        b'"code":"TOKEN"}\n\n'), r"failed: R13 error handling"),
}


class HostileServer(ThreadedRawServer):
    def __init__(self, scheme: str, behaviour: Behaviour) -> None:
        super().__init__(scheme, "/ws")
        self.behaviour = behaviour
        self.tls = scheme == "wss"
        self.requests: list[bytes] = []  # each request's head

    def serve(self, conn: socket.socket) -> None:
        got = b"" if self.tls else self.read_head(conn)
        if got is None:
            return
        self.requests.append(got)
        self.behaviour(conn, got, self.stopped)


@pytest.fixture(params=sorted(ATTACKS))
def attack(request) -> Iterator[tuple[HostileServer, str]]:
    scheme, behaviour, expected = ATTACKS[request.param]
    with HostileServer(scheme, behaviour) as server:
        yield server, expected


def test_a_hostile_server_fails_the_chats_classified_within_the_run_and_never_shows_the_token(procs, attack,
                                                                                               tmp_path: Path):
    """Each run ends by its run time and --stop-timeout (finish's bound: every wait of a chat has its deadline, under
    gevent too) with its summary and no traceback, the chats' failures in Locust's stats as `chatprobe run` judges
    the same server's (checked by hand against `chatprobe run` with this scenario), and the token in no output, CSV
    or HTML report. FAILED on the old code for "SSE Set-Cookie flood": `error: protocol_error` (h11's 16 KiB bound
    on the answer's head), where `chatprobe run` opens the stream and judges the chat's deadline."""
    server, expected = attack
    scenario = tmp_path / "hostile.yaml"
    scenario.write_text(SCENARIO)
    prefix = tmp_path / "run"
    html = tmp_path / "report.html"
    proc = procs.start("locust", [
        locust_bin(), "-f", LOCUSTFILE, "--headless", "-u", "2", "-r", "2", "--run-time", "6s", "--stop-timeout", "3",
        "--host", server.url, "--chatprobe-scenario", str(scenario), "--chatprobe-profile", "ag-ui",
        "--csv", str(prefix), "--html", str(html), "--loglevel", "DEBUG"], env={"CHATPROBE_TOKEN": TOKEN})
    code = finish(proc, 40)
    out, err = proc.out(), proc.err()
    assert code in (1, 3), proc.tail(80)
    assert SUMMARY.search(out) is not None, proc.tail(80)
    assert "Traceback" not in err, proc.tail(80)
    assert server.connections >= 1
    with open(f"{prefix}_failures.csv", newline="") as f:
        failures = list(csv.DictReader(f))
    assert failures, proc.tail(80)
    reasons = " | ".join(row["Error"] for row in failures)
    assert re.search(expected, reasons), (reasons, proc.tail(80))
    shown = out + err + html.read_text() + "".join(p.read_text() for p in tmp_path.glob("run_*.csv"))
    assert TOKEN not in shown
    # No cookie a server set is sent back (`chatprobe run`'s clients keep none): the server's Set-Cookie holds the token.
    assert not [r for r in server.requests if re.search(rb"(?im)^cookie:", r)]
